"""How fast cnm-run's feed alone prepares batches: reading, resampling, tokenizing and stacking, with the
model replaced by a no-op, in a thread (0) or in 1, 2, ... feed processes.

This is the rate a model faster than the feed would see (a GPU): cnm-run cannot ground faster end to end.
The clock starts at the first result, so the feed processes' start-up (reported beside it) is left out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnm_runtime.batch import Batch
from cnm_runtime.grounder import Grounder
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.session import ModelSession


@dataclass(frozen=True)
class NoModel:
    """A session that answers every batch at once with constant outputs."""

    spec: ModelSpec
    frames_dtype: np.dtype
    provider: str = "no model"

    def default_runs(self) -> int:
        return 1

    def default_feeders(self) -> int:
        return 0

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(batch), 0.5, np.float32), np.full(len(batch), 0.25, np.float32)


@dataclass(frozen=True)
class FeedRun:
    queries_per_s: float
    startup_s: float  # from the call to the first result
    results: int


def feed_only(model: Path, archive: Path, queries: Path, batch_size: int, processes: int,
              keep_videos: int = 64) -> FeedRun:
    """One pass over ``queries`` with the feed of ``model`` (its vocabulary, sizes and frames type)."""
    session = ModelSession(model, "cpu")
    grounder = Grounder(NoModel(session.spec, session.frames_dtype), batch_size=batch_size, feeders=processes,
                        keep_videos=keep_videos)
    started = time.perf_counter()
    results = grounder.ground(archive, queries)
    next(results)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in results)
    return FeedRun(count / (time.perf_counter() - first), first - started, count)
