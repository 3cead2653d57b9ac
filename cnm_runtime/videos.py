"""Read and resample videos, in this process or in reader processes, each video once while it is in use.

h5py serialises every call behind one lock, so threads cannot read in parallel: each reader process
opens the archive itself after it starts (a handle must not cross a fork) and writes the video's clips
(``Clips``: its rows when it has at most one row per clip, else the resampled clips, at most
``[num_clips, frame_dim]`` whatever the length of the video) into a slot of shared memory
(``ClipSlots``). ``VideoReader.submit`` hands out one future per video and keeps the most recent
``keep`` of them, so queries of the same video that come close together (as the original annotation
files order them) share one read.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.features import resample_rows, validate_features

SLOTS_PER_WORKER = 4  # enough to keep every reader busy while the batching thread takes clips out


@dataclass(frozen=True)
class Clips:
    """A video's clips as ``source[rows]`` (see ``resample_rows``): gathered where they are needed."""

    source: np.ndarray  # [n, frame_dim] float32: the video's rows, or its resampled clips
    rows: np.ndarray  # [num_clips]: the row of source that each clip is
    duration: float | None  # seconds, from the archive's ``duration`` attribute

    @property
    def frames(self) -> np.ndarray:
        """``[num_clips, frame_dim]`` float32, what the model reads."""
        return self.source[self.rows]

    def gather_into(self, out: np.ndarray) -> None:
        """Write ``frames`` into ``out`` without building them first."""
        # rows are always in range; numpy buffers ``out`` in its default mode "raise" (half the speed)
        np.take(self.source, self.rows, axis=0, out=out, mode="clip")


@dataclass(frozen=True)
class VideoError:
    """An InputError as a plain value: it crosses the process boundary and never raises there."""

    code: str
    message: str


def load_clips(archive: FeatureArchive, video: str, frame_dim: int, num_clips: int) -> Clips:
    """Validated, resampled features of ``video``; InputError names the video otherwise."""
    try:
        raw, duration = archive.load(video)
    except InputError:
        raise
    except Exception as error:  # a damaged dataset must not end the run
        raise InputError("unreadable_video",
                         f"video {video!r}: cannot read it ({type(error).__name__}: {error})") from error
    source, rows = resample_rows(validate_features(raw, frame_dim, video), num_clips)
    return Clips(source, rows, duration)


class ClipSlots:
    """Slots of ``[num_clips, frame_dim]`` float32 in one file in shared memory, where reader processes
    write a video's clips, so that a video crosses to this process as a slot number and a few numbers.

    Sent back through the pool's pipe instead, every video's clips are pickled, copied in pieces and
    unpickled by this process (one reader on 2 cores: 1,328 queries/s end to end that way, 1,800 through
    slots). ``acquire`` blocks while every slot is in flight; a slot is released once its clips are copied
    out. ``close`` removes the file; a run killed outright leaves it behind (``cnm-clips-<pid>-*``, 3.2 MB a
    worker for 1024-d clips).
    """

    def __init__(self, count: int, num_clips: int, frame_dim: int):
        folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # else the temporary folder
        handle, self.path = tempfile.mkstemp(prefix=f"cnm-clips-{os.getpid()}-", dir=folder)
        os.ftruncate(handle, count * num_clips * frame_dim * 4)
        os.close(handle)
        self.shape = (count, num_clips, frame_dim)
        self.array = np.memmap(self.path, np.float32, "r+", shape=self.shape)
        self._free = list(range(count))
        self._changed = threading.Condition()

    def acquire(self) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self._free)
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._changed:
            self._free.append(slot)
            self._changed.notify()

    def close(self) -> None:
        del self.array
        os.unlink(self.path)


@dataclass(frozen=True)
class _InSlot:
    """What a reader process returns for clips it wrote into a slot."""

    source_rows: int
    rows: np.ndarray
    duration: float | None


# The worker process's own archive and view of the slots, opened by the pool's initializer.
_archive: FeatureArchive | None = None
_slots: np.ndarray | None = None


def _open_reader(path: str, slots_path: str, slots_shape: tuple[int, int, int]) -> None:
    global _archive, _slots
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the main process ends workers
    _archive = FeatureArchive(path)
    _slots = np.memmap(slots_path, np.float32, "r+", shape=slots_shape)


def _read_from(archive: FeatureArchive, video: str, frame_dim: int, num_clips: int) -> Clips | VideoError:
    try:
        return load_clips(archive, video, frame_dim, num_clips)
    except InputError as error:
        return VideoError(error.code, error.message)


def _read_in_worker(video: str, frame_dim: int, num_clips: int, slot: int) -> _InSlot | VideoError:
    clips = _read_from(_archive, video, frame_dim, num_clips)
    if isinstance(clips, VideoError):
        return clips
    _slots[slot, : len(clips.source)] = clips.source
    return _InSlot(len(clips.source), clips.rows, clips.duration)


class VideoReader:
    """``submit(video)`` -> a future of ``Clips`` or ``VideoError``; use as a context manager.

    ``workers=0`` reads in the calling process; ``workers > 0`` reader processes read in parallel and
    hand their clips over through ``ClipSlots`` (four slots a worker).
    """

    def __init__(self, archive: str | Path, frame_dim: int, num_clips: int, workers: int, keep: int):
        self.frame_dim, self.num_clips, self.keep = frame_dim, num_clips, keep
        self._recent: OrderedDict[str, Future] = OrderedDict()
        self._archive = FeatureArchive(archive)  # a missing archive fails here, once
        self._pool = self._slots = None
        if workers > 0:
            self._archive.close()  # no handle of this process may reach the workers
            self._slots = ClipSlots(SLOTS_PER_WORKER * workers, num_clips, frame_dim)
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_open_reader, initargs=(str(archive), self._slots.path, self._slots.shape),
            )

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._recent.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._slots.close()
        else:
            self._archive.close()

    def submit(self, video: str) -> Future:
        future = self._recent.pop(video, None)
        if future is None:
            future = self._start(video)
        self._recent[video] = future
        if len(self._recent) > self.keep:
            self._recent.popitem(last=False)
        return future

    def _start(self, video: str) -> Future:
        future = Future()
        if self._pool is None:
            future.set_result(_read_from(self._archive, video, self.frame_dim, self.num_clips))
            return future
        slot = self._slots.acquire()
        read = self._pool.submit(_read_in_worker, video, self.frame_dim, self.num_clips, slot)
        read.add_done_callback(lambda done: self._copy_out(done, slot, future))
        return future

    def _copy_out(self, read: Future, slot: int, future: Future) -> None:
        """Runs when a worker is done with ``slot``: its clips become this process's own, the slot free."""
        try:
            result = read.result()  # raises BrokenProcessPool if the worker died
            if isinstance(result, _InSlot):
                source = np.array(self._slots.array[slot, : result.source_rows])
                result = Clips(source, result.rows, result.duration)
            future.set_result(result)
        except BaseException as error:
            future.set_exception(error)
        finally:
            self._slots.release(slot)
