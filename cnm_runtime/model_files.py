"""The files a model is: one ONNX file, or an OpenVINO IR's graph (``.xml``) and the weights beside it (``.bin``).

Everything that guards a model as an input (outputs that would overwrite it, the digest a resume compares)
goes by these files, so an IR's weights are guarded as its graph is.
"""
from __future__ import annotations

from pathlib import Path

IR_SUFFIX = ".xml"  # an OpenVINO IR (cnm-export --precision openvino-int8)
IR_WEIGHTS_SUFFIX = ".bin"


def model_files(model: Path) -> list[Path]:
    """``model``, and for an OpenVINO IR the weights file beside it."""
    return [model, model.with_suffix(IR_WEIGHTS_SUFFIX)] if model.suffix == IR_SUFFIX else [model]
