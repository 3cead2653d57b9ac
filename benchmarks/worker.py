"""One engine in its own process, measuring only when told to: ``python -m benchmarks.worker ENGINE ...``.

Engines that share a process, or measure at the same time, distort each other badly on a few cores,
so the coordinator starts one worker per engine and sends one command at a time on stdin. Each answer
is one JSON line on stdout; anything else (ONNX Runtime notices included) is sent to stderr.

    {"cmd": "predict", "out": PATH}                    -> {"ok": true}  (every query; center, width to PATH)
    {"cmd": "measure", "batch_size": B, "batches": N}  -> {"latencies_s": [N seconds], "videos": [N counts],
                                                           "wall_s": seconds for all N}

A measurement first runs one untimed batch (the warm-up), then N timed batches of consecutive queries,
taken round-robin from the prepared inputs; a batch holds each of its videos once, as cnm-run's do
(``--one-video-per-query``: each query its own copy). With ``--runs R`` the batches run R at once, each
timed on its own, after R warm-up batches at once; an OpenVINO engine runs as many at once as its session
has infer requests. ``Worker`` is the coordinator's end of the pipe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks.engines import BY_NAME, Runner, compiled_runner, openvino_runner, ort_runner, torch_runner
from cnm_runtime.batch import Batch

PREDICT_CHUNK = 64
WARMUP_BATCHES = 1
REPO = Path(__file__).resolve().parents[1]  # benchmarks/ is a folder of the repository, not installed


def batch_of(queries: Batch, start: int, size: int) -> Batch:
    return queries.take((start + np.arange(size)) % len(queries))


def predict(run: Runner, queries: Batch) -> tuple[np.ndarray, np.ndarray]:
    total = len(queries)
    parts = [run(batch_of(queries, i, min(PREDICT_CHUNK, total - i))) for i in range(0, total, PREDICT_CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def measure(run: Runner, queries: Batch, batch_size: int, batches: int, runs: int = 1) -> dict[str, Any]:
    """Seconds per timed batch, the videos each held and the seconds for them all; the batches are built
    before the clock starts."""
    def timed(batch: Batch) -> float:
        started = time.perf_counter()
        run(batch)
        return time.perf_counter() - started

    warmup = [batch_of(queries, i * batch_size, batch_size) for i in range(WARMUP_BATCHES * runs)]
    timed_batches = [batch_of(queries, i * batch_size, batch_size) for i in range(batches)]
    pool = ThreadPoolExecutor(runs) if runs > 1 else None  # one batch at a time runs in this thread
    run_all = pool.map if pool else map
    try:
        list(run_all(timed, warmup))
        started = time.perf_counter()
        latencies = list(run_all(timed, timed_batches))
        wall_s = time.perf_counter() - started
    finally:
        if pool:
            pool.shutdown()
    return {"latencies_s": latencies, "videos": [len(batch.frames) for batch in timed_batches], "wall_s": wall_s}


def _protocol_stream():
    """The real stdout for answers; file descriptor 1 then points at stderr, so stray prints cannot mix in."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return answers


@click.command()
@click.argument("engine_name", type=click.Choice(sorted(BY_NAME)))
@click.option("--inputs", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="ONNX engines")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PyTorch engines")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PyTorch engines")
@click.option("--threads", type=click.IntRange(min=1), required=True)
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True, help="batches run at once")
@click.option("--max-batch", type=click.IntRange(min=1), required=True)
@click.option("--one-video-per-query", "unshared", is_flag=True, help="no video shared between the queries of a batch")
def main(engine_name: str, inputs: Path, model: Path | None, checkpoint: Path | None, vocab: Path | None,
         threads: int, runs: int, max_batch: int, unshared: bool) -> None:
    answers = _protocol_stream()

    def answer(message: dict) -> None:
        answers.write(json.dumps(message) + "\n")

    engine = BY_NAME[engine_name]
    try:
        if engine.compiled:
            run = compiled_runner(checkpoint, vocab, threads, bf16=engine.precision == "bf16")
            provider = "torch-compile-cpu"
        elif engine.is_torch:
            run = torch_runner(checkpoint, vocab, engine.provider, threads, engine.half)
            provider = f"torch-{engine.provider}"
        elif engine.is_openvino:  # its streams and infer requests set how many batches run at once
            run, provider, runs = openvino_runner(model, engine.precision)
        else:
            run, provider = ort_runner(model, engine, threads, max_batch, runs)
    except Exception as error:  # a provider that cannot start is a result ("not run: why"), not a crash
        answer({"error": f"{type(error).__name__}: {error}"})
        return
    queries = Batch.load(inputs)
    if unshared:
        queries = queries.one_video_per_query()
    answer({"ready": True, "provider": provider})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "predict":
            center, width = predict(run, queries)
            np.savez(command["out"], center=center, width=width)
            answer({"ok": True})
        else:
            answer(measure(run, queries, command["batch_size"], command["batches"], runs))


class Worker:
    """Starts ``python -m benchmarks.worker`` for one engine; ``ask`` sends a command and waits for the answer."""

    def __init__(self, engine_name: str, options: list[str], env: dict[str, str]):
        self.engine_name = engine_name
        python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **env, "PYTHONPATH": python_path}
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", engine_name, *options],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.started = self._answer()  # {"ready": true, "provider": ...} or {"error": ...}

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.engine_name} worker exited (status {self.process.wait()}); "
                               "its error is on standard error above")
        return json.loads(line)

    def ask(self, command: dict) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        """End of input ends the worker."""
        self.process.stdin.close()
        self.process.wait()
        self.process.stdout.close()


if __name__ == "__main__":
    main()
