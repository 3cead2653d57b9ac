"""A batch as the exported graph takes it, and a batch of some of its queries.

A feed holds ``frames`` (each video once), ``video_index`` (each query's row of ``frames``), ``word_ids`` and
``words_len``; ``cnm_runtime.model_spec`` gives the shapes.
"""
from __future__ import annotations

import numpy as np

Feed = dict[str, np.ndarray]


def take_queries(feed: Feed, rows: np.ndarray) -> Feed:
    """The queries ``rows`` of ``feed`` with only the videos they read, renumbered."""
    videos, video_index = np.unique(feed["video_index"][rows], return_inverse=True)
    return {"frames": feed["frames"][videos], "video_index": video_index.astype(np.int64),
            "word_ids": feed["word_ids"][rows], "words_len": feed["words_len"][rows]}


def one_video_per_query(feed: Feed) -> Feed:
    """The same queries, each reading its own copy of its video's clips (no work shared between queries)."""
    return {**feed, "frames": feed["frames"][feed["video_index"]],
            "video_index": np.arange(len(feed["video_index"]), dtype=np.int64)}
