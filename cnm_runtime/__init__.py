"""cnm_runtime: the torch-free core of cnm.

Text -> word ids, raw clip features -> the model's fixed number of clips, spans and metrics, model sessions
and batched grounding. Training and export build on these same functions, so PyTorch and ONNX results can
match exactly.

Every name below is imported on first use, so that ``import cnm_runtime`` costs nothing: cnm-run installs
its Ctrl-C handling before it loads numpy, h5py and ONNX Runtime, and training code that needs only the
preprocessing does not load ONNX Runtime.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module that defines it
    "ERROR_CODES": "errors", "InputError": "errors",
    "EncodedQuery": "text", "Vocabulary": "text", "tokenize": "text",
    "resample_clips": "features", "validate_features": "features",
    "grounding_metrics": "spans", "spans_from_gaussian": "spans", "temporal_iou": "spans",
    "RunOptions": "options",
    "Prediction": "outcomes", "QueryError": "outcomes",
    "Grounder": "grounder", "ground": "grounder",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"cnm_runtime.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'cnm_runtime' has no attribute {name!r}")
