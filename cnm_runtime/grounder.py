"""Ground sentences in videos with an exported model: the Python API and cnm-run's engine.

Load once, encode a video once, ask many questions::

    grounder = Grounder("model-best.onnx")
    clips = grounder.encode_video(features)            # raw [rows, dim] clip features
    for prediction in grounder.predict(clips, ["a person opens the door.", "they sit down."], duration=30.0):
        print(prediction.window)                       # (start, end) in seconds

Or every query of a queries file over a feature archive, in batches::

    for result in ground("archive.hdf5", "queries.jsonl", model="model-best.onnx"):
        print(result.record())  # a Prediction, or a QueryError saying why a query has none

``ground`` streams: ``Feed`` prepares chunks of ``batch_size`` queries (in a thread, or in feed
processes), ``runs`` threads run their batches in ONNX Runtime side by side (on the CPU one a core,
see ``ModelSession``), and the calling thread turns each batch's outputs into results, in input order,
while the next batches run. Memory stays bounded whatever the sizes of the archive and the queries:
a few chunks are ahead, ``runs + 1`` batches with the model, and each preparer keeps a few recent videos.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

import numpy as np

from cnm_runtime.batch import build_batch
from cnm_runtime.errors import InputError
from cnm_runtime.feed import Done, Entry, Feed, Outcome, Prepared, PreparedQuery
from cnm_runtime.features import Clips, to_clips
from cnm_runtime.queries import QidKey, Query, QueryError, as_lines, qid_key
from cnm_runtime.engines import Session, open_session
from cnm_runtime.spans import spans_from_gaussian, temporal_iou

# CNM predicts one window per query and no confidence; the window's score is this constant.
WINDOW_SCORE = 1.0


@dataclass(frozen=True)
class Prediction:
    qid: str | int
    video: str
    sentence: str
    duration: float | None  # seconds: from the query, else from the archive
    center: float  # fraction of the video
    width: float  # fraction of the video, already times max_width
    span: tuple[float, float]  # fractions of the video, clipped to [0, 1]
    iou: float | None  # with the ground truth, as the original evaluation computes it; None without one
    dropped_words: tuple[str, ...]  # tokens outside the model's vocabulary
    truncated: bool  # more words than the model reads: the tail was cut

    @property
    def window(self) -> tuple[float, float]:
        """``span`` in seconds when the duration is known, else as fractions."""
        scale = self.duration if self.duration is not None else 1.0
        return self.span[0] * scale, self.span[1] * scale

    def record(self) -> dict[str, Any]:
        """One output line: the Moment-DETR layout (windows in seconds when the duration is known)."""
        record = {
            "qid": self.qid,
            "vid": self.video,
            "query": self.sentence,
            "duration": self.duration,
            "center": self.center,
            "width": self.width,
            "pred_relevant_windows": [[*self.window, WINDOW_SCORE]],
            "dropped_words": list(self.dropped_words),
            "truncated": self.truncated,
        }
        if self.iou is not None:
            record["iou"] = self.iou
        return record


def predictions(prepared: Sequence[PreparedQuery], center: np.ndarray, width: np.ndarray
                ) -> list[Prediction | QueryError]:
    """The model's outputs for ``prepared`` (row i of the outputs for ``prepared[i].row == i``) as results;
    a non-finite output is an error record, never a prediction."""
    rows = [item.row for item in prepared]
    center, width = center[rows], width[rows]
    spans = spans_from_gaussian(center, width)
    ious = _ious(prepared, spans)
    results: list[Prediction | QueryError] = []
    for item, c, w, span, iou in zip(prepared, center.tolist(), width.tolist(), spans.tolist(), ious):
        query = item.query
        if not (math.isfinite(c) and math.isfinite(w)):
            results.append(QueryError(query.qid, query.line, "non_finite_output",
                                      f"line {query.line}: the model gave center {c}, width {w}"))
            continue
        results.append(Prediction(query.qid, query.video, query.sentence, item.duration, c, w, tuple(span), iou,
                                  item.encoded.dropped, item.encoded.truncated))
    return results


def _ious(prepared: Sequence[PreparedQuery], spans: np.ndarray) -> list[float | None]:
    """Each query's IoU with its ground truth, one call for the batch; None where it has none."""
    ious: list[float | None] = [None] * len(prepared)
    labelled = [i for i, item in enumerate(prepared) if item.query.timestamps is not None and item.duration]
    if labelled:
        truth = np.array([prepared[i].query.timestamps for i in labelled]) / np.array(
            [[prepared[i].duration] for i in labelled])
        for i, iou in zip(labelled, temporal_iou(spans[labelled].astype(np.float64), truth)):
            ious[i] = float(iou)
    return ious


def chunk_results(outcomes: Sequence[Outcome], outputs: tuple[np.ndarray, np.ndarray] | None, claimed: set[QidKey]
                  ) -> Iterator[Prediction | QueryError]:
    """A chunk's results in input order, from its outcomes and the model's ``(center, width)`` for its batch.

    ``claimed`` holds the qid keys of the entries before this chunk and gains this chunk's: a qid is its
    first entry's, and a later entry with it is a ``duplicate_qid`` error. ``Done`` entries give nothing.
    """
    ready = [outcome for outcome in outcomes if isinstance(outcome, PreparedQuery)]
    computed = iter(predictions(ready, *outputs) if ready else ())
    for outcome in outcomes:
        result = next(computed) if isinstance(outcome, PreparedQuery) else outcome
        if outcome.qid is not None:
            key = qid_key(outcome.qid)
            if key in claimed and not isinstance(result, QueryError):
                result = QueryError(outcome.qid, outcome.line, "duplicate_qid",
                                    f"line {outcome.line}: qid {outcome.qid!r} is an earlier line's too")
            claimed.add(key)
        if not isinstance(result, Done):
            yield result


def _chunks(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    iterator = iter(entries)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Grounder:
    """An exported model in an ONNX Runtime session, ready to ground queries.

    ``feeders``: processes that prepare batches for ``ground`` (0: a thread of this process; default: none on
    the CPU, one a core but one with a GPU); ``runs``:
    batches in the model at once (default: one a core on the CPU, one on a GPU); ``follow_outside_links``:
    False refuses a video whose values lie in a file outside the archive's folder (``link_outside_archive``). ``model`` may also be a
    ready session (anything with ``spec``, ``provider``, ``frames_dtype``, ``default_runs()``,
    ``default_feeders()`` and ``run``).
    """

    def __init__(self, model: str | Path | Session = "model-best.onnx", *, provider: str = "auto",
                 precision: str | None = None, threads: int | None = None, runs: int | None = None,
                 batch_size: int = 64, feeders: int | None = None, keep_videos: int = 64,
                 trt_cache_dir: str | Path | None = None, follow_outside_links: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.session = model if hasattr(model, "run") else open_session(
            model, provider, precision, threads, batch_size, trt_cache_dir)
        self.spec = self.session.spec
        self.vocabulary = self.spec.vocabulary()
        self.runs = runs or self.session.default_runs()
        self.batch_size = batch_size
        self.feeders = feeders if feeders is not None else self.session.default_feeders()
        self.keep_videos = keep_videos
        self.follow_outside_links = follow_outside_links

    @property
    def provider(self) -> str:
        """What runs the model (after any fallback): ONNX Runtime's provider, or ``OpenVINO CPU <precision>``."""
        return self.session.provider

    def encode_video(self, features: np.ndarray, duration: float | None = None, name: str = "features") -> Clips:
        """Raw ``[rows, frame_dim]`` clip features as the model reads them; InputError says what is wrong."""
        return to_clips(features, self.spec.max_num_frames, self.spec.frame_dim, name, duration)

    def predict(self, clips: Clips, sentences: Sequence[str], duration: float | None = None,
                video: str = "") -> list[Prediction]:
        """One prediction per sentence in ``clips``; InputError names a sentence the model cannot read."""
        duration = duration if duration is not None else clips.duration
        encoded = [self.vocabulary.encode(sentence, self.spec.max_num_words) for sentence in sentences]
        results: list[Prediction | QueryError] = []
        for start in range(0, len(sentences), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(sentences)))
            batch = build_batch([(video, clips, encoded[i]) for i in rows], self.spec.word_slots)
            chunk = [PreparedQuery(Query(i + 1, i, video, sentences[i], duration, None), encoded[i], duration, row)
                     for row, i in enumerate(rows)]
            results += predictions(chunk, *self.session.run(batch))
        for result in results:
            if isinstance(result, QueryError):
                raise InputError(result.code, result.message)
        return results

    def ground(self, archive: str | Path, queries: str | Path | Iterable[Query | QueryError | dict],
               skip_qids: Collection[str | int] = ()) -> Iterator[Prediction | QueryError]:
        """One Prediction or QueryError per query, in input order; a bad query never stops it.

        Queries whose qid is in ``skip_qids`` (an earlier run's) are left out. A qid is its first line's:
        a later line with the same qid is a ``duplicate_qid`` error.
        """
        chunks = _chunks(as_lines(queries), self.batch_size)
        done = {qid_key(qid) for qid in skip_qids}
        claimed: set[QidKey] = set()
        feed = Feed(archive, self.spec, self.session.frames_dtype, self.batch_size, self.feeders, self.runs,
                    self.keep_videos, done, self.follow_outside_links)
        model = ThreadPoolExecutor(self.runs, thread_name_prefix="cnm-model")
        ahead: deque[Future] = deque()  # chunks being prepared, in order
        with_model: deque[tuple[Prepared, Future | None]] = deque()  # batches with the model, in order
        try:
            def fill() -> None:
                while len(ahead) < feed.ahead and (chunk := next(chunks, None)) is not None:
                    ahead.append(feed.submit(chunk))

            fill()
            while ahead:
                prepared = ahead.popleft().result()
                run = None if prepared.batch is None else model.submit(self.session.run, prepared.batch)
                with_model.append((prepared, run))
                fill()
                while len(with_model) > self.runs:  # one more than runs: the next starts as soon as one ends
                    yield from self._results(*with_model.popleft(), feed, claimed)
            while with_model:
                yield from self._results(*with_model.popleft(), feed, claimed)
        finally:
            model.shutdown(wait=True, cancel_futures=True)
            feed.close()

    @staticmethod
    def _results(prepared: Prepared, run: Future | None, feed: Feed, claimed: set[QidKey]
                 ) -> Iterator[Prediction | QueryError]:
        try:
            outputs = run.result() if run is not None else None
        finally:
            feed.release(prepared.slot)
        yield from chunk_results(prepared.outcomes, outputs, claimed)


def ground(archive: str | Path, queries: str | Path | Iterable[Query | QueryError | dict],
           model: str | Path = "model-best.onnx", **options: Any) -> Iterator[Prediction | QueryError]:
    """``Grounder(model, **options).ground(archive, queries)``: every query of a file or an iterable."""
    return Grounder(model, **options).ground(archive, queries)
