"""Read raw clip features from an HDF5 archive.

Two layouts exist in the wild: one dataset per video id at the top level (Charades I3D, ActivityNet
CLIP), or one group per video holding ``c3d_features`` (ActivityNet C3D). Each video is looked up
on its own, so both may even be mixed in one file. Open one archive per process: h5py serialises
all calls behind one lock, and a handle must not cross a fork.
"""
from __future__ import annotations

import os
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
        # HDF5's own descriptor of the file, for reading contiguous datasets straight (see _read_all)
        self._fd = self._file.id.get_vfd_handle() if self._file.driver == "sec2" else None

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

    def _lookup(self, video: str) -> tuple[h5py.h5d.DatasetID, h5py.h5o.ObjectID]:
        """``(features dataset, the video's own node)`` as h5py's low-level ids.

        The usual layout, a dataset per video at the top level, is opened by the low-level API directly:
        half the cost per video of h5py's high-level objects, which cnm-run pays once per video (8% more
        queries/s end to end on the demo's archive). A group (the C3D layout) takes the high-level way.
        """
        try:
            dataset = h5py.h5d.open(self._file.id, video.encode())
            return dataset, dataset
        except KeyError:  # absent, or a group
            pass
        node = self._file.get(video)
        if node is None:
            raise InputError("unknown_video", f"video {video!r} is not in archive {self.path.name}")
        dataset = node.get(C3D_DATASET) if isinstance(node, h5py.Group) else None
        if not isinstance(dataset, h5py.Dataset):
            raise InputError(
                "unknown_video", f"video {video!r}: group in {self.path.name} has no {C3D_DATASET!r} dataset"
            )
        return dataset.id, node.id

    def read(self, video: str) -> np.ndarray:
        """The raw ``[L, D]`` features of ``video`` (as stored; validate before use)."""
        return self._read_all(self._lookup(video)[0])

    def duration(self, video: str) -> float | None:
        """The ``duration`` attribute (seconds) of the video's dataset or group, if any."""
        if video not in self._file:
            return None
        dataset, node = self._lookup(video)
        return _duration_of(node, dataset)

    def load(self, video: str) -> tuple[np.ndarray, float | None]:
        """``read`` and ``duration`` with one look-up: what batch readers call per video."""
        dataset, node = self._lookup(video)
        return self._read_all(dataset), _duration_of(node, dataset)

    def _read_all(self, dataset: h5py.h5d.DatasetID) -> np.ndarray:
        """The whole dataset as a new array (``dataset[()]`` without the high-level machinery).

        A contiguous dataset of numbers, the usual way archives are written, is read from its bytes in the
        file (``get_offset`` is HDF5's absolute offset of them; the values are as stored, byte order
        included): half the time of HDF5's read for a video of the demo's archive. Chunked, compressed,
        compact or external data, and anything but numbers, go through HDF5.
        """
        values = np.empty(dataset.shape, dataset.dtype)
        offset = dataset.get_offset() if self._fd is not None and values.dtype.kind in "fiu" else None
        if offset is None or not values.nbytes or os.preadv(self._fd, [values], offset) != values.nbytes:
            dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
        return values


def _duration_of(*holders: h5py.h5o.ObjectID) -> float | None:
    """The ``duration`` attribute of the first of ``holders`` that has one (the video's node, then its
    features dataset), converted to float64 by HDF5 (asking h5py for its stored type cost half the time;
    a duration that is not a number fails here, and its video is reported unreadable)."""
    for holder in holders:
        if h5py.h5a.exists(holder, b"duration"):
            attribute = h5py.h5a.open(holder, b"duration")
            value = np.empty(attribute.shape, np.float64)
            attribute.read(value, mtype=h5py.h5t.NATIVE_DOUBLE)
            return float(value)
    return None
