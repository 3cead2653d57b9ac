"""cnm-run --engine ray with 1, 2, ... actors against the local cnm-run, on one machine and one archive.

    cnm-export tests/golden/model-best.pt --vocab tests/golden/glove.pkl -o golden.onnx
    python -m benchmarks.ray_scaling --model golden.onnx      # JSON to benchmarks/results/ray/

Each engine runs as the cnm-run command (random features from ``cnm_run_scale.make_archive``: speed only),
in rounds that alternate the engines, so that other load on the machine falls on all of them alike. For
each run it records:

- ``queries_per_s``: cnm-run's own figure (its metrics: from the model loaded, or from Ray started, to the
  last record written; for Ray that includes cutting the shards and starting the actors),
- ``steady_queries_per_s`` (Ray): the queries written between the first shard's files and the last's,
  over that time: the rate a long job runs at once the actors are up,
- ``command_s``: the whole command, Ray's start and stop included,
- ``cpu_ms_per_query``: CPU time of the command and every process under it (Ray's daemons and actors),
  sampled from /proc, a query; ``steady_cpu_ms_per_query`` (Ray) the same between the first shard and the
  last. CPU time per query barely changes with other load on the machine, unlike queries/s: local CPU per
  query over Ray's (``vs_local_by_cpu``, ``steady_vs_local_by_cpu``) is the ratio of their rates on cores
  that both have to themselves,
- the load average before and after.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from benchmarks.cnm_run_scale import make_archive
from benchmarks.machine import cpu_model, slug
from cnm_train.tables import markdown_table
from cnm_runtime.cores import available_cores
from cnm_runtime.options import RunOptions
from cnm_runtime.session import ModelSession

RESULTS = Path(__file__).parent / "results" / "ray"
TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds so far)."""
    processes = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            processes[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)  # ppid, utime+stime
    return processes


class TreeCpu:
    """CPU seconds of a process and all its descendants, sampled every ``interval`` while it runs (each
    process counted at its last sample: the last fraction of an interval of each is missed)."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval, self.seen = root, interval, {}
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds of the tree so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            processes = _processes()
            children: dict[int, list[int]] = {}
            for pid, (parent, _) in processes.items():
                children.setdefault(parent, []).append(pid)
            pending = [self.root]
            while pending:
                pid = pending.pop()
                if pid in processes:
                    self.seen[pid] = processes[pid][1]
                    pending += children.get(pid, [])
            self.samples.append((time.time(), sum(self.seen.values())))
            self._stop.wait(self.interval)

    def at(self, moment: float) -> float:
        """CPU seconds of the tree at the first sample from ``moment`` on."""
        return next((cpu for sampled, cpu in self.samples if sampled >= moment), self.samples[-1][1])

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def _load() -> list[float]:
    return [float(part) for part in Path("/proc/loadavg").read_text().split()[:3]]


def run_once(args: list[str], out: Path, metrics: Path) -> dict:
    """One cnm-run command; with --engine ray, also its rate and CPU per query between the first shard
    written and the last."""
    load_before = _load()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cnm_runtime", *args, "-o", str(out), "--metrics",
                                str(metrics)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(process.pid)
    _, err = process.communicate()
    cpu_s = cpu.stop()
    if process.returncode != 0:
        raise RuntimeError(f"cnm-run {' '.join(args)} failed:\n{err}")
    result = json.loads(metrics.read_text())
    run = {"queries_per_s": result["queries_per_s"], "wall_s": result["wall_s"],
           "command_s": round(time.perf_counter() - started, 2), "cpu_s": round(cpu_s, 2),
           "cpu_ms_per_query": round(1000 * cpu_s / result["queries"], 3)}
    shards = sorted((path.stat().st_mtime, path.read_bytes().count(b"\n")) for path in out.glob("predictions-*.jsonl"))
    if len(shards) > 2:
        (first, _), (last, _) = shards[0], shards[-1]
        queries = sum(count for _, count in shards[1:])
        run["steady_queries_per_s"] = round(queries / (last - first), 1)
        run["steady_cpu_ms_per_query"] = round(1000 * (cpu.at(last) - cpu.at(first)) / queries, 3)
    return {**run, "load_before": load_before, "load_after": _load()}


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def markdown(results: dict) -> str:
    """The run as the table benchmarks/README.md shows."""
    def cell(value: float | None, suffix: str = "") -> str:
        return "-" if value is None else f"{value:,.2f}{suffix}"

    rows = [[engine, cell(figures["queries_per_s"]), cell(figures["steady_queries_per_s"]),
             cell(figures["cpu_ms_per_query"]), cell(figures["steady_cpu_ms_per_query"]),
             cell(figures["vs_local_queries_per_s"], "x"), cell(figures.get("steady_vs_local_by_cpu"), "x")]
            for engine, figures in results["summary_medians"].items()]
    loads = [run["load_before"][0] for runs in results["runs"].values() for run in runs]
    return "\n".join([
        f"## Ray Data against the local cnm-run: {results['machine']} ({results['date']})", "",
        f"`{results['command']}`: {results['queries']:,} queries over "
        f"{results['videos']:,} videos ({results['features']}), batch {results['batch_size']}, shards of "
        f"{results['shard_size']}, {results['provider']} provider, medians of {results['rounds']} rounds; load "
        f"average {min(loads):.1f}-{max(loads):.1f} before the runs (above the core count: other work on the "
        f"machine too).", "",
        *markdown_table(["engine", "queries/s", "steady queries/s", "CPU ms/query", "steady CPU ms/query",
                         "vs local (queries/s)", "steady vs local (by CPU)"], rows, "lrrrrrr"),
        "", "Steady: between the first shard's files and the last's, Ray's start and the planning left out. "
        "By CPU: the local run's CPU per query over this engine's, the ratio of their rates on cores that "
        "both have to themselves."])


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--videos", default=1000, show_default=True)
@click.option("--queries-per-video", default=12, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--shard-batches", default=8, show_default=True)
@click.option("--actors", default="1,2", show_default=True, help="Ray actor counts to run")
@click.option("--rounds", default=2, show_default=True, help="each engine this many times, alternating")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(model: Path, videos: int, queries_per_video: int, batch_size: int, shard_batches: int, actors: str,
         rounds: int, out_dir: Path) -> None:
    """Queries/s and CPU per query of the local engine and of Ray with each actor count."""
    engines = {"local": []} | {f"ray-{count}-actors": [] for count in map(int, actors.split(","))}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        archive, queries = make_archive(folder, ModelSession(model, RunOptions(provider="cpu", runs=1)).spec, videos, queries_per_video)
        common = ["--model", str(model), "--features", str(archive), "--queries", str(queries), "--provider", "cpu",
                  "--batch-size", str(batch_size)]
        for round_ in range(rounds):
            for engine, runs in engines.items():
                args = common if engine == "local" else [
                    *common, "--engine", "ray", "--actors", engine.split("-")[1], "--shard-batches", str(shard_batches)]
                run = run_once(args, folder / f"{engine}-{round_}", folder / f"metrics-{engine}-{round_}.json")
                runs.append(run)
                print(json.dumps({"engine": engine, "round": round_, **run}), file=sys.stderr, flush=True)
    local_qps, local_cpu = _median(engines["local"], "queries_per_s"), _median(engines["local"], "cpu_ms_per_query")
    summary = {}
    for engine, runs in engines.items():
        summary[engine] = {key: _median(runs, key) for key in ("queries_per_s", "steady_queries_per_s", "command_s",
                                                               "cpu_ms_per_query", "steady_cpu_ms_per_query")}
        summary[engine]["vs_local_queries_per_s"] = round(summary[engine]["queries_per_s"] / local_qps, 3)
        # what the rate would be against the local run's where both had the cores to themselves
        summary[engine]["vs_local_by_cpu"] = round(local_cpu / summary[engine]["cpu_ms_per_query"], 3)
        if summary[engine]["steady_cpu_ms_per_query"]:
            summary[engine]["steady_vs_local_by_cpu"] = round(local_cpu / summary[engine]["steady_cpu_ms_per_query"], 3)
    machine = f"{cpu_model()}, {available_cores()} cores"
    result = {
        "command": " ".join(["python -m benchmarks.ray_scaling", *sys.argv[1:]]),
        "machine": machine, "date": datetime.date.today().isoformat(), "model": model.name,
        "features": "synthetic (random, benchmarks/cnm_run_scale.make_archive)",
        "videos": videos, "queries": videos * queries_per_video, "batch_size": batch_size,
        "shard_size": shard_batches * batch_size, "provider": "cpu", "rounds": rounds,
        "summary_medians": summary, "runs": engines,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # one file per machine, day and job size: runs of several sizes on one day sit side by side
    path = out_dir / f"{slug(cpu_model(), f'{available_cores()}c')}-{result['date']}-{result['queries']}q.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
