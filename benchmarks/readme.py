"""``python -m benchmarks.readme``: benchmarks/README.md, and the results table and the worst seed's line of
the top README, written from the results JSON under benchmarks/results/ (never retyped by hand).

Each folder of results is one benchmark; every JSON file in it is one run, shown newest first with the
command that made it and the machine it ran on, through the markdown renderer of the module that wrote it.
"""
from __future__ import annotations

import importlib
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import markdown as benchmark_markdown, model_shape
from cnm_train.tables import markdown_table

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
TOP_README = BENCHMARKS.parent / "README.md"
MARKERS = ("<!-- results: python -m benchmarks.readme writes this table -->", "<!-- end of results -->")
SEED_MARKERS = ("<!-- seeds: python -m benchmarks.readme writes this line -->", "<!-- end of seeds -->")


@dataclass(frozen=True)
class Benchmark:
    folder: str  # under benchmarks/results
    title: str
    about: str  # what it measures and how to run it
    renderer: str = "benchmarks.report"  # the module whose markdown(results) renders one run


BENCHMARKS_SHOWN = (
    Benchmark("charades-trained", "The model users deploy, trained: every engine and precision", """\
The original Charades config trained for a few epochs on synthetic features of the real Charades-STA
annotations (`python -m benchmarks.charades_trained`, hours on 2 cores), so that the accuracy table shows
what each engine and precision costs on a model that localizes (OpenVINO int8 calibrates on the training
split; the table is the test split's):

    python -m benchmarks.charades_trained          # -> runs/charades-trained/trained/model-best.pt
    python -m benchmarks.run --checkpoint runs/charades-trained/trained/model-best.pt \\
        --features runs/charades-trained/features.hdf5 --queries ../shared/data/charades/test.json \\
        --out-dir benchmarks/results/charades-trained"""),
    Benchmark("charades-config", "The model users deploy: the original Charades config", """\
The original Charades config (d=256, 4 heads, 3+3 decoder layers, 1024-d frames, 1,111 words) with seeded
untrained weights (`python -m benchmarks.untrained`: speed does not depend on the weights, so its IoU
figures show only the drift between engines), on synthetic features that `cnm-synth` made for the real
Charades-STA test annotations:

    cnm-synth --annotations ../shared/data/charades/test.json --glove ../shared/data/charades/glove.pkl \\
        --vocab-cap 1111 -o runs/charades/features.hdf5
    python -m benchmarks.untrained --config charades_i3d --vocab ../shared/data/charades/glove.pkl \\
        -o runs/charades/untrained.pt
    python -m benchmarks.run --checkpoint runs/charades/untrained.pt --features runs/charades/features.hdf5 \\
        --queries ../shared/data/charades/test.json --out-dir benchmarks/results/charades-config"""),
    Benchmark("demo", "The demo's model", """\
The small model that `cnm-demo` trains (config `default`: d=64, 2+2 layers), on its synthetic test split:

    cnm-demo && python -m benchmarks.run --out-dir benchmarks/results/demo"""),
    Benchmark("gpu", "On a lent GPU machine", """\
`bash benchmarks/device_check.sh` on a GPU machine of the `device` tool (its header says how to ready it):
the same benchmark with the GPU engines and batch 512, cnm-run on the GPU, the feed by feed processes on
the machine's cores, and two epochs of `cnm-train --device cuda`."""),
    Benchmark("seed-sweep", "The embedded default on every seed", """\
The first command's training (`cnm-train` on the embedded synthetic dataset, config `default`) for several
seeds, each set against the prior (the mean training span):

    python -m benchmarks.seed_sweep""", renderer="benchmarks.seed_sweep"),
    Benchmark("features", "cnm-features: videos to features", """\
Frames a second that `cnm-features` decodes (PyAV, one process), that a CLIP vision model of ViT-B/32's shape
embeds alone, and that the command does end to end with each count of decoding processes, on synthetic H.264
videos (random weights: no checkpoint can be fetched here, and speed does not depend on the weights):

    python -m benchmarks.features      # 6 videos of 20 s, 640x360 at 30 frames/s, --fps 2, workers 0 and 1

The same model exported to ONNX Runtime is timed beside it, for the choice of engine: cnm-features keeps
PyTorch, which loads the folder a user has with no export step, while ONNX Runtime's gain stays the size
this table shows.""",
              renderer="benchmarks.features"),
    Benchmark("ray", "cnm-run on Ray Data", """\
`cnm-run --engine ray` with 1 and 2 actors against the local cnm-run on the same archive, for two job sizes
(Ray's start and planning are a fixed cost, so its share falls as the job grows):

    cnm-export tests/golden/model-best.pt --vocab tests/golden/glove.pkl -o /tmp/golden.onnx
    python -m benchmarks.ray_scaling --model /tmp/golden.onnx                          # 12,000 queries
    python -m benchmarks.ray_scaling --model /tmp/golden.onnx --queries-per-video 48   # 48,000

An estimate for a cluster, not a measurement: across N machines each actor grounds as a local core does
(~430 queries/s on the d=128 golden model in the runs below); the limit then moves to the archive's storage
(~160 KB of I3D features a query: an NFS server at an assumed ~1.1 GB/s feeds ~14 actors, so copy archives
to local disks), then to the driver, which parsed ~44,000 queries/s in an earlier run of this benchmark. 8
machines of 16 cores with local archives: ~55,000 queries/s, a million queries in ~20 s plus ~1 min of
start-up.""",
              renderer="benchmarks.ray_scaling"),
)

INTRO = """\
# Benchmarks

Every table below is generated from the JSON files under `benchmarks/results/` by `python -m benchmarks.readme`;
each run names its command, its machine and its date. No real video features can be fetched on our machines:
all figures are on synthetic archives the project generates (`cnm-synth`), so accuracy figures say how
engines differ, not how CNM does on real videos. Speed is measured side by side in one run (each engine in
its own process, rounds interleaving them, warm-up excluded); a ratio compares like with like on the same
cores."""


def runs(folder: Path) -> list[dict[str, Any]]:
    """The results JSON files of ``folder``, newest first."""
    found = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    return sorted(found, key=lambda results: results.get("date", ""), reverse=True)


def render(benchmark: Benchmark, results: dict[str, Any]) -> str:
    if benchmark.renderer == "benchmarks.report":
        return benchmark_markdown(results)
    return importlib.import_module(benchmark.renderer).markdown(results)


def benchmarks_readme() -> str:
    parts = [INTRO]
    for benchmark in BENCHMARKS_SHOWN:  # each run's headings one level below the benchmark's
        found = runs(RESULTS / benchmark.folder)
        if not found:
            continue
        parts += [f"## {benchmark.title}", benchmark.about]
        parts += [re.sub(r"^#", "##", render(benchmark, results).rstrip(), flags=re.M) for results in found]
    return "\n\n".join(parts) + "\n"


def _median(figures: dict[str, Any] | None) -> str:
    return "-" if not figures else f"{figures['queries_per_s']['median']:,.0f}"


def results_table() -> list[str]:
    """The top README's table: the newest run of the deployed config (trained, else seeded), batch 64, and the
    newest GPU run."""
    rows = []
    deployed = runs(RESULTS / "charades-trained") or runs(RESULTS / "charades-config")
    if deployed:
        results = deployed[0]
        model, machine = model_shape(results), f"{results['machine']['cpu']}, {results['machine']['cores']} cores"
        for name in ("torch-eager", "torch-compile", "torch-compile-bf16", "ort-fp32", "ort-int8", "ort-fp32-side",
                     "ov-fp32", "ov-bf16", "ov-int8"):
            if name not in results["engines"]:  # an engine added after the run
                continue
            engine = results["engines"][name]
            rows.append([engine["label"], model, "64", machine, _median(engine.get("speed", {}).get("64"))])
        e2e = results["end_to_end"]
        if e2e:
            rows.append(["cnm-run end to end, ONNX Runtime fp32", model, "64", machine, _median(e2e)])
        for name, end in (results.get("end_to_end_by_engine") or {}).items():
            if "error" not in end:
                rows.append([f"cnm-run end to end, {results['engines'][name]['label']}", model, "64", machine,
                             _median(end)])
        in_a_thread = (results.get("feed_only") or {}).get("by_processes", {}).get("0")
        if in_a_thread:  # cnm-run's default on the CPU; feed processes are in benchmarks/README.md
            rows.append(["cnm-run's feed alone, in a thread", model, "64", machine, _median(in_a_thread)])
    gpu = runs(RESULTS / "gpu")
    if gpu:
        results = gpu[0]
        for name, engine in results["engines"].items():
            if engine["device"] == "gpu" and "speed" in engine:
                batch = max(engine["speed"], key=int)
                rows.append([f"{engine['label']} ({results['date'][:10]})", model_shape(results), batch,
                             f"{results['machine']['gpu']}", _median(engine["speed"][batch])])
    return markdown_table(["engine", "model", "batch", "machine", "queries/s (median)"], rows, "llrlr")


def worst_seed() -> list[str]:
    """The top README's line under the demo's output: the newest seed sweep's worst seed, not its best."""
    found = runs(RESULTS / "seed-sweep")
    if not found:
        return ["No seed sweep has run yet (`python -m benchmarks.seed_sweep`)."]
    results = found[0]
    summary, worst = results["summary"], results["summary"]["worst"]
    seeds = ", ".join(str(run["seed"]) for run in results["seeds"])
    return textwrap.wrap(
        f"Over seeds {seeds} (`python -m benchmarks.seed_sweep`, {results['machine']['cores']} cores) the worst "
        f"seed, {summary['worst_seed']}, scores mIoU {worst['cnm']['mIoU']:.3f} against the prior's "
        f"{worst['prior']['mIoU']:.3f} and IoU@0.5 {worst['cnm']['IoU@0.5']:.3f} against "
        f"{worst['prior']['IoU@0.5']:.3f}; the slowest demo took {summary['max_wall_s']:.0f} s.", 108)


def generated_blocks() -> list[tuple[tuple[str, str], list[str]]]:
    """Each block of the top README that this module writes: its markers and its lines."""
    return [(MARKERS, results_table()), (SEED_MARKERS, worst_seed())]


def with_block(text: str, markers: tuple[str, str], lines: list[str]) -> str:
    """``text`` with what lies between ``markers`` replaced by ``lines``."""
    head, rest = text.split(markers[0], 1)
    _, tail = rest.split(markers[1], 1)
    return head + markers[0] + "\n" + "\n".join(lines) + "\n" + markers[1] + tail


def main() -> None:
    (BENCHMARKS / "README.md").write_text(benchmarks_readme())
    text = TOP_README.read_text()
    for markers, lines in generated_blocks():
        text = with_block(text, markers, lines)
    TOP_README.write_text(text)


if __name__ == "__main__":
    main()
