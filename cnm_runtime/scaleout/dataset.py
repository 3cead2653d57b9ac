"""Grounding on Ray Data: cnm-run's records, made by actors across a cluster.

    import ray
    from cnm_runtime.options import RunOptions
    from cnm_runtime.scaleout.dataset import ground_dataset, queries_dataset

    ray.init()  # or ray.init(address="auto") on a node of a cluster
    records = ground_dataset(queries_dataset("queries.jsonl"), "model.onnx", "/shared/archive.hdf5",
                             RunOptions(batch_size=64), actors=8)
    for row in records.iter_rows():  # lazy, like any Dataset: filter, write, ... as you like
        print(row["kind"], row["record"])  # "prediction" or "error", and the record as its JSON line

The driver reads and parses the queries file once (``shards.plan_shards``: duplicate qids are found over the
whole file there) and puts each shard's parsed queries in Ray's object store: one row per shard. Each actor
holds one model session and grounds a shard through the local run's own pipeline (``feed.Feed``, one thread
preparing the next chunk while the model runs this one), with the run's options whole. The model and the
archive must be at the same path on every node (shared storage); the queries travel through the object
store.

ray is imported inside the functions, so that this module imports without it.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cnm_runtime.engines import open_session
from cnm_runtime.feed import Feed
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import Prediction, QueryError
from cnm_runtime.queries import read_lines
from cnm_runtime.scaleout.shards import Shard, plan_shards

if TYPE_CHECKING:
    import ray.data

DEFAULT_SHARD_SIZE = 4096  # queries: 64 batches of 64, a few seconds of one actor's work
GPU_PROVIDERS = ("auto", "cuda", "tensorrt")
# The archive is only read, and shared filesystems (NFS, Lustre) often refuse the locks HDF5 takes; HDF5
# reads this when the library starts, so it is set in the actors' environment.
ACTOR_ENV = {"HDF5_USE_FILE_LOCKING": "FALSE"}
OUTPUT_COLUMNS = ("shard", "line", "kind", "record", "provider")


def actor_options(options: RunOptions) -> RunOptions:
    """The run's options as an actor runs them: one batch in the model and one thread preparing the next (an
    actor is given as many CPUs as its session has threads), one ONNX Runtime thread unless asked for more."""
    return replace(options, threads=options.threads or 1, runs=1, feeders=0)


class ShardGrounder:
    """The callable class of ``map_batches``: made once in each actor, then called with rows of shards."""

    def __init__(self, model: str, archive: str, options: RunOptions):
        self.session = open_session(model, options)  # the engine a local run picks: the same records
        self.feed = Feed(archive, self.session, options)  # for the actor's life: its recent videos and slots

    def __call__(self, rows: dict[str, Any]) -> dict[str, list]:
        import ray

        columns: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
        for shard in ray.get(list(rows["shard"])):
            for entry, result in zip(shard.entries, self.ground(shard), strict=True):  # one result an entry
                columns["shard"].append(shard.index)
                columns["line"].append(entry.line)
                columns["kind"].append("error" if isinstance(result, QueryError) else "prediction")
                columns["record"].append(json.dumps(result.record(), allow_nan=False))
                columns["provider"].append(self.session.provider)
        return columns

    def ground(self, shard: Shard) -> Iterator[Prediction | QueryError]:
        """One result per entry of ``shard``, in order, as the local run gives them."""
        claimed = set(shard.claimed)
        for chunk, outputs in self.feed.chunks(shard.entries):
            yield from chunk.results(outputs, claimed)


def shard_row(shard: Shard) -> dict[str, Any]:
    """A row of a queries dataset: ``shard`` put in the object store (the driver keeps only the reference)."""
    import ray

    return {"shard": ray.put(shard)}


def shards_dataset(rows: list[dict[str, Any]]) -> "ray.data.Dataset":
    """A dataset of ``shard_row`` rows, a block each so that actors take them one by one."""
    import ray

    # The rows hold object references, which Arrow keeps as pickled Python objects: asked for, not warned of.
    ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True
    return ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))


def queries_dataset(path: str | Path, shard_size: int = DEFAULT_SHARD_SIZE) -> "ray.data.Dataset":
    """The queries file ``path`` as a dataset of shards of ``shard_size`` queries (a multiple of the batch
    size, for the local run's very batches). Reads and parses the whole file now, on this machine."""
    return shards_dataset([shard_row(shard) for shard in plan_shards(read_lines(path), shard_size)])


def actor_resources(options: RunOptions, actors: int) -> tuple[int, float, float]:
    """``(actors, CPUs, GPUs)`` per actor, from the options and the cluster Ray is connected to (``actors``
    0: one per GPU where the provider may use them, else as many as the CPUs hold)."""
    import ray

    cluster = ray.cluster_resources()
    gpus = int(cluster.get("GPU", 0)) if options.provider in GPU_PROVIDERS else 0
    threads = actor_options(options).threads
    if gpus:
        return actors or gpus, threads, 1
    return actors or max(1, int(cluster.get("CPU", 1)) // threads), threads, 0


def ground_dataset(queries: "ray.data.Dataset", model: str | Path, archive: str | Path,
                   options: RunOptions = RunOptions(), actors: int = 0) -> "ray.data.Dataset":
    """The records of every query of ``queries`` (``queries_dataset``'s rows), lazily.

    Rows out: ``shard``, ``line`` (the query's line in the queries file), ``kind`` (``prediction`` or
    ``error``) and ``record`` (the local run's JSON line), ``provider`` (what ran the model).
    One row per query; rows come in no particular order (sort by ``line`` for the file's).
    """
    import ray

    count, cpus, gpus = actor_resources(options, actors)
    return queries.map_batches(
        ShardGrounder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=count), num_cpus=cpus,
        num_gpus=gpus or None, runtime_env={"env_vars": ACTOR_ENV},
        fn_constructor_kwargs={"model": str(Path(model).absolute()), "archive": str(Path(archive).absolute()),
                               "options": actor_options(options)})
