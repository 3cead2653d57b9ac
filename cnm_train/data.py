"""Annotations + feature archive -> batches laid out as the original collate builds them.

A sample is one query: its annotation, its kept words (``cnm_runtime.text.Vocabulary.encode``) and the
probabilities of masking each word. A batch holds the clips ``[B, 200, D]`` (read as cnm-run reads them,
``cnm_runtime.videos.load_clips``), the word vectors ``[B, T, 300]`` with T = longest query + 1 (slot 0 is
the start slot), ``words_len``, the reconstruction targets ``words_id`` ``[B, T-1]`` (the ids of slots
1..T-1) and the masking probabilities.

Each process opens its own handle on the archive on first read, so data-loader workers never share one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnm_runtime.annotations import load_annotations
from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.fields import Annotation
from cnm_runtime.text import EncodedQuery, Vocabulary, pad_word_ids
from cnm_runtime.videos import load_clips
from cnm_train.masking import mask_probabilities, word_weights

log = logging.getLogger(__name__)

# Charades ships no validation split (its config points val_data at the test set), so model selection
# holds out this share of the training videos, drawn with this seed; every run gets the same split.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class Sample:
    annotation: Annotation
    query: EncodedQuery
    mask_probs: np.ndarray  # [len(query)] float32: softmax of the word weights


@dataclass(frozen=True)
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    validation: dict[str, Any]  # where val came from, recorded in the checkpoint's config


@dataclass
class Batch:
    frames: torch.Tensor  # [B, num_clips, frame_dim] float32
    words_feat: torch.Tensor  # [B, T, word_dim] float32, slot 0 zeros (the model puts its start vector there)
    words_len: torch.Tensor  # [B] int64
    targets: torch.Tensor  # [B, T-1] int64: word id of slot t+1 at position t, 0 after the last word
    mask_probs: np.ndarray  # [B, T-1] float32: masking probability of the word in slot t+1
    spans: np.ndarray  # [B, 2] float64: ground truth as fractions of the video
    indices: list[int]  # positions of the samples in their dataset

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.frames.to(device), self.words_feat.to(device), self.words_len.to(device),
                     self.targets.to(device), self.mask_probs, self.spans, self.indices)


def existing_file(path: str | Path, key: str) -> Path:
    """``path`` (relative to the current directory, as in the original) or a FileNotFoundError naming ``key``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}: {path} does not exist (paths resolve relative to {Path.cwd()}; override with --set {key}=PATH)"
        )
    return path


def prepare_samples(annotations: Sequence[Annotation], vocabulary: Vocabulary, max_num_words: int,
                    weighting: str, source: str) -> list[Sample]:
    """Encode every query; queries that keep no word are skipped with a logged count."""
    samples, skipped = [], 0
    for i, annotation in enumerate(annotations):
        try:
            query = vocabulary.encode(annotation.sentence, max_num_words, name=f"{source} entry {i}")
        except InputError as error:
            skipped += 1
            log.debug("%s", error.message)
            continue
        samples.append(Sample(annotation, query, mask_probabilities(word_weights(query.words, weighting))))
    if skipped:
        log.warning("%s: skipped %d of %d queries that keep no vocabulary word", source, skipped, len(annotations))
    return samples


def keep_archived(samples: list[Sample], feature_path: Path, source: str) -> list[Sample]:
    """Drop (with a logged count) samples whose video is not in the archive; the handle is closed again."""
    with FeatureArchive(feature_path) as archive:
        kept = [s for s in samples if s.annotation.video in archive]
    if len(kept) < len(samples):
        log.warning("%s: %d of %d queries dropped, their video is not in %s",
                    source, len(samples) - len(kept), len(samples), feature_path)
    if not kept:
        raise InputError("unknown_video", f"{source}: none of its videos is in the feature archive {feature_path}")
    return kept


def holdout_by_video(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """``(rest, held_out)``: all queries of a seeded ``fraction`` of the videos go to ``held_out``."""
    videos = sorted({s.annotation.video for s in samples})
    count = max(1, round(fraction * len(videos)))
    held = set(np.random.default_rng(seed).choice(videos, size=count, replace=False).tolist())
    return ([s for s in samples if s.annotation.video not in held],
            [s for s in samples if s.annotation.video in held])


def load_split(dataset_cfg: dict[str, Any], key: str, vocabulary: Vocabulary, weighting: str,
               feature_path: Path) -> list[Sample]:
    path = existing_file(dataset_cfg[key], f"dataset.{key}")
    source = f"dataset.{key} ({path})"
    samples = prepare_samples(load_annotations(path), vocabulary, int(dataset_cfg["max_num_words"]), weighting, source)
    return keep_archived(samples, feature_path, source)


def load_splits(dataset_cfg: dict[str, Any], vocabulary: Vocabulary, weighting: str) -> Splits:
    """Train, validation and test samples. Without a ``val_data`` distinct from ``test_data`` (Charades),
    validation is a held-out slice of the training videos, so the test set never picks the model."""
    feature_path = existing_file(dataset_cfg["feature_path"], "dataset.feature_path")
    train = load_split(dataset_cfg, "train_data", vocabulary, weighting, feature_path)
    test = load_split(dataset_cfg, "test_data", vocabulary, weighting, feature_path)
    val_path = dataset_cfg.get("val_data")
    if val_path and Path(val_path).resolve() != Path(dataset_cfg["test_data"]).resolve():
        val = load_split(dataset_cfg, "val_data", vocabulary, weighting, feature_path)
        return Splits(train, val, test, {"source": "val_data"})
    train, val = holdout_by_video(train, HOLDOUT_FRACTION, HOLDOUT_SEED)
    validation = {"source": "train_data holdout", "fraction_of_videos": HOLDOUT_FRACTION, "seed": HOLDOUT_SEED}
    log.info("validation: %d queries of %.0f%% of the training videos (seed %d); %d queries left to train on",
             len(val), 100 * HOLDOUT_FRACTION, HOLDOUT_SEED, len(train))
    return Splits(train, val, test, validation)


class GroundingDataset(Dataset):
    """Samples -> resampled clips, one query at a time; ``collate`` assembles a ``Batch``.

    A video whose features are unusable (wrong width, NaN, no rows) is logged and left out of its batch.
    """

    def __init__(self, samples: Sequence[Sample], feature_path: str | Path, word_vectors: np.ndarray,
                 frame_dim: int, num_clips: int):
        self.samples = list(samples)
        self.feature_path = Path(feature_path)
        self.word_vectors = word_vectors
        self.frame_dim = frame_dim
        self.num_clips = num_clips
        self._archive: FeatureArchive | None = None
        self._archive_pid: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        """Workers started by spawning get a copy without the handle; they open their own."""
        return {**self.__dict__, "_archive": None, "_archive_pid": None}

    def archive(self) -> FeatureArchive:
        """This process's handle, opened on first use (a handle never crosses a fork)."""
        if self._archive is None or self._archive_pid != os.getpid():
            self._archive, self._archive_pid = FeatureArchive(self.feature_path), os.getpid()
        return self._archive

    def __getitem__(self, index: int) -> tuple[int, np.ndarray] | None:
        video = self.samples[index].annotation.video
        try:
            clips = load_clips(self.archive(), video, self.frame_dim, self.num_clips)
        except InputError as error:
            log.warning("skipping a query of video %r: %s", video, error.message)
            return None
        return index, clips.frames

    def collate(self, items: Sequence[tuple[int, np.ndarray] | None]) -> Batch | None:
        """Stack the clips and pad the words as the original collate does; None when nothing is left."""
        items = [item for item in items if item is not None]
        if not items:
            return None
        indices = [index for index, _ in items]
        samples = [self.samples[i] for i in indices]
        num_words = max(len(s.query) for s in samples)
        word_ids, words_len = pad_word_ids([s.query for s in samples], num_words + 1)
        mask_probs = np.zeros((len(samples), num_words), dtype=np.float32)
        for row, sample in enumerate(samples):
            mask_probs[row, : len(sample.query)] = sample.mask_probs
        return Batch(
            frames=torch.from_numpy(np.stack([clips for _, clips in items])),
            words_feat=torch.from_numpy(self.word_vectors[word_ids]),
            words_len=torch.from_numpy(words_len),
            targets=torch.from_numpy(word_ids[:, 1:].copy()),
            mask_probs=mask_probs,
            spans=np.array([s.annotation.span_fraction for s in samples], dtype=np.float64),
            indices=indices,
        )


def seed_worker(worker_id: int) -> None:
    """numpy and random in a worker follow the loader's seed (torch seeds each worker itself)."""
    import random

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: GroundingDataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    """Shuffling and worker seeds follow ``seed``; workers persist across epochs (one archive handle each)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=dataset.collate, num_workers=num_workers,
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
