"""cnm-run: ground every query of a queries file in the videos of a feature archive, in batches.

Predictions go to ``-o`` (standard output by default) as JSON lines in input order, each flushed as its batch
finishes; ``--resume`` completes a file that a crash or Ctrl-C left unfinished. Bad queries and videos become
records of ``--errors`` and the run goes on. Progress, logs and the summary go to standard error; the exit
status says how the run ended (``EXIT_STATUSES``). This module turns the flags into one
``RunOptions`` and the run's files, checks them, and hands them to the local run or the Ray engine.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

# Only light modules here: the signal handlers go in before numpy, h5py and ONNX Runtime load (in the
# engines' functions below), so that Ctrl-C during start-up ends the run as cleanly as later.
from cnm_runtime.options import (DEFAULT_MAX_VIDEO_BYTES, PRECISION_CHOICES, PROVIDER_CHOICES, ArchiveOptions,
                                 RunOptions)
from cnm_runtime.run_files import OutputError, OutputInUse, RunFiles, refuse_aliases
from cnm_runtime.stop import StopSignals

log = logging.getLogger("cnm-run")

# How a run ended (click gives 2 to a usage error, which cnm-run also uses for inputs it cannot use)
EXIT_OK = 0
EXIT_TOO_MANY_ERRORS = 1
EXIT_USAGE = 2
EXIT_FAILED = 70
EXIT_OUTPUT = 74
EXIT_STATUSES = {
    EXIT_OK: "every query ended as a prediction or an error record, and errors are within --max-errors",
    EXIT_TOO_MANY_ERRORS: "more error records than --max-errors",
    EXIT_USAGE: "a flag, input or output that cannot be used (outputs that are inputs, an output another run "
                "holds, a resume of other inputs, a model or archive that cannot be read); nothing was grounded",
    EXIT_FAILED: "the run could not go on (a feed process died, the Ray cluster failed); what is written stays "
                 "and --resume (the same command, with Ray) continues it",
    EXIT_OUTPUT: "an output could not be written (disk full, no permission); what is written stays and --resume "
                 "completes it",
    128 + signal.SIGINT: "stopped by Ctrl-C (SIGINT); what is written stays, the metrics count it, and --resume "
                         "continues it",
    128 + signal.SIGTERM: "stopped by SIGTERM; as for Ctrl-C",
}


class Failed(Exception):
    """The run ended early; ``status`` is cnm-run's exit status for it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default="model-best.onnx",
              show_default=True, help="ONNX model written by cnm-export.")
@click.option("--features", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="HDF5 feature archive: a dataset per video, or a group per video holding c3d_features.")
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON lines (video, query, [qid, duration, timestamps]) or an original annotation list.")
@click.option("-o", "--output", type=click.Path(path_type=Path, allow_dash=True), default="-",
              show_default=True, help="Predictions, one JSON line per query ('-': standard output); with "
                                      "--engine ray, the folder of shard files.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path),
              help="One JSON line per bad query or video (default: logged to standard error).")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Counts, IoU@0.1..0.9 and mIoU (queries with timestamps), speed and provider, as JSON.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES), default="auto", show_default=True,
              help="auto: TensorRT, else CUDA, whichever this machine can run, else the CPU (OpenVINO where it is "
                   "installed: cnm_runtime.engines); openvino: OpenVINO on the CPU (pip install 'cnm[openvino]'). "
                   "A provider named here must start.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="Arithmetic: fp32 exact; bf16 on OpenVINO where the CPU has it (AVX512-BF16 or AMX; cnm-export "
                   "--verify reports its drift). int8 is chosen at export (cnm-export --precision)  "
                   "[default: the model's own]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads a run  [default: 1 on ONNX Runtime's CPU provider; on OpenVINO, its THROUGHPUT hint's "
                   "split of the cores into streams; for a GPU, one per core, at most 8]")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Batches the model runs at once  [default: on ONNX Runtime's CPU provider, the cores (at most 8) "
                   "divided by --threads; on OpenVINO, one an infer request; on a GPU, 1]")
@click.option("--feeders", type=click.IntRange(min=0), default=None,
              help="Processes that read, resample, tokenize and stack batches (0: a thread of this process)  "
                   "[default: 0 on the CPU; on a GPU, one a core but one]")
@click.option("--keep-videos", type=click.IntRange(min=1), default=64, show_default=True,
              help="Recent videos kept in memory, so nearby queries of one video share a read.")
@click.option("--trt-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="TensorRT engine and timing cache  [default: ~/.cache/cnm/tensorrt]")
@click.option("--refuse-outside-links", is_flag=True,
              help="A video whose features would be read from a file outside the archive's folder (an HDF5 "
                   "external link, a virtual dataset's source, external raw storage) is a link_outside_archive "
                   "error instead.")
@click.option("--max-video-mb", type=click.IntRange(min=1), default=DEFAULT_MAX_VIDEO_BYTES >> 20,
              show_default=True, help="A video whose features are larger is a video_too_large error, unread.")
@click.option("--resume", is_flag=True, help="Skip the qids already in -o and append the rest (the same queries "
                                             "and model only).")
@click.option("--max-errors", type=click.IntRange(min=0), default=0, show_default=True,
              help="Exit with status 1 when there are more errors than this.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: on Ray Data actors (pip install 'cnm[ray]'), into -o FOLDER, one file per shard; "
                   "the same command again finishes a run that stopped.")
@click.option("--address", default=None, help="With --engine ray: 'auto' joins the cluster of this node (run "
                                              "on a node, or by ray job submit)  [default: Ray on this machine]")
@click.option("--actors", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --engine ray: actors, each one model session (0: one a GPU, else one per --threads CPUs).")
@click.option("--shard-batches", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --engine ray: batches a shard, the unit of work that a rerun skips when done.")
def main(model: Path, features: Path, queries: Path, output: Path, errors_path: Path | None,
         metrics_path: Path | None, batch_size: int, provider: str, precision: str | None, threads: int | None,
         runs: int | None,
         feeders: int | None, keep_videos: int, trt_cache: Path | None, refuse_outside_links: bool,
         max_video_mb: int, resume: bool, max_errors: int, engine: str, address: str | None, actors: int,
         shard_batches: int) -> None:
    """Ground every query of QUERIES in the videos of FEATURES with MODEL."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="cnm-run: %(message)s")
    options = RunOptions(provider=provider, precision=precision, threads=threads, runs=runs, batch_size=batch_size,
                         feeders=feeders,
                         keep_videos=keep_videos, trt_cache=trt_cache,
                         archive=ArchiveOptions(follow_outside_links=not refuse_outside_links,
                                                max_video_bytes=max_video_mb << 20))
    files = RunFiles(model, features, queries, output, errors_path, metrics_path)
    other_engine = {"ray": {"--errors": errors_path, "--resume": resume, "--runs": runs, "--feeders": feeders},
                    "local": {"--address": address, "--actors": actors or None,
                              "--shard-batches": None if shard_batches == 64 else shard_batches}}[engine]
    _check(files, engine, resume, address, [flag for flag, value in other_engine.items() if value not in (None, False)])
    with StopSignals() as stop:
        from cnm_runtime.report import summary_lines

        try:
            if engine == "ray":
                metrics = _ray(files, options, address, actors, shard_batches, stop)
            else:
                metrics = _local(files, options, resume, stop)
        except Failed as failure:
            log.error("%s", failure)
            _leave(failure.status, engine, stopped=bool(stop.requested))
        for line in summary_lines(metrics):
            log.info("%s", line)
        if stop.requested:
            log.info("stopped: %s holds every result made so far; %s", files.output,
                     "the same command finishes the rest" if engine == "ray" else "rerun with --resume to finish")
            _leave(stop.exit_status, engine, stopped=True)
        if metrics["errors"] > max_errors:
            log.error("%d errors, more than --max-errors %d%s", metrics["errors"], max_errors,
                      f" (see {errors_path or output})" if errors_path or engine == "ray" else "")
            sys.exit(EXIT_TOO_MANY_ERRORS)


def _leave(status: int, engine: str, stopped: bool) -> None:
    """Exit with ``status``. A Ray run stopped early leaves at once: Ray Data's threads outlive an iteration
    stopped midway, and shutting Ray down under them (as Ray does at exit) ends the process with status 1;
    Ray's own processes see the driver gone and end its job."""
    if engine == "ray" and stopped:
        logging.shutdown()
        os._exit(status)
    sys.exit(status)


def _check(files: RunFiles, engine: str, resume: bool, address: str | None, other_engine: list[str]) -> None:
    """UsageError for flags that do not go together, and for outputs that are inputs or one another."""
    if other_engine:
        reason = "it writes errors to -o FOLDER, resumes by itself and runs one batch an actor" if engine == "ray" \
            else "they are for --engine ray"
        raise click.UsageError(f"--engine {engine} does not take {', '.join(other_engine)}: {reason}")
    if engine == "ray":
        if files.to_stdout:
            raise click.UsageError("--engine ray needs -o FOLDER: each shard's predictions and errors go there")
        if address and address.startswith("ray://"):
            raise click.UsageError("Ray Data does not run through Ray Client (ray://): run cnm-run on a node of the "
                                   "cluster with --address auto, e.g. ray job submit --address http://HEAD:8265 -- "
                                   "cnm-run --engine ray --address auto ...")
    elif files.output.is_dir():
        raise click.UsageError(f"-o {files.output} is a folder; the local engine writes one file")
    if resume and files.to_stdout:
        raise click.UsageError("--resume needs -o FILE: standard output cannot be read back")
    try:
        refuse_aliases(files.inputs(), files.outputs())
        if engine == "ray":
            from cnm_runtime.scaleout.shard_files import refuse_inputs_inside

            refuse_inputs_inside(files.output, files.inputs())
    except ValueError as error:
        raise click.UsageError(str(error)) from error


def _local(files: RunFiles, options: RunOptions, resume: bool, stop: StopSignals) -> dict[str, Any]:
    from concurrent.futures.process import BrokenProcessPool

    from cnm_runtime.archive import FeatureArchive
    from cnm_runtime.grounder import Grounder
    from cnm_runtime.local_run import run_local
    from cnm_runtime.provenance import ProvenanceMismatch

    try:
        FeatureArchive(files.features, options.archive).close()  # fail now, not in a feed process
        grounder = Grounder(files.model, options)
    except (OSError, ValueError, RuntimeError) as error:
        raise Failed(EXIT_USAGE, str(error)) from error
    with grounder:
        log.info("model %s on %s, batches of %d (%d at once, threads a run: %d), feed processes: %s", files.model,
                 grounder.provider, options.batch_size, grounder.session.runs, grounder.session.threads,
                 options.feeders if options.feeders is not None else grounder.session.default_feeders())
        try:
            return run_local(grounder, files, resume, stop)
        except OutputError as error:
            raise Failed(EXIT_OUTPUT, str(error)) from error
        except (OutputInUse, ProvenanceMismatch, ValueError) as error:
            raise Failed(EXIT_USAGE, str(error)) from error
        except BrokenProcessPool as error:  # a feed process was killed (out of memory? SIGTERM to the group?)
            if stop.requested:
                raise Failed(stop.exit_status, f"stopped: {files.output} holds every prediction made so far; "
                                               "rerun with --resume to finish") from error
            raise Failed(EXIT_FAILED, f"a feed process died ({error}); the predictions made so far are written, "
                                      "and --resume continues them") from error


def _ray(files: RunFiles, options: RunOptions, address: str | None, actors: int, shard_batches: int,
         stop: StopSignals) -> dict[str, Any]:
    from cnm_runtime.archive import FeatureArchive
    from cnm_runtime.grounder import Grounder
    from cnm_runtime.model_files import IR_SUFFIX
    from cnm_runtime.provenance import ProvenanceMismatch
    from cnm_runtime.scaleout.job import RayOptions, loopback_only, run_ray

    if address is None:
        loopback_only()  # before ray is imported
    try:
        from ray.exceptions import RayError  # ray is imported only for this engine
    except ImportError as error:
        raise Failed(EXIT_USAGE, "--engine ray needs Ray Data: pip install 'cnm[ray]'") from error
    try:
        FeatureArchive(files.features, options.archive).close()
        # a missing or broken model fails here, once, on the CPU (the driver takes no GPU)
        Grounder(files.model, options, provider="openvino" if files.model.suffix == IR_SUFFIX else "cpu", runs=1,
                 precision=None).close()
        return run_ray(files, options, RayOptions(address, actors, shard_batches), stop)
    except OutputError as error:
        raise Failed(EXIT_OUTPUT, str(error)) from error
    except (OutputInUse, ProvenanceMismatch) as error:
        raise Failed(EXIT_USAGE, str(error)) from error
    except RayError as error:  # an actor failed or died, or the cluster went away
        if stop.requested:  # Ctrl-C reaches Ray's processes too
            raise Failed(stop.exit_status, f"stopped: {files.output} holds every shard finished so far") from error
        raise Failed(EXIT_FAILED, f"{error}\nthe shards written so far are kept; the same command grounds the "
                                  "rest") from error
    except (OSError, ValueError, RuntimeError) as error:  # the model, the archive, the queries
        raise Failed(EXIT_USAGE, str(error)) from error


if __name__ == "__main__":  # python -m cnm_runtime.cli, as the demo runs it without relying on PATH
    main()
