"""One cnm-run, end to end (reading, resampling, tokenizing and inference together), and its peak RSS."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_TAIL_CHARS = 2000


@dataclass(frozen=True)
class EndToEnd:
    queries_per_s: float  # cnm-run's own figure: first query to last prediction, loading the model excluded
    wall_s: float  # the whole process, start-up included
    peak_rss_mb: float  # the largest process of the run: cnm-run itself or one of its feed processes
    metrics: dict[str, Any]  # cnm-run's --metrics file


def cnm_run_executable() -> str:
    """The cnm-run of this environment (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("cnm-run")
    found = str(beside) if beside.exists() else shutil.which("cnm-run")
    if found is None:
        raise FileNotFoundError("cnm-run is not installed here: pip install -e . in the repository")
    return found


def run_cnm_run(model: Path, features: Path, queries: Path, batch_size: int, runs: int, workdir: Path,
                provider: str = "cpu", feeders: int = 0, precision: str | None = None) -> EndToEnd:
    """Ground every query of ``queries`` with cnm-run on ``provider`` at ``precision`` (None: the model's),
    ``runs`` batches at once (0: cnm-run's default; on ONNX Runtime's CPU provider of one thread each: its
    defaults on that many cores) and ``feeders`` feed processes; RuntimeError if it fails.

    The benchmark's queries file repeats a small labelled set, so cnm-run keeps only the last video: each
    copy reads its videos again, as a real run reads each video once for the queries that come together.
    """
    metrics_path, log_path = workdir / "cnm-run-metrics.json", workdir / "cnm-run.log"
    command = [
        cnm_run_executable(), "--model", str(model), "--features", str(features), "--queries", str(queries),
        "-o", str(workdir / "cnm-run-predictions.jsonl"), "--metrics", str(metrics_path),
        "--batch-size", str(batch_size), "--provider", provider, "--feeders", str(feeders),
        "--keep-videos", "1", *(["--runs", str(runs)] if runs else []), *(["--threads", "1"] if provider == "cpu" else []),
        *(["--precision", precision] if precision else []),
    ]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        # wait4 reports this child's resources with its own (waited-for) children: the feed processes.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"cnm-run exited with status {process.returncode}: "
                           f"{log_path.read_text()[-LOG_TAIL_CHARS:]}")
    metrics = json.loads(metrics_path.read_text())
    return EndToEnd(metrics["queries_per_s"], wall_s, usage.ru_maxrss / 1024, metrics)
