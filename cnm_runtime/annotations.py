"""The original annotation files: a JSON list of ``[video, duration, [start, end], sentence]``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Annotation:
    video: str
    duration: float  # seconds
    start: float  # seconds
    end: float
    sentence: str

    @property
    def span_fraction(self) -> tuple[float, float]:
        """Ground truth as fractions of the video, as the original evaluation divides it."""
        return self.start / self.duration, self.end / self.duration


def parse_annotation(item: list, where: str) -> Annotation:
    """One ``[video, duration, [start, end], sentence]`` entry; ValueError naming ``where`` otherwise."""
    try:
        video, duration, (start, end), sentence = item
        return Annotation(str(video), float(duration), float(start), float(end), str(sentence))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: expected [video, duration, [start, end], sentence], got {item!r}") from error


def load_annotations(path: str | Path) -> list[Annotation]:
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of [video, duration, [start, end], sentence]")
    return [parse_annotation(item, f"{path} entry {i}") for i, item in enumerate(items)]
