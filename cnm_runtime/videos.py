"""Read and resample videos in worker processes, each video once while it is in use.

h5py serialises every call behind one lock, so threads cannot read in parallel: each worker process
opens the archive itself after it starts (a handle must not cross a fork) and returns the video's clips
(``Clips``: its rows when it has at most one row per clip, else the resampled clips), which are small
whatever the length of the video. ``VideoReader.submit`` hands out one future
per video and keeps the most recent ``keep`` of them, so queries of the same video that come close
together (as the original annotation files order them) share one read.
"""
from __future__ import annotations

import multiprocessing
import signal
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.features import resample_rows, validate_features


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


# The worker process's own archive, opened by the pool's initializer.
_archive: FeatureArchive | None = None


def _open_archive(path: str) -> None:
    global _archive
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the main process ends workers
    _archive = FeatureArchive(path)


def _read_from(archive: FeatureArchive, video: str, frame_dim: int, num_clips: int) -> Clips | VideoError:
    try:
        return load_clips(archive, video, frame_dim, num_clips)
    except InputError as error:
        return VideoError(error.code, error.message)


def _read_in_worker(video: str, frame_dim: int, num_clips: int) -> Clips | VideoError:
    return _read_from(_archive, video, frame_dim, num_clips)


class VideoReader:
    """``submit(video)`` -> a future of ``Clips`` or ``VideoError``; use as a context manager.

    ``workers=0`` reads in the calling process, for tiny runs where starting processes costs more.
    """

    def __init__(self, archive: str | Path, frame_dim: int, num_clips: int, workers: int, keep: int):
        self.frame_dim, self.num_clips, self.keep = frame_dim, num_clips, keep
        self._recent: OrderedDict[str, Future] = OrderedDict()
        self._archive = FeatureArchive(archive)  # a missing archive fails here, once
        self._pool = None
        if workers > 0:
            self._archive.close()  # no handle of this process may reach the workers
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_open_archive, initargs=(str(archive),),
            )

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._recent.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
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
        if self._pool is not None:
            return self._pool.submit(_read_in_worker, video, self.frame_dim, self.num_clips)
        future = Future()
        future.set_result(_read_from(self._archive, video, self.frame_dim, self.num_clips))
        return future
