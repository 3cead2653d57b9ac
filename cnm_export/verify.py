"""Does an exported file compute what PyTorch computes?

ONNX Runtime runs the file on the CPU provider through cnm-run's own session; the reference is the live
PyTorch model in fp32 with its full, unpruned inference path, so one comparison covers the export, the
pruning and the precision. Cases: random inputs at several batch sizes with every query length
1..max_num_words, and optionally a small labelled set (``queries.jsonl`` + ``features.hdf5``, as in the
golden directory) read and prepared as cnm-run does it, where the change in IoU@0.5 and mIoU is
reported too; an ``expected.npz`` beside it (outputs of the original code) is compared as well.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.feed import Feed, take_queries
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.queries import Query, QueryError, read_queries
from cnm_runtime.session import ModelSession
from cnm_runtime.spans import HEADLINE_METRICS, grounding_metrics, spans_from_gaussian, temporal_iou
from cnm_runtime.text import EncodedQuery, Vocabulary, pad_word_ids
from cnm_runtime.videos import load_clips
from cnm_train.model import CNM

log = logging.getLogger(__name__)

TOLERANCE = {"fp32": 1e-5}  # max |d center| and |d width|; fp16 and int8 are reported, not judged
RANDOM_BATCHES = (1, 7, 64)
CHUNK = 64  # queries per forward pass on the labelled set


@dataclass
class Comparison:
    """One case: the largest output differences, and on labelled data the change of the metrics."""

    case: str
    queries: int
    max_center: float
    max_width: float
    metric_change: dict[str, float] | None = None  # the file's metric minus PyTorch fp32's


@dataclass
class Verification:
    precision: str
    cases: list[Comparison]

    @property
    def tolerance(self) -> float | None:
        return TOLERANCE.get(self.precision)

    def verdict(self, case: Comparison) -> str:
        """``ok``/``FAIL`` against the tolerance; ``reported`` where there is none (non-finite fails)."""
        worst = max(case.max_center, case.max_width)
        if not math.isfinite(worst):
            return "FAIL"
        if self.tolerance is None:
            return "reported"
        return "ok" if worst <= self.tolerance else "FAIL"

    @property
    def passed(self) -> bool:
        return all(self.verdict(case) != "FAIL" for case in self.cases)

    def table(self) -> str:
        tolerance = "none, reported" if self.tolerance is None else f"{self.tolerance:g}"
        lines = [
            f"ONNX Runtime (CPU, {self.precision}) vs PyTorch (fp32, unpruned); tolerance: {tolerance}",
            f"{'case':<30}{'queries':>8}{'max|d center|':>15}{'max|d width|':>14}"
            + "".join(f"{'d ' + name:>12}" for name in HEADLINE_METRICS) + f"{'result':>10}",
        ]
        for case in self.cases:
            changes = case.metric_change or {}
            metrics = "".join(
                f"{changes[name]:>+12.4f}" if name in changes else f"{'-':>12}" for name in HEADLINE_METRICS
            )
            lines.append(
                f"{case.case:<30}{case.queries:>8}{case.max_center:>15.2e}{case.max_width:>14.2e}"
                f"{metrics}{self.verdict(case):>10}"
            )
        return "\n".join(lines)


def pytorch_outputs(model: CNM, word_vectors: np.ndarray, feed: Feed) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the eval-mode model, full inference path, fp32."""
    with torch.inference_mode():
        words = torch.from_numpy(word_vectors)[torch.from_numpy(feed["word_ids"])]
        center, width = model.generate(torch.from_numpy(feed["frames"]), words, torch.from_numpy(feed["words_len"]),
                                       video_index=torch.from_numpy(feed["video_index"]))
    return center.numpy(), width.numpy()


def random_feed(spec: ModelSpec, batch: int, rng: np.random.Generator) -> Feed:
    """Feature-like frames (half zeros) and random word ids; lengths count down from the longest query.
    Two queries share each video (the last one alone when ``batch`` is odd)."""
    videos = (batch + 1) // 2
    frames = np.maximum(rng.standard_normal((videos, spec.max_num_frames, spec.frame_dim)), 0).astype(np.float32)
    lengths = rng.integers(1, spec.max_num_words + 1, batch)
    covered = min(batch, spec.max_num_words)
    lengths[:covered] = np.arange(spec.max_num_words, spec.max_num_words - covered, -1)
    vocab_size = len(spec.words) + 1
    queries = [EncodedQuery(tuple(rng.integers(1, vocab_size, n).tolist()), (), (), False) for n in lengths]
    word_ids, words_len = pad_word_ids(queries, spec.word_slots)
    return {"frames": frames, "video_index": np.arange(batch, dtype=np.int64) // 2, "word_ids": word_ids,
            "words_len": words_len}


def _compare(case: str, ours: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray],
             metric_change: dict[str, float] | None = None) -> Comparison:
    return Comparison(
        case, len(ours[0]), float(np.max(np.abs(ours[0] - reference[0]))),
        float(np.max(np.abs(ours[1] - reference[1]))), metric_change,
    )


@dataclass
class LabelledSet:
    """Prepared queries of a labelled directory; ``rows`` are the 0-based queries.jsonl lines kept."""

    feed: Feed
    truth: np.ndarray  # [N, 2] ground-truth spans as fractions of the video
    rows: list[int]


def _encode_labelled(query: Query | QueryError, vocabulary: Vocabulary, max_num_words: int) -> EncodedQuery:
    """Word ids of one labelled query; InputError names what is wrong."""
    if isinstance(query, QueryError):
        raise InputError(query.code, query.message)
    if query.timestamps is None or query.duration is None:
        raise InputError("no_ground_truth", f"line {query.line}: a labelled query needs timestamps and duration")
    return vocabulary.encode(query.sentence, max_num_words, name=f"line {query.line}")


def load_labelled_set(directory: str | Path, spec: ModelSpec) -> LabelledSet:
    """``queries.jsonl`` and ``features.hdf5`` read and prepared as cnm-run does it (each video read once);
    a query that cannot be prepared is logged and skipped."""
    directory = Path(directory)
    vocabulary = spec.vocabulary()
    frames, video_index, queries, truth, rows = [], [], [], [], []
    video_rows: dict[str, int] = {}
    with FeatureArchive(directory / "features.hdf5") as archive:
        for query in read_queries(directory / "queries.jsonl"):
            try:
                encoded = _encode_labelled(query, vocabulary, spec.max_num_words)
                if query.video not in video_rows:
                    frames.append(load_clips(archive, query.video, spec.frame_dim, spec.max_num_frames).frames)
                    video_rows[query.video] = len(frames) - 1
            except InputError as error:
                log.warning("skipped: %s", error.message)
                continue
            queries.append(encoded)
            video_index.append(video_rows[query.video])
            truth.append([moment / query.duration for moment in query.timestamps])
            rows.append(query.line - 1)
    if not queries:
        raise ValueError(f"{directory}: no query could be prepared")
    word_ids, words_len = pad_word_ids(queries, spec.word_slots)
    feed = {"frames": np.stack(frames), "video_index": np.array(video_index, np.int64), "word_ids": word_ids,
            "words_len": words_len}
    return LabelledSet(feed, np.asarray(truth, dtype=np.float32), rows)


def _in_chunks(run, feed: Feed) -> tuple[np.ndarray, np.ndarray]:
    total = len(feed["words_len"])
    parts = [run(take_queries(feed, np.arange(i, min(i + CHUNK, total)))) for i in range(0, total, CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _metrics(outputs: tuple[np.ndarray, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    return grounding_metrics(temporal_iou(spans_from_gaussian(*outputs), truth))


def verify_labelled(session: ModelSession, model: CNM, word_vectors: np.ndarray, spec: ModelSpec,
                    directory: str | Path) -> list[Comparison]:
    """The labelled set against PyTorch (with the metric change) and against ``expected.npz`` if present."""
    labelled = load_labelled_set(directory, spec)
    ours = _in_chunks(lambda feed: session.run(**feed), labelled.feed)
    reference = _in_chunks(lambda feed: pytorch_outputs(model, word_vectors, feed), labelled.feed)
    ours_metrics, reference_metrics = _metrics(ours, labelled.truth), _metrics(reference, labelled.truth)
    change = {name: ours_metrics[name] - reference_metrics[name] for name in HEADLINE_METRICS}
    cases = [_compare("labelled set vs PyTorch", ours, reference, change)]
    expected_path = Path(directory) / "expected.npz"
    if expected_path.exists():
        expected = np.load(expected_path)
        original = (expected["center"][labelled.rows], expected["width"][labelled.rows])
        cases.append(_compare("labelled set vs expected.npz", ours, original))
    return cases


def verify_export(onnx_path: str | Path, model: CNM, word_vectors: np.ndarray, labelled: str | Path | None = None,
                  batch_sizes: tuple[int, ...] = RANDOM_BATCHES, seed: int = 0) -> Verification:
    """Compare the file at ``onnx_path`` with ``model`` (eval mode) on random inputs and ``labelled``."""
    session = ModelSession(onnx_path, provider="cpu")
    spec = session.spec
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batch_sizes:
        feed = random_feed(spec, batch, rng)
        cases.append(_compare(f"random, batch {batch}", session.run(**feed),
                              pytorch_outputs(model, word_vectors, feed)))
    if labelled is not None:
        cases += verify_labelled(session, model, word_vectors, spec, labelled)
    return Verification(spec.precision, cases)
