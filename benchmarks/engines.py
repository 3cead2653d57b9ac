"""The engines a benchmark compares, and how a worker process turns one into ``run(batch) -> (center, width)``.

PyTorch engines run the checkpoint's ``generate`` unpruned, as the original code does (sharing each
video's first steps among its queries of the batch, as the exported graph does), eagerly or through
``torch.compile`` with freezing (the peer a PyTorch user would pick); ONNX Runtime and OpenVINO engines
run an exported file through cnm-run's own sessions (``ModelSession``, ``OpenVinoSession``), so the
figures are those of the tuned sessions that cnm-run uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnm_runtime.batch import Batch

Runner = Callable[[Batch], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Engine:
    name: str  # key in the results
    label: str  # what the tables show
    graph: str  # what the worker loads: "checkpoint", or the precision of an exported file
    provider: str  # "cpu"/"cuda" for PyTorch; a ModelSession provider for ONNX Runtime
    needs_gpu: bool
    half: bool = False  # PyTorch: the model and its clips cast to float16 (ONNX Runtime engines: see graph)
    side_by_side: bool = False  # one batch a thread at once, one thread each, as cnm-run runs on the CPU
    compiled: bool = False  # PyTorch: torch.compile (inductor) with freezing
    precision: str | None = None  # bf16: PyTorch under autocast, OpenVINO's arithmetic (None: the file's)
    flush_denormals: bool = True  # ONNX Runtime: the session's threads flush denormal results to zero

    @property
    def is_torch(self) -> bool:
        return self.graph == "checkpoint"

    @property
    def is_openvino(self) -> bool:
        return self.provider == "openvino"


ENGINES = (
    Engine("torch-eager", "PyTorch eager fp32", "checkpoint", "cpu", needs_gpu=False),
    Engine("torch-compile", "PyTorch torch.compile fp32, freezing", "checkpoint", "cpu", needs_gpu=False,
           compiled=True),
    Engine("torch-compile-bf16", "PyTorch torch.compile, autocast bf16, freezing", "checkpoint", "cpu",
           needs_gpu=False, compiled=True, precision="bf16"),
    Engine("ort-fp32", "ONNX Runtime fp32", "fp32", "cpu", needs_gpu=False),
    Engine("ort-int8", "ONNX Runtime int8", "int8", "cpu", needs_gpu=False),
    # the model alone run as cnm-run runs it on the CPU: the figure its end-to-end speed is compared with too
    Engine("ort-fp32-side", "ONNX Runtime fp32, batches side by side", "fp32", "cpu", needs_gpu=False,
           side_by_side=True),
    # the same keeping denormal results: what flushing them to zero (cnm_runtime.denormals) buys
    Engine("ort-fp32-side-denormals", "ONNX Runtime fp32, batches side by side, denormals kept", "fp32", "cpu",
           needs_gpu=False, side_by_side=True, flush_denormals=False),
    # OpenVINO as cnm-run runs it: the THROUGHPUT hint's streams, one batch in flight per infer request
    Engine("ov-fp32", "OpenVINO fp32", "fp32", "openvino", needs_gpu=False),
    Engine("ov-bf16", "OpenVINO bf16", "fp32", "openvino", needs_gpu=False, precision="bf16"),
    Engine("ov-int8", "OpenVINO int8 (NNCF, the rest fp32)", "openvino-int8", "openvino", needs_gpu=False),
    Engine("torch-cuda", "PyTorch CUDA fp32", "checkpoint", "cuda", needs_gpu=True),
    # what a GPU image with a CPU-only onnxruntime can still show of fp16 on the card
    Engine("torch-cuda-fp16", "PyTorch CUDA fp16", "checkpoint", "cuda", needs_gpu=True, half=True),
    Engine("ort-cuda-fp32", "ONNX Runtime CUDA fp32", "fp32", "cuda", needs_gpu=True),
    Engine("ort-cuda-fp16", "ONNX Runtime CUDA fp16", "fp16", "cuda", needs_gpu=True),
    # TensorRT builds its own fp16 engine from the fp32 file (ModelSession turns trt_fp16_enable on).
    Engine("ort-trt-fp16", "ONNX Runtime TensorRT fp16", "fp32", "tensorrt", needs_gpu=True),
)
BY_NAME = {engine.name: engine for engine in ENGINES}
REFERENCE = "torch-eager"  # speed-ups and output differences are measured against it

# PyTorch's OpenMP threads busy-wait by default; when they share the cores with any other process that
# collapses (4-20x slower at 2 threads on a busy 2-core machine). An OMP_WAIT_POLICY already set wins.
TORCH_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


def worker_env(engine: Engine) -> dict[str, str]:
    """Environment variables a worker for ``engine`` must start with (read before PyTorch loads)."""
    return {"OMP_WAIT_POLICY": TORCH_OMP_WAIT_POLICY} if engine.is_torch else {}


def torch_runner(checkpoint: Path, vocab: Path | None, device: str, threads: int, half: bool = False) -> Runner:
    """``model.generate`` (unpruned) under inference mode, word lookup and host copies included."""
    import torch

    from cnm_export.export import load_source
    from cnm_export.verify import pytorch_outputs

    torch.set_num_threads(threads)
    source = load_source(checkpoint, vocab)
    if device == "cpu" and not half:
        return lambda batch: pytorch_outputs(source.model, source.word_vectors, batch)

    dtype = torch.float16 if half else torch.float32
    model = source.model.to(device, dtype)
    table = torch.from_numpy(source.word_vectors).to(device, dtype)

    def run(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            frames = torch.from_numpy(batch.frames).to(device, dtype)
            video_index, word_ids, words_len = (torch.from_numpy(array).to(device)
                                                for array in (batch.video_index, batch.word_ids, batch.words_len))
            center, width = model.generate(frames, table[word_ids], words_len, video_index=video_index)
            return center.float().cpu().numpy(), width.float().cpu().numpy()

    return run


def compiled_runner(checkpoint: Path, vocab: Path | None, threads: int, bf16: bool) -> Runner:
    """``model.generate`` (unpruned) through ``torch.compile`` with freezing (weights folded in as constants),
    shapes dynamic (batches differ in queries and videos), under bf16 autocast if asked; it compiles on the
    first batches (the warm-up)."""
    import torch
    import torch._inductor.config as inductor

    from cnm_export.export import load_source

    inductor.freezing = True
    torch.set_num_threads(threads)
    source = load_source(checkpoint, vocab)
    generate = torch.compile(source.model.generate, dynamic=True)
    table = torch.from_numpy(source.word_vectors)

    def run(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):  # freezing needs no_grad
            center, width = generate(torch.from_numpy(batch.frames), table[torch.from_numpy(batch.word_ids)],
                                     torch.from_numpy(batch.words_len), video_index=torch.from_numpy(batch.video_index))
        return center.float().numpy(), width.float().numpy()

    return run


def ort_runner(model: Path, engine: Engine, threads: int, max_batch: int, runs: int) -> tuple[Runner, str]:
    """cnm-run's session for ``engine``, ``runs`` batches at once; also returns the provider that really runs."""
    from cnm_runtime.options import RunOptions
    from cnm_runtime.session import ModelSession

    options = RunOptions(provider=engine.provider, threads=threads, runs=runs, batch_size=max_batch,
                         flush_denormals=engine.flush_denormals)
    session = ModelSession(model, options)
    return session.run, session.provider


def openvino_runner(model: Path, precision: str | None) -> tuple[Runner, str, int]:
    """cnm-run's OpenVINO session; also returns what runs and the batches it runs at once (its infer requests)."""
    from cnm_runtime.openvino_session import OpenVinoSession
    from cnm_runtime.options import RunOptions

    session = OpenVinoSession(model, RunOptions(precision=precision))
    return session.run, f"{session.provider}, {session.runs} infer requests", session.runs
