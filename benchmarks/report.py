"""Results -> the markdown tables printed after a run and saved beside the JSON."""
from __future__ import annotations

from typing import Any

from benchmarks.engines import REFERENCE
from benchmarks.summary import ratio
from cnm_runtime.spans import HEADLINE_METRICS


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _qps(figures: dict[str, Any]) -> str:
    return f"{_number(figures['median'])} ({_number(figures['min'])}-{_number(figures['max'])})"


def _header(results: dict[str, Any]) -> list[str]:
    machine, inputs, settings = results["machine"], results["inputs"], results["settings"]
    gpu = machine["gpu"] or "no GPU"
    features = "synthetic features (cnm-synth)" if inputs["synthetic_features"] else "features from the archive"
    return [
        f"## Benchmark: {machine['cpu']}, {machine['cores']} cores, {gpu} ({results['date']})",
        "",
        f"`{results['command']}`",
        "",
        f"{inputs['queries_used']} labelled queries ({features}; {inputs['queries_skipped']} skipped), "
        f"{settings['rounds']} rounds, {settings['threads']} threads for every engine "
        f"(PyTorch with OMP_WAIT_POLICY={settings['torch_omp_wait_policy']}; \"side by side\": "
        f"{settings['threads']} batches at once on one thread each, as cnm-run runs on the CPU); "
        f"measured fp32 matrix-multiply rate {_number(machine['sgemm_gflops'])} GFLOP/s (numpy, "
        f"{machine['sgemm_size']}^3).",
    ]


def _speed_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### Model-only throughput",
        "",
        "| engine | batch | videos | queries/s median (min-max) | latency per batch p50 / p99 (ms) | vs eager "
        "| GFLOP/s (% of sgemm) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    sgemm = results["machine"]["sgemm_gflops"]
    eager = results["engines"][REFERENCE].get("speed", {})
    for engine in results["engines"].values():
        if "speed" not in engine:
            lines.append(f"| {engine['label']} | - | | {engine['status']} | | | |")
            continue
        for batch, figures in engine["speed"].items():
            qps = figures["queries_per_s"]
            reference = eager.get(batch, {}).get("queries_per_s", {}).get("median")
            speedup = ratio(qps["median"], reference)
            gflops = figures["gflops_per_s"]
            share = _number(gflops)
            if engine["device"] == "cpu":  # the ceiling measured is the CPU's
                share += f" ({100 * gflops / sgemm:.0f}%)"
            lines.append(
                f"| {engine['label']} | {batch} | {_number(figures['videos_per_batch'])} | {_qps(qps)} | "
                f"{_number(figures['latency_ms']['p50'])} / "
                f"{_number(figures['latency_ms']['p99'])} | {_number(speedup, 2)}x | {share} |"
            )
    sharing = ("every query with its own copy of its video's clips (--one-video-per-query)"
               if results["settings"]["one_video_per_query"] else
               "each video once however many of its queries the batch holds, as cnm-run batches them")
    winners = ", ".join(f"batch {batch}: {results['engines'][name]['label']}"
                        for batch, name in results["fastest"].items())
    lines += ["", f"Fastest engine: {winners}.", "",
              f"videos: the mean number of videos in a batch of consecutive queries of the file, {sharing}. "
              "GFLOP/s: the FLOPs of the batches run (the graph's matrix products; int8 ones count alike; a "
              "video's share once per batch) per second; % of the measured fp32 matrix-multiply rate."]
    return lines


def _end_to_end_table(results: dict[str, Any]) -> list[str]:
    e2e = results["end_to_end"]
    if e2e is None:
        return ["### End to end (cnm-run)", "", "not run"]
    return [
        f"### End to end: cnm-run on the archive, batch {e2e['batch_size']}, CPU provider, "
        f"{e2e['runs']} batches at once",
        "",
        "| queries | cnm-run queries/s median (min-max) | model-only ONNX Runtime fp32 | ratio "
        "| model-only, batches side by side | ratio | peak RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {e2e['queries']} | {_qps(e2e['queries_per_s'])} | {_number(e2e['model_only_queries_per_s'])} | "
        f"{_number(e2e['ratio'], 2)}x | {_number(e2e['side_by_side_queries_per_s'])} | "
        f"{_number(e2e['side_by_side_ratio'], 2)}x | {_number(e2e['peak_rss_mb'], 0)} |",
        "",
        "cnm-run's own queries/s (its --metrics): reading, resampling, tokenizing and inference of every query, "
        "from its first query to its last prediction (loading the model excluded); the labelled queries repeated, "
        "each copy reading its videos again. It runs its batches side by side, one thread each, so it is also "
        "set against the model alone run that way (the second ratio: what the reading, resampling and "
        "tokenizing leave of the model's speed). Peak RSS: the largest process of the run.",
    ]


def _accuracy_table(results: dict[str, Any]) -> list[str]:
    lines = [
        f"### Accuracy on the {results['inputs']['queries_used']} labelled queries",
        "",
        "| engine | " + " | ".join(HEADLINE_METRICS)
        + " | max abs d center | max abs d width | GFLOPs per query | of which per video |",
        "|---|" + "---:|" * (len(HEADLINE_METRICS) + 4),
    ]
    for engine in results["engines"].values():
        if "accuracy" not in engine:
            continue
        figures = engine["accuracy"]
        scores = " | ".join(f"{100 * figures[name]:.2f}" for name in HEADLINE_METRICS)
        drift = " | ".join("-" if figures[key] is None else f"{figures[key]:.1e}"
                           for key in ("max_abs_d_center", "max_abs_d_width"))
        gflops = " | ".join(_number(engine[key] / 1e9, 3) for key in ("flops_per_query", "flops_per_video"))
        lines.append(f"| {engine['label']} | {scores} | {drift} | {gflops} |")
    lines += ["", "IoU in percent; differences against PyTorch eager fp32. GFLOPs per query: a query whose video "
              "no other query of its batch reads; the part per video is spent once per video of a batch."]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["### Targets", ""]
    for target in results["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured" if target["value"] is None else "not judged"}[
            target["met"]]
        lines.append(f"- {target['target']}: {_number(target['value'], 3)} ({verdict})")
    return lines


def markdown(results: dict[str, Any]) -> str:
    sections = [_header(results), _speed_table(results), _end_to_end_table(results), _accuracy_table(results),
                _targets(results)]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
