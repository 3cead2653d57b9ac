"""Gaussian (center, width) -> span, IoU and the metrics, as the original evaluation computes them."""
from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
METRIC_NAMES = tuple(f"IoU@{t}" for t in IOU_THRESHOLDS) + ("mIoU",)
# The columns tables show where all five thresholds would be too many.
HEADLINE_METRICS = ("IoU@0.3", "IoU@0.5", "IoU@0.7", "mIoU")


def spans_from_gaussian(center: np.ndarray, width: np.ndarray) -> np.ndarray:
    """``[B, 2]`` float32 spans as fractions: [max(c - w/2, 0), min(c + w/2, 1)]."""
    center = np.asarray(center, dtype=np.float32)
    half = np.asarray(width, dtype=np.float32) / np.float32(2)
    return np.stack([np.maximum(center - half, 0), np.minimum(center + half, 1)], axis=-1)


def span_fractions(seconds: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """``[B, 2]`` spans in seconds as fractions of their videos' ``[B]`` durations, as the original divides
    them; a quotient past float64's range is +inf (a valid query: 1e308 s of a 0.5 s video), without a
    warning, and ``temporal_iou`` takes it."""
    with np.errstate(over="ignore"):
        return np.asarray(seconds, dtype=np.float64) / np.asarray(durations, dtype=np.float64)[:, None]


def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of ``[B, 2]`` spans, the original ``calculate_IoU_batch2`` (1e-10 smoothing, negatives to 0).

    Spans are fractions of the video: finite, or +inf where seconds divided by a tiny duration overflowed
    (``span_fractions``). The IoU is then its limit, 0: a finite overlap over an infinite union (where the
    arithmetic would give inf / inf or -inf / inf, NaN). Always finite for spans that are not NaN.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    union = (np.minimum(pred[:, 0], gt[:, 0]), np.maximum(pred[:, 1], gt[:, 1]))
    inter = (np.maximum(pred[:, 0], gt[:, 0]), np.minimum(pred[:, 1], gt[:, 1]))
    with np.errstate(invalid="ignore"):  # inf - inf and inf / inf, the infinite unions set to 0 below
        iou = 1.0 * (inter[1] - inter[0] + 1e-10) / (union[1] - union[0] + 1e-10)
    iou[union[1] - union[0] < -1e-5] = 0
    iou[np.isinf(union[1] - union[0])] = 0
    iou[iou < 0] = 0.0
    return iou


def grounding_metrics(ious: np.ndarray) -> dict[str, float | None]:
    """``IoU@t`` (fraction of queries with IoU >= t) for t in 0.1..0.9, and ``mIoU``: None where undefined,
    every metric over no queries and ``mIoU`` over an IoU that is NaN (a NaN output's), never NaN itself."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0:
        return dict.fromkeys(METRIC_NAMES)
    metrics: dict[str, float | None] = {f"IoU@{t}": float(np.mean(ious >= t)) for t in IOU_THRESHOLDS}
    metrics["mIoU"] = float(np.mean(ious)) if not np.isnan(ious).any() else None
    return metrics


def prior_spans(train_spans: np.ndarray, count: int) -> np.ndarray:
    """The prior baseline: the mean training span (as fractions) predicted for every query."""
    return np.repeat(np.asarray(train_spans, dtype=np.float64).mean(axis=0, keepdims=True), count, axis=0)
