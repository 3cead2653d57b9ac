"""Ground sentence queries in the videos of a feature archive with an exported model: cnm-run's engine.

    grounder = Grounder("model-best.onnx")
    for result in grounder.ground("features.hdf5", "queries.jsonl"):
        print(result.record())  # a Prediction, or a QueryError saying why a query has none

The work flows in stages that overlap: a thread reads and resamples each video once (``VideoReader``;
with ``workers``, reader processes do that part), tokenizes the queries and stacks batches across
videos; ``runs`` threads run batches in ONNX Runtime side by side (on the CPU, one a core: see
``ModelSession``; a batch holds each of its videos once, and the exported graph runs the work that reads
no words once per video); the calling thread turns the outputs into predictions and does what it will
with them (cnm-run writes them) while the next batches run. Results come back in input order. Memory
stays bounded whatever the sizes of the archive and the queries: at most ``2 * batch_size`` queries wait
for their video, ``keep_videos`` recent videos are kept for reuse, two batches are stacked ahead and
``runs + 1`` are with the model.

Reader processes are started with ``spawn``, so a script that calls ``ground`` with ``workers > 0``
needs the usual ``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cnm_runtime.background import in_background
from cnm_runtime.errors import InputError
from cnm_runtime.queries import Query, QueryError, QueryLine, as_lines, parse
from cnm_runtime.session import ModelSession
from cnm_runtime.spans import spans_from_gaussian, temporal_iou
from cnm_runtime.text import EncodedQuery, pad_word_ids
from cnm_runtime.videos import Clips, VideoError, VideoReader

# CNM predicts one window per query and no confidence; the window's score is this constant.
WINDOW_SCORE = 1.0
BATCHES_AHEAD = 2


@dataclass(frozen=True)
class Prediction:
    query: Query
    encoded: EncodedQuery
    duration: float | None  # seconds: from the query, else from the archive
    center: float
    width: float  # already times max_width
    span: tuple[float, float]  # fractions of the video, clipped to [0, 1]
    iou: float | None  # with the ground truth, as the original evaluation computes it; None without one

    def record(self) -> dict[str, Any]:
        """One output line: the Moment-DETR layout (windows in seconds when the duration is known)."""
        scale = self.duration if self.duration is not None else 1.0
        record = {
            "qid": self.query.qid,
            "vid": self.query.video,
            "query": self.query.sentence,
            "duration": self.duration,
            "center": self.center,
            "width": self.width,
            "pred_relevant_windows": [[self.span[0] * scale, self.span[1] * scale, WINDOW_SCORE]],
            "dropped_words": list(self.encoded.dropped),
            "truncated": self.encoded.truncated,
        }
        if self.iou is not None:
            record["iou"] = self.iou
        return record


@dataclass(frozen=True)
class _Waiting:
    """A query whose video is being read."""

    query: Query
    encoded: EncodedQuery
    clips: Future


@dataclass(frozen=True)
class _Ready:
    query: Query
    encoded: EncodedQuery
    clips: Clips
    duration: float | None


@dataclass(frozen=True)
class _Batch:
    items: list[_Ready]
    frames: np.ndarray  # [videos, clips, dim]: each video of the batch once
    video_index: np.ndarray  # [queries]: each query's row of frames
    word_ids: np.ndarray
    words_len: np.ndarray


class FrameBuffers:
    """A ring of reused ``[batch, clips, dim]`` arrays for stacking batches.

    A fresh array per batch (tens of MB) costs more in page faults than gathering the clips into it. The
    ring holds as many arrays as batches can be alive at once: ``runs + 1`` with the model, ``BATCHES_AHEAD``
    waiting and one being filled, so an array is refilled only after the batch that used it has run.
    """

    def __init__(self, batch_size: int, num_clips: int, frame_dim: int, runs: int):
        self._arrays = [np.empty((batch_size, num_clips, frame_dim), np.float32)
                        for _ in range(runs + 1 + BATCHES_AHEAD + 1)]
        self._next = 0

    def fill(self, videos: list[Clips]) -> np.ndarray:
        array = self._arrays[self._next][: len(videos)]
        self._next = (self._next + 1) % len(self._arrays)
        for row, clips in enumerate(videos):
            clips.gather_into(array[row])
        return array


def _ious(batch: list[_Ready], spans: np.ndarray) -> list[float | None]:
    """Each query's IoU with its ground truth, one call for the batch; None where it has none."""
    ious: list[float | None] = [None] * len(batch)
    labelled = [row for row, ready in enumerate(batch)
                if ready.query.timestamps is not None and ready.duration is not None]
    if labelled:
        seconds = np.array([batch[row].query.timestamps for row in labelled])
        truth = seconds / np.array([[batch[row].duration] for row in labelled])
        for row, iou in zip(labelled, temporal_iou(spans[labelled].astype(np.float64), truth)):
            ious[row] = float(iou)
    return ious


class Grounder:
    """An exported model in an ONNX Runtime session, ready to ground batches of queries."""

    def __init__(self, model_path: str | Path = "model-best.onnx", *, provider: str = "auto",
                 threads: int | None = None, runs: int | None = None, batch_size: int = 64, workers: int = 0,
                 keep_videos: int = 64, trt_cache_dir: str | Path | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.session = ModelSession(model_path, provider, threads, batch_size, trt_cache_dir)
        self.runs = runs or self.session.default_runs()
        self.spec = self.session.spec
        self.vocabulary = self.spec.vocabulary()
        self.batch_size = batch_size
        self.workers = workers
        self.keep_videos = keep_videos

    @property
    def provider(self) -> str:
        """The ONNX Runtime provider that runs the model (after any fallback)."""
        return self.session.provider

    def ground(self, archive: str | Path, queries: str | Path | Iterable[Query | QueryError | dict]
               ) -> Iterator[Prediction | QueryError]:
        """One Prediction or QueryError per query, predictions in input order; a bad query never stops it."""
        parsed = (parse(item) if isinstance(item, QueryLine) else item for item in as_lines(queries))
        batches = in_background(self._batches(archive, parsed), BATCHES_AHEAD)
        model = ThreadPoolExecutor(self.runs, thread_name_prefix="cnm-model")
        # in input order: errors, and each batch's queries with the future of the model's (center, width)
        pending: deque[QueryError | tuple[list[_Ready], Future]] = deque()
        try:
            for item in batches:
                pending.append(item if isinstance(item, QueryError) else (item.items, model.submit(
                    self.session.run, item.frames, item.video_index, item.word_ids, item.words_len)))
                while len(pending) > self.runs:  # one more than runs: the next starts as soon as one ends
                    yield from self._predictions(pending.popleft())
            while pending:
                yield from self._predictions(pending.popleft())
        finally:
            model.shutdown(cancel_futures=True)
            batches.close()

    @staticmethod
    def _predictions(item: QueryError | tuple[list[_Ready], Future]) -> Iterator[Prediction | QueryError]:
        if isinstance(item, QueryError):
            yield item
            return
        batch, outputs = item
        center, width = outputs.result()
        spans = spans_from_gaussian(center, width)
        for ready, c, w, span, iou in zip(batch, center, width, spans, _ious(batch, spans)):
            yield Prediction(ready.query, ready.encoded, ready.duration, float(c), float(w),
                             (float(span[0]), float(span[1])), iou)

    def _batches(self, archive: str | Path, queries: Iterator[Query | QueryError]) -> Iterator[_Batch | QueryError]:
        buffers = FrameBuffers(self.batch_size, self.spec.max_num_frames, self.spec.frame_dim, self.runs)
        with VideoReader(archive, self.spec.frame_dim, self.spec.max_num_frames, self.workers,
                         self.keep_videos) as reader:
            batch: list[_Ready] = []
            for item in self._ready(queries, reader):
                if isinstance(item, QueryError):
                    yield item
                    continue
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield self._stack(batch, buffers)
                    batch = []
            if batch:
                yield self._stack(batch, buffers)

    def _ready(self, queries: Iterator[Query | QueryError], reader: VideoReader) -> Iterator[_Ready | QueryError]:
        """Queries with their clips, in input order, while the next ``2 * batch_size`` queries' videos load."""
        waiting: deque[_Waiting | QueryError] = deque()
        for item in queries:
            waiting.append(self._encode(item, reader) if isinstance(item, Query) else item)
            if len(waiting) > 2 * self.batch_size:
                yield self._resolve(waiting.popleft())
        while waiting:
            yield self._resolve(waiting.popleft())

    def _encode(self, query: Query, reader: VideoReader) -> _Waiting | QueryError:
        try:
            encoded = self.vocabulary.encode(query.sentence, self.spec.max_num_words, name=f"line {query.line}")
        except InputError as error:
            return QueryError(query.qid, query.line, error.code, error.message)
        return _Waiting(query, encoded, reader.submit(query.video))

    @staticmethod
    def _resolve(item: _Waiting | QueryError) -> _Ready | QueryError:
        if isinstance(item, QueryError):
            return item
        query, clips = item.query, item.clips.result()
        if isinstance(clips, VideoError):
            return QueryError(query.qid, query.line, clips.code, f"line {query.line}: {clips.message}")
        duration = query.duration if query.duration is not None else clips.duration
        if duration is not None and not duration > 0:
            return QueryError(query.qid, query.line, "bad_duration",
                              f"line {query.line}: video {query.video!r} has duration {duration} in the archive")
        return _Ready(query, item.encoded, clips, duration)

    def _stack(self, batch: list[_Ready], buffers: FrameBuffers) -> _Batch:
        """Each video's clips go into the batch once, however many of its queries the batch holds."""
        rows: dict[str, int] = {}  # video -> its row of frames
        videos: list[Clips] = []
        for ready in batch:
            if ready.query.video not in rows:
                rows[ready.query.video] = len(videos)
                videos.append(ready.clips)
        video_index = np.array([rows[ready.query.video] for ready in batch], np.int64)
        word_ids, words_len = pad_word_ids([ready.encoded for ready in batch], self.spec.word_slots)
        return _Batch(batch, buffers.fill(videos), video_index, word_ids, words_len)
