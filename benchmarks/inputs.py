"""The benchmark's inputs: labelled queries prepared once, by cnm-run's own batch maker, for every engine alike.

The prepared queries (one ``Batch``, each video once) go to one ``.npz`` that each engine's worker
loads; the same queries, repeated, make the queries file of the end-to-end cnm-run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnm_export.verify import load_labelled_set
from cnm_runtime.archive import FeatureArchive
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.queries import Query


@dataclass(frozen=True)
class PreparedQueries:
    batch_path: Path  # .npz of the Batch of every prepared query
    truth: np.ndarray  # [N, 2] ground-truth spans as fractions of the video
    queries: list[Query]  # the N prepared queries, in order
    read: int  # queries read from the file (at most the limit); read - N could not be prepared


def query_record(query: Query) -> dict[str, Any]:
    """A query as one line of a cnm-run queries file."""
    record = {"qid": query.qid, "video": query.video, "query": query.sentence}
    if query.duration is not None:
        record["duration"] = query.duration
    if query.timestamps is not None:
        record["timestamps"] = list(query.timestamps)
    return record


def prepare_queries(features: Path, queries: Path, spec: ModelSpec, limit: int, workdir: Path) -> PreparedQueries:
    """The first ``limit`` queries of ``queries`` that have ground truth and words the model knows.

    A bad line or query is logged and skipped; ValueError when none is left.
    """
    labelled = load_labelled_set(features, queries, spec, limit)
    batch_path = workdir / "inputs.npz"
    labelled.batch.save(batch_path)
    return PreparedQueries(batch_path, labelled.truth, labelled.queries, labelled.read)


def write_repeated(queries: list[Query], at_least: int, path: Path) -> Path:
    """``queries`` repeated until there are ``at_least``, as a queries file, each copy's qids made unique."""
    copies = max(1, math.ceil(at_least / len(queries)))
    with open(path, "w") as out:
        for copy in range(copies):
            for query in queries:
                out.write(json.dumps({**query_record(query), "qid": f"{copy}:{query.qid}"}) + "\n")
    return path


def synthetic_archive(features: Path) -> bool:
    """Whether ``features`` was written by cnm-synth (its file attributes say so)."""
    with FeatureArchive(features) as archive:
        return bool(archive.attrs.get("synthetic", False))
