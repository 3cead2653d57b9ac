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


def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of ``[B, 2]`` spans, the original ``calculate_IoU_batch2`` (1e-10 smoothing, negatives to 0)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    union = (np.minimum(pred[:, 0], gt[:, 0]), np.maximum(pred[:, 1], gt[:, 1]))
    inter = (np.maximum(pred[:, 0], gt[:, 0]), np.minimum(pred[:, 1], gt[:, 1]))
    iou = 1.0 * (inter[1] - inter[0] + 1e-10) / (union[1] - union[0] + 1e-10)
    iou[union[1] - union[0] < -1e-5] = 0
    iou[iou < 0] = 0.0
    return iou


def grounding_metrics(ious: np.ndarray) -> dict[str, float]:
    """``IoU@t`` (fraction of queries with IoU >= t) for t in 0.1..0.9, and ``mIoU``."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0:
        return {name: float("nan") for name in METRIC_NAMES}
    metrics = {f"IoU@{t}": float(np.mean(ious >= t)) for t in IOU_THRESHOLDS}
    metrics["mIoU"] = float(np.mean(ious))
    return metrics


def prior_spans(train_spans: np.ndarray, count: int) -> np.ndarray:
    """The prior baseline: the mean training span (as fractions) predicted for every query."""
    return np.repeat(np.asarray(train_spans, dtype=np.float64).mean(axis=0, keepdims=True), count, axis=0)
