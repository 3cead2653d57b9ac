"""A batch as the exported graph takes it: the one shape that cnm-run, cnm-export --verify and the
benchmarks hand to a model.

Its fields are the graph's inputs, by name and in order (``model_spec.INPUT_NAMES``; a test holds the two
equal). A batch holds each of its videos once (``frames``) and says which one each query reads
(``video_index``), so the graph runs the work that reads no words once per video however many of its
queries the batch holds. ``cnm_runtime.model_spec`` documents the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

from cnm_runtime.features import Clips
from cnm_runtime.text import EncodedQuery, pad_word_ids


@dataclass(frozen=True)
class Batch:
    frames: np.ndarray  # [videos, num_clips, frame_dim] float32 (float16 for a graph that takes half frames)
    video_index: np.ndarray  # [queries] int64: each query's row of frames
    word_ids: np.ndarray  # [queries, word_slots] int64, slot 0 the start slot
    words_len: np.ndarray  # [queries] int64

    def __len__(self) -> int:
        return len(self.words_len)

    def inputs(self) -> dict[str, np.ndarray]:
        """The graph's inputs by name."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def take(self, rows: np.ndarray) -> "Batch":
        """The queries ``rows`` with only the videos they read, renumbered."""
        videos, video_index = np.unique(self.video_index[rows], return_inverse=True)
        return Batch(self.frames[videos], video_index.astype(np.int64), self.word_ids[rows], self.words_len[rows])

    def one_video_per_query(self) -> "Batch":
        """The same queries, each reading its own copy of its video's clips (no work shared between them)."""
        return Batch(self.frames[self.video_index], np.arange(len(self), dtype=np.int64), self.word_ids,
                     self.words_len)

    def save(self, path: str | Path) -> None:
        np.savez(path, **self.inputs())

    @classmethod
    def load(cls, path: str | Path) -> "Batch":
        with np.load(path) as arrays:
            return cls(*(arrays[field.name] for field in fields(cls)))


def build_batch(queries: Sequence[tuple[Hashable, Clips, EncodedQuery]], word_slots: int,
                frames: np.ndarray | None = None) -> Batch:
    """The batch of ``(video key, clips, encoded sentence)`` queries, each video's clips in it once.

    ``frames`` is a reused ``[at least videos, num_clips, frame_dim]`` buffer to gather the clips into (its
    dtype is the batch's); without it a float32 array is made.
    """
    rows: dict[Hashable, int] = {}  # video key -> its row of frames
    videos: list[Clips] = []
    for key, clips, _ in queries:
        if key not in rows:
            rows[key] = len(videos)
            videos.append(clips)
    if frames is None:
        first = videos[0]
        frames = np.empty((len(videos), len(first.rows), first.source.shape[1]), np.float32)
    frames = frames[: len(videos)]
    for row, clips in enumerate(videos):
        clips.gather_into(frames[row])
    video_index = np.array([rows[key] for key, _, _ in queries], np.int64)
    word_ids, words_len = pad_word_ids([encoded for _, _, encoded in queries], word_slots)
    return Batch(frames, video_index, word_ids, words_len)
