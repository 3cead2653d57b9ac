"""An exported CNM model in ONNX Runtime, on the best provider at hand, and a report of which one ran.

``auto`` tries TensorRT, then CUDA, then the CPU. onnxruntime-gpu lists the GPU providers even where
their libraries or the GPU are missing and then quietly falls back to the CPU, so the provider that
runs is read back from the session after it is made; a provider asked for by name that does not come
up is an error rather than a silent slow run. Inputs and outputs go through IO binding on every
provider (on a GPU the inputs are copied to the device once and the outputs stay there until read).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnm_runtime.batch import Batch
from cnm_runtime.cores import available_cores
from cnm_runtime.model_spec import INPUT_NAMES, OUTPUT_NAMES, ModelSpec, check_input_names

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# What each --provider tries, best first; TensorRT keeps CUDA for the nodes it cannot take.
FALLBACKS = {
    "auto": ("tensorrt", "cuda", "cpu"),
    "tensorrt": ("tensorrt", "cuda", "cpu"),
    "cuda": ("cuda", "cpu"),
    "cpu": ("cpu",),
}
ORT_DEFAULT_LOG_SEVERITY = 2  # warnings, ONNX Runtime's own default
# Graph rewrites left out on the CPU provider: ONNX Runtime's CPU kernel for SkipLayerNormalization (residual
# Add + LayerNorm in one node, fused in int8 graphs) is slower than the two plain nodes it replaces.
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines and timing caches are kept between runs (engines take minutes to build)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnm" / "tensorrt"


# The threads cnm-run keeps busy when none are asked for: one per core, at most this many, since past that
# the threads of a model this small wait on each other more than they compute (benchmarks/cnm_run_scale.py
# settings sweeps them on a machine).
MAX_DEFAULT_THREADS = 8
# On the CPU a run gets one thread and batches run side by side instead, one a core: the graph is many small
# operators, and the threads of one run would wait on each other at each of them (python -m benchmarks.run
# sets "ONNX Runtime fp32, batches side by side" against "ONNX Runtime fp32").
CPU_THREADS_PER_RUN = 1


def default_threads() -> int:
    return min(available_cores(), MAX_DEFAULT_THREADS)


def _options(threads: int) -> ort.SessionOptions:
    """The session options of every provider, with ``threads`` ONNX Runtime threads a run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: the feed needs the cores the model is not using.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Flush denormals to zero: a softmax over masked keys underflows, and the CPU's slow path for denormal
    # results would cost more than the useful work. It holds on ONNX Runtime's own threads and on whichever
    # thread calls run; weights below 1.2e-38 become 0.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


def _shapes(spec: ModelSpec, batch: int) -> str:
    """A TensorRT profile string, e.g. ``frames:8x200x1024,video_index:8,word_ids:8x21,words_len:8``
    (a batch never holds more videos than queries)."""
    dims = {"frames": (batch, spec.max_num_frames, spec.frame_dim), "video_index": (batch,),
            "word_ids": (batch, spec.word_slots), "words_len": (batch,)}
    return ",".join(f"{name}:{'x'.join(map(str, dims[name]))}" for name in INPUT_NAMES)


def _provider_name(entry: str | tuple[str, dict]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def _provider_chain(name: str, spec: ModelSpec, max_batch: int, trt_cache_dir: Path) -> list:
    """ONNX Runtime's ``providers`` list for ``name`` (a key of FALLBACKS), with each provider's options."""
    available = set(ort.get_available_providers())
    if name != "auto" and PROVIDERS[name] not in available:
        raise RuntimeError(f"provider {name!r}: this onnxruntime build has no {PROVIDERS[name]} "
                           f"(it offers {sorted(available)})")
    chain = []
    for short in FALLBACKS[name]:
        provider = PROVIDERS[short]
        if provider not in available:
            continue
        if short == "tensorrt":
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            chain.append((provider, {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(trt_cache_dir),
                # one profile for every batch size of the run: 1 (a short last batch) to max_batch
                "trt_profile_min_shapes": _shapes(spec, 1),
                "trt_profile_opt_shapes": _shapes(spec, max_batch),
                "trt_profile_max_shapes": _shapes(spec, max_batch),
            }))
        elif short == "cuda":
            chain.append((provider, {"device_id": 0}))
        else:
            chain.append(provider)
    return chain


class ModelSession:
    """``run(batch) -> (center, width)`` for batches of up to ``max_batch`` queries; ``run`` may be called
    from several threads at once.

    ``threads`` are ONNX Runtime's threads a run. By default a run on the CPU gets one, and a caller gets the
    cores' worth by running ``default_runs()`` batches at once (``Grounder`` does); a GPU provider's session
    gets one per core, at most 8, for the operators it leaves to the CPU.
    """

    def __init__(self, model_path: str | Path, provider: str = "auto", threads: int | None = None,
                 max_batch: int = 64, trt_cache_dir: str | Path | None = None):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model {self.model_path} does not exist (make one with cnm-export)")
        if provider != "auto" and provider not in PROVIDERS:
            raise ValueError(f"provider must be auto or one of {sorted(PROVIDERS)}, got {provider!r}")
        try:
            cpu_session = ort.InferenceSession(
                str(self.model_path), _options(threads or CPU_THREADS_PER_RUN), providers=[PROVIDERS["cpu"]],
                disabled_optimizers=CPU_DISABLED_OPTIMIZERS)
        except Exception as error:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{self.model_path}: not a loadable ONNX model ({error})") from error
        self.spec = self._read_spec(cpu_session)
        chain = _provider_chain(provider, self.spec, max_batch, Path(trt_cache_dir or default_trt_cache_dir()))
        self.session = cpu_session
        if chain != [PROVIDERS["cpu"]]:
            session = self._create(_options(threads or default_threads()), chain, quiet=provider == "auto")
            if session.get_providers()[0] != PROVIDERS["cpu"] or provider != "auto":
                self.session = session  # else auto fell back to the CPU: the session made for it runs
        self.session.disable_fallback()  # a failing provider must raise, not switch to the CPU mid-run
        self.provider = self.session.get_providers()[0]
        if provider != "auto" and self.provider != PROVIDERS[provider]:
            raise RuntimeError(f"provider {provider!r} did not start (ONNX Runtime fell back to {self.provider}); "
                               "check the CUDA/TensorRT libraries and the GPU, or use --provider auto")
        if self.provider != _provider_name(chain[0]):
            log.info("%s did not start; running on %s", _provider_name(chain[0]), self.provider)
        self.threads = self.session.get_session_options().intra_op_num_threads
        frames_type = next(node.type for node in self.session.get_inputs() if node.name == "frames")
        self.frames_dtype = np.dtype(np.float16 if frames_type == "tensor(float16)" else np.float32)
        self.device = "cpu" if self.provider == PROVIDERS["cpu"] else "cuda"

    def default_feeders(self) -> int:
        """Feed processes: none on the CPU, where the model keeps every core busy and a thread of this process
        feeds it; one a core but one (kept for this process) where a GPU runs the model."""
        return 0 if self.device == "cpu" else max(1, available_cores() - 1)

    def default_runs(self) -> int:
        """Batches to run at once: on the CPU, as many as the default threads (one per core, at most 8) hold
        runs of this session's threads; a GPU runs one batch at a time."""
        return max(1, default_threads() // self.threads) if self.device == "cpu" else 1

    def _read_spec(self, session: ort.InferenceSession) -> ModelSpec:
        check_input_names(tuple(node.name for node in session.get_inputs()), str(self.model_path))
        return ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map, str(self.model_path))

    def _create(self, options: ort.SessionOptions, chain: list, quiet: bool) -> ort.InferenceSession:
        # ONNX Runtime prints its fallback notices with print(), which would land among the predictions.
        # In auto mode a missing GPU library is expected: its notices go to the debug log, not the screen.
        notices = io.StringIO()
        with contextlib.redirect_stdout(notices if quiet else sys.stderr):
            if quiet:
                ort.set_default_logger_severity(4)
            try:
                return ort.InferenceSession(str(self.model_path), options, providers=chain)
            finally:
                ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)
                if notices.getvalue():
                    log.debug("onnxruntime: %s", notices.getvalue().strip())

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """``(center, width)`` ``[queries]`` float32 of ``batch``; its frames are cast to the graph's type if
        they are not of it already (the batch makers write them in that type)."""
        binding = self.session.io_binding()
        for name, array in batch.inputs().items():
            if name == "frames" and array.dtype != self.frames_dtype:
                array = array.astype(self.frames_dtype)
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0))
        for name in OUTPUT_NAMES:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        center, width = binding.copy_outputs_to_cpu()
        return center, width
