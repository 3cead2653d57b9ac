"""Ground sentences in videos with an exported model: the Python API, and the engine of cnm-run.

Load once, encode a video once, ask many questions::

    grounder = Grounder("model-best.onnx")
    clips = grounder.encode_video(features)            # raw [rows, dim] clip features
    for prediction in grounder.predict(clips, ["a person opens the door.", "they sit down."], duration=30.0):
        print(prediction.window)                       # (start, end) in seconds

Or every query of a queries file over a feature archive, in batches::

    for result in ground("archive.hdf5", "queries.jsonl", model="model-best.onnx"):
        print(result.record())  # a Prediction, or a QueryError saying why a query has none

Options (``cnm_runtime.options.RunOptions``) are given whole or as keywords: ``Grounder(model, batch_size=32)``.
``ground`` streams through ``Feed`` (chunks prepared ahead, batches run side by side) and turns each chunk's
outputs into results in input order; ``predict`` builds its queries and batch with the same constructors, so
both give the same numbers.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

import numpy as np

from cnm_runtime.batch import build_batch
from cnm_runtime.chunks import Chunk, prepare_query
from cnm_runtime.engines import open_session
from cnm_runtime.errors import InputError
from cnm_runtime.features import Clips, to_clips
from cnm_runtime.feed import Feed, Model
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import Prediction, QueryError
from cnm_runtime.queries import Query, as_lines, qid_key, query_from_record


class Grounder:
    """An exported model in a session, ready to ground queries; ``close()`` (or ``with``) ends its threads.

    ``model`` is the ONNX file cnm-export wrote, or a ready session (anything the feed takes as a ``Model``).
    """

    def __init__(self, model: str | Path | Model = "model-best.onnx", options: RunOptions | None = None,
                 **changes: Any):
        self.options = replace(options or RunOptions(), **changes)
        self.session = open_session(model, self.options) if isinstance(model, (str, Path)) else model
        self.spec = self.session.spec
        self.vocabulary = self.spec.vocabulary()

    def __enter__(self) -> "Grounder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    @property
    def provider(self) -> str:
        """What runs the model (after any fallback)."""
        return self.session.provider

    def encode_video(self, features: np.ndarray, duration: float | None = None, name: str = "features") -> Clips:
        """Raw ``[rows, frame_dim]`` clip features as the model reads them (a copy: the caller's array may
        change afterwards); InputError says what is wrong with them or with ``duration`` (seconds)."""
        clips = to_clips(features, self.spec.max_num_frames, self.spec.frame_dim, name, duration)
        if clips.duration_error is not None:
            raise InputError("bad_duration", clips.duration_error)
        if isinstance(features, np.ndarray) and np.may_share_memory(clips.source, features):
            clips = replace(clips, source=clips.source.copy())
        return clips

    def predict(self, clips: Clips, sentences: Sequence[str], duration: float | None = None,
                video: str = "video") -> list[Prediction]:
        """One prediction per sentence in ``clips``; InputError names the first sentence (``line`` i+1 for
        ``sentences[i]``) that the model cannot read, or a ``duration`` that is not a positive number."""
        queries = [query_from_record({"qid": i, "video": video, "query": sentence,
                                      **({"duration": duration} if duration is not None else {})}, i + 1)
                   for i, sentence in enumerate(sentences)]
        results: list[Prediction] = []
        for start in range(0, len(queries), self.options.batch_size):
            part = queries[start:start + self.options.batch_size]
            prepared = [prepare_query(query, clips, self.vocabulary, self.spec, row) for row, query in enumerate(part)]
            batch = build_batch([(video, clips, item.encoded) for item in prepared], self.spec.word_slots)
            for result in Chunk(prepared, batch).results(self.session.run(batch), set()):
                if isinstance(result, QueryError):
                    raise InputError(result.code, result.message)
                results.append(result)
        return results

    def ground(self, archive: str | Path, queries: str | Path | Iterable[Query | QueryError | dict],
               skip_qids: Collection[str | int] = ()) -> Iterator[Prediction | QueryError]:
        """One Prediction or QueryError per query, in input order; a bad query or video never stops it.

        Queries whose qid is in ``skip_qids`` (an earlier run's) are left out. A qid is its first line's:
        a later line with the same qid is a ``duplicate_qid`` error.
        """
        claimed: set = set()
        with Feed(archive, self.session, self.options, {qid_key(qid) for qid in skip_qids}) as feed:
            for chunk, outputs in feed.chunks(as_lines(queries)):
                yield from chunk.results(outputs, claimed)


def ground(archive: str | Path, queries: str | Path | Iterable[Query | QueryError | dict],
           model: str | Path = "model-best.onnx", **changes: Any) -> Iterator[Prediction | QueryError]:
    """Every query of a file or an iterable, as ``Grounder(model, **changes).ground(archive, queries)``; the
    grounder ends with the iteration."""
    grounder = Grounder(model, **changes)  # a missing or broken model fails here, not at the first result
    return _closing(grounder, grounder.ground(archive, queries))


def _closing(grounder: Grounder, results: Iterator[Prediction | QueryError]) -> Iterator[Prediction | QueryError]:
    with grounder:
        yield from results
