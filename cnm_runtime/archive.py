"""Read raw clip features from an HDF5 archive.

Two layouts exist in the wild: one dataset per video id at the top level (Charades I3D, ActivityNet
CLIP), or one group per video holding ``c3d_features`` (ActivityNet C3D). Each video is looked up
on its own, so both may even be mixed in one file. Open one archive per process: h5py serialises
all calls behind one lock, and a handle must not cross a fork.

Whatever way HDF5 reaches a video's dataset (hard, soft and external links, virtual datasets, external raw
files, chunks and filters), its values are HDF5's own, or the video is an InputError: ``unreadable_video``
where HDF5 cannot read it, or where a virtual dataset's source is missing (HDF5 would give fill values), and
``link_outside_archive`` where ``follow_outside_links=False`` and its values would come from a file outside
the archive's folder.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from cnm_runtime.errors import InputError
from cnm_runtime.options import ArchiveOptions

C3D_DATASET = "c3d_features"
MAX_VIRTUAL_DEPTH = 8  # virtual datasets whose sources are virtual datasets, and so on: more is refused


class FeatureArchive:
    """A read-only HDF5 feature archive; use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, options: ArchiveOptions = ArchiveOptions()):
        self.path = Path(path)
        self.follow_outside_links = options.follow_outside_links
        self._folder = Path(os.path.realpath(self.path.absolute().parent))
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise FileNotFoundError(f"cannot open feature archive {self.path}: {error}") from error
        try:  # HDF5's number and descriptor of this file, for reading its own contiguous datasets straight
            self._fileno = h5py.h5o.get_info(self._file.id).fileno
            self._fd = self._file.id.get_vfd_handle() if self._file.driver == "sec2" else None
        except Exception as error:  # a damaged file can open and still fail here, with any of h5py's errors
            self._file.close()
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

    def _lookup(self, video: str) -> tuple[h5py.h5d.DatasetID, h5py.h5o.ObjectID]:
        """``(features dataset, the video's own node)`` as h5py's low-level ids.

        The usual layout, a dataset per video at the top level, is opened by the low-level API directly,
        which skips the high-level objects that cnm-run would otherwise build once per video. A group (the
        C3D layout) and links take the high-level way.
        """
        if "\x00" in video:  # HDF5 would look up the name up to the NUL: another video
            raise InputError("unknown_video", f"video {video!r}: a name with a NUL character is in no archive")
        try:
            dataset = h5py.h5d.open(self._file.id, video.encode())
            return dataset, dataset
        except KeyError:  # absent, a group, or a link that leads nowhere
            pass
        link = self._file.get(video, getlink=True)
        if link is None:
            raise InputError("unknown_video", f"video {video!r} is not in archive {self.path.name}")
        node = self._file.get(video)
        if node is None:
            raise InputError("unreadable_video", f"video {video!r}: its {_describe(link)} in archive "
                                                 f"{self.path.name} leads to nothing that can be opened")
        dataset = node.get(C3D_DATASET) if isinstance(node, h5py.Group) else None
        if not isinstance(dataset, h5py.Dataset):
            raise InputError(
                "unknown_video", f"video {video!r}: group in {self.path.name} has no {C3D_DATASET!r} dataset"
            )
        return dataset.id, node.id

    def read(self, video: str) -> np.ndarray:
        """The raw ``[L, D]`` features of ``video`` (as stored; validate before use)."""
        with self._reading(video):
            return self._read_all(self._lookup(video)[0], video)

    def duration(self, video: str) -> float | None:
        """The ``duration`` attribute (seconds) of the video's dataset or group, if any."""
        with self._reading(video):
            if video not in self._file:
                return None
            dataset, node = self._lookup(video)
            return _duration_of(node, dataset)

    def load(self, video: str) -> tuple[np.ndarray, float | None]:
        """``read`` and ``duration`` with one look-up: what batch readers call per video."""
        with self._reading(video):
            dataset, node = self._lookup(video)
            return self._read_all(dataset, video), _duration_of(node, dataset)

    @contextmanager
    def _reading(self, video: str) -> Iterator[None]:
        """Whatever a damaged or unusual archive makes h5py raise becomes an InputError naming ``video``."""
        try:
            yield
        except InputError:
            raise
        except Exception as error:
            raise InputError("unreadable_video", f"video {video!r}: cannot read it from archive {self.path.name} "
                                                 f"({type(error).__name__}: {error})") from error

    def _read_all(self, dataset: h5py.h5d.DatasetID, video: str) -> np.ndarray:
        """The whole dataset as a new array (``dataset[()]`` without the high-level machinery)."""
        stored = dataset.get_type()
        values = np.empty(dataset.shape, stored.dtype)
        if not self._read_own_bytes(dataset, stored, values):
            self._check_sources(dataset, video)
            dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
        return values

    def _read_own_bytes(self, dataset: h5py.h5d.DatasetID, stored: h5py.h5t.TypeID, values: np.ndarray) -> bool:
        """Fill ``values`` from the dataset's bytes in this file where they provably are its values; False
        where HDF5 must read it.

        A contiguous dataset of numbers, the usual way archives are written, is read straight, without
        HDF5's type conversion machinery. That needs the dataset to live in this file
        (not behind an external link: ``get_offset`` is then an offset in the other file), its storage to be
        one contiguous piece here (not chunked, hence unfiltered, nor virtual, nor in external raw files),
        and its stored type to be the very type of ``values`` (byte order included).
        """
        if self._fd is None or not values.nbytes or values.dtype.kind not in "fiu":
            return False
        offset = dataset.get_offset()  # HDF5's absolute offset of the data in the file holding the dataset
        if offset is None or h5py.h5o.get_info(dataset).fileno != self._fileno:
            return False
        layout = dataset.get_create_plist()
        if layout.get_layout() != h5py.h5d.CONTIGUOUS or layout.get_external_count():
            return False
        if not stored.equal(_memory_type(values.dtype)):
            return False
        return os.preadv(self._fd, [values], offset) == values.nbytes

    def _check_sources(self, dataset: h5py.h5d.DatasetID, video: str, depth: int = 0) -> None:
        """InputError unless the files that ``dataset``'s values come from can be used: each source of a
        virtual dataset is there (HDF5 gives fill values for a missing one), and with ``follow_outside_links``
        off, every file is in the archive's folder. A missing external raw file fails HDF5's read itself."""
        holder = os.fsdecode(h5py.h5f.get_name(dataset))  # the file holding the dataset, as HDF5 opened it
        self._check_inside(holder, "its dataset is in", video)
        layout = dataset.get_create_plist()
        for index in range(layout.get_external_count()):
            self._check_inside(_raw_file(os.fsdecode(layout.get_external(index)[0]), holder),
                               "it is stored in the external raw file", video)
        if layout.get_layout() != h5py.h5d.VIRTUAL:
            return
        if depth == MAX_VIRTUAL_DEPTH:
            raise InputError("unreadable_video", f"video {video!r}: its virtual dataset's sources are virtual "
                                                 f"datasets more than {MAX_VIRTUAL_DEPTH} deep")
        for index in range(layout.get_virtual_count()):
            name, dataset_name = layout.get_virtual_filename(index), layout.get_virtual_dsetname(index)
            source = holder if name == "." else _virtual_source_file(name, holder)
            if source is None:
                raise InputError("unreadable_video", f"video {video!r}: the source file {name!r} of its virtual "
                                                     "dataset is missing")
            self._check_inside(source, "its virtual dataset reads", video)
            with h5py.File(source, "r") as source_file:
                if not isinstance(source_file.get(dataset_name), h5py.Dataset):
                    raise InputError("unreadable_video", f"video {video!r}: the source {dataset_name!r} in {name!r} "
                                                         "of its virtual dataset is missing")
                self._check_sources(source_file[dataset_name].id, video, depth + 1)

    def _check_inside(self, path: str, how: str, video: str) -> None:
        if not self.follow_outside_links and not Path(os.path.realpath(path)).is_relative_to(self._folder):
            raise InputError("link_outside_archive", f"video {video!r}: {how} {path}, outside the folder of "
                                                     f"archive {self.path.name} (outside links are refused)")


@functools.cache
def _memory_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    """The HDF5 type that h5py reads ``dtype`` values into."""
    return h5py.h5t.py_create(dtype)


def _describe(link: h5py.SoftLink | h5py.ExternalLink | h5py.HardLink) -> str:
    if isinstance(link, h5py.ExternalLink):
        return f"external link to {link.path!r} in {link.filename!r}"
    if isinstance(link, h5py.SoftLink):
        return f"soft link to {link.path!r}"
    return "link"


def _raw_file(name: str, holder: str) -> str:
    """Where HDF5 reads the external raw file ``name`` of a dataset in file ``holder``: a relative name
    from the current folder, or from HDF5_EXTFILE_PREFIX where that is set (``${ORIGIN}``: holder's)."""
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX", "").replace("${ORIGIN}", os.path.dirname(holder))
    return os.path.join(prefix, name)


def _virtual_source_file(name: str, holder: str) -> str | None:
    """Where HDF5 finds the source file ``name`` of a virtual dataset in file ``holder``, None if nowhere.

    HDF5 tries an absolute name as it is, then the name (its last part, if absolute) in each folder of
    HDF5_VDS_PREFIX (``${ORIGIN}``: holder's folder), in holder's folder, and in the current folder.
    """
    if os.path.isabs(name) and os.path.isfile(name):
        return name
    relative = os.path.basename(name) if os.path.isabs(name) else name
    origin = os.path.dirname(holder)
    prefixes = [prefix.replace("${ORIGIN}", origin) for prefix in os.environ.get("HDF5_VDS_PREFIX", "").split(":")]
    for folder in (*filter(None, prefixes), origin, "."):
        if os.path.isfile(os.path.join(folder, relative)):
            return os.path.join(folder, relative)
    return None


def _duration_of(*holders: h5py.h5o.ObjectID) -> float | None:
    """The ``duration`` attribute of the first of ``holders`` that has one (the video's node, then its
    features dataset), converted to float64 by HDF5 rather than read in its stored type, which h5py would
    first have to work out (a duration that is not a number fails here, and its video is reported
    unreadable)."""
    for holder in holders:
        if h5py.h5a.exists(holder, b"duration"):
            attribute = h5py.h5a.open(holder, b"duration")
            value = np.empty(attribute.shape, np.float64)
            attribute.read(value, mtype=h5py.h5t.NATIVE_DOUBLE)
            return float(value)
    return None
