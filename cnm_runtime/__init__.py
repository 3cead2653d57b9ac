"""cnm_runtime: the torch-free core of cnm.

Text -> word ids, raw clip features -> the model's fixed number of clips, spans and metrics,
ONNX Runtime sessions and batched grounding. Training and export build on these same functions,
so PyTorch and ONNX results can match exactly.

``Grounder`` and ``ground`` (the Python API, see ``cnm_runtime.grounder``) load ONNX Runtime, so they
are imported on first use: training code that needs only the preprocessing does not pay for it.
"""
from typing import Any

from cnm_runtime.errors import ERROR_CODES, InputError
from cnm_runtime.features import resample_clips, validate_features
from cnm_runtime.spans import grounding_metrics, spans_from_gaussian, temporal_iou
from cnm_runtime.text import EncodedQuery, Vocabulary, tokenize

_GROUNDER_NAMES = ("Grounder", "Prediction", "ground")

__all__ = [
    *_GROUNDER_NAMES,
    "ERROR_CODES",
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


def __getattr__(name: str) -> Any:
    if name in _GROUNDER_NAMES:
        from cnm_runtime import grounder

        return getattr(grounder, name)
    raise AttributeError(f"module 'cnm_runtime' has no attribute {name!r}")
