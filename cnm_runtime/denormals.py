"""Denormal results flushed to zero in the calling thread, for the model's own threads only.

A softmax over masked keys underflows into denormal numbers, which the CPU handles on a slow path: flushing
them to zero pays (``python -m benchmarks.run`` sets the two against each other). ONNX Runtime's own switch
(``session.set_denormal_as_zero``) reaches its thread pools, and the thread that starts it, not threads that
call ``run`` with one intra-op thread, as cnm's session threads do; and a caller's thread must never be
changed. So each session thread sets its own control register when it starts: FTZ and DAZ in MXCSR on
x86-64, FZ in FPCR on arm64 (through C's ``fegetenv``/``fesetenv``, whose ``fenv_t`` holds that register
at a known place on Linux). Elsewhere nothing is flushed, and the numbers are the same but for results below
1.2e-38.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

# machine -> (offset of the control register in glibc's fenv_t, the bits that flush to zero)
_CONTROL_BITS = {
    "x86_64": (28, 0x8040),  # MXCSR: flush to zero (bit 15), denormals are zero (bit 6)
    "aarch64": (0, 1 << 24),  # FPCR: flush to zero (bit 24)
}
_FENV_BYTES = 32  # at least sizeof(fenv_t) on either machine


def can_flush() -> bool:
    return sys.platform == "linux" and platform.machine() in _CONTROL_BITS


def flush_denormals_here() -> None:
    """Make this thread flush denormal results (and inputs) to zero; nothing where ``can_flush()`` is False."""
    if not can_flush():
        return
    offset, bits = _CONTROL_BITS[platform.machine()]
    libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    environment = (ctypes.c_uint8 * _FENV_BYTES)()
    if libm.fegetenv(environment) != 0:
        return
    control = int.from_bytes(bytes(environment[offset:offset + 4]), "little") | bits
    environment[offset:offset + 4] = (ctypes.c_uint8 * 4)(*control.to_bytes(4, "little"))
    libm.fesetenv(environment)
