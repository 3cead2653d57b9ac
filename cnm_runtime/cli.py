"""cnm-run: ground every query of a queries file in the videos of a feature archive, in batches.

Predictions go to ``-o`` (standard output by default) as JSON lines in input order, each flushed as
its batch finishes; ``--resume`` completes a file that a crash or Ctrl-C left unfinished. Bad
queries and videos become records of ``--errors`` and the run goes on; the exit status is 1 when
they exceed ``--max-errors``. Progress, logs and the summary go to standard error.
"""
from __future__ import annotations

import logging
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from pathlib import Path

import click
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.grounder import Grounder
from cnm_runtime.result_files import JsonLines, read_back, write_json_atomic
from cnm_runtime.queries import QueryError, count_queries
from cnm_runtime.report import RunTally, summary_lines
from cnm_runtime.engines import PROVIDERS, RUN_PRECISIONS

log = logging.getLogger("cnm-run")
EXIT_TOO_MANY_ERRORS = 1
EXIT_INTERRUPTED = 130


def _resume(output: Path, tally: RunTally) -> list[str | int]:
    """The qids already in ``output`` (counted into ``tally``); an unfinished last line is cut off."""
    if not output.exists():
        log.info("nothing to resume: %s does not exist yet", output)
        return []
    done = []
    try:
        for record in read_back(output):
            done.append(record["qid"])
            tally.add_prediction(record, resumed=True)
    except ValueError as error:
        raise click.ClickException(f"cannot resume: {error}") from error
    log.info("resuming: %d predictions already in %s", len(done), output)
    return done


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
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="auto tries TensorRT, then CUDA, then the CPU (OpenVINO where installed and faster: see "
                   "cnm_runtime.engines); a provider named here must start. openvino: OpenVINO on the CPU "
                   "(pip install 'cnm[openvino]').")
@click.option("--precision", type=click.Choice(RUN_PRECISIONS), default=None,
              help="Arithmetic: fp32 exact; bf16 on OpenVINO where the CPU has it (AVX512-BF16 or AMX; cnm-export "
                   "--verify reports its drift). int8 is chosen at export (cnm-export --precision)  "
                   "[default: the model's own]")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Threads a run (0: on ONNX Runtime's CPU provider 1; on OpenVINO, its THROUGHPUT hint's split "
                   "of the cores into streams; for a GPU, one per core, at most 8).")
@click.option("--runs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Batches the model runs at once (0: on ONNX Runtime's CPU provider, the cores (at most 8) divided "
                   "by --threads; on OpenVINO, its infer requests, one a stream; on a GPU, 1).")
@click.option("--feeders", type=click.IntRange(min=0), default=None,
              help="Processes that read, resample, tokenize and stack batches (0: a thread of this process) "
                   "[default: 0 on the CPU provider; on a GPU, one a core but one].")
@click.option("--keep-videos", type=click.IntRange(min=1), default=64, show_default=True,
              help="Recent videos kept in memory, so nearby queries of one video share a read.")
@click.option("--trt-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="TensorRT engine and timing cache (default: ~/.cache/cnm/tensorrt).")
@click.option("--refuse-outside-links", is_flag=True,
              help="A video whose features would be read from a file outside the archive's folder (an HDF5 "
                   "external link, a virtual dataset's source, external raw storage) is a link_outside_archive "
                   "error instead.")
@click.option("--resume", is_flag=True, help="Skip the qids already in -o and append the rest.")
@click.option("--max-errors", type=click.IntRange(min=0), default=0, show_default=True,
              help="Exit with status 1 when there are more errors than this.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: on Ray Data actors (pip install 'cnm[ray]'), into -o FOLDER, one file per shard; "
                   "the same command again finishes a run that stopped.")
@click.option("--address", default=None, help="With --engine ray: 'auto' joins the cluster of this node (run "
                                              "on a node, or by ray job submit); default: Ray on this machine.")
@click.option("--actors", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --engine ray: actors, each one model session (0: one a GPU, else one per --threads CPUs).")
@click.option("--shard-batches", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --engine ray: batches a shard, the unit of work that a rerun skips when done.")
def main(model: Path, features: Path, queries: Path, output: Path, errors_path: Path | None,
         metrics_path: Path | None, batch_size: int, provider: str, precision: str | None, threads: int, runs: int, feeders: int | None,
         keep_videos: int, trt_cache: Path | None, refuse_outside_links: bool, resume: bool, max_errors: int,
         engine: str, address: str | None, actors: int, shard_batches: int) -> None:
    """Ground every query of QUERIES in the videos of FEATURES with MODEL."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="cnm-run: %(message)s")
    if engine == "ray":
        from cnm_runtime import ray_job  # ray is imported only for this engine

        options = ray_job.RayOptions(actors=actors, threads=threads or 1, provider=provider, batch_size=batch_size,
                                     keep_videos=keep_videos, trt_cache=str(trt_cache) if trt_cache else None)
        job = ray_job.RayJob(model=model, features=features, queries=queries, out=output, address=address,
                             options=options, shard_batches=shard_batches, metrics=metrics_path, max_errors=max_errors)
        ray_job.run_from_cli(job, ignored={"--errors": errors_path, "--resume": resume, "--runs": runs,
                                           "--feeders": feeders, "--precision": precision})
        return
    if output.is_dir():
        raise click.UsageError(f"-o {output} is a folder; the local engine writes one file")
    to_stdout = str(output) == "-"
    if resume and to_stdout:
        raise click.UsageError("--resume needs -o FILE: standard output cannot be read back")
    try:
        FeatureArchive(features).close()  # fail now, not in a feed process
        grounder = Grounder(model, provider=provider, precision=precision, threads=threads or None, runs=runs or None,
                            batch_size=batch_size, feeders=feeders, keep_videos=keep_videos, trt_cache_dir=trt_cache,
                            follow_outside_links=not refuse_outside_links)
    except (OSError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    log.info("model %s on %s, batches of %d (%d at once, threads a run: %d), feed processes: %d", model,
             grounder.provider, batch_size, grounder.runs, grounder.session.threads, grounder.feeders)

    tally = RunTally()
    done = _resume(output, tally) if resume else []
    started = time.perf_counter()
    interrupted = False
    with ExitStack() as files:
        predictions = files.enter_context(JsonLines(None if to_stdout else output, append=resume))
        error_file = files.enter_context(JsonLines(errors_path)) if errors_path else None
        progress = files.enter_context(tqdm(total=count_queries(queries), initial=len(done), unit="query",
                                            file=sys.stderr, disable=None, dynamic_ncols=True))
        files.enter_context(logging_redirect_tqdm())
        try:
            for result in grounder.ground(features, queries, skip_qids=done):
                if isinstance(result, QueryError):
                    tally.add_error(result)
                    if error_file:
                        error_file.write(result.record())
                    else:
                        log.warning("qid %s: %s: %s", result.qid, result.code, result.message)
                else:
                    record = result.record()
                    predictions.write(record)
                    tally.add_prediction(record)
                progress.update(1)
        except KeyboardInterrupt:
            interrupted = True
        except BrokenProcessPool as error:  # a feed process was killed (out of memory?): keep what is written
            raise click.ClickException(f"a feed process died ({error}); the predictions made so far are "
                                       "written, and --resume continues them") from error

    metrics = tally.metrics(grounder.provider, time.perf_counter() - started)
    for line in summary_lines(metrics):
        log.info("%s", line)
    if interrupted:
        log.info("interrupted: %s holds every prediction made so far; rerun with --resume to finish",
                 "standard output" if to_stdout else output)
        sys.exit(EXIT_INTERRUPTED)
    if metrics_path:
        write_json_atomic(metrics_path, metrics)
    if metrics["errors"] > max_errors:
        log.error("%d errors, more than --max-errors %d%s", metrics["errors"], max_errors,
                  f" (see {errors_path})" if errors_path else "")
        sys.exit(EXIT_TOO_MANY_ERRORS)
