"""The files a cnm-run writes, so that a crash or Ctrl-C loses nothing already computed.

Predictions and errors are JSON lines, each written whole and flushed at once; ``read_back`` lets
``--resume`` continue a predictions file, cutting off a last line that a crash left half written.
Files that must appear whole (metrics) go to a temporary file that is then renamed over the target.
``exclusive_lock`` keeps a second run off an output that a first run is still writing.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO


def read_back(path: str | Path) -> Iterator[dict[str, Any]]:
    """The complete records of an earlier run's predictions file; a partial last line is cut off the file.

    A complete line that is not a prediction record means the file is something else: ValueError.
    """
    path = Path(path)
    with open(path, "rb+") as handle:
        complete_bytes = 0
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break  # written halfway when the run stopped
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not JSON ({error.msg}); not a cnm-run output") from error
            if not isinstance(record, dict) or "qid" not in record:
                raise ValueError(f"{path} line {number} is not a prediction record; not a cnm-run output")
            complete_bytes += len(line)
            yield record
        handle.truncate(complete_bytes)


_STRICT_JSON = json.JSONEncoder(allow_nan=False)  # made once: json.dumps builds one a call for any option


class JsonLines:
    """Writes one JSON record per line, flushed as it is written; ``None`` or ``-`` means standard output."""

    def __init__(self, path: str | Path | None, append: bool = False):
        self.to_stdout = path is None or str(path) == "-"
        if self.to_stdout:
            self._handle: TextIO = sys.stdout
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a" if append else "w", encoding="utf-8")

    def __enter__(self) -> "JsonLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        # one write: a line is either whole or cut off last; strict JSON (no NaN) or ValueError
        self._handle.write(_STRICT_JSON.encode(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if not self.to_stdout:
            self._handle.close()


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class OutputBusyError(RuntimeError):
    """Another process holds the lock of the output this run would write."""


@contextmanager
def exclusive_lock(output: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``output`` (its ``<name>.lock`` file beside it) while the block runs;
    OutputBusyError at once where another process holds it, never a wait.

    The lock file is left in place: removing it would let a third run lock a new file while a second
    still holds the removed one. The kernel releases the lock when the process ends, however it ends.
    """
    import fcntl  # POSIX only: imported here so that the rest of this module works everywhere

    output = Path(output)
    lock_path = output.with_name(output.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(f"another run is writing {output} (it holds {lock_path}); wait for it to "
                                  "finish, or write to another output") from None
        yield lock_path
    finally:
        handle.close()  # closing the file releases the lock
