"""The values a query carries, checked as they come from JSON: no coercion, every number finite.

JSON lines and the entries of an annotation list hold the same values (video, sentence, duration,
timestamps); these checks are the one place that says what each may be, and ``Annotation`` is an original
entry checked by them. Nothing is converted that was
not already of its kind: ``"30"`` is not a duration, ``[1]`` is not a sentence, ``true`` is not a number.
Every check raises ``InputError`` naming ``where`` (the line or entry) and the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cnm_runtime.errors import InputError, shown

def is_number(value: Any) -> bool:
    """An int or a float (a bool is neither, whatever Python says)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: int | float) -> bool:
    """A number a float holds and that is not NaN or infinite (JSON's ``1e999`` is inf, ``9`` * 400 an int
    beyond every float)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_text(name: str, value: Any, where: str) -> str:
    """``value`` if it is a str of Unicode text; ``bad_field`` if it is not a str, ``bad_encoding`` if it holds
    a lone surrogate (JSON's escapes can make one, and no UTF-8 output can hold it)."""
    if not isinstance(value, str):
        raise InputError("bad_field", f"{where}: {name!r} must be a string, got {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("bad_encoding", f"{where}: {name!r} holds a lone surrogate, not Unicode text: "
                                         f"{shown(value)}") from None
    return value


def check_video(value: Any, where: str) -> str:
    """A video's name: a non-empty str of Unicode text (``bad_field``, ``bad_encoding`` otherwise)."""
    if not check_text("video", value, where):
        raise InputError("bad_field", f"{where}: 'video' is empty")
    return value


def check_duration(value: Any, where: str) -> float:
    """A video's length in seconds: ``bad_field`` for what is not a number, ``bad_duration`` for a number that
    is not finite and positive."""
    if not is_number(value):
        raise InputError("bad_field", f"{where}: 'duration' must be a number of seconds, got {shown(value)}")
    if not (is_finite(value) and value > 0):
        raise InputError("bad_duration",
                         f"{where}: 'duration' must be a finite positive number of seconds, got {shown(value)}")
    return float(value)


def check_timestamps(value: Any, where: str) -> tuple[float, float]:
    """Ground truth ``[start, end]`` in seconds, finite with ``0 <= start <= end`` (``bad_field`` otherwise).

    The end may lie past the video's duration: real ActivityNet Captions annotations have such ends, and
    the original evaluation takes them as they are.
    """
    if not (isinstance(value, list) and len(value) == 2 and all(map(is_number, value))):
        raise InputError("bad_field", f"{where}: 'timestamps' must be [start, end] in seconds, got {shown(value)}")
    start, end = value
    if not (is_finite(start) and is_finite(end)):
        raise InputError("bad_field", f"{where}: 'timestamps' must be finite numbers of seconds, got {shown(value)}")
    if not 0 <= start <= end:
        raise InputError("bad_field", f"{where}: 'timestamps' must have 0 <= start <= end, got {shown(value)}")
    return float(start), float(end)


@dataclass(frozen=True)
class Annotation:
    video: str
    duration: float  # seconds
    start: float  # seconds
    end: float
    sentence: str

    @property
    def span_fraction(self) -> tuple[float, float]:
        """Ground truth as fractions of the video, as the original evaluation divides it (a quotient past
        a float's range is inf, which ``cnm_runtime.spans.temporal_iou`` takes)."""
        return self.start / self.duration, self.end / self.duration


def parse_annotation(item: Any, where: str) -> Annotation:
    """One ``[video, duration, [start, end], sentence]`` entry; InputError naming ``where`` otherwise:
    ``malformed_entry`` for another shape, ``bad_field`` or ``bad_duration`` for a value (see
    ``cnm_runtime.fields``)."""
    if not (isinstance(item, list) and len(item) == 4 and isinstance(item[2], list) and len(item[2]) == 2):
        raise InputError("malformed_entry", f"{where}: expected [video, duration, [start, end], sentence], "
                                            f"got {shown(item)}")
    video, duration, timestamps, sentence = item
    return Annotation(check_video(video, where), check_duration(duration, where), *check_timestamps(timestamps, where),
                      check_text("sentence", sentence, where))
