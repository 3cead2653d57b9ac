"""Grounding metrics of a PyTorch model on a split, and of the prior baseline, via cnm_runtime's metrics."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from cnm_runtime.fields import Annotation
from cnm_runtime.spans import grounding_metrics, prior_spans, spans_from_gaussian, temporal_iou
from cnm_train.data import Batch, Sample
from cnm_train.model import CNM


def predict_spans(model: CNM, batches: Iterable[Batch | None],
                  device: torch.device) -> tuple[list[int], np.ndarray, np.ndarray]:
    """``(indices, predicted spans, ground-truth spans)`` over ``batches``; spans ``[N, 2]`` fractions."""
    model.eval()
    indices, predicted, truth = [], [], []
    with torch.inference_mode():
        for batch in batches:
            if batch is None:
                continue
            batch = batch.to(device)
            center, width = model.generate(batch.frames, batch.words_feat, batch.words_len, last_only=True)
            predicted.append(spans_from_gaussian(center.cpu().numpy(), width.cpu().numpy()))
            truth.append(batch.spans)
            indices.extend(batch.indices)
    if not indices:
        return [], np.zeros((0, 2), np.float32), np.zeros((0, 2))
    return indices, np.concatenate(predicted), np.concatenate(truth)


def evaluate(model: CNM, batches: Iterable[Batch | None], device: torch.device | str = "cpu") -> dict[str, float | None]:
    """``IoU@0.1 .. IoU@0.9`` and ``mIoU`` of the model's top-1 span, as the original evaluation computes them."""
    _, predicted, truth = predict_spans(model, batches, torch.device(device))
    return grounding_metrics(temporal_iou(predicted, truth))


def prior_metrics(train: Sequence[Annotation], samples: Sequence[Sample]) -> dict[str, float | None]:
    """The same metrics for the prior: the mean training span predicted for every query of ``samples``."""
    truth = np.array([s.annotation.span_fraction for s in samples], dtype=np.float64)
    predicted = prior_spans(np.array([a.span_fraction for a in train]), len(samples))
    return grounding_metrics(temporal_iou(predicted, truth))
