"""Checkpoint -> one self-contained ONNX file with the runtime's metadata.

The fp32 graph comes from PyTorch's TorchScript exporter, which folds the packed attention weights into
plain initializers (the int8 quantizer needs them so; the torch.export-based exporter splits and transposes
them at run time). fp16 is the same module cast to half before export, taking half frames (half the bytes to
feed); int8 is ONNX Runtime's dynamic quantization of the fp32 file's matrix weights; openvino-int8 is
NNCF's static quantization of the fp32 graph for OpenVINO (``cnm_export.openvino_int8``), an IR rather than
an ONNX file.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from cnm_export.flops import Flops, graph_flops
from cnm_export.graph import GeneratorGraph
from cnm_runtime.model_files import IR_SUFFIX
from cnm_runtime.model_spec import INPUT_NAMES, OUTPUT_NAMES, ModelSpec
from cnm_runtime.openvino_session import OPENVINO_INT8
from cnm_runtime.provenance import cnm_version, file_digest
from cnm_runtime.text import Vocabulary, load_glove
from cnm_train.checkpoint import load_checkpoint
from cnm_train.model import CNM

if TYPE_CHECKING:
    from cnm_export.openvino_int8 import Calibration

PRECISIONS = ("fp32", "fp16", "int8", OPENVINO_INT8)
DEFAULT_OPSET = 18


@dataclass
class ExportSource:
    """What an export reads: the PyTorch model, its word-vector table and the metadata to write."""

    model: CNM
    word_vectors: np.ndarray  # [vocab_size, word_dim], row 0 zeros
    spec: ModelSpec  # precision fp32; export_model records the precision it writes
    config: dict  # the checkpoint's config: where its training split lies (openvino-int8 calibrates on it)
    checkpoint: Path


def training_directory(config: dict, checkpoint: Path) -> Path:
    """Where training ran: the checkpoint's folder is ``train.model_saved_path`` (tag included) below it
    (the checkpoint's folder itself where it is not)."""
    saved = Path(config["train"].get("model_saved_path", ""))
    folder = checkpoint.resolve().parent
    if saved.is_absolute() or not saved.parts or folder.parts[-len(saved.parts):] != saved.parts:
        return folder
    return Path(*folder.parts[: -len(saved.parts)])


def _inside(path: Path, folder: Path) -> bool:
    return bool(folder.parts) and not path.is_absolute() and path.parts[: len(folder.parts)] == folder.parts


def resolve_dataset_file(config: dict, key: str, given: str | Path | None, checkpoint: Path, option: str,
                         what: str) -> Path:
    """``given`` if not None, else the config's ``dataset.KEY``: relative to the current directory or, as paths
    in a config are, to the directory training ran in (so ``cnm-export model-best.pt`` works from the
    checkpoint's own folder), or, for a file kept in training's output folder, from a copy of that folder;
    FileNotFoundError naming ``option``, the way to give ``what``, where none has it."""
    if given is not None:
        return Path(given)
    default = config["dataset"].get(key)
    saved = Path(config["train"].get("model_saved_path", ""))
    candidates = [Path.cwd() / default, training_directory(config, checkpoint) / default] if default else []
    if default and _inside(Path(default), saved):
        candidates.append(checkpoint.resolve().parent / Path(default).relative_to(saved))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {option} given and the checkpoint's dataset.{key} {default!r} exists neither here "
                            f"nor where training ran; pass {option}, {what}")


def resolve_vocab(config: dict, vocab: str | Path | None, checkpoint: Path) -> Path:
    """The glove.pkl of training: ``vocab``, else the config's ``dataset.vocab_path`` (``resolve_dataset_file``)."""
    return resolve_dataset_file(config, "vocab_path", vocab, checkpoint, "--vocab",
                                "the glove.pkl the model was trained with")


def load_source(checkpoint: str | Path, vocab: str | Path | None = None) -> ExportSource:
    """Load ``checkpoint`` (ours or the original repo's) and the kept vocabulary of ``vocab`` (a glove.pkl)."""
    ckpt = load_checkpoint(checkpoint)
    dataset = ckpt.config["dataset"]
    model = ckpt.build_model()
    vocab = resolve_vocab(ckpt.config, vocab, Path(checkpoint))
    glove = load_glove(vocab)
    vocabulary = Vocabulary.from_glove(glove, dataset["vocab_size"])
    if vocabulary.size != model.cfg.vocab_size:
        raise ValueError(f"{vocab}: {vocabulary.size} ids but the checkpoint expects {model.cfg.vocab_size}")
    spec = ModelSpec(
        words=tuple(vocabulary.words),
        max_num_words=model.cfg.max_num_words,
        max_num_frames=int(dataset["max_num_frames"]),
        frame_dim=model.cfg.frames_input_size,
        max_width=model.cfg.max_width,
        dataset=str(dataset.get("dataset", "")),
        checkpoint_sha256=file_digest(checkpoint),
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "cnm": cnm_version()},
    )
    return ExportSource(model, vocabulary.word_vectors(glove), spec, ckpt.config, Path(checkpoint))


def trace_to_onnx(graph: GeneratorGraph, spec: ModelSpec, out: Path, opset: int) -> None:
    """Run PyTorch's exporter on ``graph``; only the batch axes (videos, queries) are dynamic."""
    batch = 2
    example = (
        torch.zeros(batch, spec.max_num_frames, spec.frame_dim, dtype=graph.dtype),
        torch.arange(batch),
        torch.zeros(batch, spec.word_slots, dtype=torch.long),
        torch.ones(batch, dtype=torch.long),
    )
    batch_dims = {name: {0: "videos" if name == "frames" else "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own deprecation notes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes fixed by the spec: expected
        torch.onnx.export(
            graph, example, str(out), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes=batch_dims, opset_version=opset,
            dynamo=False,
        )


def quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantization of the MatMul/Gemm weights (activations are quantized per call).

    The quantizer's pre-processing runs with shape inference only: its graph optimizations would tie
    the file to this machine's CPU.

    Weights are per-tensor symmetric int8 with ``reduce_range`` (7 bits, -64..64). With full-range int8
    weights, ONNX Runtime's u8s8 MatMulInteger is exact only on CPUs with VNNI; on AVX2-only CPUs (e.g.
    an AMD EPYC without avx512_vnni) it sums pairs of u8*s8 products in saturating int16, which on the
    golden model made the error 3.1e-2 instead of 5.6e-3 and moved mIoU by -0.012. At 7 bits a pair is at
    most 2*255*64 < 2**15, so every CPU computes the same integers (golden: 5.0e-3 / 2.5e-3 center /
    width, IoU@0.5 +0.0000, mIoU +0.0008, on AVX2 and with exact accumulation alike).
    """
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = fp32.with_name("prepared.onnx")
    quant_pre_process(fp32, prepared, skip_optimization=True)
    quantize_dynamic(
        prepared, out, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
        per_channel=False, reduce_range=True,  # explicit: the result must not depend on the CPU or the defaults
        extra_options={"MatMulConstBOnly": True,  # attention products of two activations stay float
                       "WeightSymmetric": True},
    )


def nonfinite_constants(proto: onnx.ModelProto) -> list[str]:
    """Names of initializers and Constant nodes holding NaN or +-Inf (an fp16 mask must stay finite)."""
    tensors = [(init.name, init) for init in proto.graph.initializer]
    tensors += [(node.output[0], attr.t) for node in proto.graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    bad = []
    for name, tensor in tensors:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad.append(name)
    return bad


def _build_graph(source: ExportSource, scratch: Path, precision: str, opset: int, prune: bool) -> Path:
    """The bare graph at ``precision`` (no metadata yet), written under ``scratch``."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    traced = scratch / "traced.onnx"
    trace_to_onnx(GeneratorGraph(source.model, source.word_vectors, prune, dtype), source.spec, traced, opset)
    if precision != "int8":
        return traced
    quantized = scratch / "int8.onnx"
    quantize_int8(traced, quantized)
    return quantized


def export_model(source: ExportSource, out: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                 prune: bool = True, calibration: "Calibration | None" = None) -> ModelSpec:
    """Write ``source`` as one checked ONNX file (no external data) to ``out``; returns its metadata.

    ``openvino-int8`` writes an OpenVINO IR instead (``out`` ends in .xml, its weights go to the .bin
    beside it), calibrated on ``calibration`` (default: the checkpoint's training split).
    The file appears only once complete and checked. ``source.model`` is left as it was.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = Path(out)
    if (precision == OPENVINO_INT8) != (out.suffix == IR_SUFFIX):
        raise ValueError(f"{out}: an {OPENVINO_INT8} export is an OpenVINO IR, whose name ends in {IR_SUFFIX}; "
                         f"the other precisions write ONNX files" if precision == OPENVINO_INT8 else
                         f"{out}: a {precision} export is an ONNX file; only {OPENVINO_INT8} writes {IR_SUFFIX}")
    versions = dict(source.spec.versions)
    if precision == "int8":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    if precision == OPENVINO_INT8:
        from cnm_export import openvino_int8

        calibration = calibration or openvino_int8.training_split(source)
        openvino_int8.refuse_test_split(calibration, source.config, source.checkpoint)
        versions.update(openvino_int8.versions())
    spec = dataclasses.replace(source.spec, precision=precision, versions=versions)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:  # same file system: the rename is atomic
        graph = _build_graph(source, Path(scratch), "fp32" if precision == OPENVINO_INT8 else precision, opset, prune)
        if precision == OPENVINO_INT8:
            openvino_int8.write_quantized(graph, spec, calibration, out)
            return spec
        proto = onnx.load(str(graph))
        for key, value in spec.to_metadata().items():
            proto.metadata_props.add(key=key, value=value)
        bad = nonfinite_constants(proto)
        if bad:
            raise RuntimeError(f"exported graph has non-finite constants: {bad[:5]}")
        final = Path(scratch) / "final.onnx"
        onnx.save(proto, str(final))
        onnx.checker.check_model(str(final), full_check=True)
        os.replace(final, out)
    return spec


def export_checkpoint(checkpoint: str | Path, vocab: str | Path | None, out: str | Path, *,
                      precision: str = "fp32", opset: int = DEFAULT_OPSET, prune: bool = True) -> ModelSpec:
    """Export the mask generator of ``checkpoint`` to ``out``; returns the metadata written into it.

    ``vocab`` is the glove.pkl of training (``None``: the checkpoint config's ``vocab_path``).
    """
    return export_model(load_source(checkpoint, vocab), out, precision, opset, prune)


def unpruned_flops(source: ExportSource, opset: int) -> Flops:
    """FLOPs of the plain trace (every position of every layer), for comparison."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "unpruned.onnx"
        trace_to_onnx(GeneratorGraph(source.model, source.word_vectors, prune=False), source.spec, path, opset)
        return graph_flops(path)
