"""The files a run writes, so that nothing computed is lost and no file is clobbered.

- Outputs are checked against the inputs and one another before any is opened (``refuse_aliases``): the same
  file under two flags, through a symbolic or a hard link too, is a usage error naming both flags.
- Each output is held under an exclusive lock for the whole run (``LockedFile``): a second run on it fails at
  once instead of interleaving lines.
- Predictions and errors are JSON lines, each written whole and flushed at once (``JsonLines``);
  ``read_back`` lets ``--resume`` continue a predictions file, cutting off a last line that a crash left
  half written.
- Files that must appear whole (metrics, provenance, shard files) are written to a temporary file, synced and
  renamed over the target (``write_atomic``), with the permissions a plain ``open`` would give them; a device
  or a pipe (``/dev/null``) is written into, never replaced.

Any failure to write an output is an ``OutputError`` naming the file: cnm-run exits with a status of its own.
"""
from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from cnm_runtime.model_files import model_files


@dataclass(frozen=True)
class RunFiles:
    """The files of a run: its inputs, and its outputs (``output`` ``-`` is standard output; for the Ray
    engine, a folder)."""

    model: Path
    features: Path
    queries: Path
    output: Path
    errors: Path | None = None
    metrics: Path | None = None

    @property
    def to_stdout(self) -> bool:
        return str(self.output) == "-"

    def inputs(self) -> dict[str, Path]:
        model = dict(zip(("--model", "--model's weights"), model_files(self.model)))  # an IR's .bin is one too
        return {**model, "--features": self.features, "--queries": self.queries}

    def outputs(self) -> dict[str, Path]:
        """The files written, by flag: ``-o -`` is standard output, no file; ``--errors -`` is a file named ``-``."""
        named = {"-o": None if self.to_stdout else self.output, "--errors": self.errors, "--metrics": self.metrics}
        return {flag: path for flag, path in named.items() if path is not None}

def provenance_path(output: Path) -> Path:
    return output.with_name(output.name + ".run.json")



class OutputError(Exception):
    """An output that cannot be written (disk full, no permission, a folder where a file should be)."""


class OutputInUse(Exception):
    """An output that another run holds."""


def _identity(path: Path) -> tuple:
    """What makes two paths one file: device and inode where it exists, else the fully resolved path."""
    try:
        status = os.stat(path)
        return status.st_dev, status.st_ino
    except OSError:
        return (os.path.realpath(path),)


def refuse_aliases(inputs: dict[str, Path], outputs: dict[str, Path]) -> None:
    """ValueError naming both flags where an output is an input or another output (``flag -> path``, files
    only)."""
    seen: dict[tuple, str] = {_identity(path): flag for flag, path in inputs.items()}
    for flag, path in outputs.items():
        identity = _identity(path)
        if identity in seen:
            raise ValueError(f"{flag} {path} is the same file as {seen[identity]}: it would be overwritten; "
                             "give another path")
        seen[identity] = flag


def _reason(error: OSError) -> str:
    """An OSError as a person reads it: what, and of which path where that is another one."""
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename}" if error.filename else reason


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread, for a moment)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


class LockedFile:
    """An output file opened for the run without truncating it, under an exclusive lock that ends with the
    process (``flock``): a second run on the same file, whatever path names it, fails at once."""

    def __init__(self, path: str | Path, flag: str):
        self.path, self.flag = Path(path), flag
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise OutputError(f"{flag} {self.path}: cannot open it for writing ({_reason(error)})") from error
        try:
            import fcntl  # POSIX; elsewhere outputs are not locked

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError as error:
            os.close(self.fd)
            raise OutputInUse(f"{flag} {self.path} is in use by another run (it holds the file's lock); wait for "
                              "it to end, or write elsewhere") from error

    @property
    def regular(self) -> bool:
        """A plain file (not a device or a pipe such as /dev/null)."""
        return stat.S_ISREG(os.fstat(self.fd).st_mode)

    def __enter__(self) -> "LockedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        os.close(self.fd)


_STRICT_JSON = json.JSONEncoder(allow_nan=False)  # made once: json.dumps builds one a call for any option


class JsonLines:
    """One JSON record per line, each flushed as it is written, into a ``LockedFile`` (from its start, or
    after what it holds with ``append``) or, given None, standard output."""

    def __init__(self, file: LockedFile | None, append: bool = False):
        self.file, self._failed = file, False
        self.name = "standard output" if file is None else str(file.path)
        if file is None:
            self._handle: IO[str] = sys.stdout
            return
        try:
            if append:
                os.lseek(file.fd, 0, os.SEEK_END)
            elif file.regular:
                os.ftruncate(file.fd, 0)
            self._handle = open(os.dup(file.fd), "a", encoding="utf-8")
        except OSError as error:
            raise OutputError(f"{file.flag} {file.path}: {_reason(error)}") from error

    def __enter__(self) -> "JsonLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        """One line, written whole or cut off last; strict JSON (a NaN is a ValueError, never a line)."""
        line = _STRICT_JSON.encode(record) + "\n"
        try:
            self._handle.write(line)
            self._handle.flush()
        except OSError as error:
            self._failed = True
            raise OutputError(f"cannot write {self.name}: {_reason(error)}; what was written stays, and --resume "
                              "completes it") from error

    def close(self) -> None:
        """Flush and sync; after a failed write only close (the line that failed is the one reported)."""
        if self.file is None:
            return
        try:
            if not self._failed:
                self._handle.flush()
                if self.file.regular:  # a device or a pipe has nothing to sync (and fsync fails on it)
                    os.fsync(self._handle.fileno())
        except OSError as error:
            raise OutputError(f"cannot write {self.name}: {_reason(error)}") from error
        finally:
            try:
                self._handle.close()
            except OSError:
                pass  # what it could not flush is the failure already reported


def read_back(file: LockedFile) -> Iterator[dict[str, Any]]:
    """The complete records of an earlier run's predictions in ``file``; a partial last line is cut off.

    A complete line that is not a prediction record means the file is something else: ValueError.
    """
    with open(os.dup(file.fd), "rb+") as handle:
        handle.seek(0)
        complete_bytes = 0
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break  # written halfway when the run stopped
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{file.path} line {number} is not JSON; not a cnm-run output") from error
            if not isinstance(record, dict) or "qid" not in record or not isinstance(record["qid"], (str, int)) \
                    or isinstance(record["qid"], bool):
                raise ValueError(f"{file.path} line {number} is not a prediction record; not a cnm-run output")
            complete_bytes += len(line)
            yield record
        handle.truncate(complete_bytes)


def write_atomic(path: str | Path, lines: Iterable[str]) -> None:
    """Write ``lines`` (each without its newline) so that readers see the old file or the whole new one, never
    a part, and a crash right after leaves the new one on disk; OutputError names the file otherwise.

    A path that leads to a device or a pipe (``/dev/null``, ``/dev/stdout``) is written into: renaming a file
    over it would replace it for every program (root may rename over ``/dev/null``)."""
    path = Path(path)
    if _special(path):
        try:
            with open(path, "w", encoding="utf-8") as out:
                out.writelines(line + "\n" for line in lines)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {_reason(error)}") from error
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {_reason(error)}") from error
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
            out.flush()
            os.fchmod(out.fileno(), 0o666 & ~_umask())  # mkstemp makes it private
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path}: {_reason(error)}") from error
        raise


def _special(path: Path) -> bool:
    """Whether ``path`` leads (through symbolic links too) to something other than a file or a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def finite(data: Any) -> Any:
    """``data`` (dicts, lists and tuples of JSON values) with every float that is not finite replaced by
    None: JSON has no NaN or Infinity, and a figure that is not a number (a diverged training's loss) is
    undefined, which JSON writes as null."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def write_json_atomic(path: str | Path, data: Any) -> None:
    """``data`` as strict, indented JSON through ``write_atomic``, null for a float that is not finite."""
    write_atomic(path, [json.dumps(finite(data), indent=2, allow_nan=False)])
