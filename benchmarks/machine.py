"""The machine a benchmark ran on, and its measured fp32 matrix-multiply rate: the ceiling for every engine."""
from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import numpy as np

SGEMM_SIZE = 2048
SGEMM_REPEATS = 5


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def sgemm_gflops(size: int = SGEMM_SIZE, repeats: int = SGEMM_REPEATS) -> float:
    """Best-of-``repeats`` GFLOP/s of one ``size``-square float32 product in numpy (all cores)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def slug(*parts: str) -> str:
    """``"Intel(R) Xeon(R) Processor", "2c"`` -> ``intel-xeon-processor-2c``, for file names."""
    text = " ".join(parts).lower()
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*?ghz", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def gpu_name() -> str | None:
    """The first CUDA device as PyTorch sees it; None without one (or with a CPU-only PyTorch)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
