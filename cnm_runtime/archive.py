"""Read raw clip features from an HDF5 archive.

Two layouts exist in the wild: one dataset per video id at the top level (Charades I3D, ActivityNet
CLIP), or one group per video holding ``c3d_features`` (ActivityNet C3D). Each video is looked up
on its own, so both may even be mixed in one file. Open one archive per process: h5py serialises
all calls behind one lock, and a handle must not cross a fork.

Whatever way HDF5 reaches a video's dataset (hard, soft and external links, virtual datasets, external raw
files, chunks and filters), its values are HDF5's own, or the video is an InputError naming it. Everything
that decides whether a video can be used is known before its values are read, so a bad video costs no
more than a look at its metadata:

- ``bad_dtype``: its stored type is not integers or 16-, 32- or 64-bit floats (strings, compounds,
  complex numbers, booleans, enums, references, opaque values...).
- ``unreadable_video``: a link leads nowhere, a virtual dataset's source is missing (HDF5 would give fill
  values), a file it leads to is a FIFO, a device or a socket (opening one can block for ever), or HDF5
  cannot read it.
- ``link_outside_archive``: with ``ArchiveOptions.follow_outside_links`` off (cnm_runtime.options), its
  values would come from a file outside the archive's folder.
- ``incomplete_video``: chunks of it were never written, its storage was never allocated, or an external
  raw file is shorter than its values (HDF5 would give fill values or zeros for the rest).
- ``video_too_large``: its stored values are larger than ``ArchiveOptions.max_video_bytes``.

Every file a link leads to is found as HDF5 would find it and checked before anything opens it: this
module opens external links' files itself, and for the files HDF5 opens while reading (virtual sources,
external raw files) it checks every place HDF5 would try.

A ``duration`` attribute that is not one finite positive number does not fail the video: its queries may
carry their own duration. ``StoredVideo.duration_error`` says what is wrong with it.
"""
from __future__ import annotations

import functools
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cnm_runtime.errors import InputError
from cnm_runtime.features import is_duration
from cnm_runtime.options import ArchiveOptions

C3D_DATASET = "c3d_features"
MAX_VIRTUAL_DEPTH = 8  # virtual datasets whose sources are virtual datasets, and so on: more is refused
MAX_LINK_DEPTH = 16  # soft and external links followed to reach one object, HDF5's own default limit


@dataclass(frozen=True)
class StoredVideo:
    """A video as the archive stores it."""

    features: np.ndarray  # [rows, dim] in the stored type (integers or floats); validate before use
    duration: float | None  # seconds: the ``duration`` attribute, None where there is none or it is unusable
    duration_error: str | None  # why the ``duration`` attribute is unusable (naming the video), else None


@dataclass(frozen=True)
class _Found:
    """An object that a path leads to, and the file holding it, by the absolute name it was opened by."""

    node: h5py.h5o.ObjectID
    holder: str


@dataclass(frozen=True)
class _Checked:
    """What the checks of a dataset learnt, and reading it needs."""

    stored: h5py.h5t.TypeID
    layout: h5py.h5p.PropDCID
    shape: tuple[int, ...]


class FeatureArchive:
    """A read-only HDF5 feature archive; use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path, options: ArchiveOptions = ArchiveOptions()):
        self.path = Path(path)
        self.options = options
        self._name = os.path.abspath(self.path)  # HDF5 finds linked files beside the name a file is opened by
        self._folder = Path(os.path.realpath(os.path.dirname(self._name)))
        try:
            mode = os.stat(self._name).st_mode
        except OSError as error:
            raise FileNotFoundError(f"cannot open feature archive {self.path}: {error}") from error
        if not stat.S_ISREG(mode):  # opening a FIFO blocks until someone writes to it
            raise FileNotFoundError(f"cannot open feature archive {self.path}: it is not a regular file")
        try:
            self._file = h5py.File(self._name, "r")
        except OSError as error:
            raise FileNotFoundError(f"cannot open feature archive {self.path}: {error}") from error
        try:  # the descriptor of this file, for reading its own contiguous datasets straight
            self._root = h5py.h5g.open(self._file.id, b"/")
            self._fd = self._file.id.get_vfd_handle() if self._file.driver == "sec2" else None
        except Exception as error:  # a damaged file can open and still fail here, with any of h5py's errors
            self._file.close()
            raise FileNotFoundError(f"cannot open feature archive {self.path}: {error}") from error

    def __enter__(self) -> "FeatureArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._root = None
        self._file.close()

    def __contains__(self, video: str) -> bool:
        """Whether the archive has an entry ``video``, usable or not (``load`` says which)."""
        try:
            with self._reading(video):
                self._lookup(video)
        except InputError as error:
            return error.code != "unknown_video"
        return True

    def videos(self) -> list[str]:
        return list(self._file.keys())

    @property
    def attrs(self) -> dict:
        return dict(self._file.attrs)

    def read(self, video: str) -> np.ndarray:
        """The raw ``[L, D]`` features of ``video`` (as stored; validate before use)."""
        return self.load(video).features

    def duration(self, video: str) -> float | None:
        """The ``duration`` attribute (seconds) of the video's group or dataset, if any; ``bad_duration``
        where it is not one finite positive number."""
        try:
            with self._reading(video):
                features, node = self._lookup(video)
                duration, error = _duration_of(video, node, features.node)
        except InputError as lookup_error:
            if lookup_error.code == "unknown_video":
                return None
            raise
        if error is not None:
            raise InputError("bad_duration", error)
        return duration

    def load(self, video: str) -> StoredVideo:
        """The video's features and duration, each checked before anything is read: what readers call."""
        with self._reading(video):
            features, node = self._lookup(video)
            values = self._read_all(features, self._check(features, video))
            return StoredVideo(values, *_duration_of(video, node, features.node))

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

    # --- finding a video -------------------------------------------------------------------------------

    def _lookup(self, video: str) -> tuple[_Found, h5py.h5o.ObjectID]:
        """``(features dataset, the video's own node)``: the dataset, or the group holding ``c3d_features``."""
        if "\x00" in video:  # HDF5 would look up the name up to the NUL: another video
            raise InputError("unknown_video", f"video {video!r}: a name with a NUL character is in no archive")
        path = video.encode()
        named = any(part not in (b"", b".") for part in path.split(b"/"))  # else the path is the root group
        found = self._follow(_Found(self._root, self._name), path, video, 0) if named else None
        if found is None:
            raise InputError("unknown_video", f"video {video!r} is not in archive {self.path.name}")
        if isinstance(found.node, h5py.h5d.DatasetID):
            return found, found.node
        features = self._follow(found, C3D_DATASET.encode(), video, 0) \
            if isinstance(found.node, h5py.h5g.GroupID) else None
        if features is None or not isinstance(features.node, h5py.h5d.DatasetID):
            raise InputError("unknown_video", f"video {video!r} in {self.path.name} is neither a dataset nor a "
                                              f"group holding a {C3D_DATASET!r} dataset")
        return features, found.node

    def _follow(self, start: _Found, path: bytes, video: str, depth: int) -> _Found | None:
        """What ``path`` leads to from group ``start``, following links as HDF5 does; None where a name on the
        way is missing. An external link's file is found and checked here, and only then opened."""
        found = _Found(h5py.h5g.open(start.node, b"/"), start.holder) if path.startswith(b"/") else start
        for name in path.split(b"/"):
            if name in (b"", b"."):  # HDF5 skips empty and "." components too
                continue
            if not isinstance(found.node, h5py.h5g.GroupID) or not found.node.links.exists(name):
                return None
            found = self._step(found, name, found.node.links.get_info(name).type, video, depth)
        return found

    def _step(self, group: _Found, name: bytes, kind: int, video: str, depth: int) -> _Found:
        """Where the link ``name`` of ``kind`` in ``group`` leads."""
        links = group.node.links
        if kind == h5py.h5l.TYPE_HARD:  # stays in this file: HDF5 may open it
            try:
                return _Found(h5py.h5d.open(group.node, name), group.holder)  # the usual case, quicker
            except Exception:  # a group, or a named datatype
                return _Found(h5py.h5o.open(group.node, name), group.holder)
        if depth == MAX_LINK_DEPTH:
            raise InputError("unreadable_video", f"video {video!r}: reaching it takes more than {MAX_LINK_DEPTH} "
                                                 "soft or external links (a loop?)")
        if kind == h5py.h5l.TYPE_SOFT:
            target = links.get_val(name)
            link = f"soft link to {os.fsdecode(target)!r}"
            reached = self._follow(group, target, video, depth + 1)
        elif kind == h5py.h5l.TYPE_EXTERNAL:
            file_name, target = (os.fsdecode(part) for part in links.get_val(name))
            link = f"external link to {target!r} in {file_name!r}"
            holder = self._find_file(file_name, group.holder, False, f"its {link}", video)
            if holder is None:
                raise InputError("unreadable_video", f"video {video!r}: its {link} leads to no HDF5 file")
            self._check_inside(holder, f"its {link} leads to", video)
            reached = self._follow(_open_root(holder), os.fsencode(target), video, depth + 1)
        else:
            raise InputError("unreadable_video", f"video {video!r}: a user-defined link on its way cannot be followed")
        if reached is None:
            raise InputError("unreadable_video", f"video {video!r}: its {link} in archive {self.path.name} "
                                                 "leads to nothing that can be opened")
        return reached

    def _find_file(self, name: str, holder: str, virtual: bool, how: str, video: str) -> str | None:
        """The file HDF5 opens for ``name``, a file named in file ``holder`` by an external link or a virtual
        dataset; None where there is none. HDF5 tries each of ``_hdf5_candidates`` in turn until one opens as
        HDF5: each that exists is checked before that, since opening a FIFO blocks and a device may never end."""
        for candidate in _hdf5_candidates(name, holder, virtual):
            try:
                mode = os.stat(candidate).st_mode
            except OSError:  # missing or out of reach: HDF5 fails to open it too, and tries the next
                continue
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InputError("unreadable_video", f"video {video!r}: {how} leads to {candidate}, which is not a "
                                                     "regular file (a FIFO, device or socket is never opened)")
            if _is_hdf5(candidate):
                return candidate
        return None

    def _check_inside(self, path: str, how: str, video: str) -> None:
        if not self.options.follow_outside_links and not Path(os.path.realpath(path)).is_relative_to(self._folder):
            raise InputError("link_outside_archive", f"video {video!r}: {how} {path}, outside the folder of "
                                                     f"archive {self.path.name} (outside links are refused)")

    # --- checking a dataset before reading it ----------------------------------------------------------

    def _check(self, features: _Found, video: str) -> _Checked:
        """A features dataset whose values can be read as they are: every check that needs no values, the
        size cap last (a dataset with chunks missing is reported as incomplete, not as too large to read)."""
        checked = self._check_dataset(features, video, 0)
        size = math.prod(checked.shape) * checked.stored.get_size()
        if size > self.options.max_video_bytes:
            raise InputError("video_too_large", f"video {video!r}: its features take {size} bytes, more than the "
                                                f"{self.options.max_video_bytes} one video may take "
                                                f"(shape {checked.shape}, {_type_name(checked.stored)})")
        return checked

    def _check_dataset(self, dataset: _Found, video: str, depth: int) -> _Checked:
        """A dataset (the video's, or a source of its virtual dataset) whose values are numbers, whose files
        are usable, and whose values were all written."""
        stored = dataset.node.get_type()
        if not _is_number_type(stored):
            raise InputError("bad_dtype", f"video {video!r}: its features are stored as {_type_name(stored)}, "
                                          "not as integers or 16-, 32- or 64-bit floats")
        layout = dataset.node.get_create_plist()
        if layout.get_layout() == h5py.h5d.VIRTUAL:  # first: an unlimited one opens its sources to know its shape
            self._check_virtual_sources(dataset, layout, video, depth)
        shape = dataset.node.shape
        if shape is None:
            raise InputError("not_2d", f"video {video!r}: its features dataset is empty (a null dataspace)")
        elements = math.prod(shape)
        if layout.get_external_count():
            self._check_raw_files(dataset.holder, layout, elements * stored.get_size(), video)
        elif layout.get_layout() == h5py.h5d.CHUNKED and elements:
            chunk = layout.get_chunk()
            needed = math.prod(-(-extent // side) for extent, side in zip(shape, chunk))
            written = dataset.node.get_num_chunks()
            if written < needed:
                raise InputError("incomplete_video", f"video {video!r}: only {written} of the {needed} chunks of its "
                                                     "features were ever written (the rest would read as fill values)")
        elif layout.get_layout() == h5py.h5d.CONTIGUOUS and elements and not dataset.node.get_storage_size():
            raise InputError("incomplete_video", f"video {video!r}: its features were never written (no storage "
                                                 "is allocated; they would read as fill values)")
        return _Checked(stored, layout, shape)

    def _check_raw_files(self, holder: str, layout: h5py.h5p.PropDCID, size: int, video: str) -> None:
        """Each external raw file that holds part of the ``size`` bytes of a dataset in file ``holder`` is a
        regular file (inside the folder where that is asked) that holds all of its part (HDF5 would read
        zeros past its end)."""
        left = size
        for index in range(layout.get_external_count()):
            name, offset, capacity = layout.get_external(index)
            path, part = _raw_file(os.fsdecode(name), holder), min(left, capacity)
            left -= part
            try:
                status = os.stat(path)
            except OSError as error:
                if part:
                    raise InputError("unreadable_video", f"video {video!r}: its external raw file {path} cannot be "
                                                         f"used ({error.strerror})") from error
                continue
            if not stat.S_ISREG(status.st_mode):
                raise InputError("unreadable_video", f"video {video!r}: its external raw file {path} is not a "
                                                     "regular file (a FIFO, device or socket is never opened)")
            self._check_inside(path, "it is stored in the external raw file", video)
            if status.st_size < offset + part:
                raise InputError("incomplete_video", f"video {video!r}: its external raw file {path} holds "
                                                     f"{max(0, status.st_size - offset)} of the {part} bytes it "
                                                     f"should hold from byte {offset}")

    def _check_virtual_sources(self, dataset: _Found, layout: h5py.h5p.PropDCID, video: str, depth: int) -> None:
        """Each source of a virtual dataset is found where HDF5 looks for it and passes ``_check_dataset``."""
        if depth == MAX_VIRTUAL_DEPTH:
            raise InputError("unreadable_video", f"video {video!r}: its virtual dataset's sources are virtual "
                                                 f"datasets more than {MAX_VIRTUAL_DEPTH} deep")
        for index in range(layout.get_virtual_count()):
            name = os.fsdecode(layout.get_virtual_filename(index))
            source_name = os.fsencode(layout.get_virtual_dsetname(index))
            if "%" in name or b"%" in source_name:  # HDF5 would expand printf-like patterns: a file per block
                raise InputError("unreadable_video", f"video {video!r}: the source {name!r} of its virtual "
                                                     "dataset names files by a pattern, which is not supported")
            if name == ".":
                root = _Found(h5py.h5g.open(dataset.node, b"/"), dataset.holder)
            else:
                holder = self._find_file(name, dataset.holder, True,
                                         f"the source file {name!r} of its virtual dataset", video)
                if holder is None:
                    raise InputError("unreadable_video", f"video {video!r}: the source file {name!r} of its virtual "
                                                         "dataset is missing")
                self._check_inside(holder, "its virtual dataset reads", video)
                root = _open_root(holder)
            source = self._follow(root, source_name, video, 0)
            if source is None or not isinstance(source.node, h5py.h5d.DatasetID):
                raise InputError("unreadable_video", f"video {video!r}: the source {os.fsdecode(source_name)!r} in "
                                                     f"{name!r} of its virtual dataset is missing")
            self._check_dataset(source, video, depth + 1)

    # --- reading ---------------------------------------------------------------------------------------

    def _read_all(self, dataset: _Found, checked: _Checked) -> np.ndarray:
        """The whole dataset as a new array (``dataset[()]`` without the high-level machinery)."""
        values = np.empty(checked.shape, checked.stored.dtype)
        if not self._read_own_bytes(dataset, checked, values):
            dataset.node.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
        return values

    def _read_own_bytes(self, dataset: _Found, checked: _Checked, values: np.ndarray) -> bool:
        """Fill ``values`` from the dataset's bytes in this file where they provably are its values; False
        where HDF5 must read it.

        A contiguous dataset of numbers, the usual way archives are written, is read straight, without
        HDF5's type conversion machinery. That needs the dataset to live in this file
        (not behind an external link: ``get_offset`` is then an offset in the other file), its storage to be
        one contiguous piece here (not chunked, hence unfiltered, nor virtual, nor in external raw files),
        and its stored type to be the very type of ``values`` (byte order included).
        """
        if self._fd is None or not values.nbytes or dataset.holder != self._name:
            return False
        if checked.layout.get_layout() != h5py.h5d.CONTIGUOUS or checked.layout.get_external_count():
            return False
        offset = dataset.node.get_offset()  # HDF5's absolute offset of the data in the file holding the dataset
        if offset is None or not checked.stored.equal(_memory_type(values.dtype)):
            return False
        return os.preadv(self._fd, [values], offset) == values.nbytes


def _open_root(path: str) -> _Found:
    """The root group of the HDF5 file ``path``, opened read-only; the file closes with its last object."""
    return _Found(h5py.h5g.open(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY), b"/"), path)


@functools.cache
def _memory_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    """The HDF5 type that h5py reads ``dtype`` values into."""
    return h5py.h5t.py_create(dtype)


def _is_number_type(stored: h5py.h5t.TypeID) -> bool:
    """Integers of 1 to 8 bytes and floats of 2, 4 or 8: the types h5py reads as numpy's real numbers."""
    kind, size = stored.get_class(), stored.get_size()
    return (kind == h5py.h5t.INTEGER and size in (1, 2, 4, 8)) or (kind == h5py.h5t.FLOAT and size in (2, 4, 8))


_CLASS_NAMES = {
    h5py.h5t.INTEGER: "integers", h5py.h5t.FLOAT: "floats", h5py.h5t.TIME: "time values",
    h5py.h5t.STRING: "strings", h5py.h5t.BITFIELD: "bitfields", h5py.h5t.OPAQUE: "opaque values",
    h5py.h5t.COMPOUND: "a compound type", h5py.h5t.REFERENCE: "references", h5py.h5t.ENUM: "an enum",
    h5py.h5t.VLEN: "variable-length sequences", h5py.h5t.ARRAY: "arrays",
}
if hasattr(h5py.h5t, "COMPLEX"):  # HDF5 2's own complex numbers
    _CLASS_NAMES[h5py.h5t.COMPLEX] = "complex numbers"


def _type_name(stored: h5py.h5t.TypeID) -> str:
    """The stored type in words, with the numpy type h5py would read it as where there is one."""
    kind = stored.get_class()
    name = _CLASS_NAMES.get(kind, f"HDF5 type class {kind}")
    if kind == h5py.h5t.STRING:
        name = ("variable-length " if stored.is_variable_str() else "fixed-length ") + name
    elif kind == h5py.h5t.REFERENCE:
        name = "object references" if stored.equal(h5py.h5t.STD_REF_OBJ) else "region references"
    elif kind in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
        name = f"{8 * stored.get_size()}-bit {name}"
    try:
        dtype = stored.dtype
    except Exception:  # a type h5py has no numpy type for
        return name
    if dtype.kind == "c" and kind == h5py.h5t.COMPOUND:
        return f"complex numbers ({name}, read as {dtype})"
    if dtype.kind == "b":
        return f"booleans ({name}, read as {dtype})"
    return f"{name} (read as {dtype})"


def _hdf5_candidates(name: str, holder: str, virtual: bool) -> Iterator[str]:
    """Where HDF5 looks for the file ``name`` that file ``holder`` links to (by an external link, or as the
    source of a ``virtual`` dataset), in the order it tries them.

    An absolute name first as it is; then the name (its last part, if absolute) under each folder of
    HDF5_EXT_PREFIX or HDF5_VDS_PREFIX (folders separated by ':'); for a virtual source, the whole of
    HDF5_VDS_PREFIX once more with a leading ``${ORIGIN}`` read as holder's folder; then holder's folder,
    the current folder, and, where holder is a symbolic link, the folder of the file it leads to.
    """
    relative = name
    if os.path.isabs(name):
        yield name
        relative = os.path.basename(name)
    origin = os.path.dirname(holder)
    prefixes = os.environ.get("HDF5_VDS_PREFIX" if virtual else "HDF5_EXT_PREFIX", "")
    for prefix in prefixes.split(":"):
        if prefix:
            yield os.path.join(prefix, relative)
    if virtual and prefixes not in ("", "."):
        yield os.path.join(_origin_prefix(prefixes, origin), relative)
    yield os.path.join(origin, relative)
    yield relative
    if os.path.islink(holder):
        yield os.path.join(os.path.dirname(os.path.realpath(holder)), relative)


def _origin_prefix(prefix: str, origin: str) -> str:
    """``prefix`` with a leading ``${ORIGIN}`` replaced by the folder ``origin``, as HDF5 reads it."""
    return origin + prefix[len("${ORIGIN}"):] if prefix.startswith("${ORIGIN}") else prefix


def _is_hdf5(path: str) -> bool:
    try:
        return bool(h5py.h5f.is_hdf5(os.fsencode(path)))
    except Exception:  # unreadable: HDF5 cannot open it either
        return False


def _raw_file(name: str, holder: str) -> str:
    """Where HDF5 reads the external raw file ``name`` of a dataset in file ``holder``: a relative name
    from the current folder, or from HDF5_EXTFILE_PREFIX where that is set (a leading ``${ORIGIN}``:
    holder's folder)."""
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX", "")
    return os.path.join(_origin_prefix(prefix, os.path.dirname(holder)), name) if prefix not in ("", ".") else name


def _duration_of(video: str, *holders: h5py.h5o.ObjectID) -> tuple[float | None, str | None]:
    """``(duration, None)`` from the ``duration`` attribute of the first of ``holders`` that has one (the
    video's node, then its features dataset), ``(None, None)`` where none has one, and ``(None, why)``
    where it is not one finite positive number of seconds."""
    try:
        for holder in holders:
            if h5py.h5a.exists(holder, b"duration"):
                attribute = h5py.h5a.open(holder, b"duration")
                break
        else:
            return None, None
        stored, shape = attribute.get_type(), attribute.shape
        if not _is_number_type(stored):
            problem = f"is stored as {_type_name(stored)}"
        elif shape != ():
            problem = "has no value" if shape is None else f"is an array of shape {shape}"
        else:
            value = np.empty((), np.float64)  # HDF5 converts any integer or float type to float64
            attribute.read(value, mtype=h5py.h5t.NATIVE_DOUBLE)
            if is_duration(float(value)):
                return float(value), None
            problem = f"is {float(value)}"
    except Exception as error:  # a damaged attribute: the video's features may still be fine
        problem = f"cannot be read ({type(error).__name__}: {error})"
    return None, f"video {video!r}: its duration attribute {problem}, not a finite positive number of seconds"
