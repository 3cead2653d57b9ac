"""``python -m benchmarks.run``: speed and accuracy of every engine side by side, on the machine at hand.

For one checkpoint and one archive with labelled queries it measures
1. model-only queries/s and latency per batch at each batch size, for PyTorch eager and torch.compile
   (fp32, and bf16 autocast), ONNX Runtime fp32 and int8, and OpenVINO fp32, bf16 and int8 on the CPU
   and, where a GPU is present, PyTorch CUDA fp32 and fp16, ONNX Runtime CUDA fp16 and ONNX Runtime
   TensorRT fp16, and the fastest engine at each batch size;
2. cnm-run end to end on the archive at the reference batch size (on ONNX Runtime, and on each OpenVINO
   engine, through the public CLI), and its peak RSS;
3. IoU@0.3/0.5/0.7 and mIoU of every engine on the same queries, and its largest output differences
   from PyTorch fp32;
4. the machine: CPU, cores, the measured fp32 matrix-multiply rate (the ceiling), FLOPs per query of
   each graph and the GFLOP/s achieved.

Model-only batches are consecutive queries of the file, each video in a batch once, as cnm-run batches
them (``--one-video-per-query`` gives every query its own copy instead: nothing shared).
Each engine runs in its own worker process (``benchmarks.worker``) and measures only when told to;
each round visits every batch size, and at each batch size every engine in turn (the order rotates
from round to round), then runs cnm-run once. Every measurement starts with an untimed warm-up batch.
Results go to ``<out-dir>/<machine>-<date>.json``, ``.md`` (the tables, also printed) and ``.png``.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import onnxruntime
import torch
from tqdm import tqdm

from benchmarks.end_to_end import EndToEnd, run_cnm_run
from benchmarks.feed_only import FeedRun, measure_feed_only
from benchmarks.engines import BY_NAME, ENGINES, REFERENCE, TORCH_OMP_WAIT_POLICY, Engine, worker_env
from benchmarks.inputs import prepare_queries, synthetic_archive, write_repeated
from benchmarks.machine import SGEMM_SIZE, cpu_model, gpu_name, sgemm_gflops, slug
from benchmarks.plot import plot_throughput
from benchmarks.report import markdown
from benchmarks.summary import accuracy_figures, check_targets, fastest, ratio, speed_figures, spread
from benchmarks.worker import Worker
from cnm_export import openvino_int8
from cnm_export.export import DEFAULT_OPSET, export_model, load_source, unpruned_flops
from cnm_export.flops import Flops, graph_flops
from cnm_runtime.cores import available_cores, default_threads
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.openvino_session import OPENVINO_INT8
from cnm_runtime.run_files import write_json_atomic

log = logging.getLogger("benchmarks")

DEMO_DIR = Path("runs/demo")
DEMO_FILES = {"checkpoint": "model-best.pt", "vocab": "data/glove.pkl", "features": "data/features.hdf5",
              "queries": "data/queries.jsonl"}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIN_BATCHES = 3  # timed batches per measurement at least, so that large batches have a latency spread


@dataclass(frozen=True)
class Settings:
    rounds: int
    batch_sizes: tuple[int, ...]
    queries_per_point: int  # queries timed per engine, batch size and round
    max_queries: int  # labelled queries prepared from the queries file
    e2e_queries: int  # queries per cnm-run: the prepared ones, repeated
    threads: int  # for every engine: PyTorch's threads, ONNX Runtime's intra-op threads
    feed_processes: tuple[int, ...]  # the feed-only figure's feed processes (0: a thread)
    one_video_per_query: bool = False  # model-only batches share no video between queries
    quick: bool = False  # a smoke test: small sizes everywhere

    @property
    def reference_batch(self) -> int:
        """Where the targets are checked and cnm-run runs: 64, else the largest batch size."""
        return 64 if 64 in self.batch_sizes else max(self.batch_sizes)

    def batches(self, batch_size: int) -> int:
        return max(MIN_BATCHES, math.ceil(self.queries_per_point / batch_size))


FULL = {"rounds": 5, "batch_sizes": (1, 16, 64, 128), "queries_per_point": 256, "max_queries": 500,
        "e2e_queries": 4096}
QUICK = {"rounds": 2, "batch_sizes": (1, 4), "queries_per_point": 8, "max_queries": 32, "e2e_queries": 32}
# cnm-run on a GPU: enough queries that tens of thousands a second run for seconds, start-up aside
GPU_E2E_QUERIES = 200_000


@dataclass(frozen=True)
class Inputs:
    checkpoint: Path
    vocab: Path | None  # None: the checkpoint config's vocab_path
    features: Path
    queries: Path
    calibration_queries: Path | None = None  # OpenVINO int8's training split; None: the checkpoint config's
    calibration_features: Path | None = None


@dataclass(frozen=True)
class Models:
    paths: dict[str, Path]  # precision -> exported file
    flops: dict[str, Flops]  # what an engine loads (checkpoint or precision) -> its FLOPs
    spec: ModelSpec
    shape: dict[str, int]  # the network's size, so a results table can say which model ran
    errors: dict[str, str]  # precision -> why it could not be exported (its engines do not run)


def resolve_inputs(checkpoint: Path | None, vocab: Path | None, features: Path | None,
                   queries: Path | None, calibration: tuple[Path | None, Path | None] = (None, None)) -> Inputs:
    """The given files; without --checkpoint, the demo's files stand in for those not given."""
    given = {"checkpoint": checkpoint, "vocab": vocab, "features": features, "queries": queries}
    if checkpoint is not None:
        if features is None or queries is None:
            raise click.UsageError("--checkpoint needs --features and --queries (labelled queries)")
        return Inputs(**given, calibration_queries=calibration[0], calibration_features=calibration[1])
    paths = {name: given[name] or DEMO_DIR / relative for name, relative in DEMO_FILES.items()}
    for path in paths.values():
        if not path.exists():
            raise click.UsageError(
                f"no --checkpoint given and the demo's {path} does not exist: make the demo with "
                f"`cnm-demo --out {DEMO_DIR}`, or pass --checkpoint, --features and --queries (and --vocab)")
    return Inputs(**paths, calibration_queries=calibration[0], calibration_features=calibration[1])


def export_models(inputs: Inputs, precisions: list[str], workdir: Path) -> Models:
    """The checkpoint exported at each precision as cnm-export writes it, and every graph's FLOPs per query.

    openvino-int8 calibrates on the training split (``--calibration-queries``, else the checkpoint config's);
    where there is none, its engine does not run and the rest go on."""
    source = load_source(inputs.checkpoint, inputs.vocab)
    paths, specs, errors = {}, {}, {}
    for precision in precisions:
        paths[precision] = workdir / (f"{precision}.xml" if precision == OPENVINO_INT8 else f"{precision}.onnx")
        try:
            calibration = openvino_int8.training_split(source, inputs.calibration_queries,
                                                       inputs.calibration_features) if precision == OPENVINO_INT8 else None
            specs[precision] = export_model(source, paths[precision], precision, calibration=calibration)
        except (OSError, ValueError, RuntimeError) as error:
            if precision != OPENVINO_INT8:
                raise
            errors[precision] = f"{type(error).__name__}: {error}"
            log.warning("%s not exported: %s", precision, error)
            del paths[precision]
    # an IR's FLOPs are its fp32 graph's (the same products, quantized)
    flops = {precision: graph_flops(paths["fp32" if precision == OPENVINO_INT8 else precision])
             for precision in paths}
    flops["checkpoint"] = unpruned_flops(source, DEFAULT_OPSET)  # what PyTorch's generate computes
    cfg = source.model.cfg
    shape = {"d_model": cfg.hidden_size, "heads": cfg.num_heads, "frame_layers": cfg.num_decoder_layers1,
             "word_layers": cfg.num_decoder_layers2, "frame_dim": cfg.frames_input_size, "vocab_size": cfg.vocab_size}
    return Models(paths, flops, specs["fp32"], shape, errors)


def start_worker(engine: Engine, inputs: Inputs, models: Models, batch_path: Path, settings: Settings) -> Worker:
    threads = ["--threads", "1", "--runs", str(settings.threads)] if engine.side_by_side else [
        "--threads", str(settings.threads)]
    options = ["--inputs", str(batch_path), *threads, "--max-batch", str(max(settings.batch_sizes))]
    options += ["--one-video-per-query"] if settings.one_video_per_query else []
    if engine.is_torch:
        options += ["--checkpoint", str(inputs.checkpoint.resolve())]
        options += ["--vocab", str(inputs.vocab.resolve())] if inputs.vocab else []
    else:
        options += ["--model", str(models.paths[engine.graph])]
    return Worker(engine.name, options, worker_env(engine))


def predict_all(workers: dict[str, Worker], workdir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every engine's (center, width) for every prepared query."""
    outputs = {}
    for name, worker in workers.items():
        path = workdir / f"{name}-outputs.npz"
        worker.ask({"cmd": "predict", "out": str(path)})
        with np.load(path) as arrays:
            outputs[name] = (arrays["center"], arrays["width"])
    return outputs


@dataclass
class Measurements:
    latencies_s: dict[tuple[str, int], list[float]]  # every timed batch of an engine at a batch size
    round_qps: dict[tuple[str, int], list[float]]  # queries/s of each round
    videos: dict[tuple[str, int], list[int]]  # videos in each timed batch
    end_to_end: list[EndToEnd]
    end_to_end_error: str | None
    feed_only: dict[int, list[FeedRun]]  # feed processes -> one run a round
    # cnm-run on another engine (an OpenVINO one) -> one run a round, or why it failed
    engine_end_to_end: dict[str, list[EndToEnd] | str]


def measure_rounds(workers: dict[str, Worker], settings: Settings, run_end_to_end, run_feed_only,
                   engine_end_to_end: dict[str, Callable[[], EndToEnd]]) -> Measurements:
    """The rounds: never two engines measuring at once; cnm-run (on ONNX Runtime, then on each engine of
    ``engine_end_to_end``), then the feed alone, last in each round."""
    keys = [(name, batch) for name in workers for batch in settings.batch_sizes]
    measured = Measurements({key: [] for key in keys}, {key: [] for key in keys}, {key: [] for key in keys}, [], None,
                            {processes: [] for processes in settings.feed_processes},
                            {name: [] for name in engine_end_to_end})
    names = list(workers)
    steps = settings.rounds * (len(keys) + 1 + len(engine_end_to_end) + len(settings.feed_processes))
    with tqdm(total=steps, desc="measuring", unit="step", file=sys.stderr, disable=None) as progress:
        for round_index in range(settings.rounds):
            order = names[round_index % len(names):] + names[: round_index % len(names)]
            for batch in settings.batch_sizes:
                for name in order:
                    command = {"cmd": "measure", "batch_size": batch, "batches": settings.batches(batch)}
                    answer = workers[name].ask(command)
                    latencies = answer["latencies_s"]
                    measured.latencies_s[name, batch] += latencies
                    measured.videos[name, batch] += answer["videos"]
                    measured.round_qps[name, batch].append(batch * len(latencies) / answer["wall_s"])
                    progress.update()
            if measured.end_to_end_error is None:
                try:
                    measured.end_to_end.append(run_end_to_end())
                except (RuntimeError, OSError) as error:  # the model-only figures still stand
                    measured.end_to_end_error = str(error)
                    log.error("cnm-run end to end: %s", error)
            progress.update()
            for name, run in engine_end_to_end.items():
                if isinstance(measured.engine_end_to_end[name], list):
                    try:
                        measured.engine_end_to_end[name].append(run())
                    except (RuntimeError, OSError) as error:
                        measured.engine_end_to_end[name] = str(error)
                        log.error("cnm-run end to end on %s: %s", name, error)
                progress.update()
            for processes in settings.feed_processes:
                measured.feed_only[processes].append(run_feed_only(processes))
                progress.update()
    return measured


def engine_results(engine: Engine, status: str, provider: str | None, models: Models, settings: Settings,
                   measured: Measurements, outputs: dict, truth: np.ndarray) -> dict[str, Any]:
    flops = models.flops.get(engine.graph)
    result: dict[str, Any] = {"label": engine.label, "device": "gpu" if engine.needs_gpu else "cpu",
                              "graph": engine.graph, "provider": provider, "status": status,
                              "flops_per_query": None if flops is None else flops.per_query_at(),
                              "flops_per_video": None if flops is None else flops.per_video}
    if engine.name in outputs:
        result["speed"] = {
            str(batch): speed_figures(measured.round_qps[engine.name, batch], measured.latencies_s[engine.name, batch],
                                      measured.videos[engine.name, batch], batch, flops)
            for batch in settings.batch_sizes
        }
        result["accuracy"] = accuracy_figures(outputs[engine.name], truth, outputs.get(REFERENCE))
    return result


def end_to_end_results(measured: Measurements, engines: dict[str, dict], settings: Settings) -> dict[str, Any] | None:
    runs = measured.end_to_end
    if not runs:
        return None
    batch = settings.reference_batch

    def model_only(name: str) -> float | None:
        return engines[name].get("speed", {}).get(str(batch), {}).get("queries_per_s", {}).get("median")

    qps = spread([run.queries_per_s for run in runs])
    return {
        "batch_size": batch,
        "runs": settings.threads,
        "queries": runs[0].metrics["predicted"],
        "errors": runs[0].metrics["errors"],
        "queries_per_s": qps,
        "wall_s": spread([run.wall_s for run in runs]),
        "peak_rss_mb": max(run.peak_rss_mb for run in runs),
        "model_only_queries_per_s": model_only("ort-fp32"),
        "ratio": ratio(qps["median"], model_only("ort-fp32")),
        "side_by_side_queries_per_s": model_only("ort-fp32-side"),
        "side_by_side_ratio": ratio(qps["median"], model_only("ort-fp32-side")),
        "mIoU": runs[0].metrics["mIoU"],
    }


def engine_end_to_end_results(measured: Measurements, engines: dict[str, dict], settings: Settings
                              ) -> dict[str, Any]:
    """cnm-run on each other engine against that engine's model-only figure at the same batch size (with its
    own settings, as cnm-run's defaults: OpenVINO's streams and infer requests)."""
    batch = str(settings.reference_batch)
    results: dict[str, Any] = {}
    for name, runs in measured.engine_end_to_end.items():
        if isinstance(runs, str) or not runs:
            results[name] = {"error": runs or "not run"}
            continue
        qps = spread([run.queries_per_s for run in runs])
        model_only = engines[name].get("speed", {}).get(batch, {}).get("queries_per_s", {}).get("median")
        results[name] = {"batch_size": settings.reference_batch, "provider": runs[0].metrics["provider"],
                         "queries": runs[0].metrics["predicted"], "queries_per_s": qps,
                         "model_only_queries_per_s": model_only, "ratio": ratio(qps["median"], model_only),
                         "peak_rss_mb": max(run.peak_rss_mb for run in runs), "mIoU": runs[0].metrics["mIoU"]}
    return results


def gpu_end_to_end(engines: dict[str, dict], models: Models, inputs: Inputs, queries: Path, settings: Settings,
                   workdir: Path) -> dict[str, Any] | None:
    """cnm-run with the CUDA provider at the fastest ONNX Runtime CUDA engine's best batch size, one feed
    process a core but one, set against that engine's model-only figure."""
    best = max(((figures["queries_per_s"]["median"], name, int(batch))
                for name in ("ort-cuda-fp32", "ort-cuda-fp16")
                for batch, figures in engines[name].get("speed", {}).items()), default=None)
    if best is None:
        return None
    model_only, name, batch = best
    feeders = max(1, available_cores() - 1)
    runs = [run_cnm_run(models.paths[BY_NAME[name].graph], inputs.features, queries, batch, 1, workdir, "cuda",
                        feeders) for _ in range(settings.rounds)]
    qps = spread([run.queries_per_s for run in runs])
    return {"engine": name, "batch_size": batch, "feed_processes": feeders, "queries": runs[0].metrics["predicted"],
            "queries_per_s": qps, "model_only_queries_per_s": model_only, "ratio": ratio(qps["median"], model_only),
            "peak_rss_mb": max(run.peak_rss_mb for run in runs)}


def feed_only_results(measured: Measurements, settings: Settings) -> dict[str, Any] | None:
    """Feed-only queries/s by feed processes, and each count's gain over one process."""
    runs = {processes: found for processes, found in measured.feed_only.items() if found}
    if not runs:
        return None
    by_processes = {
        str(processes): {"queries_per_s": spread([run.queries_per_s for run in found]),
                         "startup_s": statistics.median(run.startup_s for run in found)}
        for processes, found in runs.items()
    }
    one = by_processes.get("1", {}).get("queries_per_s", {}).get("median")
    for figures in by_processes.values():
        figures["vs_one_process"] = ratio(figures["queries_per_s"]["median"], one)
    return {"batch_size": settings.reference_batch, "queries": next(iter(runs.values()))[0].results,
            "by_processes": by_processes}


def machine_info(gpu: str | None) -> dict[str, Any]:
    return {
        "cpu": cpu_model(), "cores": available_cores(), "gpu": gpu, "sgemm_gflops": sgemm_gflops(),
        "sgemm_size": SGEMM_SIZE, "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
    }


def start_workers(to_run: list[Engine], inputs: Inputs, models: Models, batch_path: Path, settings: Settings
                  ) -> tuple[dict[str, Worker], dict[str, str], dict[str, str]]:
    """A ready worker per engine that starts; every engine's status; the provider each worker really runs."""
    workers, statuses, providers = {}, {}, {}
    for engine in ENGINES:
        if engine not in to_run:
            statuses[engine.name] = "not run: no GPU"
            continue
        if engine.graph in models.errors:
            statuses[engine.name] = f"not run: {models.errors[engine.graph]}"
            continue
        log.info("starting %s", engine.label)
        worker = start_worker(engine, inputs, models, batch_path, settings)
        if "error" in worker.started:
            statuses[engine.name] = f"not run: {worker.started['error']}"
            log.warning("%s: %s", engine.label, statuses[engine.name])
            worker.close()
            continue
        workers[engine.name], statuses[engine.name] = worker, "ran"
        providers[engine.name] = worker.started["provider"]
    return workers, statuses, providers


def benchmark(inputs: Inputs, settings: Settings, command: str, workdir: Path) -> dict[str, Any]:
    started = datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    gpu = gpu_name()
    to_run = [engine for engine in ENGINES if gpu or not engine.needs_gpu]
    log.info("exporting %s", inputs.checkpoint)
    models = export_models(inputs, sorted({"fp32"} | {engine.graph for engine in to_run if not engine.is_torch}),
                           workdir)
    prepared = prepare_queries(inputs.features, inputs.queries, models.spec, settings.max_queries, workdir)
    skipped = prepared.read - len(prepared.queries)
    log.info("%d labelled queries prepared (%d skipped)", len(prepared.queries), skipped)
    log.info("measuring the fp32 matrix-multiply rate")
    machine = machine_info(gpu)

    workers, statuses, providers = start_workers(to_run, inputs, models, prepared.batch_path, settings)
    if not workers:
        raise RuntimeError("no engine started: " + "; ".join(f"{name} {why}" for name, why in statuses.items()))
    try:
        outputs = predict_all(workers, workdir)
        e2e_queries = write_repeated(prepared.queries, settings.e2e_queries, workdir / "e2e-queries.jsonl")
        measured = measure_rounds(
            workers, settings,
            lambda: run_cnm_run(models.paths["fp32"], inputs.features, e2e_queries, settings.reference_batch,
                                settings.threads, workdir),
            lambda processes: measure_feed_only(models.paths["fp32"], inputs.features, e2e_queries,
                                                settings.reference_batch, processes, keep_videos=1),
            {name: functools.partial(run_cnm_run, models.paths[BY_NAME[name].graph], inputs.features, e2e_queries,
                                     settings.reference_batch, 0, workdir, "openvino",
                                     precision=BY_NAME[name].precision)
             for name in workers if BY_NAME[name].is_openvino})
    finally:
        for worker in workers.values():
            worker.close()  # frees the GPU for cnm-run below

    engines = {
        engine.name: engine_results(engine, statuses[engine.name], providers.get(engine.name), models, settings,
                                    measured, outputs, prepared.truth)
        for engine in ENGINES
    }
    load_after = os.getloadavg()[0]  # other work on the machine slows every engine alike, not evenly
    end_to_end = end_to_end_results(measured, engines, settings)
    engine_ends = engine_end_to_end_results(measured, engines, settings)
    if gpu and end_to_end is not None:
        gpu_queries = write_repeated(prepared.queries, GPU_E2E_QUERIES if not settings.quick else settings.e2e_queries,
                                     workdir / "gpu-e2e-queries.jsonl")
        end_to_end["gpu"] = gpu_end_to_end(engines, models, inputs, gpu_queries, settings, workdir)
    feed = feed_only_results(measured, settings)
    return {
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_before_after": [load_before, load_after]},
        "settings": {**asdict(settings), "reference_batch": settings.reference_batch, "min_batches": MIN_BATCHES,
                     "torch_omp_wait_policy": TORCH_OMP_WAIT_POLICY},
        "inputs": {
            **{name: None if path is None else str(path) for name, path in asdict(inputs).items()},
            "synthetic_features": synthetic_archive(inputs.features),
            "queries_read": prepared.read, "queries_used": len(prepared.queries), "queries_skipped": skipped,
        },
        "model": models.shape,
        "engines": engines,
        "fastest": fastest(engines),
        "end_to_end": end_to_end,
        "end_to_end_error": measured.end_to_end_error,
        "end_to_end_by_engine": engine_ends,
        "feed_only": feed,
        "targets": check_targets(engines, end_to_end, feed, settings.reference_batch,
                                 not settings.one_video_per_query, engine_ends),
    }


def write_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``<machine>-<date>`` .json, .md and .png in ``out_dir``."""
    machine = results["machine"]
    name = slug(machine["cpu"], f"{machine['cores']}c", machine["gpu"] or "") + "-" + results["date"][:10]
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / f"{name}.{suffix}" for suffix in ("json", "md", "png"))
    write_json_atomic(json_path, results)
    md_path.write_text(markdown(results))
    plot_throughput(results, png_path)
    return [json_path, md_path, png_path]


def _counts(text: str | None, minimum: int = 1) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < minimum:
        raise click.BadParameter(f"expected numbers of at least {minimum}, got {text!r}")
    return counts


FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=FILE, help=f"CNM checkpoint  [default: {DEMO_DIR}/{DEMO_FILES['checkpoint']}]")
@click.option("--vocab", type=FILE, help="glove.pkl of training  [default: the demo's, or the checkpoint config's]")
@click.option("--features", type=FILE, help=f"HDF5 feature archive  [default: {DEMO_DIR}/{DEMO_FILES['features']}]")
@click.option("--queries", type=FILE, help="labelled queries (JSON lines with timestamps, or an annotation list)"
              f"  [default: {DEMO_DIR}/{DEMO_FILES['queries']}]")
@click.option("--calibration-queries", type=FILE, help="training queries OpenVINO int8 calibrates on  [default: "
              "the checkpoint config's dataset.train_data]")
@click.option("--calibration-features", type=FILE, help="the archive of their videos  [default: the checkpoint "
              "config's dataset.feature_path]")
@click.option("--quick", is_flag=True, help="a short run with tiny sizes (a smoke test, not figures to quote)")
@click.option("--rounds", type=click.IntRange(min=1), help=f"[default: {FULL['rounds']}; quick {QUICK['rounds']}]")
@click.option("--batch-sizes", help="comma-separated  [default: 1,16,64,128; quick 1,4]")
@click.option("--queries-per-point", type=click.IntRange(min=1),
              help=f"queries timed per engine, batch size and round, at least {MIN_BATCHES} batches  "
                   f"[default: {FULL['queries_per_point']}; quick {QUICK['queries_per_point']}]")
@click.option("--max-queries", type=click.IntRange(min=1),
              help="labelled queries read from --queries  "
                   f"[default: {FULL['max_queries']}; quick {QUICK['max_queries']}]")
@click.option("--e2e-queries", type=click.IntRange(min=1),
              help="queries per cnm-run, the labelled ones repeated  "
                   f"[default: {FULL['e2e_queries']}; quick {QUICK['e2e_queries']}]")
@click.option("--threads", type=click.IntRange(min=1),
              help="threads of every engine  [default: as cnm-run, one per core, at most 8]")
@click.option("--feed-processes", help="comma-separated feed processes for the feed-only figure (0: a thread)  "
              "[default: 0, 1, 2, 4, 8, 16 up to the cores; quick 0,1]")
@click.option("--one-video-per-query", is_flag=True,
              help="model-only batches give every query its own copy of its video's clips (nothing shared); "
                   "cnm-run still shares")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default="benchmarks/results")
def main(checkpoint: Path | None, vocab: Path | None, features: Path | None, queries: Path | None,
         calibration_queries: Path | None, calibration_features: Path | None, quick: bool,
         rounds: int | None, batch_sizes: str | None, queries_per_point: int | None, max_queries: int | None,
         e2e_queries: int | None, threads: int | None, feed_processes: str | None, one_video_per_query: bool,
         out_dir: Path) -> None:
    """Speed and accuracy of every engine on one checkpoint and one labelled archive, side by side."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    defaults = QUICK if quick else FULL
    given = {"rounds": rounds, "batch_sizes": _counts(batch_sizes), "queries_per_point": queries_per_point,
             "max_queries": max_queries, "e2e_queries": e2e_queries}
    processes = _counts(feed_processes, minimum=0) or (
        (0, 1) if quick else tuple(count for count in (0, 1, 2, 4, 8, 16) if count <= available_cores()))
    settings = Settings(**{key: defaults[key] if value is None else value for key, value in given.items()},
                        threads=threads or default_threads(), feed_processes=processes,
                        one_video_per_query=one_video_per_query, quick=quick)
    inputs = resolve_inputs(checkpoint, vocab, features, queries, (calibration_queries, calibration_features))
    command = shlex.join(["python", "-m", "benchmarks.run", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="cnm-bench-") as scratch:
        try:
            results = benchmark(inputs, settings, command, Path(scratch))
        except (OSError, ValueError, RuntimeError) as error:
            raise click.ClickException(str(error)) from error
    paths = write_results(results, out_dir)
    click.echo(markdown(results), nl=False)
    log.info("wrote %s", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
