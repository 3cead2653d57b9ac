"""Does an exported file compute what PyTorch computes?

Each engine that runs the file runs it through cnm-run's own session: ONNX Runtime on the CPU provider (ONNX
files), and OpenVINO at each precision it runs the file at, where it is installed (fp32, and bf16 where the
CPU has it, for an fp32 file; int8 for an openvino-int8 IR). The reference is the live PyTorch model in fp32
with its full, unpruned inference path, so one comparison covers the export, the pruning and the precision;
fp32 must agree within ``TOLERANCE``, the others' drift is reported. Cases: random inputs at several batch
sizes with every query length 1..max_num_words, and optionally a small labelled set (``queries.jsonl`` +
``features.hdf5``, as in the golden directory) read and prepared as cnm-run does it, where the change in
IoU@0.5 and mIoU is reported too; an ``expected.npz`` beside it (outputs of the original code) is compared
as well.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnm_runtime.batch import Batch
from cnm_runtime.chunks import BatchMaker
from cnm_runtime.model_files import IR_SUFFIX
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime import openvino_session
from cnm_runtime.engines import Session
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import QueryError
from cnm_runtime.queries import Query, read_lines
from cnm_runtime.session import ModelSession
from cnm_runtime.spans import HEADLINE_METRICS, grounding_metrics, spans_from_gaussian, temporal_iou
from cnm_runtime.text import EncodedQuery, pad_word_ids
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
    precision: str  # the arithmetic the engine ran the file at
    cases: list[Comparison]
    engine: str = "ONNX Runtime (CPU)"

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
            f"{self.engine}, {self.precision}, vs PyTorch (fp32, unpruned); tolerance: {tolerance}",
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


def pytorch_outputs(model: CNM, word_vectors: np.ndarray, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the eval-mode model, full inference path, fp32."""
    with torch.inference_mode():
        words = torch.from_numpy(word_vectors)[torch.from_numpy(batch.word_ids)]
        center, width = model.generate(torch.from_numpy(batch.frames.astype(np.float32, copy=False)), words,
                                       torch.from_numpy(batch.words_len),
                                       video_index=torch.from_numpy(batch.video_index))
    return center.numpy(), width.numpy()


def random_batch(spec: ModelSpec, size: int, rng: np.random.Generator) -> Batch:
    """Feature-like frames (half zeros) and random word ids; lengths count down from the longest query.
    Two queries share each video (the last one alone when ``size`` is odd)."""
    videos = (size + 1) // 2
    frames = np.maximum(rng.standard_normal((videos, spec.max_num_frames, spec.frame_dim)), 0).astype(np.float32)
    lengths = rng.integers(1, spec.max_num_words + 1, size)
    covered = min(size, spec.max_num_words)
    lengths[:covered] = np.arange(spec.max_num_words, spec.max_num_words - covered, -1)
    vocab_size = len(spec.words) + 1
    queries = [EncodedQuery(tuple(rng.integers(1, vocab_size, n).tolist()), (), (), False) for n in lengths]
    word_ids, words_len = pad_word_ids(queries, spec.word_slots)
    return Batch(frames, np.arange(size, dtype=np.int64) // 2, word_ids, words_len)


def _compare(case: str, ours: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray],
             metric_change: dict[str, float] | None = None) -> Comparison:
    return Comparison(
        case, len(ours[0]), float(np.max(np.abs(ours[0] - reference[0]))),
        float(np.max(np.abs(ours[1] - reference[1]))), metric_change,
    )


@dataclass
class LabelledSet:
    """Labelled queries prepared as cnm-run prepares them, row i of the batch for ``queries[i]``."""

    batch: Batch
    truth: np.ndarray  # [N, 2] ground-truth spans as fractions of the video
    queries: list[Query]
    read: int  # entries read from the file; the others could not be prepared or had no ground truth


def load_labelled_set(features: str | Path, queries: str | Path, spec: ModelSpec,
                      limit: int | None = None) -> LabelledSet:
    """The first ``limit`` queries of ``queries`` (all by default) over the archive ``features``, prepared by
    cnm-run's own batch maker (each video read once); a query that cannot be prepared or has no ground
    truth is logged and left out."""
    maker = BatchMaker(features, spec, RunOptions(keep_videos=limit or 1 << 30))
    try:
        chunk = maker.prepare(list(itertools.islice(read_lines(queries), limit)))
    finally:
        maker.close()
    outcomes, batch = chunk.outcomes, chunk.batch
    kept = []
    for outcome in outcomes:
        if isinstance(outcome, QueryError):
            log.warning("skipped: %s", outcome.message)
        elif outcome.query.timestamps is None or outcome.duration is None:
            log.warning("skipped: line %d has no timestamps and duration to compare with", outcome.line)
        else:
            kept.append(outcome)
    if not kept:
        raise ValueError(f"{queries}: no labelled query could be prepared")
    truth = [[moment / item.duration for moment in item.query.timestamps] for item in kept]
    return LabelledSet(batch.take(np.array([item.row for item in kept])), np.asarray(truth, dtype=np.float32),
                       [item.query for item in kept], len(outcomes))


def _in_chunks(run, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    total = len(batch)
    parts = [run(batch.take(np.arange(i, min(i + CHUNK, total)))) for i in range(0, total, CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _metrics(outputs: tuple[np.ndarray, np.ndarray], truth: np.ndarray) -> dict[str, float | None]:
    return grounding_metrics(temporal_iou(spans_from_gaussian(*outputs), truth))


def verify_labelled(session: Session, model: CNM, word_vectors: np.ndarray, spec: ModelSpec,
                    directory: str | Path) -> list[Comparison]:
    """The labelled set against PyTorch (with the metric change) and against ``expected.npz`` if present."""
    directory = Path(directory)
    labelled = load_labelled_set(directory / "features.hdf5", directory / "queries.jsonl", spec)
    ours = _in_chunks(session.run, labelled.batch)
    reference = _in_chunks(lambda batch: pytorch_outputs(model, word_vectors, batch), labelled.batch)
    ours_metrics, reference_metrics = _metrics(ours, labelled.truth), _metrics(reference, labelled.truth)
    change = {name: ours_metrics[name] - reference_metrics[name] for name in HEADLINE_METRICS
              if ours_metrics[name] is not None and reference_metrics[name] is not None}  # None: undefined
    cases = [_compare("labelled set vs PyTorch", ours, reference, change)]
    expected_path = Path(directory) / "expected.npz"
    if expected_path.exists():
        expected = np.load(expected_path)
        rows = [query.line - 1 for query in labelled.queries]
        original = (expected["center"][rows], expected["width"][rows])
        cases.append(_compare("labelled set vs expected.npz", ours, original))
    return cases


def verify_export(model_path: str | Path, model: CNM, word_vectors: np.ndarray, labelled: str | Path | None = None,
                  batch_sizes: tuple[int, ...] = RANDOM_BATCHES, seed: int = 0,
                  session: Session | None = None) -> Verification:
    """Compare the file at ``model_path``, run by ``session`` (default: ONNX Runtime's CPU provider), with
    ``model`` (eval mode) on random inputs and ``labelled``."""
    session = session or ModelSession(model_path, RunOptions(provider="cpu"))
    spec = session.spec
    rng = np.random.default_rng(seed)
    cases = []
    for batch in batch_sizes:
        inputs = random_batch(spec, batch, rng)
        cases.append(_compare(f"random, batch {batch}", session.run(inputs), pytorch_outputs(model, word_vectors, inputs)))
    if labelled is not None:
        cases += verify_labelled(session, model, word_vectors, spec, labelled)
    if isinstance(session, ModelSession):
        return Verification(spec.precision, cases)
    return Verification(session.precision, cases, engine="OpenVINO (CPU)")


def engine_sessions(model_path: str | Path) -> list[Session]:
    """A session for every engine and precision that runs the file here: ONNX Runtime's CPU provider for an
    ONNX file, and OpenVINO at each precision it runs the file at, where it is installed."""
    model_path = Path(model_path)
    sessions: list[Session] = []
    if model_path.suffix != IR_SUFFIX:
        sessions.append(ModelSession(model_path, RunOptions(provider="cpu")))
    if openvino_session.is_installed():
        spec = sessions[0].spec if sessions else openvino_session.OpenVinoSession(model_path).spec
        own = openvino_session.precision_of(spec)  # asked for as None: a run names only fp32 and bf16
        sessions += [openvino_session.OpenVinoSession(model_path, RunOptions(precision=None if precision == own
                                                                             else precision))
                     for precision in openvino_session.precisions_for(spec)]
    return sessions


def verify_engines(model_path: str | Path, model: CNM, word_vectors: np.ndarray,
                   labelled: str | Path | None = None) -> list[Verification]:
    """``verify_export`` on every session of ``engine_sessions``."""
    return [verify_export(model_path, model, word_vectors, labelled, session=session)
            for session in engine_sessions(model_path)]
