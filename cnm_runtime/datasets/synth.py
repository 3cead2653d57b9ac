"""Synthetic I3D-like feature archives whose annotated moments carry their sentences.

No real video features are at hand, yet training, export and batch grounding must run end to end
and learn something. CNM learns weakly: it reconstructs masked words from Gaussian-weighted clips.
So inside each annotated moment the rows get a signal derived from the sentence (a fixed random
projection of the mean GloVe vector of its content words) and rows outside do not.

Each video has about ``rows_per_second`` rows per second of duration; a row is

    relu(level + video_offset + smooth + noise + signal_amplitude * (sum of the signals of the moments covering it))

``level`` is one per-dimension profile for the whole archive, ``video_offset`` a per-video constant,
``smooth`` random key rows every ``key_spacing_s`` seconds eased into one another (a low-pass random
process), ``noise`` white; a ``Recipe`` holds their scales. Everything is drawn from the seed, the video
id and the sentences, so a video's features do not depend on which other videos are in the archive.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from cnm_runtime.datasets.dataset_files import ArchiveWriter
from cnm_runtime.fields import Annotation
from cnm_runtime.text import Vocabulary, is_content_word, tokenize

GENERATOR = "cnm_runtime.datasets.synth"
GENERATOR_VERSION = 3  # bump whenever the same inputs give different features


@dataclass(frozen=True)
class Recipe:
    """The parts of a row, per dimension: the level's mean and spread, the standard deviations of the other
    parts (each drawn standard normal), the signal's scale (signals have unit variance) and the key spacing."""

    level_mean: float = 0.6
    level_std: float = 0.3
    video_offset_std: float = 0.4
    smooth_std: float = 0.5
    noise_std: float = 0.3
    signal_amplitude: float = 0.7
    key_spacing_s: float = 2.5

    def describe(self) -> str:
        return (
            f"relu({self.level_mean}+{self.level_std}*level + {self.video_offset_std}*video_offset"
            f" + {self.smooth_std}*smooth(keys every {self.key_spacing_s}s) + {self.noise_std}*noise"
            f" + {self.signal_amplitude}*sum of moment signals); signal = random projection of the unit mean"
            " GloVe vector of the sentence's content words"
        )


I3D_LIKE = Recipe()  # archives for given annotations (cnm-synth --annotations)

# Independent random streams under one seed.
PROJECTION_STREAM, LEVEL_STREAM, VIDEO_STREAM, DEFAULT_DATASET_STREAM = range(4)


class SentenceSignal:
    """A sentence -> its signal: the projection of the unit mean GloVe vector of its content words.

    The projection is a fixed ``[word_dim, frame_dim]`` standard normal matrix, so every signal has
    unit variance per dimension. Only words of the kept vocabulary (``vocab_cap`` most common words,
    all when None) count, since the model can reconstruct no other.
    """

    def __init__(self, glove: dict[str, Any], frame_dim: int, seed: int = 0, vocab_cap: int | None = None):
        self._glove = glove
        self.vocab = Vocabulary.from_glove(glove, vocab_cap)
        word_dim = len(glove["id2vec"][0])
        rng = np.random.default_rng([seed, PROJECTION_STREAM])
        self.projection = rng.standard_normal((word_dim, frame_dim), dtype=np.float32)

    def content_words(self, sentence: str) -> list[str]:
        return [
            token
            for token in tokenize(sentence)
            if is_content_word(token) and token in self.vocab.index
        ]

    def __call__(self, sentence: str) -> np.ndarray | None:
        """``[frame_dim]`` float32, or None when the sentence has no content word."""
        words = self.content_words(sentence)
        if not words:
            return None
        w2id, id2vec = self._glove["w2id"], self._glove["id2vec"]
        mean = np.mean([np.asarray(id2vec[w2id[word]], dtype=np.float32) for word in words], axis=0)
        norm = np.linalg.norm(mean)
        return None if norm == 0 else (mean / norm) @ self.projection


@dataclass(frozen=True)
class SynthInfo:
    """What ``synthesize_archive`` wrote, and what it left out."""

    path: Path
    videos: int
    rows: int
    queries: int  # annotations whose moment is in the archive
    without_signal: int  # of those, sentences with no content word in the vocabulary
    skipped: tuple[str, ...]  # one message per annotation that could not be used


@dataclass
class _Video:
    duration: float
    moments: list[Annotation]


def _group_by_video(annotations: Sequence[Annotation]) -> tuple[dict[str, _Video], list[str]]:
    """Valid moments per video (clipped to the video); a message for each annotation left out.

    A video's duration is the one of its first valid annotation.
    """
    videos: dict[str, _Video] = {}
    skipped = []
    for index, annotation in enumerate(annotations):
        label = f"annotation {index} (video {annotation.video!r}, {annotation.sentence!r})"
        if annotation.video in ("", ".") or "/" in annotation.video:
            skipped.append(f"{label}: the video id cannot name an HDF5 dataset")
            continue
        if not (math.isfinite(annotation.duration) and annotation.duration > 0):
            skipped.append(f"{label}: duration {annotation.duration} is not a positive number")
            continue
        video = videos.setdefault(annotation.video, _Video(annotation.duration, []))
        start, end = max(annotation.start, 0.0), min(annotation.end, video.duration)
        if not (math.isfinite(start) and math.isfinite(end) and start < end):
            skipped.append(f"{label}: moment [{annotation.start}, {annotation.end}] is empty within the video")
            continue
        video.moments.append(Annotation(annotation.video, video.duration, start, end, annotation.sentence))
    return videos, skipped


def num_rows(duration: float, rows_per_second: float) -> int:
    return max(1, round(duration * rows_per_second))


def moment_rows(moment: Annotation, rows: int) -> np.ndarray:
    """Boolean ``[rows]``: rows whose centre time lies in the moment (at least the one nearest to it)."""
    centres = (np.arange(rows) + 0.5) * (moment.duration / rows)
    inside = (centres >= moment.start) & (centres <= moment.end)
    if not inside.any():
        inside[min(int((moment.start + moment.end) / 2 / moment.duration * rows), rows - 1)] = True
    return inside


def _video_seed(seed: int, video: str) -> list[int]:
    digest = hashlib.sha256(video.encode()).digest()
    return [seed, VIDEO_STREAM, int.from_bytes(digest[:8], "little")]


def _smooth(rng: np.random.Generator, rows: int, frame_dim: int, rows_per_key: float) -> np.ndarray:
    """Random key rows every ``rows_per_key`` rows, eased into one another with a raised cosine."""
    position = np.arange(rows) / rows_per_key
    key = position.astype(np.int64)
    ease = ((1 - np.cos(np.pi * (position - key))) / 2).astype(np.float32)[:, None]
    keys = rng.standard_normal((key[-1] + 2, frame_dim), dtype=np.float32)
    return keys[key] * (1 - ease) + keys[key + 1] * ease


def video_features(
    video: str, duration: float, signals: Sequence[tuple[Annotation, np.ndarray]], level: np.ndarray,
    rows_per_second: float, seed: int, recipe: Recipe = I3D_LIKE,
) -> np.ndarray:
    """``[rows, frame_dim]`` float32 features of one video; ``signals`` pairs each moment with its signal."""
    rows, frame_dim = num_rows(duration, rows_per_second), len(level)
    rng = np.random.default_rng(_video_seed(seed, video))
    features = rng.standard_normal((rows, frame_dim), dtype=np.float32)
    features *= recipe.noise_std
    features += level + recipe.video_offset_std * rng.standard_normal(frame_dim, dtype=np.float32)
    features += recipe.smooth_std * _smooth(rng, rows, frame_dim, recipe.key_spacing_s * rows_per_second)
    if signals:
        masks = np.stack([moment_rows(moment, rows) for moment, _ in signals], axis=1).astype(np.float32)
        features += masks @ (recipe.signal_amplitude * np.stack([signal for _, signal in signals]))
    return np.maximum(features, 0, out=features)


def synthesize_archive(
    out_h5: str | Path,
    annotations: Sequence[Annotation],
    glove: dict[str, Any],
    frame_dim: int = 1024,
    rows_per_second: float = 3.0,
    seed: int = 0,
    vocab_cap: int | None = None,
    sources: Sequence[str] = (),
    progress: bool = False,
    recipe: Recipe = I3D_LIKE,
) -> SynthInfo:
    """Write one float32 dataset per annotated video to ``out_h5``; ``sources`` name the annotation files."""
    signal_of = SentenceSignal(glove, frame_dim, seed, vocab_cap)
    videos, skipped = _group_by_video(annotations)
    level = recipe.level_mean + recipe.level_std * np.random.default_rng([seed, LEVEL_STREAM]).standard_normal(
        frame_dim, dtype=np.float32
    )
    sentence_signals: dict[str, np.ndarray | None] = {}
    attrs = {
        "synthetic": True,
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "cnm_version": version("cnm"),
        "seed": seed,
        "frame_dim": frame_dim,
        "rows_per_second": rows_per_second,
        "signal_vocabulary_words": len(signal_of.vocab.words),
        "sources": json.dumps(list(sources)),
        "recipe": recipe.describe(),
    }
    rows = queries = without_signal = 0
    with ArchiveWriter(out_h5, attrs) as writer:
        for video, entry in tqdm(videos.items(), desc="videos", disable=not progress):
            signals = []
            for moment in entry.moments:
                if moment.sentence not in sentence_signals:
                    sentence_signals[moment.sentence] = signal_of(moment.sentence)
                signal = sentence_signals[moment.sentence]
                if signal is None:
                    without_signal += 1
                else:
                    signals.append((moment, signal))
            features = video_features(video, entry.duration, signals, level, rows_per_second, seed, recipe)
            writer.add(video, features, entry.duration)
            rows += len(features)
            queries += len(entry.moments)
    return SynthInfo(Path(out_h5), len(videos), rows, queries, without_signal, tuple(skipped))
