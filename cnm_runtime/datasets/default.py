"""The embedded default dataset: its own vocabulary, template sentences, splits and synthetic archive.

It needs nothing from outside, so that ``cnm-demo`` and a bare ``cnm-train`` work on a fresh machine.

The recipe, every draw from the seed (nothing in it was fitted to a test split):
- a video lasts ``DEFAULT_DURATION_S``; one action (a verb and an object, each uniform) happens in one
  place (uniform) on one stretch of ``DEFAULT_MOMENT_FRACTION`` of the video, placed uniformly;
- its sentences describe that action in different words (distinct templates), as the sentences of a
  Charades-STA video mostly describe the same moment; each query's bounds move by up to
  ``DEFAULT_BOUND_JITTER`` of the stretch, as annotators disagree;
- the features follow ``DEFAULT_RECIPE`` (``cnm_runtime.datasets.synth``): the stretch carries the
  signals of its sentences, the rest of the video only background;
- 80 % of the videos train, 10 % validate (model selection), 10 % test.
One action per stretch matters to CNM: it starts localizing only once its reconstructor reads the masked
words off the video, and a stretch that mixed several actions would tell it only which few verbs and
objects are present, a lesson so weak that localizing could start too late for the demo's budget.
"""
from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cnm_runtime.datasets.dataset_files import write_annotations, write_queries
from cnm_runtime.datasets.synth import DEFAULT_DATASET_STREAM, Recipe, SynthInfo, synthesize_archive
from cnm_runtime.fields import Annotation
from cnm_runtime.text import tokenize

VERBS = ("opens", "closes", "holds", "takes", "puts", "washes", "throws", "fixes", "eats", "drinks",
         "watches", "carries")
OBJECTS = ("door", "window", "book", "cup", "laptop", "towel", "phone", "sandwich", "pillow", "bag", "shoe",
           "broom", "blanket", "box", "glass", "mirror")
PLACES = ("kitchen", "bedroom", "hallway", "garage", "bathroom", "closet")
TEMPLATES = (
    "a person {verb} the {object}.",
    "person {verb} a {object} in the {place}.",
    "the person {verb} the {object} near the {place}.",
)
WORD_DIM = 300
# Short enough that the archive stays small with many videos: the model resamples every video to the same
# number of clips, so longer videos would only add rows.
DEFAULT_DURATION_S = (10.0, 20.0)
DEFAULT_MOMENT_FRACTION = (0.15, 0.4)
DEFAULT_BOUND_JITTER = 0.15  # each query's bounds move by up to this share of its video's stretch
# A cleaner background than I3D_LIKE (no per-video offset, a calmer drift, a stronger signal), so that the
# small CNM of cnm-demo reads the video, and so localizes, early in its budget.
DEFAULT_RECIPE = Recipe(video_offset_std=0.0, smooth_std=0.2, signal_amplitude=1.5)
# What cnm-demo and a bare cnm-train use: 100 videos (300 queries) each to select the model on and to
# test it, so that neither is decided by a handful of videos.
DEFAULT_NUM_VIDEOS = 1000
DEFAULT_QUERIES_PER_VIDEO = 3


@dataclass(frozen=True)
class DefaultDataset:
    """The files of ``make_default_dataset``; ``queries`` holds the test split for cnm-run."""

    directory: Path
    glove: Path
    train: Path
    val: Path
    test: Path
    queries: Path
    archive: Path
    info: SynthInfo


def default_annotations(num_videos: int, queries_per_video: int, rng: np.random.Generator) -> list[Annotation]:
    """One action per video on one stretch, told by ``queries_per_video`` sentences of distinct templates,
    each with its bounds jittered (the recipe of the module docstring)."""
    annotations = []
    for index in range(num_videos):
        video, duration = f"s{index:05d}", round(float(rng.uniform(*DEFAULT_DURATION_S)), 2)
        verb, obj, place = rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)
        length = rng.uniform(*DEFAULT_MOMENT_FRACTION) * duration
        stretch_start = rng.uniform(0, duration - length)
        for template in rng.permutation(len(TEMPLATES))[:queries_per_video]:
            jitter = DEFAULT_BOUND_JITTER * length * rng.uniform(-1, 1, size=2)
            start = round(float(np.clip(stretch_start + jitter[0], 0, duration)), 1)
            end = round(float(np.clip(stretch_start + length + jitter[1], start + 0.1, duration)), 1)
            sentence = TEMPLATES[template].format(verb=verb, object=obj, place=place)
            annotations.append(Annotation(video, duration, start, end, sentence))
    return annotations


def default_glove(sentences: Sequence[str], rng: np.random.Generator) -> dict[str, Any]:
    """A glove.pkl dict in the original layout over the tokens of ``sentences``, with random vectors."""
    counter = Counter(token for sentence in sentences for token in tokenize(sentence))
    words = [word for word, _ in counter.most_common()]
    return {
        "w2id": {word: i for i, word in enumerate(words)},
        "id2vec": [0.4 * rng.standard_normal(WORD_DIM, dtype=np.float32) for _ in words],
        "counter": counter,
    }


def make_default_dataset(
    out_dir: str | Path,
    num_videos: int = DEFAULT_NUM_VIDEOS,
    queries_per_video: int = DEFAULT_QUERIES_PER_VIDEO,
    seed: int = 0,
    frame_dim: int = 1024,
    rows_per_second: float = 3.0,
    progress: bool = False,
) -> DefaultDataset:
    """A complete small dataset that needs nothing from outside: glove.pkl, train/val/test.json
    (80/10/10 % of the videos), queries.jsonl (the test split) and features.hdf5 (all videos)."""
    if num_videos < 3:
        raise ValueError(f"num_videos must be at least 3 (one per split), got {num_videos}")
    if not 1 <= queries_per_video <= len(TEMPLATES):
        raise ValueError(f"queries_per_video must be between 1 and {len(TEMPLATES)}, got {queries_per_video}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, DEFAULT_DATASET_STREAM])
    annotations = default_annotations(num_videos, queries_per_video, rng)
    glove = default_glove([a.sentence for a in annotations], rng)
    glove_path = out_dir / "glove.pkl"
    glove_path.write_bytes(pickle.dumps(glove))

    held_out = max(1, num_videos // 10)
    first_val = num_videos - 2 * held_out
    split_of = {f"s{i:05d}": "train" if i < first_val else "val" if i < first_val + held_out else "test"
                for i in range(num_videos)}
    splits = {name: [a for a in annotations if split_of[a.video] == name] for name in ("train", "val", "test")}
    paths = {name: write_annotations(out_dir / f"{name}.json", items) for name, items in splits.items()}
    queries = write_queries(out_dir / "queries.jsonl", splits["test"])
    info = synthesize_archive(
        out_dir / "features.hdf5", annotations, glove, frame_dim=frame_dim, rows_per_second=rows_per_second,
        seed=seed, sources=[path.name for path in paths.values()], progress=progress, recipe=DEFAULT_RECIPE,
    )
    return DefaultDataset(out_dir, glove_path, paths["train"], paths["val"], paths["test"], queries, info.path, info)
