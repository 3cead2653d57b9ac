"""How fast and how lean cnm-run is on a synthetic archive (random features: speed and memory only).

    python benchmarks/cnm_run_scale.py throughput --model M.onnx   # end-to-end vs model-only queries/s
    python benchmarks/cnm_run_scale.py memory --model M.onnx       # peak RSS as the archive grows
    python benchmarks/cnm_run_scale.py settings --model M.onnx     # end to end at each --threads, --runs, --feeders

``throughput`` grounds every query of a synthetic archive (default 500 videos of 100-400 rows,
4 queries each) and runs the model alone on ready-made batches of the same size and the same
sharing of videos (4 queries a video), alternating the
two ``--repeats`` times; the ratio says how much of the model's speed the reading, resampling and
tokenizing leave. ``memory`` grounds archives of growing size in fresh processes and reports each
peak RSS (main process, and the largest feed process): it should not grow with the archive.
``settings`` grounds one archive at each ``--threads``, ``--runs`` and ``--feeders``: which to pick on a machine.
"""
from __future__ import annotations

import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import h5py
import numpy as np

from cnm_runtime.batch import Batch
from cnm_runtime.grounder import Grounder
from cnm_runtime.options import RunOptions
from cnm_runtime.session import ModelSession
from cnm_runtime.text import EncodedQuery, pad_word_ids


def make_archive(folder: Path, spec, videos: int, queries_per_video: int, seed: int = 0,
                 compression: str | None = None) -> tuple[Path, Path]:
    """An archive of ``videos`` random videos (100-400 rows) and queries from the model's words."""
    rng = np.random.default_rng(seed)
    archive, queries = folder / f"archive_{videos}.hdf5", folder / f"queries_{videos}.jsonl"
    with h5py.File(archive, "w") as out, open(queries, "w") as lines:
        for v in range(videos):
            rows = int(rng.integers(100, 401))
            features = np.maximum(rng.standard_normal((rows, spec.frame_dim), dtype=np.float32), 0)
            out.create_dataset(f"v{v:05d}", data=features, compression=compression).attrs["duration"] = rows / 4.0
            for _ in range(queries_per_video):
                words = rng.choice(spec.words, size=int(rng.integers(4, 13)))
                lines.write(json.dumps({"video": f"v{v:05d}", "query": " ".join(words)}) + "\n")
    return archive, queries


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the feed processes, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def model_only(session: ModelSession, runs: int, queries: int, batch_size: int, queries_per_video: int) -> float:
    """Queries/s of the session alone on ready batches (random inputs, words of a typical length), ``runs``
    at once as cnm-run runs them, each video shared by ``queries_per_video`` queries of the batch as in
    cnm-run's batches of the archive."""
    rng = np.random.default_rng(1)
    spec = session.spec
    video_index = np.arange(batch_size, dtype=np.int64) // queries_per_video
    frames = rng.standard_normal((video_index[-1] + 1, spec.max_num_frames, spec.frame_dim), dtype=np.float32)

    sentence = EncodedQuery(tuple(range(1, 9)), (), (), False)
    word_ids, words_len = pad_word_ids([sentence] * batch_size, spec.word_slots)

    def run(n: int) -> None:
        session.run(Batch(frames[: video_index[n - 1] + 1], video_index[:n], word_ids[:n], words_len[:n]))

    with ThreadPoolExecutor(runs) as pool:
        list(pool.map(run, [batch_size] * runs))  # warm up
        started = time.perf_counter()
        list(pool.map(run, [min(batch_size, queries - done) for done in range(0, queries, batch_size)]))
    return queries / (time.perf_counter() - started)


def end_to_end(grounder: Grounder, archive: Path, queries: Path) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    for _ in grounder.ground(archive, queries):
        count += 1
    return count / (time.perf_counter() - started), count


@click.group()
def main() -> None:
    pass


@main.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--videos", default=500, show_default=True)
@click.option("--queries-per-video", default=4, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--threads", default=0, show_default=True, help="0: as cnm-run")
@click.option("--feeders", default=0, show_default=True)
@click.option("--repeats", default=3, show_default=True)
def throughput(model: Path, videos: int, queries_per_video: int, batch_size: int, threads: int,
               feeders: int, repeats: int) -> None:
    """End-to-end queries/s against model-only queries/s at the same batch size."""
    grounder = Grounder(model, provider="cpu", threads=threads or None, batch_size=batch_size, feeders=feeders)
    with tempfile.TemporaryDirectory() as folder:
        archive, queries = make_archive(Path(folder), grounder.spec, videos, queries_per_video)
        end_to_end(grounder, archive, queries)  # warm the page cache and the session
        model_rates, e2e_rates, model_cpu, e2e_cpu = [], [], [], []
        for _ in range(repeats):
            cpu = cpu_seconds()
            model_rates.append(model_only(grounder.session, grounder.session.runs, videos * queries_per_video, batch_size,
                                          queries_per_video))
            model_cpu.append(cpu_seconds() - cpu)
            cpu = cpu_seconds()
            rate, count = end_to_end(grounder, archive, queries)
            e2e_rates.append(rate)
            e2e_cpu.append(cpu_seconds() - cpu)
    result = {
        "videos": videos, "queries": count, "batch_size": batch_size, "runs": grounder.session.runs,
        "threads": grounder.session.threads, "feeders": grounder.options.feeders,
        "provider": grounder.provider,
        "model_only_qps": [round(r, 1) for r in model_rates], "end_to_end_qps": [round(r, 1) for r in e2e_rates],
        "ratio_of_medians": round(statistics.median(e2e_rates) / statistics.median(model_rates), 3),
        # CPU work per query, which other load on the machine barely changes
        "model_only_cpu_ms_per_query": round(1000 * statistics.median(model_cpu) / count, 2),
        "end_to_end_cpu_ms_per_query": round(1000 * statistics.median(e2e_cpu) / count, 2),
    }
    print(json.dumps(result))


@main.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sizes", default="250,1000,2000", show_default=True, help="videos per archive")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--feeders", default=1, show_default=True)
def memory(model: Path, sizes: str, batch_size: int, feeders: int) -> None:
    """Peak RSS of a full run for archives of growing size, each run in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        for videos in map(int, sizes.split(",")):
            spec = ModelSession(model, RunOptions(provider="cpu", runs=1)).spec
            archive, queries = make_archive(Path(folder), spec, videos, 4)
            command = [sys.executable, __file__, "one-run", "--model", str(model), "--archive", str(archive),
                       "--queries", str(queries), "--batch-size", str(batch_size), "--feeders", str(feeders)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            result.update(videos=videos, archive_mb=round(archive.stat().st_size / 2**20))
            print(json.dumps(result), flush=True)
            archive.unlink()


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


@main.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--threads", default="1,2,8", show_default=True, help="ONNX Runtime threads a run to try")
@click.option("--runs", default="0", show_default=True, help="batches at once to try (0: as cnm-run)")
@click.option("--feeders", default="0,2", show_default=True, help="feed processes to try")
@click.option("--videos", default=500, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--compression", type=click.Choice(["gzip", "lzf"]), help="of the archive's datasets")
@click.option("--repeats", default=3, show_default=True)
def settings(model: Path, threads: str, runs: str, feeders: str, videos: int, batch_size: int,
             compression: str | None, repeats: int) -> None:
    """End-to-end queries/s (median of the repeats) at each --threads, --runs and --feeders."""
    with tempfile.TemporaryDirectory() as folder:
        spec = ModelSession(model, RunOptions(provider="cpu", runs=1)).spec
        archive, queries = make_archive(Path(folder), spec, videos, 4, compression=compression)
        for thread_count, run_count, feeder_count in itertools.product(_counts(threads), _counts(runs),
                                                                         _counts(feeders)):
            grounder = Grounder(model, provider="cpu", threads=thread_count, runs=run_count or None,
                                batch_size=batch_size, feeders=feeder_count)
            end_to_end(grounder, archive, queries)  # warm-up
            rates = [end_to_end(grounder, archive, queries)[0] for _ in range(repeats)]
            print(json.dumps({"threads": thread_count, "runs": grounder.session.runs, "feeders": feeder_count,
                              "compression": compression, "end_to_end_qps": round(statistics.median(rates), 1)}),
                  flush=True)


@main.command("one-run", hidden=True)
@click.option("--model", required=True, type=Path)
@click.option("--archive", required=True, type=Path)
@click.option("--queries", required=True, type=Path)
@click.option("--batch-size", default=64)
@click.option("--feeders", default=1)
def one_run(model: Path, archive: Path, queries: Path, batch_size: int, feeders: int) -> None:
    grounder = Grounder(model, provider="cpu", batch_size=batch_size, feeders=feeders)
    rate, count = end_to_end(grounder, archive, queries)
    print(json.dumps({
        "queries": count, "queries_per_s": round(rate, 1),
        "peak_rss_main_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_feeder_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
