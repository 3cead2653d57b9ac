"""cnm_runtime: the torch-free core of cnm.

Text -> word ids, raw clip features -> the model's fixed number of clips, spans and metrics,
ONNX Runtime sessions and batched grounding. Training and export build on these same functions,
so PyTorch and ONNX results can match exactly.
"""
from cnm_runtime.errors import InputError
from cnm_runtime.features import resample_clips, validate_features
from cnm_runtime.spans import grounding_metrics, spans_from_gaussian, temporal_iou
from cnm_runtime.text import EncodedQuery, Vocabulary, tokenize

__all__ = [
    "EncodedQuery",
    "InputError",
    "Vocabulary",
    "grounding_metrics",
    "resample_clips",
    "spans_from_gaussian",
    "temporal_iou",
    "tokenize",
    "validate_features",
]
