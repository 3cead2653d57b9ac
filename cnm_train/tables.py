"""Markdown tables for the reports that training, the demo and the benchmarks print."""
from __future__ import annotations

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> list[str]:
    """A markdown table as lines; ``align`` holds one character a column, ``l`` or ``r`` (default: all left)."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if side == "r" else "---" for side in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]
