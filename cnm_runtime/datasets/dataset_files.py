"""Write the files the toolkit reads: HDF5 feature archives, annotation JSON lists and queries.jsonl.

The synthetic generator and the converters both go through here, so every archive has the same
layout: one float32 dataset ``[rows, dim]`` per video at the top level, with a ``duration``
attribute (seconds) when it is known, and file attributes saying where the features came from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from cnm_runtime.fields import Annotation

# Uncompressed: these features are mostly noise and barely compress (lzf saves a few percent, gzip
# a little more) while reading thousands of videos gets slower; see data/README.md for the figures.
COMPRESSION: str | None = None


class ArchiveWriter:
    """Writes ``<path>.partial`` and renames it to ``path`` on a clean exit, so a crash leaves no half archive.

    The new file reaches the disk (fsync) before the rename, and the rename before ``__exit__`` returns: after a
    power cut ``path`` is the old archive or the whole new one.
    """

    def __init__(self, path: str | Path, attrs: dict[str, Any]):
        self.path = Path(path)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self._partial, "w")
        self._file.attrs.update(attrs)

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._file.close()
        if exc_type is None:
            sync_to_disk(self._partial)
            os.replace(self._partial, self.path)
            sync_to_disk(self.path.parent)
        else:
            self._partial.unlink(missing_ok=True)

    def copy_from(self, archive: str | Path) -> list[str]:
        """Copy every video (top-level dataset or group, with its attributes) of ``archive`` into this one as
        HDF5 stores it (chunks and filters kept); the names copied."""
        with h5py.File(archive, "r") as source:
            names = list(source)
            for name in names:
                source.copy(source[name], self._file, name=name)
        return names

    def add(self, video: str, features: np.ndarray, duration: float | None = None) -> None:
        """Store ``features`` as float32 under ``video``; no timestamps, so equal inputs give equal files."""
        features = np.asarray(features, dtype=np.float32)
        dataset = self._file.create_dataset(
            video,
            data=features,
            compression=COMPRESSION,
            chunks=features.shape if COMPRESSION else None,
            track_times=False,
        )
        if duration is not None:
            dataset.attrs["duration"] = float(duration)


def sync_to_disk(path: str | Path) -> None:
    """fsync a file or a folder (a folder: so that a rename in it survives a power cut)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def annotation_item(annotation: Annotation) -> list:
    """The original layout: ``[video, duration, [start, end], sentence]``."""
    return [annotation.video, annotation.duration, [annotation.start, annotation.end], annotation.sentence]


def query_record(annotation: Annotation) -> dict[str, Any]:
    """One line of queries.jsonl as cnm-run reads it."""
    return {
        "video": annotation.video,
        "query": annotation.sentence,
        "duration": annotation.duration,
        "timestamps": [annotation.start, annotation.end],
    }


def write_annotations(path: str | Path, annotations: Iterable[Annotation]) -> Path:
    path = Path(path)
    path.write_text(json.dumps([annotation_item(a) for a in annotations]))
    return path


def write_queries(path: str | Path, annotations: Iterable[Annotation]) -> Path:
    path = Path(path)
    with open(path, "w") as handle:
        for annotation in annotations:
            handle.write(json.dumps(query_record(annotation)) + "\n")
    return path
