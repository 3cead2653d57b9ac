"""The pipeline between a queries source and results: chunks prepared ahead, their batches run on the model,
and each chunk handed back, in order, with the model's outputs for it.

``Feed.chunks(entries)`` cuts the entries into chunks of ``batch_size``, prepares up to ``ahead`` of them at
a time (``chunks.BatchMaker``: parse, encode, read videos, gather a batch), keeps ``runs + 1`` batches with the
model (so the next starts as soon as one ends) and frees a batch's frames as soon as the model is done with
them. Memory stays bounded whatever the sizes of the archive and the queries.

Chunks are prepared in a thread of this process (``feeders=0``), or in feed processes that each open the
archive themselves (h5py serialises every call behind one lock, so only processes read in parallel) and write
the batch's frames into a slot of shared memory (``FrameSlots``): this process gets a slot number and the small
arrays. A chunk's result does not depend on who prepared it, so the predictions are the same for any number
of feed processes. Feed processes are started with ``spawn``: a script that grounds with feeders needs the
usual ``if __name__ == "__main__":`` guard, and each feed process imports that script again, so heavy imports
at its top (torch) slow every feed process (``python -m benchmarks.feed_only`` runs the feed in a light
process for that reason).
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import tempfile
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Collection, Iterable, Iterator, Protocol

import numpy as np

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.batch import Batch
from cnm_runtime.chunks import BatchMaker, Chunk, Outputs
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import QueryError
from cnm_runtime.queries import QidKey, Query, QueryLine


class Model(Protocol):
    """What the feed needs of a model session (cnm_runtime.session.ModelSession is one)."""

    spec: ModelSpec
    frames_dtype: np.dtype
    runs: int

    def submit(self, batch: Batch) -> Future: ...

    def default_feeders(self) -> int: ...


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


def _start_feed_process(archive: str, spec: ModelSpec, options: RunOptions, done: frozenset[QidKey],
                        slots_path: str, slots_shape: tuple[int, ...], dtype: str) -> None:
    global _maker, _slots
    # Ctrl-C and SIGTERM are the main process's to handle: it ends the feed processes itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _maker = BatchMaker(archive, spec, options, done)
    _slots = np.memmap(slots_path, np.dtype(dtype), "r+", shape=slots_shape)


def _prepare_in_feed_process(entries: list, slot: int) -> tuple[Chunk, tuple | None]:
    """What crosses back: the chunk without its batch, and the batch without its frames, which lie in ``slot``."""
    chunk = _maker.prepare(entries, _slots[slot])
    batch = chunk.batch
    small = None if batch is None else (len(batch.frames), batch.video_index, batch.word_ids, batch.words_len)
    return Chunk(chunk.outcomes, None), small


class Feed:
    """``chunks(entries)``: each chunk of ``entries`` with the model's outputs for its batch, in order; use as a
    context manager (or ``close()``), which ends the feed processes."""

    def __init__(self, archive: str | Path, model: Model, options: RunOptions, done: Collection[QidKey] = ()):
        feeders = options.feeders if options.feeders is not None else model.default_feeders()
        self.model, self.batch_size = model, options.batch_size
        self.ahead = 2 * max(feeders, 1)  # chunks being prepared at once
        shape = (options.batch_size, model.spec.max_num_frames, model.spec.frame_dim)
        # a slot for each chunk ahead, each batch with the model, and the one being finished
        self.slots = FrameSlots(self.ahead + model.runs + 1, shape, model.frames_dtype, shared=feeders > 0)
        self._maker: BatchMaker | None = None
        self._pool: Executor
        try:
            if feeders > 0:
                FeatureArchive(archive, options.archive).close()  # a missing or broken archive fails here, once
                self._pool = ProcessPoolExecutor(
                    feeders, mp_context=multiprocessing.get_context("spawn"), initializer=_start_feed_process,
                    initargs=(str(archive), model.spec, _per_feeder(options, feeders), frozenset(done),
                              self.slots.path, self.slots.shape, self.slots.dtype.str))
            else:
                self._maker = BatchMaker(archive, model.spec, options, done)
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="cnm-feed")
        except BaseException:
            self.slots.close()
            raise
        self.feeders = feeders

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._maker is not None:
            self._maker.close()
        self.slots.close()

    def chunks(self, entries: Iterable[QueryLine | Query | QueryError]) -> Iterator[tuple[Chunk, Outputs | None]]:
        """Every chunk of ``entries`` and the model's outputs for its batch (None without a batch; the exception
        where the model failed on it), in order, while the next chunks are prepared and run."""
        pending = _cut(entries, self.batch_size)
        preparing: deque[tuple[Future, int]] = deque()  # (chunk, slot) in order
        running: deque[tuple[Chunk, Future | None, int]] = deque()  # (chunk, its run, slot) in order

        def prepare_more() -> None:
            while len(preparing) < self.ahead and (part := next(pending, None)) is not None:
                slot = self.slots.acquire()
                preparing.append((self._submit(part, slot), slot))

        prepare_more()
        while preparing:
            future, slot = preparing.popleft()
            chunk = future.result()  # raises only where a feed process died: the run cannot go on
            running.append((chunk, None if chunk.batch is None else self.model.submit(chunk.batch), slot))
            prepare_more()
            while len(running) > self.model.runs:
                yield self._finish(*running.popleft())
        while running:
            yield self._finish(*running.popleft())

    def _finish(self, chunk: Chunk, run: Future | None, slot: int) -> tuple[Chunk, Outputs | None]:
        try:
            outputs = None if run is None else run.result()
        except Exception as error:  # the model failed on this batch: its queries' error, not the run's end
            outputs = error
        finally:
            self.slots.release(slot)
        return chunk, outputs

    def _submit(self, entries: list, slot: int) -> Future:
        if self._maker is not None:
            return self._pool.submit(self._maker.prepare, entries, self.slots.array[slot])
        prepared: Future = Future()
        work = self._pool.submit(_prepare_in_feed_process, entries, slot)
        work.add_done_callback(lambda done: _settle(prepared, done, lambda result: self._from_slot(*result, slot)))
        return prepared

    def _from_slot(self, chunk: Chunk, small: tuple | None, slot: int) -> Chunk:
        if small is None:
            return chunk
        videos, video_index, word_ids, words_len = small
        return Chunk(chunk.outcomes, Batch(self.slots.array[slot, :videos], video_index, word_ids, words_len))


def _per_feeder(options: RunOptions, feeders: int) -> RunOptions:
    """Each feed process keeps its share of the recent videos."""
    return replace(options, keep_videos=max(1, options.keep_videos // feeders))


def _cut(entries: Iterable, size: int) -> Iterator[list]:
    iterator = iter(entries)
    while part := list(itertools.islice(iterator, size)):
        yield part


def _settle(future: Future, done: Future, convert) -> None:
    """Pass ``done``'s result (converted) or its exception (a dead feed process: BrokenProcessPool) on."""
    try:
        future.set_result(convert(done.result()))
    except BaseException as error:
        future.set_exception(error)
