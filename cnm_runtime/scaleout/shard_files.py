"""The output folder of a sharded run: one predictions file and one errors file per shard, under stable names.

    OUT/run.json                  what the shards were made from (queries, model, cnm version) and how cut
    OUT/predictions-00012.jsonl   shard 12's predictions, in input order
    OUT/errors-00012.jsonl        shard 12's error records, in input order
    OUT/metrics.json              the run's metrics, once every shard is done

A shard's two files are written whole and renamed (``run_files.write_atomic``), the errors file first: a shard
whose predictions file exists is complete, and a rerun skips it. Whatever a killed run left (temporary files,
an errors file without its predictions) is written again whole, so no record is ever there twice. The
folder is locked for the run (``OUT/.lock``): a second run on it fails at once. The shards' files in name
order are the local run's output in order::

    cat OUT/predictions-*.jsonl > predictions.jsonl
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from cnm_runtime.provenance import check_same
from cnm_runtime.run_files import LockedFile, write_atomic, write_json_atomic

MANIFEST = "run.json"
METRICS = "metrics.json"
LOCK = ".lock"
MIN_DIGITS = 5
# What a folder of shard files holds and nothing else: an input among them would be overwritten.
NAMES = ("predictions-*.jsonl", "errors-*.jsonl", MANIFEST, METRICS)


def refuse_inputs_inside(folder: Path, inputs: dict[str, Path]) -> None:
    """ValueError naming the flag where an input lies in ``folder`` under a name a shard run writes."""
    for flag, path in inputs.items():
        inside = Path(os.path.realpath(path)).parent == Path(os.path.realpath(folder))
        if inside and any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in NAMES):
            raise ValueError(f"{flag} {path} lies in -o {folder} under a name that the run writes; move it")


class ShardFiles:
    """Use as a context manager: it holds the folder's lock."""

    def __init__(self, folder: str | Path, shards: int):
        self.folder = Path(folder)
        self.digits = max(MIN_DIGITS, len(str(max(shards - 1, 0))))  # every name equally long: sorted = in order
        self._lock: LockedFile | None = None

    def __enter__(self) -> "ShardFiles":
        self._lock = LockedFile(self.folder / LOCK, "-o")
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()

    def predictions(self, shard: int) -> Path:
        return self.folder / f"predictions-{shard:0{self.digits}d}.jsonl"

    def errors(self, shard: int) -> Path:
        return self.folder / f"errors-{shard:0{self.digits}d}.jsonl"

    def complete(self, shard: int) -> bool:
        return self.predictions(shard).exists()

    def start(self, identity: dict[str, Any]) -> None:
        """Record ``identity`` (what the shards are made from, and how cut) in a new folder, or check that the
        folder holds shards of the same: shard 12 of another cut, queries file or model is other records.
        Temporary files of a killed run are removed."""
        manifest = self.folder / MANIFEST
        if manifest.exists() or any(self.folder.glob("predictions-*.jsonl")):
            check_same(manifest, identity, "write to another folder, or empty this one")
        else:
            write_json_atomic(manifest, identity)
        for leftover in self.folder.glob(".*.tmp"):
            leftover.unlink()

    def write(self, shard: int, predictions: Iterable[str], errors: Iterable[str]) -> None:
        """Both files of ``shard`` (each a JSON line without its newline), errors first."""
        write_atomic(self.errors(shard), errors)
        write_atomic(self.predictions(shard), predictions)

    def read(self, shard: int) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]]]:
        """The records of a complete shard: ``(predictions, errors)``."""
        return _records(self.predictions(shard)), _records(self.errors(shard))


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)
