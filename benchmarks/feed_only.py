"""How fast cnm-run's feed alone prepares batches: reading, resampling, tokenizing and stacking, with the
model replaced by a no-op, in a thread (0) or in 1, 2, ... feed processes.

This is the rate a model faster than the feed would see (a GPU): cnm-run cannot ground faster end to end.
The clock starts at the first result, so the feed processes' start-up (reported beside it) is left out.

``measure_feed_only`` runs it in a process of its own (``python -m benchmarks.feed_only``), as light as
cnm-run's: feed processes import their parent's main module again, and a main module that has imported
torch (as the benchmark's has) slows every feed process down.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnm_runtime.batch import Batch
from cnm_runtime.grounder import Grounder
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.options import RunOptions
from cnm_runtime.session import ModelSession


@dataclass(frozen=True)
class NoModel:
    """A session that answers every batch at once with constant outputs."""

    spec: ModelSpec
    frames_dtype: np.dtype
    provider: str = "no model"
    runs: int = 1

    def default_feeders(self) -> int:
        return 0

    def submit(self, batch: Batch) -> Future:
        outputs: Future = Future()
        outputs.set_result((np.full(len(batch), 0.5, np.float32), np.full(len(batch), 0.25, np.float32)))
        return outputs

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class FeedRun:
    queries_per_s: float
    startup_s: float  # from the call to the first result
    results: int


def feed_only(model: Path, archive: Path, queries: Path, batch_size: int, processes: int,
              keep_videos: int = 64) -> FeedRun:
    """One pass over ``queries`` with the feed of ``model`` (its vocabulary, sizes and frames type)."""
    with ModelSession(model, RunOptions(provider="cpu", runs=1)) as session:
        spec, frames_dtype = session.spec, session.frames_dtype
    grounder = Grounder(NoModel(spec, frames_dtype), batch_size=batch_size, feeders=processes,
                        keep_videos=keep_videos)
    started = time.perf_counter()
    results = grounder.ground(archive, queries)
    next(results)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in results)
    return FeedRun(count / (time.perf_counter() - first), first - started, count)


def measure_feed_only(model: Path, archive: Path, queries: Path, batch_size: int, processes: int,
                      keep_videos: int = 64) -> FeedRun:
    """``feed_only`` in a fresh ``python -m benchmarks.feed_only`` process; RuntimeError if it fails."""
    command = [sys.executable, "-m", "benchmarks.feed_only", str(model), str(archive), str(queries),
               str(batch_size), str(processes), str(keep_videos)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with status {done.returncode}: {done.stderr[-2000:]}")
    return FeedRun(**json.loads(done.stdout))


if __name__ == "__main__":
    model_path, archive_path, queries_path, batch, feed_processes, keep = sys.argv[1:7]
    run = feed_only(Path(model_path), Path(archive_path), Path(queries_path), int(batch), int(feed_processes),
                    int(keep))
    print(json.dumps(asdict(run)))
