"""The values a query carries, checked as they come from JSON: no coercion, every number finite.

JSON lines and the entries of an annotation list hold the same values (video, sentence, duration,
timestamps); these checks are the one place that says what each may be. Nothing is converted that was
not already of its kind: ``"30"`` is not a duration, ``[1]`` is not a sentence, ``true`` is not a number.
Every check raises ``InputError`` naming ``where`` (the line or entry) and the field.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any

from cnm_runtime.errors import InputError

# Values quoted in messages are cut short: a line may hold a megabyte of them
_shown = reprlib.Repr()
_shown.maxstring, _shown.maxother, _shown.maxlong = 80, 80, 40


def shown(value: Any) -> str:
    """``repr(value)``, cut short enough for one line of a message, at any size or depth."""
    return _shown.repr(value)


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
