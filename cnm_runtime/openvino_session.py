"""An exported CNM model in OpenVINO on the CPU: the same interface as ``ModelSession``, another engine.

OpenVINO (``pip install 'cnm[openvino]'``) reads the fp32 ONNX file that cnm-export writes, variable batch
and video axes and metadata included, and the int8 model that ``cnm-export --precision openvino-int8``
writes (an OpenVINO IR, ``.xml`` with its ``.bin``). Precision is what the caller asks for, exact by default:

- ``fp32`` (the default for an fp32 file): f32 arithmetic, set explicitly, since on CPUs with bf16
  OpenVINO's own default would be bf16;
- ``bf16``: bf16 arithmetic on an fp32 file, only where the CPU has it (AVX512-BF16 or AMX), never emulated;
- ``int8``: the NNCF-quantized IR, its other operations in f32.

ONNX Runtime's dynamic-int8 files are refused: OpenVINO dequantizes their weights and runs them slower
than fp32. The model is compiled with the THROUGHPUT hint, which splits the cores into streams; each stream
runs one infer request at a time, so the session keeps a pool of the compiled model's optimal number of
requests, and ``runs`` of the session's threads (by default one a request) each take one for a batch.

``openvino`` is imported here only, and only when a session is made, so cnm_runtime imports without it.
"""
from __future__ import annotations

import functools
import importlib.util
import queue
from pathlib import Path
from typing import Any

import numpy as np

from cnm_runtime.batch import Batch
from cnm_runtime.cores import default_threads
from cnm_runtime.model_files import IR_SUFFIX
from cnm_runtime.model_spec import METADATA_KEY, OUTPUT_NAMES, ModelSpec, check_graph
from cnm_runtime.model_threads import ModelThreads
from cnm_runtime.options import RunOptions

# One line for every way of asking for OpenVINO where it is not installed.
MISSING = ("the openvino package is not installed (pip install 'cnm[openvino]'); it runs --provider openvino, "
           "--precision bf16 and openvino-int8 models")
OPENVINO_INT8 = "openvino-int8"  # ModelSpec.precision of the IR that cnm-export writes
# Where OpenVINO keeps a model's metadata: its ONNX reader puts ONNX metadata there, and the IR that
# cnm-export writes holds ours at the same place, so one reader serves both files.
METADATA_PATH = ["framework", METADATA_KEY]
PRECISIONS = ("fp32", "bf16", "int8")  # what a caller may ask for; the file decides which are possible
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the operations left unquantized
CPU = "CPU"


def is_installed() -> bool:
    """Whether ``openvino`` can be imported, without importing it."""
    return importlib.util.find_spec("openvino") is not None


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(MISSING) from error
    return openvino


@functools.cache
def core() -> Any:
    """The process's one ``openvino.Core``, kept to the end. Each Core's CPU plugin installs a signal stack on
    the thread that makes it and puts the previous one back when it goes; Cores that go in another order than
    they came leave a freed stack installed, and the next signal (a child process ending, Ctrl-C) crashes."""
    return _openvino().Core()


def cpu_has_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (AVX512-BF16 or AMX), as its CPU plugin reports."""
    return "BF16" in core().get_property(CPU, "OPTIMIZATION_CAPABILITIES")


def precision_of(spec: ModelSpec) -> str:
    """The precision a file runs at unless another is asked for: int8 for cnm-export's OpenVINO IR."""
    return "int8" if spec.precision == OPENVINO_INT8 else spec.precision


def precisions_for(spec: ModelSpec) -> tuple[str, ...]:
    """The precisions OpenVINO runs this export at on this CPU: fp32 and, where the CPU has bf16, bf16 for an
    fp32 file; int8 for an openvino-int8 IR; none for ONNX Runtime's int8 and the GPUs' fp16 files."""
    if spec.precision == OPENVINO_INT8:
        return ("int8",)
    if spec.precision == "fp32":
        return ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)
    return ()


def _check_precision(path: Path, spec: ModelSpec, precision: str) -> None:
    """ValueError, saying why and what to do, unless OpenVINO runs this file at ``precision`` here."""
    if spec.precision == "int8":
        raise ValueError(f"{path} is ONNX Runtime's dynamic int8, which OpenVINO runs dequantized, slower than "
                         "fp32: run it with --provider cpu, or export --precision openvino-int8 for OpenVINO")
    if spec.precision not in ("fp32", OPENVINO_INT8):
        raise ValueError(f"{path} is a {spec.precision} export (for GPUs); OpenVINO runs fp32 exports and "
                         "openvino-int8 ones")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision in precisions_for(spec):
        return
    if precision == "bf16" and spec.precision == "fp32":
        raise ValueError("precision bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX), and OpenVINO "
                         "would emulate it, slower than fp32; run fp32")
    how = "export the checkpoint with cnm-export --precision openvino-int8" if precision == "int8" else \
        "run an fp32 export"
    raise ValueError(f"{path} was exported at {spec.precision} and cannot run at {precision}: {how}")


# OpenVINO's element types by the names ONNX Runtime gives them (model_spec.check_graph speaks those)
_TYPE_NAMES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)"}


def read_spec(model: Any, source: str) -> ModelSpec:
    """The ``cnm`` metadata of an OpenVINO model read from cnm-export's ONNX file or IR, once its inputs and
    outputs are checked to be cnm-export's."""
    check_graph(*({node.get_any_name(): _TYPE_NAMES.get(node.get_element_type().get_type_name(), "other")
                   for node in nodes} for nodes in (model.inputs, model.outputs)), source)
    metadata = {}
    if model.has_rt_info(METADATA_PATH):
        metadata[METADATA_KEY] = model.get_rt_info(METADATA_PATH).astype(str)
    return ModelSpec.from_metadata(metadata, source)


def write_spec(model: Any, spec: ModelSpec) -> None:
    """Put ``spec`` where ``read_spec`` finds it (for an IR to be saved)."""
    model.set_rt_info(spec.to_metadata()[METADATA_KEY], METADATA_PATH)


class OpenVinoSession(ModelThreads):
    """A model on OpenVINO on the CPU, ``runs`` batches at once.

    ``options.precision``: None runs the file at its own precision (fp32 exactly, or the int8 IR); ``bf16``
    asks for bf16 arithmetic on an fp32 file. ``options.threads``: threads a stream (None: OpenVINO's
    THROUGHPUT hint splits the default threads, one per core and at most 8, into streams itself).
    """

    device = "cpu"

    def __init__(self, model_path: str | Path, options: RunOptions = RunOptions()):
        precision, threads = options.precision, options.threads
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model {self.model_path} does not exist (make one with cnm-export)")
        openvino = core()  # before the try: its RuntimeError says that openvino is missing
        try:
            model = openvino.read_model(str(self.model_path))
        except RuntimeError as error:  # OpenVINO raises RuntimeError for files it cannot read
            raise ValueError(f"{self.model_path}: not a model OpenVINO can read ({error})") from error
        self.spec = read_spec(model, str(self.model_path))
        self.precision = precision or precision_of(self.spec)
        _check_precision(self.model_path, self.spec, self.precision)
        total = default_threads()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision],
            "INFERENCE_NUM_THREADS": total,
            # Flush-to-zero, OpenVINO's own or inherited from a thread where ONNX Runtime set it, breaks the shape
            # arithmetic of OpenVINO's AVX2 code paths on this graph: a Broadcast fails, or an infer never returns.
            "CPU_DENORMALS_OPTIMIZATION": False,
        }
        if threads:
            streams = max(1, total // threads)
            config.update(NUM_STREAMS=streams, INFERENCE_NUM_THREADS=streams * threads)
        self.compiled = openvino.compile_model(model, CPU, config)
        streams = max(1, int(self.compiled.get_property("NUM_STREAMS")))
        self.threads = max(1, int(self.compiled.get_property("INFERENCE_NUM_THREADS")) // streams)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        for _ in range(self.requests):
            self._requests.put(self.compiled.create_infer_request())
        self.frames_dtype = np.dtype(np.float32)  # fp16 exports, the only ones taking half frames, are refused
        self.provider = f"OpenVINO CPU {self.precision}"
        # One batch in this thread first: OpenVINO's Python binding sets up its numpy conversions on first use,
        # and two threads doing that at once can deadlock (each holds what the other waits for).
        self._run(self._smallest_batch())
        self.runs = options.runs or self.requests  # one batch a request keeps every stream busy
        # No flushing of denormals in these threads (see CPU_DENORMALS_OPTIMIZATION above)
        self._start_threads()

    def default_feeders(self) -> int:
        """No feed processes: the model keeps every core busy and a thread of this process feeds it (as on ONNX
        Runtime's CPU provider)."""
        return 0

    def _smallest_batch(self) -> Batch:
        """One query of one word over one video of zeros."""
        word_ids = np.zeros((1, self.spec.word_slots), np.int64)
        word_ids[0, 1] = 1
        return Batch(np.zeros((1, self.spec.max_num_frames, self.spec.frame_dim), self.frames_dtype),
                     np.zeros(1, np.int64), word_ids, np.ones(1, np.int64))

    def _run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """``(center, width)`` ``[queries]`` float32 of ``batch`` (its frames cast to float32 if they are not),
        on the next free infer request."""
        inputs = {name: np.ascontiguousarray(array, self.frames_dtype if name == "frames" else None)
                  for name, array in batch.inputs().items()}
        request = self._requests.get()
        try:
            request.infer(inputs, share_inputs=True)
            center, width = (np.array(request.get_tensor(name).data, dtype=np.float32) for name in OUTPUT_NAMES)
        finally:
            self._requests.put(request)
        return center, width

