"""``cnm-run --engine ray``: a queries file grounded on Ray Data into a folder of shard files, resumable.

The driver cuts the queries into shards (``shards.plan_shards``), skips those whose files an earlier run
completed, grounds the rest on actors (``dataset.ground_dataset``) and writes each shard's files as soon as
all its records are back (``shard_files.ShardFiles``). A killed or failed run, run again with the same
command, grounds only the shards it had not written: every query ends in the folder exactly once. The folder
records what it is made from (queries, model, cnm version, shard size), and another run into it is refused.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
import time
from collections import defaultdict
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import QueryError
from cnm_runtime.provenance import provenance
from cnm_runtime.queries import QueriesFile
from cnm_runtime.report import RunTally
from cnm_runtime.run_files import LockedFile, RunFiles, write_json_atomic
from cnm_runtime.scaleout.dataset import OUTPUT_COLUMNS, ground_dataset, shard_row, shards_dataset
from cnm_runtime.scaleout.shard_files import METRICS, ShardFiles
from cnm_runtime.scaleout.shards import plan_shards
from cnm_runtime.stop import StopSignals

log = logging.getLogger("cnm-run")
LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class RayOptions:
    """What only the Ray engine takes, beside the run's ``RunOptions``."""

    address: str | None = None  # None: start Ray on this machine; "auto" (or the GCS's HOST:PORT): join a cluster
    actors: int = 0  # 0: one per GPU of the cluster when the provider may use them, else as many as its CPUs hold
    shard_batches: int = 64  # a shard is this many batches, so that its batches are the local run's


def run_ray(files: RunFiles, options: RunOptions, ray_options: RayOptions, stop: StopSignals) -> dict[str, Any]:
    """Ground every query not yet in the folder ``files.output``; the run's metrics, start-up included. Ray is
    started here unless it is already (then it is left running)."""
    import ray

    started = time.perf_counter()
    shard_size = ray_options.shard_batches * options.batch_size
    queries = QueriesFile(files.queries)
    count, queries_sha256 = queries.scan()
    if queries_sha256 is None:
        raise ValueError(f"--engine ray needs a queries file it can read twice; {files.queries} is not one")
    shards = math.ceil(count / shard_size)
    with ShardFiles(files.output, shards) as folder, ExitStack() as stack:
        if files.metrics:  # a copy of OUT/metrics.json, this run's alone
            stack.enter_context(LockedFile(files.metrics, "--metrics"))
        folder.start(provenance(queries_sha256, files.model, shard_size=shard_size, shards=shards))
        started_ray = not ray.is_initialized()
        if started_ray:
            _start_ray(ray_options.address)
            stop.take_back()
        try:
            tally, providers = _ground(files, queries, options, ray_options, folder, shard_size, stop)
        finally:
            if started_ray and not stop.requested:  # a stopped run leaves Ray as it is (cnm_runtime.cli._leave)
                ray.shutdown()
        metrics = tally.metrics(",".join(sorted(providers)) or "none", time.perf_counter() - started)
        for path in (files.output / METRICS, files.metrics):
            if path:
                write_json_atomic(path, metrics)
    return metrics


def _start_ray(address: str | None) -> None:
    """Join the cluster at ``address``, or start Ray on this machine listening on the loopback interface only
    and behind a token of this run's own."""
    if address is None:
        loopback_only()
    import ray
    import ray.data

    ray.init(address=address, logging_level=logging.WARNING, **({} if address else {"include_dashboard": False}))
    if address is None and ray.util.get_node_ip_address() not in LOOPBACK:
        ray.shutdown()  # fail closed: never serve a cluster on the machine's network
        raise RuntimeError("Ray started on this machine's network address instead of the loopback interface")
    ray.data.DataContext.get_current().enable_progress_bars = False  # this driver shows its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per execution step
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor a warning that bars are off


def loopback_only() -> None:
    """Make the Ray that ``ray.init()`` starts listen on 127.0.0.1 only, and require a token; call it before ray
    is first imported (which reads these settings).

    Ray 2.60 binds every server (GCS, raylet, workers, agents) to the loopback interface exactly when the node
    address is 127.0.0.1, and takes 127.0.0.1 as the node address only where multi-node clusters are turned
    off (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, read from this variable when ray is first
    imported; set on the module too in case ray was imported already). Ray turns token authentication on for a
    cluster it starts; the token is this run's own (in the environment its processes inherit), not the
    ``~/.ray/auth_token`` file Ray would otherwise write readable by other users.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False


def _ground(files: RunFiles, queries: QueriesFile, options: RunOptions, ray_options: RayOptions, folder: ShardFiles,
            shard_size: int, stop: StopSignals) -> tuple[RunTally, set[str]]:
    tally = RunTally()
    sizes: dict[int, int] = {}  # queries in each shard to ground now
    rows = []
    for shard in plan_shards(queries.entries(), shard_size):
        if not _resumed(folder, shard.index, tally):
            sizes[shard.index] = len(shard)
            rows.append(shard_row(shard))
    log.info("%d shards to ground (%d queries), %d predictions of earlier runs kept, into %s", len(rows),
             sum(sizes.values()), tally.resumed, files.output)
    providers: set[str] = set()
    if not rows:
        return tally, providers
    dataset = ground_dataset(shards_dataset(rows), files.model, files.features, options, ray_options.actors)
    arrived: dict[int, list[tuple[int, str, str]]] = defaultdict(list)  # (line, kind, record) by shard
    stop.grounding()
    # closed before Ray shuts down, stopped early or not: Ray Data's threads must not outlive the connection
    batches = closing(iter(dataset.iter_batches(batch_size=None, batch_format="numpy")))
    with batches as arriving, tqdm(total=sum(sizes.values()), unit="query", file=sys.stderr, disable=None,
                                   dynamic_ncols=True) as bar:
        for batch in arriving:
            columns = (batch[name].tolist() for name in OUTPUT_COLUMNS)
            for shard, line, kind, record, provider in zip(*columns):
                arrived[shard].append((line, kind, record))
                providers.add(provider)
                if len(arrived[shard]) == sizes[shard]:
                    _write(folder, shard, sorted(arrived.pop(shard)), tally)
            bar.update(len(batch["shard"]))
            if stop.requested:
                return tally, providers
    if arrived:  # Ray Data lost rows: never write a part of a shard
        raise RuntimeError(f"shards {sorted(arrived)} came back incomplete; the same command grounds them again")
    return tally, providers


def _resumed(folder: ShardFiles, shard: int, tally: RunTally) -> bool:
    """Whether an earlier run completed ``shard``; its records are then counted into ``tally``."""
    if not folder.complete(shard):
        return False
    predictions, errors = folder.read(shard)
    for record in predictions:
        tally.add_prediction(record, resumed=True)
    for record in errors:
        tally.add_error(QueryError(**record), resumed=True)
    return True


def _write(folder: ShardFiles, shard: int, records: list[tuple[int, str, str]], tally: RunTally) -> None:
    predictions = [record for _, kind, record in records if kind == "prediction"]
    errors = [record for _, kind, record in records if kind == "error"]
    folder.write(shard, predictions, errors)
    for record in predictions:
        tally.add_prediction(json.loads(record))
    for record in errors:
        tally.add_error(QueryError(**json.loads(record)))
