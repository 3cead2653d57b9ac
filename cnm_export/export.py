"""Checkpoint -> one self-contained ONNX file with the runtime's metadata."""
from __future__ import annotations

from pathlib import Path

import onnx
import torch

from cnm_export.graph import GeneratorGraph
from cnm_runtime.model_spec import INPUT_NAMES, OUTPUT_NAMES, ModelSpec
from cnm_runtime.text import Vocabulary, load_glove
from cnm_train.checkpoint import file_sha256, load_checkpoint


def export_checkpoint(checkpoint: str | Path, vocab: str | Path, out: str | Path, opset: int = 18,
                      last_only: bool = True) -> ModelSpec:
    """Export the mask generator of ``checkpoint`` to ``out``; returns the metadata written into it."""
    ckpt = load_checkpoint(checkpoint)
    dataset = ckpt.config["dataset"]
    model = ckpt.build_model()
    glove = load_glove(vocab)
    vocabulary = Vocabulary.from_glove(glove, dataset["vocab_size"])
    if vocabulary.size != model.cfg.vocab_size:
        raise ValueError(f"{vocab}: {vocabulary.size} ids but the checkpoint expects {model.cfg.vocab_size}")
    graph = GeneratorGraph(model, vocabulary.word_vectors(glove), last_only=last_only)
    spec = ModelSpec(
        words=tuple(vocabulary.words),
        max_num_words=model.cfg.max_num_words,
        max_num_frames=int(dataset["max_num_frames"]),
        frame_dim=model.cfg.frames_input_size,
        max_width=model.cfg.max_width,
        dataset=str(dataset.get("dataset", "")),
        checkpoint_sha256=file_sha256(checkpoint),
        versions={"torch": torch.__version__, "onnx": onnx.__version__},
    )
    batch = 2
    example = (
        torch.zeros(batch, spec.max_num_frames, spec.frame_dim),
        torch.zeros(batch, spec.word_slots, dtype=torch.long),
        torch.ones(batch, dtype=torch.long),
    )
    batch_dim = {0: "batch"}
    torch.onnx.export(
        graph, example, str(out), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: batch_dim for name in INPUT_NAMES + OUTPUT_NAMES}, opset_version=opset, dynamo=False,
    )
    proto = onnx.load(str(out))
    for key, value in spec.to_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return spec
