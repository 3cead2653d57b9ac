"""Raw measurements -> the figures the tables show: medians with the min-max of the rounds, latency
percentiles, accuracy with the drift from PyTorch fp32, and the targets of the benchmark issue."""
from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks.engines import BY_NAME, REFERENCE
from cnm_export.flops import Flops
from cnm_runtime.spans import HEADLINE_METRICS, grounding_metrics, spans_from_gaussian, temporal_iou



def spread(values: list[float]) -> dict[str, Any]:
    """Median with the min-max of the rounds (and the rounds themselves)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": list(values)}


def speed_figures(round_qps: list[float], latencies_s: list[float], videos: list[int], batch_size: int,
                  flops: Flops | None) -> dict[str, Any]:
    """Queries/s over the rounds, latency per batch over every timed batch, the videos a batch held, and the
    GFLOP/s achieved at the median (the FLOPs of the batches run: shared videos count once)."""
    queries_per_s = spread(round_qps)
    videos_per_batch = float(np.mean(videos))
    flops_per_query = None if flops is None else flops.per_query_at(videos_per_batch / batch_size)
    return {
        "queries_per_s": queries_per_s,
        "latency_ms": {"p50": float(np.percentile(latencies_s, 50) * 1e3),
                       "p99": float(np.percentile(latencies_s, 99) * 1e3), "batches": len(latencies_s)},
        "videos_per_batch": videos_per_batch,
        "gflops_per_s": None if flops_per_query is None else queries_per_s["median"] * flops_per_query / 1e9,
    }


def accuracy_figures(outputs: tuple[np.ndarray, np.ndarray], truth: np.ndarray,
                     reference: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """IoU@0.3/0.5/0.7 and mIoU (fractions), and the largest output differences from ``reference``."""
    metrics = grounding_metrics(temporal_iou(spans_from_gaussian(*outputs), truth))
    figures: dict[str, Any] = {name: metrics[name] for name in HEADLINE_METRICS}
    for key, ours, theirs in zip(("max_abs_d_center", "max_abs_d_width"), outputs, reference or (None, None)):
        figures[key] = None if theirs is None else float(np.max(np.abs(ours - theirs)))
    return figures


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def fastest(engines: dict[str, dict]) -> dict[str, str]:
    """Batch size -> the engine with the highest median queries/s there (of those that ran it)."""
    best: dict[str, tuple[float, str]] = {}
    for name, engine in engines.items():
        for batch, figures in engine.get("speed", {}).items():
            best[batch] = max(best.get(batch, (0.0, "")), (figures["queries_per_s"]["median"], name))
    return {batch: name for batch, (_, name) in best.items()}


def _target(text: str, value: float | None, bound: float, at_least: bool) -> dict[str, Any]:
    met = None if value is None else (value >= bound if at_least else value <= bound)
    return {"target": text, "value": value, "bound": bound, "met": met}


# Accuracy against fp32 (ONNX Runtime fp32, the same as PyTorch fp32) that a lower precision may cost, as a
# fraction (0.01: one point of IoU@0.5 or mIoU in percent).
INT8_COST = 0.01
BF16_COST = 0.005
BEST_CPU_SPEEDUP = 3.0  # the best CPU engine within INT8_COST against ONNX Runtime fp32


def metric_cost(engines: dict[str, dict], name: str) -> float | None:
    """The larger change of IoU@0.5 and mIoU from fp32 (ONNX Runtime fp32) of engine ``name``."""
    ours, fp32 = engines.get(name, {}).get("accuracy"), engines.get("ort-fp32", {}).get("accuracy")
    if not ours or not fp32:
        return None
    return max(abs(ours[metric] - fp32[metric]) for metric in ("IoU@0.5", "mIoU"))


def check_targets(engines: dict[str, dict], end_to_end: dict[str, Any] | None, feed: dict[str, Any] | None,
                  batch: int, videos_shared: bool = True,
                  engine_ends: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """The targets at ``batch``; ``met`` is None where an engine they need did not run, and for the
    end-to-end ratio when the model-only batches shared no video (cnm-run's always do: not comparable)."""
    def qps(name: str) -> float | None:
        speed = engines[name].get("speed", {}).get(str(batch))
        return speed["queries_per_s"]["median"] if speed else None

    def metric_change(name: str, metric: str) -> float | None:
        ours, fp32 = engines[name].get("accuracy"), engines["ort-fp32"].get("accuracy")
        return abs(ours[metric] - fp32[metric]) if ours and fp32 else None

    e2e_qps = end_to_end["queries_per_s"]["median"] if end_to_end else None
    e2e = _target(f"end-to-end cnm-run >= 0.85x model-only ONNX Runtime fp32 at batch {batch}",
                  ratio(e2e_qps, qps("ort-fp32")), 0.85, at_least=True)
    if not videos_shared:
        e2e = {**e2e, "met": None, "target": e2e["target"] + " (not judged: the model-only batches shared no video)"}
    return [
        _target(f"ONNX Runtime fp32 >= 1.8x PyTorch eager queries/s at batch {batch}",
                ratio(qps("ort-fp32"), qps(REFERENCE)), 1.8, at_least=True),
        _target(f"ONNX Runtime int8 >= 3x PyTorch eager queries/s at batch {batch}",
                ratio(qps("ort-int8"), qps(REFERENCE)), 3.0, at_least=True),
        _target("int8 IoU@0.5 within 1 point of fp32 (ONNX Runtime)", metric_change("ort-int8", "IoU@0.5"), 0.01,
                at_least=False),
        _target("int8 mIoU within 1 point of fp32 (ONNX Runtime)", metric_change("ort-int8", "mIoU"), 0.01,
                at_least=False),
        e2e,
        *feed_targets(feed),
        *gpu_targets(engines, end_to_end),
        *cpu_engine_targets(engines, engine_ends or {}, batch, videos_shared),
    ]


def cpu_engine_targets(engines: dict[str, dict], engine_ends: dict[str, dict], batch: int,
                       videos_shared: bool) -> list[dict[str, Any]]:
    """The CPU engines' targets: the fastest within one point of fp32 >= 3x ONNX Runtime fp32; each bf16 engine
    within half a point, each int8 one within one; cnm-run on the fastest engine it runs >= 0.85x that engine
    alone; and auto's fp32 engine (OpenVINO) no slower than ONNX Runtime's as cnm-run ran it before."""
    def qps(name: str) -> float | None:
        speed = engines.get(name, {}).get("speed", {}).get(str(batch))
        return speed["queries_per_s"]["median"] if speed else None

    cpu = [name for name, engine in engines.items() if engine.get("device") == "cpu" and qps(name) is not None]
    close = [name for name in cpu if (metric_cost(engines, name) or 0.0) <= INT8_COST]
    best = max(close, key=qps, default=None)
    label = engines[best]["label"] if best else "none ran"
    targets = [_target(f"best CPU engine within 1 point of fp32 ({label}) >= {BEST_CPU_SPEEDUP:g}x ONNX Runtime fp32 "
                       f"at batch {batch}", ratio(qps(best), qps("ort-fp32")) if best else None, BEST_CPU_SPEEDUP,
                       at_least=True)]
    for name in cpu:
        precision = BY_NAME[name].precision or BY_NAME[name].graph
        if name != "ort-int8" and ("bf16" in precision or "int8" in precision):
            bound = BF16_COST if "bf16" in precision else INT8_COST
            targets.append(_target(f"{engines[name]['label']}: IoU@0.5 and mIoU within {100 * bound:g} point of fp32",
                                   metric_cost(engines, name), bound, at_least=False))
    ran = {name: end for name, end in engine_ends.items() if end.get("ratio") is not None}
    fastest_run = max(ran, key=lambda name: ran[name]["model_only_queries_per_s"], default=None)
    if engine_ends:
        e2e = _target(f"cnm-run on the fastest engine it ran ({engines[fastest_run]['label'] if fastest_run else '-'})"
                      f" >= 0.85x that engine alone at batch {batch}", ran[fastest_run]["ratio"] if fastest_run else None,
                      0.85, at_least=True)
        targets.append(e2e if videos_shared else {**e2e, "met": None, "target": e2e["target"] + " (not judged)"})
    if "ov-fp32" in cpu:
        targets.append(_target(f"OpenVINO fp32 (auto's fp32 engine on the CPU) >= ONNX Runtime fp32, batches side by "
                               f"side, at batch {batch}", ratio(qps("ov-fp32"), qps("ort-fp32-side")), 1.0,
                               at_least=True))
    return targets


def feed_targets(feed: dict[str, Any] | None) -> list[dict[str, Any]]:
    """2 feed processes >= 1.6x one (what 2 cores allow), and 16 >= 5x one where 16 were measured."""
    if feed is None:
        return []
    gains = {int(count): figures["vs_one_process"] for count, figures in feed["by_processes"].items()}
    return [_target(f"feed only: {count} feed processes >= {bound}x one", gains[count], bound, at_least=True)
            for count, bound in ((2, 1.6), (16, 5.0)) if count in gains]


def gpu_targets(engines: dict[str, dict], end_to_end: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Where a GPU ran: ONNX Runtime CUDA (the better of fp32 and fp16) >= PyTorch CUDA fp16 at batch 64-512,
    and cnm-run on the GPU >= 0.8x the model alone on it at its best batch size."""
    def qps(name: str, batch: str) -> float | None:
        speed = engines.get(name, {}).get("speed", {}).get(batch)
        return speed["queries_per_s"]["median"] if speed else None

    peer = engines.get("torch-cuda-fp16", {}).get("speed", {})
    targets = []
    for batch in sorted(peer, key=int):
        if 64 <= int(batch) <= 512:
            ours = max(filter(None, (qps("ort-cuda-fp32", batch), qps("ort-cuda-fp16", batch))), default=None)
            targets.append(_target(f"ONNX Runtime CUDA (better of fp32, fp16) >= PyTorch CUDA fp16 at batch {batch}",
                                   ratio(ours, qps("torch-cuda-fp16", batch)), 1.0, at_least=True))
    gpu_run = (end_to_end or {}).get("gpu")
    if gpu_run:
        targets.append(_target(f"cnm-run on the GPU >= 0.8x the model alone on it (batch {gpu_run['batch_size']})",
                               gpu_run["ratio"], 0.8, at_least=True))
    return targets
