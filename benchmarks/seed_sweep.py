"""``python -m benchmarks.seed_sweep``: the first command, ``cnm-demo``, on several seeds, each against the prior.

One seed beating the prior says little about the next: the sweep runs ``cnm-demo --seed S`` (the built-in
data and the training both drawn from S) as a user types it, one process per seed, and reports the test
split's mIoU and IoU@0.5 of the prior (the mean training span) and of the trained CNM, the epoch that
validation selected, and the seconds each seed took (wall clock and CPU, the demo's own processes only;
the load average and the matrix-multiply rate measured before the seeds say how fast and how busy the
machine was). The features are synthetic (``cnm-synth``).

Results go to ``<out-dir>/<machine>-<date>.json`` and ``.md``; each seed's demo folder stays in ``--work``
without its synthetic data (``cnm-demo --seed S`` makes the same again).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from benchmarks.machine import SGEMM_SIZE, cpu_model, sgemm_gflops, slug
from cnm_runtime.cores import available_cores
from cnm_train.tables import markdown_table
from cnm_runtime.run_files import write_json_atomic

log = logging.getLogger("seed-sweep")

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "seed-sweep"
DEFAULT_SEEDS = (0, 1, 2, 3, 4, 8)
METRICS = ("mIoU", "IoU@0.5")
# What "beats the prior" means here: clearly on mIoU, and at least level on IoU@0.5.
MIN_MIOU_GAIN = 0.05


def children_cpu_s() -> float:
    """User + system seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_seed(seed: int, work: Path) -> dict[str, Any]:
    """``cnm-demo --seed SEED`` in its own process, timed; its prior, CNM and selection figures."""
    out = work / f"seed-{seed}"
    command = [sys.executable, "-m", "cnm_export.demo", "--out", str(out), "--seed", str(seed)]
    log.info("seed %d: %s", seed, " ".join(command))
    cpu_before, started = children_cpu_s(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall_s, cpu_s = time.perf_counter() - started, children_cpu_s() - cpu_before
    demo = json.loads((out / "demo.json").read_text())
    training = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out / "data")
    prior = {m: demo["pytorch"]["prior"][m] for m in METRICS}
    cnm = {m: demo["pytorch"]["test"][m] for m in METRICS}
    return {
        "seed": seed,
        "test_queries": demo["pytorch"]["test_queries"],
        "prior": prior,
        "cnm": cnm,
        "onnx_mIoU": demo["onnx"]["mIoU"],
        "selected_epoch": training["best_epoch"],
        "epochs": len(training["epochs"]),
        "selected_by": training["selected_by"],
        "beats_prior": cnm["mIoU"] >= prior["mIoU"] + MIN_MIOU_GAIN and cnm["IoU@0.5"] >= prior["IoU@0.5"],
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst over the seeds; the worst seed is the one with the smallest mIoU gain over the prior."""
    worst = min(seeds, key=lambda s: s["cnm"]["mIoU"] - s["prior"]["mIoU"])
    return {
        "mean": {who: {m: sum(s[who][m] for s in seeds) / len(seeds) for m in METRICS} for who in ("prior", "cnm")},
        "worst_seed": worst["seed"],
        "worst": {who: worst[who] for who in ("prior", "cnm")},
        "every_seed_beats_prior": all(s["beats_prior"] for s in seeds),
        "max_wall_s": max(s["wall_s"] for s in seeds),
        "max_cpu_s": max(s["cpu_s"] for s in seeds),
    }


def _pair(figures: dict[str, dict[str, float]], metric: str) -> list[str]:
    return [f"{figures['prior'][metric]:.3f}", f"{figures['cnm'][metric]:.3f}"]


def markdown(results: dict[str, Any]) -> str:
    machine, summary = results["machine"], results["summary"]
    rows = [[str(s["seed"]), *_pair(s, "mIoU"), *_pair(s, "IoU@0.5"), "yes" if s["beats_prior"] else "**no**",
             str(s["selected_epoch"]), f"{s['wall_s']:.0f}", f"{s['cpu_s']:.0f}"] for s in results["seeds"]]
    rows.append(["mean", *_pair(summary["mean"], "mIoU"), *_pair(summary["mean"], "IoU@0.5"), "", "",
                 "", ""])
    rows.append([f"worst (seed {summary['worst_seed']})", *_pair(summary["worst"], "mIoU"),
                 *_pair(summary["worst"], "IoU@0.5"), "", "", f"{summary['max_wall_s']:.0f} (max)",
                 f"{summary['max_cpu_s']:.0f} (max)"])
    first = results["seeds"][0]
    lines = [
        f"## Seed sweep: {machine['cpu']}, {machine['cores']} cores ({results['date']})",
        "",
        f"`{results['command']}`",
        "",
        f"`cnm-demo --seed S` for each seed: the built-in synthetic data and the training both drawn from S; "
        f"{first['epochs']} epochs, the model selected by {first['selected_by']}; test split of "
        f"{first['test_queries']} queries, synthetic features (cnm-synth). \"beats\": CNM's mIoU at least the "
        f"prior's + {MIN_MIOU_GAIN} and its IoU@0.5 at least the prior's. Seconds: the whole demo (data, "
        f"training, export, both engines), wall clock and CPU; before the seeds the load average was "
        f"{results['load_average_before']} and numpy multiplied {machine['sgemm_size']}^3 matrices at "
        f"{machine['sgemm_gflops']:,.1f} GFLOP/s (a busier or slower machine takes longer).",
        "",
        *markdown_table(["seed", "prior mIoU", "CNM mIoU", "prior IoU@0.5", "CNM IoU@0.5", "beats",
                         "selected epoch", "wall s", "CPU s"], rows, "lrrrrlrrr"),
        "",
        f"Every seed beats the prior: {'yes' if summary['every_seed_beats_prior'] else 'no'}.",
    ]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``<machine>-<date>`` .json and .md in ``out_dir``."""
    machine = results["machine"]
    name = slug(machine["cpu"], f"{machine['cores']}c") + "-" + results["date"][:10]
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    write_json_atomic(json_path, results)
    md_path.write_text(markdown(results))
    return [json_path, md_path]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"a seed appears twice in {text!r}")
    return seeds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), show_default=True, help="comma-separated")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default="runs/seed-sweep",
              show_default=True, help="Each seed's demo folder goes to WORK/seed-S.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True)
def main(seeds: str, work: Path, out_dir: Path) -> None:
    """Run cnm-demo once per seed and report the prior and CNM per seed, their mean and the worst seed."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = datetime.now().astimezone()
    load_before = round(os.getloadavg()[0], 2)
    machine = {"cpu": cpu_model(), "cores": available_cores(), "sgemm_gflops": round(sgemm_gflops(), 1),
               "sgemm_size": SGEMM_SIZE, "python": sys.version.split()[0],
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    per_seed = [run_seed(seed, work) for seed in parse_seeds(seeds)]
    results = {
        "command": " ".join(["python -m benchmarks.seed_sweep", *sys.argv[1:]]),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "features": "synthetic (cnm-synth), the built-in default dataset",
        "load_average_before": load_before,
        "seeds": per_seed,
        "summary": summarize(per_seed),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_results(results, out_dir)
    click.echo(markdown(results))
    click.echo("written: " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
