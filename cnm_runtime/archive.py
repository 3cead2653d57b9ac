"""Read raw clip features from an HDF5 archive.

Two layouts exist in the wild: one dataset per video id at the top level (Charades I3D, ActivityNet
CLIP), or one group per video holding ``c3d_features`` (ActivityNet C3D). Each video is looked up
on its own, so both may even be mixed in one file. Open one archive per process: h5py serialises
all calls behind one lock, and a handle must not cross a fork.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cnm_runtime.errors import InputError

C3D_DATASET = "c3d_features"


class FeatureArchive:
    """A read-only HDF5 feature archive; use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as error:
            raise FileNotFoundError(f"cannot open feature archive {self.path}: {error}") from error

    def __enter__(self) -> "FeatureArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __contains__(self, video: str) -> bool:
        return video in self._file

    def videos(self) -> list[str]:
        return list(self._file.keys())

    @property
    def attrs(self) -> dict:
        return dict(self._file.attrs)

    def _lookup(self, video: str) -> tuple[h5py.Dataset, h5py.HLObject]:
        """``(features dataset, the video's own node)``, with as few h5py look-ups as possible (each costs)."""
        node = self._file.get(video)
        if node is None:
            raise InputError("unknown_video", f"video {video!r} is not in archive {self.path.name}")
        if isinstance(node, h5py.Group):
            dataset = node.get(C3D_DATASET)
            if dataset is None:
                raise InputError(
                    "unknown_video", f"video {video!r}: group in {self.path.name} has no {C3D_DATASET!r} dataset"
                )
            return dataset, node
        return node, node

    def read(self, video: str) -> np.ndarray:
        """The raw ``[L, D]`` features of ``video`` (as stored; validate before use)."""
        return self._lookup(video)[0][()]

    def duration(self, video: str) -> float | None:
        """The ``duration`` attribute (seconds) of the video's dataset or group, if any."""
        if video not in self._file:
            return None
        return _duration_of(*self._lookup(video))

    def load(self, video: str) -> tuple[np.ndarray, float | None]:
        """``read`` and ``duration`` with one look-up: what batch readers call per video."""
        dataset, node = self._lookup(video)
        return dataset[()], _duration_of(dataset, node)


def _duration_of(dataset: h5py.Dataset, node: h5py.HLObject) -> float | None:
    """The ``duration`` attribute of the video's node (group or dataset), else of its features dataset."""
    value = node.attrs.get("duration")
    if value is None and node is not dataset:
        value = dataset.attrs.get("duration")
    return None if value is None else float(value)
