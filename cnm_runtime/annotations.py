"""The original annotation files: a JSON list of ``[video, duration, [start, end], sentence]``.

Entries are checked, never coerced (``cnm_runtime.fields``): a video and a sentence are strings, a
duration a finite positive number, timestamps finite numbers with ``0 <= start <= end``. Charades-STA
and ActivityNet Captions as the original CNM ships them pass as they are.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnm_runtime.errors import InputError
from cnm_runtime.fields import check_duration, check_text, check_timestamps, check_video, shown


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


def load_annotations(path: str | Path) -> list[Annotation]:
    """Every entry of the annotation file ``path``; ValueError (an InputError for an entry) naming the file
    and the entry otherwise."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of [video, duration, [start, end], sentence]")
    return [parse_annotation(item, f"{path} entry {i}") for i, item in enumerate(items)]
