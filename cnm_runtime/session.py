"""An exported CNM model in ONNX Runtime, on the best provider at hand, and a report of which one ran.

``auto`` tries TensorRT, then CUDA, then the CPU, but only what this machine can run: onnxruntime-gpu
lists the GPU providers even where their libraries or the GPU are missing (and then falls back to the CPU
with pages of warnings), so ``auto`` first looks for a CUDA driver with a device, and for TensorRT's
library. A provider asked for by name that cannot start is an error, never a silent slow run.

The model runs only in the session's own threads (``runs`` of them, each with an ONNX Runtime session made
in that thread), which flush denormals to zero (``cnm_runtime.denormals``); the caller's threads are left as
they are, and so is the thread that makes the first session, where ONNX Runtime would set the same. Inputs
and outputs go through IO binding on every provider (on a GPU the inputs are copied to the device once and
the outputs stay there until read).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import onnxruntime as ort

from cnm_runtime.batch import Batch
from cnm_runtime import cores
from cnm_runtime.denormals import flush_denormals_here
from cnm_runtime.model_spec import ModelSpec, check_graph
from cnm_runtime.model_threads import ModelThreads
from cnm_runtime.options import RunOptions

log = logging.getLogger(__name__)
T = TypeVar("T")

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
ORT_QUIET = 4  # fatal messages only
ORT_DEFAULT_LOG_SEVERITY = 2  # warnings, ONNX Runtime's own default
# Graph rewrites left out on the CPU provider: ONNX Runtime's CPU kernel for SkipLayerNormalization (residual
# Add + LayerNorm in one node, fused in int8 graphs) is slower than the two plain nodes it replaces.
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
# On the CPU a run gets one thread and batches run side by side instead, one a core: the graph is many small
# operators, and the threads of one run would wait on each other at each of them (python -m benchmarks.run
# sets "ONNX Runtime fp32, batches side by side" against "ONNX Runtime fp32").
CPU_THREADS_PER_RUN = 1


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines and timing caches are kept between runs (engines take minutes to build)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnm" / "tensorrt"


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
        return True
    except OSError:
        return False


def cuda_devices() -> int:
    """CUDA devices the driver sees; 0 without a driver (asked of libcuda itself, which is cheap and, unlike
    a session on the CUDA provider, says nothing on a machine without a GPU)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _runnable(short: str) -> str | None:
    """Why this machine cannot run provider ``short`` (a key of PROVIDERS), or None if it may."""
    if PROVIDERS[short] not in ort.get_available_providers():
        return f"this onnxruntime build has no {PROVIDERS[short]} (it offers {ort.get_available_providers()})"
    if short in ("cuda", "tensorrt") and not cuda_devices():
        return "no CUDA GPU is visible here (no NVIDIA driver, or no device)"
    if short == "tensorrt" and not _loads("libnvinfer.so.10"):
        return "TensorRT's library (libnvinfer.so.10) is not installed: pip install 'cnm[tensorrt]'"
    return None


def _options(threads: int, flush_denormals: bool) -> ort.SessionOptions:
    """The session options of every provider, with ``threads`` ONNX Runtime threads a run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: the feed needs the cores the model is not using.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's own threads (a GPU provider's, or threads > 1) flush as the session's threads do
    options.add_session_config_entry("session.set_denormal_as_zero", "1" if flush_denormals else "0")
    return options


def _shapes(spec: ModelSpec, batch: int) -> str:
    """A TensorRT profile string, e.g. ``frames:8x200x1024,video_index:8,word_ids:8x21,words_len:8``
    (a batch never holds more videos than queries)."""
    dims = {"frames": (batch, spec.max_num_frames, spec.frame_dim), "video_index": (batch,),
            "word_ids": (batch, spec.word_slots), "words_len": (batch,)}
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in dims.items())


def provider_chain(options: RunOptions, spec: ModelSpec) -> list:
    """ONNX Runtime's ``providers`` list for ``options.provider``: what this machine can run of its
    fallbacks, best first, each with its options. A provider named outright that cannot run: RuntimeError."""
    if options.provider not in FALLBACKS:
        raise ValueError(f"--provider {options.provider} is not ONNX Runtime's: cnm_runtime.engines.open_session "
                         "opens the engine that runs it")
    if options.provider != "auto":
        problem = _runnable(options.provider)
        if problem:
            raise RuntimeError(f"--provider {options.provider}: {problem}")
    chain: list = []
    for short in FALLBACKS[options.provider]:
        if _runnable(short):
            continue
        if short == "tensorrt":
            cache = Path(options.trt_cache or default_trt_cache_dir())
            cache.mkdir(parents=True, exist_ok=True)
            chain.append((PROVIDERS[short], {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                # one profile for every batch size of the run: 1 (a short last batch) to batch_size
                "trt_profile_min_shapes": _shapes(spec, 1),
                "trt_profile_opt_shapes": _shapes(spec, options.batch_size),
                "trt_profile_max_shapes": _shapes(spec, options.batch_size),
            }))
        elif short == "cuda":
            chain.append((PROVIDERS[short], {"device_id": 0}))
        else:
            chain.append(PROVIDERS[short])
    return chain


def _provider_name(entry: str | tuple[str, dict]) -> str:
    return entry if isinstance(entry, str) else entry[0]


# Making a session swaps two things of the whole process, standard output and ONNX Runtime's log level, and
# the session's threads make theirs at once: one at a time.
_MAKING = threading.Lock()


def _new_session(path: Path, threads: int, chain: list, flush_denormals: bool) -> ort.InferenceSession:
    """A session on ``chain`` whose notices go to the debug log: ONNX Runtime prints some with print(),
    which would land among predictions written to standard output."""
    notices = io.StringIO()
    cpu_only = [_provider_name(entry) for entry in chain] == [PROVIDERS["cpu"]]
    with _MAKING, contextlib.redirect_stdout(notices):
        ort.set_default_logger_severity(ORT_QUIET)
        try:
            session = ort.InferenceSession(str(path), _options(threads, flush_denormals), providers=chain,
                                           disabled_optimizers=CPU_DISABLED_OPTIMIZERS if cpu_only else None)
        finally:
            ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)
    if notices.getvalue():
        log.debug("onnxruntime: %s", notices.getvalue().strip())
    session.disable_fallback()  # a failing provider must raise, not switch to the CPU mid-run
    return session


def _in_own_thread(work: Callable[[], T]) -> T:
    """``work()`` in a short-lived thread: making a session flushes denormals in the thread that makes it."""
    with ThreadPoolExecutor(1, thread_name_prefix="cnm-model-start") as starter:
        return starter.submit(work).result()


class ModelSession(ModelThreads):
    """A model on ONNX Runtime, for batches of up to ``options.batch_size`` queries, ``runs`` of them at once.

    ``threads`` are ONNX Runtime's threads a run. By default a run on the CPU gets one, and the cores' worth
    come from running several batches at once, one a core (at most 8); a GPU provider runs one batch at a
    time, with one thread per core (at most 8) for the operators it leaves to the CPU.
    """

    def __init__(self, model_path: str | Path, options: RunOptions = RunOptions()):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model {self.model_path} does not exist (make one with cnm-export)")
        self.spec, self.frames_dtype, self._chain, self.threads = _in_own_thread(lambda: self._start(options))
        self.provider = _provider_name(self._chain[0])
        self.device = "cpu" if self.provider == PROVIDERS["cpu"] else "cuda"
        self.runs = options.runs or (max(1, cores.default_threads() // self.threads) if self.device == "cpu" else 1)
        self._flush_denormals = options.flush_denormals
        self._local = threading.local()  # each thread's own session, made on its first batch
        self._start_threads(flush_denormals_here if options.flush_denormals else None)

    def _start(self, options: RunOptions) -> tuple[ModelSpec, np.dtype, list, int]:
        """The model's spec and frames type, and the provider chain and threads that do start (a session is
        made to see)."""
        try:
            probe = ort.InferenceSession(str(self.model_path), providers=[PROVIDERS["cpu"]])
        except Exception as error:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{self.model_path}: not a loadable ONNX model ({error})") from error
        inputs = {node.name: node.type for node in probe.get_inputs()}
        check_graph(inputs, {node.name: node.type for node in probe.get_outputs()}, str(self.model_path))
        spec = ModelSpec.from_metadata(probe.get_modelmeta().custom_metadata_map, str(self.model_path))
        frames_dtype = np.dtype(np.float16 if inputs["frames"] == "tensor(float16)" else np.float32)
        chain = provider_chain(options, spec)
        threads = options.threads or (CPU_THREADS_PER_RUN if chain == [PROVIDERS["cpu"]] else cores.default_threads())
        if chain == [PROVIDERS["cpu"]]:
            return spec, frames_dtype, chain, threads
        started = _new_session(self.model_path, threads, chain, options.flush_denormals).get_providers()[0]
        if started != _provider_name(chain[0]):
            if options.provider != "auto":
                raise RuntimeError(f"--provider {options.provider}: {_provider_name(chain[0])} did not start "
                                   f"(ONNX Runtime fell back to {started}); check the CUDA/TensorRT libraries")
            log.info("%s did not start; running on %s", _provider_name(chain[0]), started)
            chain = [entry for entry in chain if _provider_name(entry) == started]
            threads = options.threads or (CPU_THREADS_PER_RUN if started == PROVIDERS["cpu"] else threads)
        return spec, frames_dtype, chain, threads

    def _session(self) -> ort.InferenceSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _new_session(self.model_path, self.threads, self._chain,
                                                         self._flush_denormals)
        return session

    def default_feeders(self) -> int:
        """Feed processes: none on the CPU, where the model keeps every core busy and a thread of this process
        feeds it; one a core but one (kept for this process) where a GPU runs the model."""
        return 0 if self.device == "cpu" else max(1, cores.available_cores() - 1)

    def _run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Runs in a thread of the session: frames are cast to the graph's type if they are not of it already
        (the batch makers write them in that type)."""
        session = self._session()
        binding = session.io_binding()
        for name, array in batch.inputs().items():
            if name == "frames" and array.dtype != self.frames_dtype:
                array = array.astype(self.frames_dtype)
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0))
        for name in ("center", "width"):
            binding.bind_output(name, self.device, 0)
        session.run_with_iobinding(binding)
        center, width = binding.copy_outputs_to_cpu()
        return center, width
