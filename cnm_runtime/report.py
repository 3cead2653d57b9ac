"""What a cnm-run did, for both engines: counts, grounding metrics and speed built from the records it writes,
and the summary a person reads.

The tally reads prediction records (the dicts written to the output), so a resumed run counts the
predictions of the earlier run, read back from the file, exactly like its own.
"""
from __future__ import annotations

from array import array
from collections import Counter
from typing import Any

import numpy as np

from cnm_runtime.outcomes import QueryError
from cnm_runtime.spans import grounding_metrics


class RunTally:
    def __init__(self) -> None:
        self.predicted = 0
        self.resumed = 0  # predictions of an earlier run, read back by --resume
        self.resumed_errors = 0  # error records of an earlier run (the Ray engine keeps a finished shard's)
        self.errors: Counter[str] = Counter()
        self.dropped_tokens = 0
        self.truncated_queries = 0
        self._ious = array("d")

    def add_prediction(self, record: dict[str, Any], resumed: bool = False) -> None:
        self.predicted += 1
        self.resumed += resumed
        self.dropped_tokens += len(record.get("dropped_words", ()))
        self.truncated_queries += bool(record.get("truncated", False))
        if record.get("iou") is not None:
            self._ious.append(record["iou"])

    def add_error(self, error: QueryError, resumed: bool = False) -> None:
        self.errors[error.code] += 1
        self.resumed_errors += resumed

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def metrics(self, provider: str, wall_s: float) -> dict[str, Any]:
        """IoU@t and mIoU over the queries with ground truth, then the counts and the speed of this run."""
        processed = self.predicted - self.resumed + self.error_count - self.resumed_errors
        return {
            **grounding_metrics(np.frombuffer(self._ious, dtype=np.float64)),
            "queries": self.predicted + self.error_count,
            "predicted": self.predicted,
            "with_ground_truth": len(self._ious),
            "errors": self.error_count,
            "errors_by_code": dict(sorted(self.errors.items())),
            "dropped_tokens": self.dropped_tokens,
            "truncated_queries": self.truncated_queries,
            "resumed": self.resumed,
            "provider": provider,
            "wall_s": round(wall_s, 3),
            "queries_per_s": round(processed / wall_s, 1) if wall_s > 0 else None,
        }


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The metrics as a few lines for a person reading the terminal."""
    lines = [
        f"{metrics['queries']} queries: {metrics['predicted']} predicted ({metrics['resumed']} from the earlier run), "
        f"{metrics['errors']} errors; {metrics['wall_s']:.1f} s, {metrics['queries_per_s']} queries/s "
        f"on {metrics['provider']}",
    ]
    if metrics["errors"]:
        lines.append("errors: " + ", ".join(f"{code} {count}" for code, count in metrics["errors_by_code"].items()))
    if metrics["with_ground_truth"]:
        scores = "  ".join(f"{name} {metrics[name]:.4f}" for name in metrics if name.startswith(("IoU@", "mIoU")))
        lines.append(f"{scores}  ({metrics['with_ground_truth']} queries with ground truth)")
    lines.append(f"{metrics['dropped_tokens']} tokens outside the vocabulary dropped, "
                 f"{metrics['truncated_queries']} queries cut to the model's word limit")
    return lines
