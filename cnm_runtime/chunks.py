"""A chunk of consecutive queries: prepared into one batch, then, with the model's outputs, finished into results.

``BatchMaker.prepare`` parses and checks each entry, encodes its sentence, reads and resamples its video (a
recent video once) and gathers the clips of the ready queries into one ``Batch``. ``Chunk.results`` turns
the model's ``(center, width)`` for that batch into one result per entry, in order. The local run, its feed
processes, the Python API and the Ray actors all go through these two steps, so their records are the same.

Each entry is prepared, and each prediction made, inside ``outcomes.contained``: whatever goes wrong with one
query becomes its error record and costs nothing else. What goes wrong with the whole batch (gathering it,
or the model failing on it) becomes an error record for each query in it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterator, Sequence, Union

import numpy as np

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.batch import Batch, build_batch
from cnm_runtime.errors import InputError
from cnm_runtime.features import Clips
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import Done, Prediction, QueryError, contained
from cnm_runtime.queries import QidKey, Query, QueryLine, parse, qid_key
from cnm_runtime.spans import spans_from_gaussian, temporal_iou
from cnm_runtime.text import EncodedQuery, Vocabulary
from cnm_runtime.videos import RecentVideos

if TYPE_CHECKING:  # only named in annotations
    from cnm_runtime.model_spec import ModelSpec

# The model's outputs for a batch, or the exception its run raised.
Outputs = Union[tuple[np.ndarray, np.ndarray], Exception]


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


def prepare_query(query: Query, clips: Clips | InputError, vocabulary: Vocabulary, spec: ModelSpec,
                  row: int) -> PreparedQuery:
    """``query`` as row ``row`` of a batch over ``clips`` (its video, or the error reading it gave);
    InputError says why it cannot be one."""
    encoded = vocabulary.encode(query.sentence, spec.max_num_words, name=f"line {query.line}")
    if isinstance(clips, InputError):
        raise InputError(clips.code, f"line {query.line}: {clips.message}")
    duration = query.duration
    if duration is None:
        if clips.duration_error is not None:
            raise InputError("bad_duration", f"line {query.line}: {clips.duration_error}, and the query gives none")
        duration = clips.duration
    return PreparedQuery(query, encoded, duration, row)


def _error(entry: Query | QueryLine, error: InputError) -> QueryError:
    """``error`` as the record of ``entry``: a parsed query claims its qid, an unparsed line none."""
    return QueryError(entry.qid if isinstance(entry, Query) else None, entry.line, error.code, error.message)


@dataclass(frozen=True)
class Chunk:
    """A chunk made ready: one outcome per entry, in order, and the batch of its prepared queries."""

    outcomes: list[PreparedQuery | QueryError | Done]
    batch: Batch | None  # None when no entry of the chunk is left to run

    def results(self, outputs: Outputs | None, claimed: set[QidKey]) -> Iterator[Prediction | QueryError]:
        """The chunk's results in input order, given the model's outputs for its batch (or the exception the
        run raised: then each of its queries is an error).

        ``claimed`` holds the qid keys of the entries before this chunk and gains this chunk's: a qid is its
        first entry's, and a later entry with it is a ``duplicate_qid`` error. ``Done`` entries give nothing.
        """
        ready = [outcome for outcome in self.outcomes if isinstance(outcome, PreparedQuery)]
        finished = iter(_predictions(ready, outputs) if ready else ())
        for outcome in self.outcomes:
            result = next(finished) if isinstance(outcome, PreparedQuery) else outcome
            if outcome.qid is not None:
                key = qid_key(outcome.qid)
                if key in claimed and not isinstance(result, QueryError):
                    result = QueryError(outcome.qid, outcome.line, "duplicate_qid",
                                        f"line {outcome.line}: qid {outcome.qid!r} is an earlier line's too")
                claimed.add(key)
            if not isinstance(result, Done):
                yield result


def _predictions(ready: list[PreparedQuery], outputs: Outputs) -> list[Prediction | QueryError]:
    """Each ready query's prediction from its row of ``outputs``: the batch's arithmetic at once, then each
    prediction inside the boundary of its query."""
    if isinstance(outputs, Exception):
        failed = InputError("internal_error", f"the model failed on the batch: {type(outputs).__name__}: {outputs}")
        return [_error(item.query, failed) for item in ready]
    numbers = contained(lambda: _windows(ready, *outputs), "turning the model's outputs into windows")
    if isinstance(numbers, InputError):
        return [_error(item.query, numbers) for item in ready]
    results: list[Prediction | QueryError] = []
    for item, row in zip(ready, zip(*numbers)):
        result = contained(lambda: _prediction(item, *row), f"line {item.line}")
        results.append(_error(item.query, result) if isinstance(result, InputError) else result)
    return results


def _windows(ready: list[PreparedQuery], center: np.ndarray, width: np.ndarray) -> tuple[list, list, list, list]:
    """Per ready query: center, width, span (fractions) and IoU with its ground truth (None without one)."""
    rows = [item.row for item in ready]
    center, width = center[rows], width[rows]
    with np.errstate(all="ignore"):  # a broken model's or query's numbers are judged per query, not warned of
        spans = spans_from_gaussian(center, width)
        ious: list[float | None] = [None] * len(ready)
        labelled = [i for i, item in enumerate(ready) if item.query.timestamps is not None and item.duration]
        if labelled:
            truth = np.array([ready[i].query.timestamps for i in labelled]) / np.array(
                [[ready[i].duration] for i in labelled])
            for i, iou in zip(labelled, temporal_iou(spans[labelled].astype(np.float64), truth).tolist()):
                ious[i] = iou
    return center.tolist(), width.tolist(), spans.tolist(), ious


def _prediction(prepared: PreparedQuery, center: float, width: float, span: list[float], iou: float | None
                ) -> Prediction:
    where, query = f"line {prepared.line}", prepared.query
    if not (math.isfinite(center) and math.isfinite(width)):
        raise InputError("non_finite_output", f"{where}: the model gave center {center}, width {width}")
    if not (0 <= center <= 1 and width >= 0):
        raise InputError("output_out_of_range", f"{where}: the model gave center {center}, width {width}")
    return Prediction(query.qid, query.video, query.sentence, prepared.duration, center, width, tuple(span), iou,
                      prepared.encoded.dropped, prepared.encoded.truncated)


class BatchMaker:
    """Prepares chunks against one archive handle; each process that prepares chunks makes its own."""

    def __init__(self, archive: str | Path, spec: ModelSpec, options: RunOptions, done: Collection[QidKey] = ()):
        self.spec = spec
        self.vocabulary = spec.vocabulary()
        self.archive = FeatureArchive(archive, options.archive)
        self.videos = RecentVideos(self.archive, spec.frame_dim, spec.max_num_frames, options.keep_videos)
        self.done = done  # qid keys (``qid_key``) of the queries to leave out

    def close(self) -> None:
        self.archive.close()

    def prepare(self, entries: Sequence[QueryLine | Query | QueryError], frames: np.ndarray | None = None) -> Chunk:
        """Every entry's outcome, and the batch of those that are ready to run, gathered into ``frames``."""
        outcomes: list[PreparedQuery | QueryError | Done] = []
        ready: list[tuple[str, Clips, EncodedQuery]] = []
        for entry in entries:
            outcome = self._outcome(entry, len(ready))
            if isinstance(outcome, PreparedQuery):
                ready.append((outcome.query.video, self.videos.get(outcome.query.video), outcome.encoded))
            outcomes.append(outcome)
        if not ready:
            return Chunk(outcomes, None)
        batch = contained(lambda: build_batch(ready, self.spec.word_slots, frames), "gathering the batch")
        if isinstance(batch, InputError):  # each ready query of the chunk gets the error
            return Chunk([_error(o.query, batch) if isinstance(o, PreparedQuery) else o for o in outcomes], None)
        return Chunk(outcomes, batch)

    def _outcome(self, entry: QueryLine | Query | QueryError, row: int) -> PreparedQuery | QueryError | Done:
        """The boundary of one query: whatever preparing it raises is its error record."""
        if isinstance(entry, QueryError):
            return entry
        query = entry if isinstance(entry, Query) else contained(lambda: parse(entry), f"line {entry.line}")
        if isinstance(query, InputError):
            return _error(entry, query)
        if isinstance(query, QueryError):
            return query
        if qid_key(query.qid) in self.done:
            return Done(query.qid, query.line)
        outcome = contained(lambda: prepare_query(query, self.videos.get(query.video), self.vocabulary, self.spec,
                                                  row), f"line {query.line}")
        return _error(query, outcome) if isinstance(outcome, InputError) else outcome
