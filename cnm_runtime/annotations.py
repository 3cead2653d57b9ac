"""The original annotation files: a JSON list of ``[video, duration, [start, end], sentence]``.

Entries are checked, never coerced (``cnm_runtime.fields``): a video and a sentence are strings, a
duration a finite positive number, timestamps finite numbers with ``0 <= start <= end``. Charades-STA
and ActivityNet Captions as the original CNM ships them pass as they are.
"""
from __future__ import annotations

import json
from pathlib import Path

from cnm_runtime.fields import Annotation, parse_annotation


def load_annotations(path: str | Path) -> list[Annotation]:
    """Every entry of the annotation file ``path``; ValueError (an InputError for an entry) naming the file
    and the entry otherwise."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of [video, duration, [start, end], sentence]")
    return [parse_annotation(item, f"{path} entry {i}") for i, item in enumerate(items)]
