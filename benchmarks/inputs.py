"""The benchmark's inputs: labelled queries prepared once, as cnm-run prepares them, for every engine alike.

The queries are read with cnm-run's reader, then prepared by cnm-export's labelled-set loader (clips
read and resampled, sentences encoded with the model's vocabulary); the arrays go to one ``.npz`` that
each engine's worker loads. The same queries, repeated, feed the end-to-end cnm-run.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnm_export.verify import load_labelled_set
from cnm_runtime.archive import FeatureArchive
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.queries import Query, QueryError, read_queries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedQueries:
    feed_path: Path  # .npz of frames, word_ids, words_len
    truth: np.ndarray  # [N, 2] ground-truth spans as fractions of the video
    records: list[dict[str, Any]]  # the N prepared queries as JSON-lines records, in order
    read: int  # queries read from the file (at most the limit); read - N could not be prepared


def query_record(query: Query) -> dict[str, Any]:
    """A query as one line of a cnm-run queries file."""
    record = {"qid": query.qid, "video": query.video, "query": query.sentence}
    if query.duration is not None:
        record["duration"] = query.duration
    if query.timestamps is not None:
        record["timestamps"] = list(query.timestamps)
    return record


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def prepare_queries(features: Path, queries: Path, spec: ModelSpec, limit: int, workdir: Path) -> PreparedQueries:
    """The first ``limit`` queries of ``queries`` that have ground truth and words the model knows.

    A bad line or query is logged and skipped; ValueError when none is left.
    """
    records = []
    read = 0
    for item in itertools.islice(read_queries(queries), limit):
        read += 1
        if isinstance(item, QueryError):
            log.warning("skipped: %s", item.message)
        else:
            records.append(query_record(item))
    # The loader reads a directory's features.hdf5 and queries.jsonl: link and write them under those names.
    labelled_dir = workdir / "labelled"
    labelled_dir.mkdir()
    (labelled_dir / "features.hdf5").symlink_to(features.resolve())
    write_jsonl(labelled_dir / "queries.jsonl", records)
    labelled = load_labelled_set(labelled_dir, spec)
    feed_path = workdir / "inputs.npz"
    np.savez(feed_path, **labelled.feed)
    return PreparedQueries(feed_path, labelled.truth, [records[row] for row in labelled.rows], read)


def write_repeated(records: list[dict[str, Any]], at_least: int, path: Path) -> Path:
    """``records`` repeated until there are ``at_least`` queries, each copy's qids made unique."""
    copies = max(1, math.ceil(at_least / len(records)))
    repeated = [{**record, "qid": f"{copy}:{record['qid']}"} for copy in range(copies) for record in records]
    return write_jsonl(path, repeated)


def synthetic_archive(features: Path) -> bool:
    """Whether ``features`` was written by cnm-synth (its file attributes say so)."""
    with FeatureArchive(features) as archive:
        return bool(archive.attrs.get("synthetic", False))
