"""FLOPs of an exported graph, counted from its matrix products at fixed batch sizes.

Matrix products are where the time goes; element-wise work (LayerNorm, softmax, masks) is left out.
A product of ``[.., M, K] x [K, N]`` counts ``2 * M * K * N`` per leading index. A batch's FLOPs are
linear in its videos and its queries, so two counts (one video with one query, then with two) give both rates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

MATRIX_PRODUCTS = ("MatMul", "MatMulInteger", "Gemm")


@dataclass(frozen=True)
class Flops:
    per_video: float  # work that reads no words: once per video of a batch
    per_query: float

    def per_query_at(self, videos_per_query: float = 1.0) -> float:
        """Average FLOPs per query of batches holding ``videos_per_query`` videos per query (1: none shared)."""
        return self.per_query + self.per_video * videos_per_query


def _fix_batch(proto: onnx.ModelProto, videos: int, queries: int) -> onnx.ModelProto:
    """A copy with ``videos`` rows of frames and ``queries`` of everything else, so every shape becomes a number."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for value in list(proto.graph.input) + list(proto.graph.output):
        batch = value.type.tensor_type.shape.dim[0]
        batch.ClearField("dim_param")
        batch.dim_value = videos if value.name == "frames" else queries
    return proto


def _static_shapes(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    # onnx's own inference loses the word axis at the start-vector Expand; ORT's symbolic one does not.
    inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    shapes = {init.name: list(init.dims) for init in inferred.graph.initializer}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def graph_flops(model: str | Path | onnx.ModelProto) -> Flops:
    """FLOPs per video and per query of the ONNX graph ``model`` (a path or a loaded proto)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    one, two = _batch_flops(proto, 1, 1), _batch_flops(proto, 1, 2)
    return Flops(per_video=2 * one - two, per_query=two - one)


def _batch_flops(proto: onnx.ModelProto, videos: int, queries: int) -> float:
    proto = _fix_batch(proto, videos, queries)
    shapes = _static_shapes(proto)
    total = 0
    for node in proto.graph.node:
        if node.op_type not in MATRIX_PRODUCTS:
            continue
        left, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not left or not out or None in left or None in out:
            raise ValueError(f"node {node.name!r}: shapes unknown at a fixed batch ({left} -> {out})")
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        inner = left[0] if node.op_type == "Gemm" and trans_a else left[-1]
        total += 2 * int(np.prod(out)) * inner
    return float(total)
