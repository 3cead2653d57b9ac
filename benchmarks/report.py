"""Results -> the markdown tables printed after a run and saved beside the JSON."""
from __future__ import annotations

from typing import Any

from benchmarks.engines import REFERENCE
from benchmarks.summary import ratio
from cnm_runtime.spans import HEADLINE_METRICS
from cnm_train.tables import markdown_table


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}x"


def _qps(figures: dict[str, Any]) -> str:
    return f"{_number(figures['median'])} ({_number(figures['min'])}-{_number(figures['max'])})"


def model_shape(results: dict[str, Any]) -> str:
    """``d=256, 3+3 layers, 1024-d frames``; for a run that did not record its model, the checkpoint's path."""
    shape = results.get("model")
    if not shape:
        return f"{results['inputs']['checkpoint']} (size not recorded)"
    return f"d={shape['d_model']}, {shape['frame_layers']}+{shape['word_layers']} layers, {shape['frame_dim']}-d frames"


def _header(results: dict[str, Any]) -> list[str]:
    machine, inputs, settings = results["machine"], results["inputs"], results["settings"]
    gpu = machine["gpu"] or "no GPU"
    features = "synthetic features (cnm-synth)" if inputs["synthetic_features"] else "features from the archive"
    return [
        f"## Benchmark: {machine['cpu']}, {machine['cores']} cores, {gpu} ({results['date']})",
        "",
        f"`{results['command']}`",
        "",
        f"Model {model_shape(results)}; {inputs['queries_used']} labelled queries ({features}; "
        f"{inputs['queries_skipped']} skipped), "
        f"{settings['rounds']} rounds, {settings['threads']} threads for every engine "
        f"(PyTorch with OMP_WAIT_POLICY={settings['torch_omp_wait_policy']}; \"side by side\": "
        f"{settings['threads']} batches at once on one thread each, as cnm-run runs on the CPU; OpenVINO: its "
        f"THROUGHPUT hint's streams, as many batches at once as infer requests); "
        f"measured fp32 matrix-multiply rate {_number(machine['sgemm_gflops'])} GFLOP/s (numpy, "
        f"{machine['sgemm_size']}^3)" + (
            f"; 1-minute load average {_number(load[0], 2)} before, {_number(load[1], 2)} after "
            f"(its own work included)."
            if (load := machine.get("load_average_before_after")) else "."),
    ]


def _speed_table(results: dict[str, Any]) -> list[str]:
    sgemm = results["machine"]["sgemm_gflops"]
    eager = results["engines"][REFERENCE].get("speed", {})
    rows = []
    for engine in results["engines"].values():
        if "speed" not in engine:
            rows.append([engine["label"], "-", "", engine["status"], "", "", ""])
            continue
        for batch, figures in engine["speed"].items():
            qps = figures["queries_per_s"]
            speedup = ratio(qps["median"], eager.get(batch, {}).get("queries_per_s", {}).get("median"))
            gflops = figures["gflops_per_s"]
            share = _number(gflops) + (f" ({100 * gflops / sgemm:.0f}%)" if engine["device"] == "cpu" else "")
            rows.append([engine["label"], batch, _number(figures["videos_per_batch"]), _qps(qps),
                         f"{_number(figures['latency_ms']['p50'])} / {_number(figures['latency_ms']['p99'])}",
                         _times(speedup), share])
    sharing = ("every query with its own copy of its video's clips (--one-video-per-query)"
               if results["settings"]["one_video_per_query"] else
               "each video once however many of its queries the batch holds, as cnm-run batches them")
    winners = ", ".join(f"batch {batch}: {results['engines'][name]['label']}"
                        for batch, name in results["fastest"].items())
    return ["### Model-only throughput", "", *markdown_table(
        ["engine", "batch", "videos", "queries/s median (min-max)", "latency per batch p50 / p99 (ms)", "vs eager",
         "GFLOP/s (% of sgemm)"], rows, "lrrrrrr"),
        "", f"Fastest engine: {winners}.", "",
        f"videos: the mean number of videos in a batch of consecutive queries of the file, {sharing}. "
        "GFLOP/s: the FLOPs of the batches run (the graph's matrix products; int8 ones count alike; a "
        "video's share once per batch) per second; % of the measured fp32 matrix-multiply rate."]


def _end_to_end_table(results: dict[str, Any]) -> list[str]:
    e2e = results["end_to_end"]
    if e2e is None:
        return ["### End to end (cnm-run)", "", "not run"]
    at_once = f", {e2e['runs']} batches at once" if "runs" in e2e else ""  # runs made before side by side lack it
    lines = [
        f"### End to end: cnm-run on the archive, batch {e2e['batch_size']}, CPU provider{at_once}",
        "",
        *markdown_table(
            ["queries", "cnm-run queries/s median (min-max)", "model-only ONNX Runtime fp32", "ratio",
             "model-only, batches side by side", "ratio", "peak RSS (MB)"],
            [[str(e2e["queries"]), _qps(e2e["queries_per_s"]), _number(e2e["model_only_queries_per_s"]),
              _times(e2e['ratio']), _number(e2e.get("side_by_side_queries_per_s")),
              _times(e2e.get('side_by_side_ratio')), _number(e2e["peak_rss_mb"], 0)]], "rrrrrrr"),
        "",
        "cnm-run's own queries/s (its --metrics): reading, resampling, tokenizing and inference of every query, "
        "from its first query to its last prediction (loading the model excluded); the labelled queries repeated, "
        "each copy reading its videos again. It runs its batches side by side, one thread each, so it is also "
        "set against the model alone run that way (the second ratio: what the reading, resampling and "
        "tokenizing leave of the model's speed). Peak RSS: the largest process of the run.",
    ]
    gpu = e2e.get("gpu")
    if gpu:
        label = results["engines"][gpu["engine"]]["label"]
        lines += ["", f"On the GPU: cnm-run --provider cuda, batch {gpu['batch_size']}, {gpu['feed_processes']} feed "
                  f"processes, {gpu['queries']} queries: {_qps(gpu['queries_per_s'])} queries/s against "
                  f"{_number(gpu['model_only_queries_per_s'])} for {label} alone ({_times(gpu['ratio'])}), "
                  f"peak RSS {_number(gpu['peak_rss_mb'], 0)} MB."]
    return lines


def _engine_end_to_end_table(results: dict[str, Any]) -> list[str]:
    ends = results.get("end_to_end_by_engine")
    if not ends:
        return []
    rows = []
    for name, end in ends.items():
        label = results["engines"][name]["label"]
        if "error" in end:
            rows.append([label, "-", f"not run: {end['error']}", "", "", ""])
            continue
        rows.append([label, end["provider"], _qps(end["queries_per_s"]), _number(end["model_only_queries_per_s"]),
                     _times(end["ratio"]), _number(end["peak_rss_mb"], 0)])
    batch = next((end["batch_size"] for end in ends.values() if "batch_size" in end), "-")
    return [f"### End to end on other engines: cnm-run --provider openvino, batch {batch}, its defaults", "",
            *markdown_table(["engine", "cnm-run reports", "cnm-run queries/s median (min-max)", "model-only",
                             "ratio", "peak RSS (MB)"], rows, "llrrrr"),
            "", "cnm-run through its public command line with the engine's own defaults (OpenVINO's THROUGHPUT "
            "streams, a batch in flight per infer request), set against the same engine alone at the same batch "
            "size: what reading, resampling and tokenizing leave of its speed."]


def _feed_table(results: dict[str, Any]) -> list[str]:
    feed = results.get("feed_only")
    if feed is None:
        return []
    rows = [[processes if processes != "0" else "0 (a thread)", _qps(figures["queries_per_s"]),
             _times(figures['vs_one_process']), _number(figures["startup_s"], 2)]
            for processes, figures in feed["by_processes"].items()]
    return [f"### Feed only: cnm-run with the model replaced by a no-op, batch {feed['batch_size']}, "
            f"{feed['queries']} queries", "",
            *markdown_table(["feed processes", "queries/s median (min-max)", "vs one process", "start-up (s)"], rows,
                            "rrrr"),
            "", "Reading, resampling, tokenizing and stacking alone: the most a model faster than the feed (a GPU) "
            "can get end to end. The clock starts at the first result; start-up is the time to it."]


COST_METRICS = ("IoU@0.5", "mIoU")  # the changes from fp32 that the accuracy table shows


def _accuracy_table(results: dict[str, Any]) -> list[str]:
    rows = []
    fp32 = results["engines"][REFERENCE].get("accuracy")
    for engine in results["engines"].values():
        if "accuracy" not in engine:
            continue
        figures = engine["accuracy"]
        rows.append([engine["label"], *(f"{100 * figures[name]:.2f}" for name in HEADLINE_METRICS),
                     *("-" if not fp32 else f"{100 * (figures[name] - fp32[name]):+.2f}" for name in COST_METRICS),
                     *("-" if figures[key] is None else f"{figures[key]:.1e}"
                       for key in ("max_abs_d_center", "max_abs_d_width")),
                     *(_number(engine[key] / 1e9, 3) for key in ("flops_per_query", "flops_per_video"))])
    return [f"### Accuracy on the {results['inputs']['queries_used']} labelled queries", "", *markdown_table(
        ["engine", *HEADLINE_METRICS, *(f"d {name}" for name in COST_METRICS), "max abs d center", "max abs d width",
         "GFLOPs per query", "of which per video"],
        rows, "l" + "r" * (len(HEADLINE_METRICS) + len(COST_METRICS) + 4)),
        "", "IoU in percent; differences (d: points of IoU, and outputs) against PyTorch eager fp32. GFLOPs per "
        "query: a query whose video no other query of its batch reads; the part per video is spent once per video "
        "of a batch."]


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["### Targets", ""]
    for target in results["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured" if target["value"] is None else "not judged"}[
            target["met"]]
        lines.append(f"- {target['target']}: {_number(target['value'], 3)} ({verdict})")
    return lines


def markdown(results: dict[str, Any]) -> str:
    sections = [_header(results), _speed_table(results), _end_to_end_table(results),
                _engine_end_to_end_table(results), _feed_table(results), _accuracy_table(results), _targets(results)]
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"
