"""The output folder of a sharded run: one predictions file and one errors file per shard, under stable names.

    OUT/run.json                  the queries file (SHA-256) and shard size the shards were cut by
    OUT/predictions-00012.jsonl   shard 12's predictions, in input order
    OUT/errors-00012.jsonl        shard 12's error records, in input order
    OUT/metrics.json              the run's metrics, once every shard is done

A shard's two files are written to temporary names and renamed, the errors file first: a shard whose
predictions file exists is complete, and a rerun skips it. Whatever a killed run left (temporary files,
an errors file without its predictions) is written again whole, so no record is ever there twice.
The shards' files in name order are the local run's output in order::

    cat OUT/predictions-*.jsonl > predictions.jsonl
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "run.json"
METRICS = "metrics.json"
MIN_DIGITS = 5


class ShardFiles:
    def __init__(self, folder: str | Path, shards: int):
        self.folder = Path(folder)
        self.digits = max(MIN_DIGITS, len(str(max(shards - 1, 0))))  # every name equally long: sorted = in order

    def predictions(self, shard: int) -> Path:
        return self.folder / f"predictions-{shard:0{self.digits}d}.jsonl"

    def errors(self, shard: int) -> Path:
        return self.folder / f"errors-{shard:0{self.digits}d}.jsonl"

    def complete(self, shard: int) -> bool:
        return self.predictions(shard).exists()

    def start(self, identity: dict[str, Any]) -> None:
        """Make the folder, or check that it holds shards of the same ``identity`` (queries and shard size):
        shard 12 of another cut is other queries. Temporary files of a killed run are removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / MANIFEST
        if manifest.exists():
            earlier = json.loads(manifest.read_text())
            if earlier != identity:
                raise ValueError(f"{self.folder} holds the shards of another run ({earlier}, now {identity}): "
                                 "write to another folder, or empty this one")
        else:
            _write_atomic(manifest, [json.dumps(identity)])
        for leftover in self.folder.glob(".*.tmp"):
            leftover.unlink()

    def write(self, shard: int, predictions: Iterable[str], errors: Iterable[str]) -> None:
        """Both files of ``shard`` (each a JSON line without its newline), errors first."""
        _write_atomic(self.errors(shard), errors)
        _write_atomic(self.predictions(shard), predictions)

    def read(self, shard: int) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]]]:
        """The records of a complete shard: ``(predictions, errors)``."""
        return _records(self.predictions(shard)), _records(self.errors(shard))


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` to a temporary file beside ``path`` and rename it: ``path`` is whole or absent."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
