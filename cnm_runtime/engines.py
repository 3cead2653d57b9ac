"""Which engine runs a model: ONNX Runtime (``ModelSession``) or OpenVINO (``OpenVinoSession``), by the file,
the provider and the precision asked for.

The rule (``open_session``):

- An OpenVINO IR (``cnm-export --precision openvino-int8``) runs on OpenVINO: ``auto`` or ``openvino``.
- ``openvino`` runs the file on OpenVINO at the precision asked for (default: the file's own).
- ``cpu``, ``cuda``, ``tensorrt`` run it on ONNX Runtime, at the file's own precision (ONNX Runtime has no
  bf16 arithmetic on the CPU).
- ``auto``: bf16 asked for runs on OpenVINO (it must be installed and the CPU must have bf16). Otherwise ONNX
  Runtime's GPU providers come first, as before; where the model would run on the CPU, an fp32 file runs on
  OpenVINO when it is installed and ``OPENVINO_FOR_FP32`` (it was measured faster than ONNX Runtime there),
  and ONNX Runtime's dynamic-int8 file stays on ONNX Runtime (OpenVINO dequantizes it).

``RunOptions.precision``: None is the file's own arithmetic (an fp32 file exactly); ``fp32`` asks for exact arithmetic
(an error for an int8 or fp16 file); ``bf16`` for bf16 arithmetic on an fp32 file. Each session's
``provider`` says what ran: ONNX Runtime's provider name, or ``OpenVINO CPU <precision>``.
"""
from __future__ import annotations

from pathlib import Path

from cnm_runtime import openvino_session
from cnm_runtime.model_files import IR_SUFFIX
from cnm_runtime.openvino_session import OpenVinoSession
from cnm_runtime.options import RunOptions
from cnm_runtime.session import ModelSession

# Whether auto runs fp32 files on OpenVINO on the CPU: python -m benchmarks.run sets "OpenVINO fp32" against
# "ONNX Runtime fp32, batches side by side".
OPENVINO_FOR_FP32 = True

Session = ModelSession | OpenVinoSession


def open_session(model_path: str | Path, options: RunOptions = RunOptions()) -> Session:
    """The session that runs ``model_path`` by the rule above; ValueError or RuntimeError says why none can."""
    model_path = Path(model_path)
    provider, precision = options.provider, options.precision
    if model_path.suffix == IR_SUFFIX:
        if provider not in ("auto", "openvino"):
            raise ValueError(f"{model_path} is an OpenVINO IR: run it with --provider openvino (or auto)")
        return OpenVinoSession(model_path, options)
    if provider == "openvino" or (provider == "auto" and precision == "bf16"):
        return OpenVinoSession(model_path, options)
    if precision == "bf16":
        raise ValueError(f"--provider {provider} (ONNX Runtime) has no bf16 arithmetic: use --provider openvino or auto")
    session = ModelSession(model_path, options)
    if precision is not None and session.spec.precision != precision:
        session.close()
        raise ValueError(f"{model_path} was exported at {session.spec.precision} and cannot run at {precision}: "
                         "run an fp32 export")
    if provider == "auto" and session.device == "cpu" and _openvino_runs_faster(session):
        session.close()
        return OpenVinoSession(model_path, options)
    return session


def _openvino_runs_faster(session: ModelSession) -> bool:
    """Whether OpenVINO runs this file faster than ONNX Runtime's CPU provider here (see the rule above)."""
    return session.spec.precision == "fp32" and OPENVINO_FOR_FP32 and openvino_session.is_installed()
