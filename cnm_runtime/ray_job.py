"""``cnm-run --engine ray``: a queries file grounded on Ray Data into a folder of shard files, resumable.

The driver cuts the queries into shards (``shards.plan_shards``), skips those whose files an earlier run
completed, grounds the rest on actors (``distributed.ground_dataset``) and writes each shard's files as
soon as all its records are back (``shard_files.ShardFiles``). A killed or failed run, run again with the
same command, grounds only the shards it had not written: every query ends in the folder exactly once.
Metrics are those of the local run, over every shard's records, in ``OUT/metrics.json``.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import click
from tqdm import tqdm

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.distributed import RayOptions, ground_dataset, shard_row, shards_dataset
from cnm_runtime.queries import QueryError, count_queries
from cnm_runtime.report import RunTally, summary_lines
from cnm_runtime.result_files import write_json_atomic
from cnm_runtime.engines import open_session
from cnm_runtime.openvino_session import IR_SUFFIX
from cnm_runtime.shard_files import METRICS, ShardFiles
from cnm_runtime.shards import file_digest, plan_shards

log = logging.getLogger("cnm-run")
EXIT_TOO_MANY_ERRORS = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RayJob:
    model: Path
    features: Path
    queries: Path
    out: Path  # the folder of shard files
    address: str | None  # None: start Ray on this machine; "auto" (or the GCS's HOST:PORT): join a cluster
    options: RayOptions
    shard_batches: int = 64  # a shard is this many batches, so that its batches are the local run's
    metrics: Path | None = None  # a copy of OUT/metrics.json
    max_errors: int = 0

    @property
    def shard_size(self) -> int:
        return self.shard_batches * self.options.batch_size


def run(job: RayJob) -> dict:
    """Ground every query not yet in ``job.out``; the run's metrics. Ray is started here unless it is
    already (then it is left running)."""
    import ray
    import ray.data

    # a missing or broken model fails here, not in every actor (on the CPU: the driver takes no GPU)
    open_session(job.model, "auto" if Path(job.model).suffix == IR_SUFFIX else "cpu")
    FeatureArchive(job.features).close()
    shards = math.ceil(count_queries(job.queries) / job.shard_size)
    files = ShardFiles(job.out, shards)
    files.start({"queries_sha256": file_digest(job.queries), "shard_size": job.shard_size, "shards": shards})
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=job.address, logging_level=logging.WARNING,
                 **({} if job.address else {"include_dashboard": False}))
    ray.data.DataContext.get_current().enable_progress_bars = False  # this driver shows its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per execution step
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor a warning that bars are off
    try:
        return _ground(job, files)
    finally:
        if started_ray:
            ray.shutdown()


def _ground(job: RayJob, files: ShardFiles) -> dict:
    started = time.perf_counter()
    tally = RunTally()
    sizes: dict[int, int] = {}  # queries in each shard to ground now
    rows = []
    for shard in plan_shards(job.queries, job.shard_size):
        if not _resumed(files, shard.index, tally):
            sizes[shard.index] = len(shard)
            rows.append(shard_row(shard))
    log.info("%d shards to ground (%d queries), %d predictions of earlier runs kept, into %s", len(rows),
             sum(sizes.values()), tally.resumed, job.out)
    providers: set[str] = set()
    if rows:
        dataset = ground_dataset(shards_dataset(rows), job.model, job.features, job.options)
        arrived: dict[int, list[tuple[int, str, str]]] = defaultdict(list)  # (line, kind, record) by shard
        with tqdm(total=sum(sizes.values()), unit="query", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                columns = (batch[name].tolist() for name in ("shard", "line", "kind", "record", "provider"))
                for shard, line, kind, record, provider in zip(*columns):
                    arrived[shard].append((line, kind, record))
                    providers.add(provider)
                    if len(arrived[shard]) == sizes[shard]:
                        _write(files, shard, sorted(arrived.pop(shard)), tally)
                bar.update(len(batch["shard"]))
        if arrived:  # Ray Data lost rows: never write a part of a shard
            raise RuntimeError(f"shards {sorted(arrived)} came back incomplete; the same command grounds them again")
    return tally.metrics(",".join(sorted(providers)) or "none", time.perf_counter() - started)


def _resumed(files: ShardFiles, shard: int, tally: RunTally) -> bool:
    """Whether an earlier run completed ``shard``; its records are then counted into ``tally``."""
    if not files.complete(shard):
        return False
    predictions, errors = files.read(shard)
    for record in predictions:
        tally.add_prediction(record, resumed=True)
    for record in errors:
        tally.add_error(QueryError(**record), resumed=True)
    return True


def _write(files: ShardFiles, shard: int, records: list[tuple[int, str, str]], tally: RunTally) -> None:
    predictions = [record for _, kind, record in records if kind == "prediction"]
    errors = [record for _, kind, record in records if kind == "error"]
    files.write(shard, predictions, errors)
    for record in predictions:
        tally.add_prediction(json.loads(record))
    for record in errors:
        tally.add_error(QueryError(**json.loads(record)))


def run_from_cli(job: RayJob, ignored: dict[str, object]) -> None:
    """cnm-run's ``--engine ray``: ``run`` with its logs, metrics and exit status."""
    if str(job.out) == "-":
        raise click.UsageError("--engine ray needs -o FOLDER: each shard's predictions and errors go there")
    if job.address and job.address.startswith("ray://"):
        raise click.UsageError("Ray Data does not run through Ray Client (ray://): run cnm-run on a node of the "
                               "cluster with --address auto, e.g. ray job submit --address http://HEAD:8265 -- "
                               "cnm-run --engine ray --address auto ...")
    given = [name for name, value in ignored.items() if value]
    if given:
        raise click.UsageError(f"--engine ray writes errors to -o FOLDER and resumes by itself; drop {', '.join(given)}")
    try:
        from ray.exceptions import RayError
    except ImportError as error:
        raise click.ClickException("--engine ray needs Ray Data: pip install 'cnm[ray]'") from error
    try:
        metrics = run(job)
    except RayError as error:  # an actor failed or died, or the cluster went away
        raise click.ClickException(f"{error}\nthe shards written so far are kept; the same command grounds "
                                   "the rest") from error
    except (OSError, ValueError, RuntimeError) as error:  # the model, the archive, the queries or the folder
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        log.info("interrupted: %s holds every shard finished so far; the same command finishes the rest", job.out)
        sys.exit(EXIT_INTERRUPTED)
    for line in summary_lines(metrics):
        log.info("%s", line)
    for path in (job.out / METRICS, job.metrics):
        if path:
            write_json_atomic(path, metrics)
    if metrics["errors"] > job.max_errors:
        log.error("%d errors, more than --max-errors %d (see %s/errors-*.jsonl)", metrics["errors"], job.max_errors,
                  job.out)
        sys.exit(EXIT_TOO_MANY_ERRORS)
