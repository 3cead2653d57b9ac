"""Chunks of queries -> batches the model can run: all the work between the queries file and the model.

A chunk is ``batch_size`` consecutive entries of the queries. Preparing it (``BatchMaker.prepare``) parses
and checks each entry, encodes its sentence, reads and resamples its video (a recent video once) and
gathers the clips into one ``Batch``; every entry ends as a row of the batch (``PreparedQuery``), a
``QueryError``, or as ``Done`` (its qid is in an earlier run's output).

``Feed`` prepares chunks in a thread of this process, or in feed processes that each open the archive
themselves (h5py serialises every call behind one lock, so only processes read in parallel) and write
the batch's frames into a slot of shared memory (``FrameSlots``): the process that runs the model gets
a slot number and the small arrays. A chunk's result does not depend on who prepared it, so the
predictions are the same for any number of feed processes. Feed processes are started with ``spawn``:
a script that grounds with ``processes > 0`` needs the usual ``if __name__ == "__main__":`` guard, and
each feed process imports that script again, so heavy imports at its top (torch) slow every feed process
(``python -m benchmarks.feed_only`` runs the feed in a light process for that reason).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence, Union

import numpy as np

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.batch import Batch, build_batch
from cnm_runtime.errors import InputError
from cnm_runtime.features import Clips
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.queries import QidKey, Query, QueryError, QueryLine, parse, qid_key
from cnm_runtime.text import EncodedQuery
from cnm_runtime.videos import RecentVideos


@dataclass(frozen=True)
class PreparedQuery:
    """A query that is row ``row`` of its chunk's batch."""

    query: Query
    encoded: EncodedQuery
    duration: float | None  # seconds: from the query, else from the archive
    row: int

    @property
    def qid(self) -> str | int:
        return self.query.qid

    @property
    def line(self) -> int:
        return self.query.line


@dataclass(frozen=True)
class Done:
    """An entry whose qid an earlier run has predicted already (``--resume``)."""

    qid: str | int
    line: int


Outcome = Union[PreparedQuery, QueryError, Done]
Entry = Union[QueryLine, Query, QueryError]


@dataclass(frozen=True)
class Prepared:
    """A chunk made ready: one outcome per entry, in order, and the batch of its prepared queries."""

    outcomes: list[Outcome]
    batch: Batch | None  # None when no entry of the chunk is left to run
    slot: int  # the frames slot the batch lies in; free it (``Feed.release``) once the model has run


class BatchMaker:
    """Prepares chunks against one archive handle; each process that prepares chunks makes its own."""

    def __init__(self, archive: str | Path, spec: ModelSpec, keep_videos: int, done: Collection[QidKey] = (),
                 follow_outside_links: bool = True):
        self.spec = spec
        self.vocabulary = spec.vocabulary()
        self.archive = FeatureArchive(archive, follow_outside_links)
        self.videos = RecentVideos(self.archive, spec.frame_dim, spec.max_num_frames, keep_videos)
        self.done = done  # qid keys (``qid_key``) of the queries to leave out

    def close(self) -> None:
        self.archive.close()

    def prepare(self, entries: Sequence[Entry], frames: np.ndarray | None = None) -> tuple[list[Outcome], Batch | None]:
        """Every entry's outcome, and the batch of those that are ready to run, gathered into ``frames``."""
        outcomes: list[Outcome] = []
        ready: list[tuple[str, Clips, EncodedQuery]] = []
        for entry in entries:
            outcome = self._outcome(parse(entry) if isinstance(entry, QueryLine) else entry, len(ready))
            if isinstance(outcome, PreparedQuery):
                ready.append((outcome.query.video, self.videos.get(outcome.query.video), outcome.encoded))
            outcomes.append(outcome)
        return outcomes, build_batch(ready, self.spec.word_slots, frames) if ready else None

    def _outcome(self, query: Query | QueryError, row: int) -> Outcome:
        if isinstance(query, QueryError):
            return query
        if qid_key(query.qid) in self.done:
            return Done(query.qid, query.line)
        where = f"line {query.line}"
        try:
            encoded = self.vocabulary.encode(query.sentence, self.spec.max_num_words, name=where)
        except InputError as error:
            return QueryError(query.qid, query.line, error.code, error.message)
        clips = self.videos.get(query.video)
        if isinstance(clips, InputError):
            return QueryError(query.qid, query.line, clips.code, f"{where}: {clips.message}")
        duration = query.duration if query.duration is not None else clips.duration
        if duration is not None and not duration > 0:
            return QueryError(query.qid, query.line, "bad_duration",
                              f"{where}: video {query.video!r} has duration {duration} in the archive")
        return PreparedQuery(query, encoded, duration, row)


class FrameSlots:
    """``count`` reused ``[batch_size, num_clips, frame_dim]`` arrays that batches' frames are gathered into.

    A fresh array per batch (tens of MB) costs more in page faults than gathering the clips into it. With
    ``shared`` the slots lie in one file in shared memory, mapped by this process and by the feed
    processes, so a batch crosses between them as a slot number; a run killed outright leaves the file
    behind (``cnm-frames-<pid>-*`` in /dev/shm).
    """

    def __init__(self, count: int, shape: tuple[int, int, int], dtype: np.dtype, shared: bool):
        self.shape, self.dtype, self.path = (count, *shape), np.dtype(dtype), None
        if shared:
            folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # else the temporary folder
            handle, self.path = tempfile.mkstemp(prefix=f"cnm-frames-{os.getpid()}-", dir=folder)
            os.ftruncate(handle, int(np.prod(self.shape)) * self.dtype.itemsize)
            os.close(handle)
            self.array = np.memmap(self.path, self.dtype, "r+", shape=self.shape)
        else:
            self.array = np.empty(self.shape, self.dtype)
        self._free = list(range(count))

    def acquire(self) -> int:
        if not self._free:
            raise RuntimeError("every frames slot is in use: more batches in flight than slots")
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        del self.array
        if self.path is not None:
            os.unlink(self.path)


# A feed process's own batch maker and view of the slots, made by the pool's initializer.
_maker: BatchMaker | None = None
_slots: np.ndarray | None = None


def _start_feed_process(archive: str, spec: ModelSpec, keep_videos: int, done: frozenset[QidKey],
                        follow_outside_links: bool, slots_path: str, slots_shape: tuple[int, ...], dtype: str) -> None:
    global _maker, _slots
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the main process ends us
    _maker = BatchMaker(archive, spec, keep_videos, done, follow_outside_links)
    _slots = np.memmap(slots_path, np.dtype(dtype), "r+", shape=slots_shape)


def _prepare_in_feed_process(entries: list[Entry], slot: int) -> tuple[list[Outcome], tuple | None]:
    """What crosses back: the outcomes and the batch without its frames, which lie in ``slot``."""
    outcomes, batch = _maker.prepare(entries, _slots[slot])
    small = None if batch is None else (len(batch.frames), batch.video_index, batch.word_ids, batch.words_len)
    return outcomes, small


class Feed:
    """``submit(entries) -> Future[Prepared]``: chunks prepared in a thread (``processes=0``) or in
    ``processes`` feed processes, at most ``ahead`` of them at a time; use as a context manager.

    ``runs`` is how many prepared batches the caller keeps with the model at once: the slots cover those,
    one more being finished, and the chunks ahead.
    """

    def __init__(self, archive: str | Path, spec: ModelSpec, frames_dtype: np.dtype, batch_size: int,
                 processes: int, runs: int, keep_videos: int, done: Collection[QidKey] = (),
                 follow_outside_links: bool = True):
        self.ahead = 2 * max(processes, 1)
        shape = (batch_size, spec.max_num_frames, spec.frame_dim)
        self.slots = FrameSlots(self.ahead + runs + 1, shape, frames_dtype, shared=processes > 0)
        self._maker: BatchMaker | None = None
        self._pool: Executor
        try:
            if processes > 0:
                FeatureArchive(archive).close()  # a missing or broken archive fails here, once
                self._pool = ProcessPoolExecutor(
                    processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_feed_process,
                    initargs=(str(archive), spec, max(1, keep_videos // processes), frozenset(done),
                              follow_outside_links, self.slots.path, self.slots.shape, self.slots.dtype.str))
            else:
                self._maker = BatchMaker(archive, spec, keep_videos, done, follow_outside_links)
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="cnm-feed")
        except BaseException:
            self.slots.close()
            raise

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._maker is not None:
            self._maker.close()
        self.slots.close()

    def submit(self, entries: list[Entry]) -> Future:
        slot = self.slots.acquire()
        prepared: Future = Future()
        if self._maker is not None:
            work = self._pool.submit(self._maker.prepare, entries, self.slots.array[slot])
            work.add_done_callback(lambda done: _settle(prepared, done, lambda result: Prepared(*result, slot)))
        else:
            work = self._pool.submit(_prepare_in_feed_process, entries, slot)
            work.add_done_callback(lambda done: _settle(prepared, done, lambda result: self._from_slot(result, slot)))
        return prepared

    def release(self, slot: int) -> None:
        self.slots.release(slot)

    def _from_slot(self, result: tuple[list[Outcome], tuple | None], slot: int) -> Prepared:
        outcomes, small = result
        if small is None:
            return Prepared(outcomes, None, slot)
        videos, video_index, word_ids, words_len = small
        return Prepared(outcomes, Batch(self.slots.array[slot, :videos], video_index, word_ids, words_len), slot)


def _settle(future: Future, done: Future, convert) -> None:
    """Pass ``done``'s result (converted) or its exception (a dead feed process: BrokenProcessPool) on."""
    try:
        future.set_result(convert(done.result()))
    except BaseException as error:
        future.set_exception(error)
