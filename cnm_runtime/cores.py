"""How many cores this process may use: the affinity mask where the platform has one (containers and
``taskset`` narrow it), else every core."""
from __future__ import annotations

import os


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
