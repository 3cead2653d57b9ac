"""Poisoned videos: each way an archive can hold a video whose queries must become error records, never a
traceback, a hang, or predictions from values that are not there.

``write_poisoned(archive, {"p0": "fifo_link", "p1": "strings", ...})`` adds each video to the archive (made
if missing) and the files it links to beside it, and returns the error code that each video's queries get.
A ``duration_*`` video's features are fine: a query that carries its own duration is predicted, and only
one without is ``bad_duration``.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import h5py
import numpy as np

from cnm_runtime.options import DEFAULT_MAX_VIDEO_BYTES

Writer = Callable[[h5py.File, str, Path, int, int], None]  # (archive, video, folder, rows, dim)


def _values(rows: int, dim: int) -> np.ndarray:
    return np.random.default_rng(rows * 7919 + dim).standard_normal((rows, dim)).astype(np.float32)


def _low_level(out: h5py.File, video: str, stored: h5py.h5t.TypeID, values: np.ndarray, memory: h5py.h5t.TypeID,
               shape: tuple[int, int]) -> None:
    """A dataset of an HDF5 type that h5py does not write from numpy arrays, filled from ``values``."""
    dataset = h5py.h5d.create(out.id, video.encode(), stored, h5py.h5s.create_simple(shape))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(values), mtype=memory)


def _fifo(folder: Path, video: str) -> Path:
    path = folder / f"{video}.fifo"
    os.mkfifo(path)
    return path


def _with_duration(value: object) -> Writer:
    def write(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
        out.create_dataset(video, data=_values(rows, dim)).attrs["duration"] = value
    return write


def _too_large(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    """Every chunk written (the same compressed chunk of zeros), just over the default cap, ~1 MB on disk."""
    chunk_rows = max(1, (8 << 20) // (4 * dim))
    chunks = DEFAULT_MAX_VIDEO_BYTES // (chunk_rows * dim * 4) + 1
    dataset = out.create_dataset(video, shape=(chunk_rows * chunks, dim), dtype="f4", chunks=(chunk_rows, dim),
                                 compression="gzip")
    zeros = zlib.compress(bytes(chunk_rows * dim * 4), 9)
    for index in range(chunks):
        dataset.id.write_direct_chunk((index * chunk_rows, 0), zeros)


def _unwritten_chunks(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    """Declared at 1 GiB, one chunk of it written: a few KB on disk."""
    dataset = out.create_dataset(video, shape=((1 << 30) // (4 * dim), dim), dtype="f4", chunks=(64, dim),
                                 compression="gzip")
    dataset[:64] = 1.0


def _short_raw_file(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    raw = folder / f"{video}.bin"
    raw.write_bytes(_values(rows, dim).tobytes()[: rows * dim * 2])
    out.create_dataset(video, shape=(rows, dim), dtype="f4", external=[(str(raw), 0, rows * dim * 4)])


def _fifo_raw_file(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    out.create_dataset(video, shape=(rows, dim), dtype="f4",
                       external=[(str(_fifo(folder, video)), 0, rows * dim * 4)])


def _fifo_virtual_source(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    layout = h5py.VirtualLayout(shape=(rows, dim), dtype=np.float32)
    layout[:] = h5py.VirtualSource(_fifo(folder, video).name, "v", shape=(rows, dim))
    out.create_virtual_dataset(video, layout)


def _device_link(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    os.symlink("/dev/null", folder / f"{video}.dev")
    out[video] = h5py.ExternalLink(f"{video}.dev", "v")


def _complex_hdf5(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    """HDF5 2's own complex class (older HDF5: the compound h5py writes)."""
    values = _values(rows, dim).astype(np.complex64)
    if not hasattr(h5py.h5t, "COMPLEX_IEEE_F32LE"):
        out[video] = values
        return
    _low_level(out, video, h5py.h5t.COMPLEX_IEEE_F32LE, values, h5py.h5t.COMPLEX_IEEE_F32LE, (rows, dim))


def _object_references(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    target = out.require_dataset(f"{video}.target", shape=(1,), dtype="f4")
    out.create_dataset(video, data=np.full((rows, dim), target.ref, dtype=h5py.ref_dtype))


def _region_references(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
    target = out.require_dataset(f"{video}.target", shape=(4,), dtype="f4")
    out.create_dataset(video, data=np.full((rows, dim), target.regionref[:2], dtype=h5py.regionref_dtype))


def _vlen(base: np.dtype) -> Writer:
    def write(out: h5py.File, video: str, folder: Path, rows: int, dim: int) -> None:
        dataset = out.create_dataset(video, shape=(rows, dim), dtype=h5py.vlen_dtype(base))
        dataset[0, 0] = np.array([1.5, 2.5], base)
    return write


# kind -> (the code of its queries, how it is written)
POISONS: dict[str, tuple[str, Writer]] = {
    "fixed_strings": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.full((rows, dim), b"1.5"))),
    "variable_strings": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.full((rows, dim), "1.5", dtype=object), dtype=h5py.string_dtype())),
    "compound": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.zeros((rows, dim), [("a", "f4"), ("b", "f4")]))),
    "opaque": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.zeros((rows, dim), "V4"))),
    "datetime": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.zeros((rows, dim), "M8[s]").astype(h5py.opaque_dtype(np.dtype("M8[s]"))))),
    "object_references": ("bad_dtype", _object_references),
    "region_references": ("bad_dtype", _region_references),
    "enum": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.ones((rows, dim), "i1"), dtype=h5py.enum_dtype({"off": 0, "on": 1}, basetype="i1"))),
    "booleans": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=np.ones((rows, dim), bool))),
    "complex": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=_values(rows, dim).astype(np.complex64))),
    "complex_hdf5": ("bad_dtype", _complex_hdf5),
    "array_of_arrays": ("bad_dtype", lambda out, video, folder, rows, dim: _low_level(
        out, video, h5py.h5t.array_create(h5py.h5t.IEEE_F32LE, (2,)), np.zeros((rows, dim, 2), "f4"),
        h5py.h5t.array_create(h5py.h5t.NATIVE_FLOAT, (2,)), (rows, dim))),
    "vlen_floats": ("bad_dtype", _vlen(np.dtype("f4"))),
    "bitfield": ("bad_dtype", lambda out, video, folder, rows, dim: _low_level(
        out, video, h5py.h5t.STD_B8LE, np.ones((rows, dim), "u1"), h5py.h5t.NATIVE_B8, (rows, dim))),
    "long_double": ("bad_dtype", lambda out, video, folder, rows, dim: out.create_dataset(
        video, data=_values(rows, dim).astype(np.longdouble))),
    "too_large": ("video_too_large", _too_large),
    "unwritten_chunks": ("incomplete_video", _unwritten_chunks),
    "never_written": ("incomplete_video", lambda out, video, folder, rows, dim: out.create_dataset(
        video, shape=(rows, dim), dtype="f4")),
    "short_raw_file": ("incomplete_video", _short_raw_file),
    "fifo_link": ("unreadable_video", lambda out, video, folder, rows, dim: out.__setitem__(
        video, h5py.ExternalLink(_fifo(folder, video).name, "v"))),
    "fifo_raw_file": ("unreadable_video", _fifo_raw_file),
    "fifo_virtual_source": ("unreadable_video", _fifo_virtual_source),
    "device_link": ("unreadable_video", _device_link),
    "dangling_link": ("unreadable_video", lambda out, video, folder, rows, dim: out.__setitem__(
        video, h5py.ExternalLink(f"{video}.missing.h5", "v"))),
    "link_loop": ("unreadable_video", lambda out, video, folder, rows, dim: out.__setitem__(
        video, h5py.SoftLink(f"/{video}"))),
    "duration_inf": ("bad_duration", _with_duration(np.inf)),
    "duration_nan": ("bad_duration", _with_duration(np.nan)),
    "duration_zero": ("bad_duration", _with_duration(0.0)),
    "duration_negative": ("bad_duration", _with_duration(-30)),
    "duration_string": ("bad_duration", _with_duration("30")),
    "duration_array": ("bad_duration", _with_duration(np.array([30.0, 40.0]))),
}
KINDS = tuple(POISONS)


def write_poisoned(archive: Path, videos: Mapping[str, str], rows: int = 12, dim: int = 1024) -> dict[str, str]:
    """Add to ``archive`` the poisoned video of kind ``videos[name]`` (one of ``KINDS``) under each name,
    ``rows`` by ``dim`` where a kind has a shape of its own choosing; the files they link to are made beside
    the archive, named after the video. Returns each video's error code."""
    archive = Path(archive)
    with h5py.File(archive, "a") as out:
        for video, kind in videos.items():
            POISONS[kind][1](out, video, archive.parent, rows, dim)
    return {video: POISONS[kind][0] for video, kind in videos.items()}
