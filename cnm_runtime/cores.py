"""How many cores this process may use (the affinity mask where the platform has one: containers and
``taskset`` narrow it; else every core), and how many threads the engines keep busy when none are asked for."""
from __future__ import annotations

import os


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# The threads cnm-run keeps busy when none are asked for: one per core, at most this many, since past that
# the threads of a model this small wait on each other more than they compute (benchmarks/cnm_run_scale.py
# settings sweeps them on a machine).
MAX_DEFAULT_THREADS = 8


def default_threads() -> int:
    return min(available_cores(), MAX_DEFAULT_THREADS)
