"""What a query ends as: a ``Prediction``, a ``QueryError`` saying why it has none, or ``Done`` (an earlier run
wrote it). Every line of a queries file ends as exactly one of them.

That holds by construction, not case by case: the work for one video and for one query runs inside
``contained`` (cnm_runtime.videos, cnm_runtime.chunks), which turns any exception into that item's error
record, ``internal_error`` with the exception's type and message where the input has no code of its own.
A ``Prediction`` cannot hold a number that strict JSON cannot write, so writing a result never fails on its
content.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from cnm_runtime.errors import InputError, require_code

T = TypeVar("T")
# CNM predicts one window per query and no confidence; the window's score is this constant.
WINDOW_SCORE = 1.0


@dataclass(frozen=True)
class QueryError:
    """One query (or input line) that produced no prediction, and why. ``qid`` is None for a line that did not
    parse into a query: such a line claims no qid."""

    qid: str | int | None
    line: int
    code: str  # one of cnm_runtime.errors.ERROR_CODES
    message: str

    def __post_init__(self) -> None:
        require_code(self.code)

    def record(self) -> dict[str, Any]:
        return {"qid": self.qid, "line": self.line, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Done:
    """A query whose qid an earlier run's output holds already (``--resume``)."""

    qid: str | int
    line: int


@dataclass(frozen=True)
class Prediction:
    qid: str | int
    video: str
    sentence: str
    duration: float | None  # seconds: from the query, else from the archive
    center: float  # fraction of the video
    width: float  # fraction of the video, already times max_width
    span: tuple[float, float]  # fractions of the video: 0 <= start <= end <= 1
    iou: float | None  # with the ground truth, as the original evaluation computes it; None without one
    dropped_words: tuple[str, ...]  # tokens outside the model's vocabulary
    truncated: bool  # more words than the model reads: the tail was cut

    def __post_init__(self) -> None:
        numbers = (self.center, self.width, *self.span, *(x for x in (self.duration, self.iou) if x is not None))
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError(f"a prediction holds a non-finite number: {numbers}")
        if not 0 <= self.span[0] <= self.span[1] <= 1:
            raise ValueError(f"a prediction's span {self.span} is not within [0, 1] in order")

    @property
    def window(self) -> tuple[float, float]:
        """``span`` in seconds when the duration is known, else as fractions."""
        scale = self.duration if self.duration is not None else 1.0
        return self.span[0] * scale, self.span[1] * scale

    def record(self) -> dict[str, Any]:
        """One output line: the Moment-DETR layout (windows in seconds when the duration is known)."""
        record = {
            "qid": self.qid,
            "vid": self.video,
            "query": self.sentence,
            "duration": self.duration,
            "center": self.center,
            "width": self.width,
            "pred_relevant_windows": [[*self.window, WINDOW_SCORE]],
            "dropped_words": list(self.dropped_words),
            "truncated": self.truncated,
        }
        if self.iou is not None:
            record["iou"] = self.iou
        return record


def contained(work: Callable[[], T], what: str) -> T | InputError:
    """``work()``, or the InputError it raised, or, for any other exception, an ``internal_error`` naming
    ``what`` and the exception: the boundary around the work for one item (a video, a query), so that a bug
    costs its item and is counted, never the run. Interrupts (not Exceptions) pass through."""
    try:
        return work()
    except InputError as error:
        return error
    except Exception as error:
        return InputError("internal_error", f"{what}: {type(error).__name__}: {error}")
