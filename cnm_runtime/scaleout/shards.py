"""A queries file cut into shards that workers ground independently, each giving what the local run gives.

One streaming pass over the file (``plan_shards``) reads the entries with ``queries.read_lines`` and
parses each with ``queries.parse``, exactly as the local run does, and cuts them into shards of
``shard_size`` consecutive entries. A shard holds its parsed entries and ``claimed``: the qid keys of its
entries that an entry of an earlier shard already had. ``Chunk.results`` started with that set gives every
later entry with such a qid the ``duplicate_qid`` error, as the local run's one set over the whole file
does; duplicates within a shard it finds itself.

With ``shard_size`` a multiple of the batch size, a shard's chunks are the local run's chunks, so the
batches the model sees, and the records, are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cnm_runtime.outcomes import QueryError
from cnm_runtime.queries import QidKey, Query, QueryLine, parse, qid_key, read_lines


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based, in file order
    entries: tuple[Query | QueryError, ...]  # consecutive entries of the queries file, parsed
    claimed: frozenset[QidKey]  # qid keys (``qid_key``) of entries here that an earlier shard's entry had too

    def __len__(self) -> int:
        return len(self.entries)


def plan_shards(path: str | Path, shard_size: int) -> Iterator[Shard]:
    """The shards of the queries file ``path``, in order; memory holds one shard and the set of qids seen."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    seen: set[QidKey] = set()  # qid keys of the shards before the current one
    entries: list[Query | QueryError] = []
    keys: set[QidKey] = set()  # qid keys of the current shard
    claimed: set[QidKey] = set()
    index = 0
    for item in read_lines(path):
        entry = parse(item) if isinstance(item, QueryLine) else item
        if entry.qid is not None:
            key = qid_key(entry.qid)
            if key in seen:
                claimed.add(key)
            keys.add(key)
        entries.append(entry)
        if len(entries) == shard_size:
            yield Shard(index, tuple(entries), frozenset(claimed))
            seen |= keys
            entries, keys, claimed, index = [], set(), set(), index + 1
    if entries:
        yield Shard(index, tuple(entries), frozenset(claimed))
