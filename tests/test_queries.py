"""Queries in: JSON lines or one annotation list, every value checked and never coerced, each entry one query or
one error record, a qid claimed only by a valid query; and every number written finite."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnm_runtime import queries as queries_module
from cnm_runtime.annotations import Annotation, load_annotations
from cnm_runtime.errors import InputError
from cnm_runtime.grounder import Grounder
from cnm_runtime.queries import BOM, MAX_LINE_BYTES, Query, QueryError, count_queries, read_queries
from cnm_runtime.report import RunTally, summary_lines
from cnm_runtime.result_files import write_json_atomic
from cnm_runtime.spans import METRIC_NAMES, grounding_metrics, temporal_iou
from cnm_runtime.text import Vocabulary
from test_run import archive, good_records, ground_all, tiny_model, write_lines  # noqa: F401 (fixtures)
from test_run_cli import cnm_run, finished, read_lines


def strict_json(text: str):
    """``text`` as JSON that holds no NaN or Infinity (Python's reader would take them)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} written"))


# --- an IoU is a finite number ------------------------------------------------------------------------

def test_the_iou_of_a_span_past_a_floats_range_is_its_limit_zero():
    """Seconds over a tiny duration overflow to inf; the IoU is then 0, not inf / inf."""
    truth = np.array([[math.inf, math.inf], [0.2, math.inf], [0.2, 0.4]])
    iou = temporal_iou(np.array([[0.0, 1.0], [0.0, 1.0], [0.2, 0.4]]), truth)
    assert iou.tolist() == [0.0, 0.0, 1.0]


def test_span_fractions_overflow_to_inf_without_a_warning():
    from cnm_runtime.spans import span_fractions  # new: where the runtime divides seconds by durations

    with np.errstate(all="raise"):
        truth = span_fractions(np.array([[1e308, 1.7e308], [1.0, 4.0]]), np.array([0.5, 8.0]))
    assert np.isinf(truth[0]).all() and truth[1].tolist() == [0.125, 0.5]


def test_a_query_past_a_floats_range_is_predicted_and_the_run_goes_on(tiny_model, archive, tmp_path):
    lines = [{"qid": "a", "video": "v0", "query": "person sits"},
             {"qid": "huge", "video": "v0", "query": "person sits", "duration": 0.5, "timestamps": [1e308, 1.7e308]},
             {"qid": "b", "video": "v1", "query": "person sits", "duration": 30, "timestamps": [1, 40]}]
    queries, out, metrics = write_lines(tmp_path / "q.jsonl", lines), tmp_path / "pred.jsonl", tmp_path / "m.json"
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries, "-o", out,
                                    "--metrics", metrics))
    assert code == 0 and "Traceback" not in err, err
    records = [strict_json(line) for line in out.read_text().splitlines()]
    assert [record["qid"] for record in records] == ["a", "huge", "b"] and records[1]["iou"] == 0.0
    assert math.isfinite(records[2]["iou"])
    assert strict_json(metrics.read_text())["with_ground_truth"] == 2


# --- metrics: null where undefined, never NaN -----------------------------------------------------------

def test_metrics_over_no_queries_are_undefined_not_nan():
    assert grounding_metrics(np.zeros(0)) == dict.fromkeys(METRIC_NAMES)
    assert grounding_metrics(np.array([0.5, np.nan]))["mIoU"] is None  # a NaN output's IoU: no mean
    tally = RunTally()
    tally.add_prediction({"qid": 0, "dropped_words": [], "truncated": False})
    metrics = tally.metrics("CPUExecutionProvider", wall_s=1.0)
    assert all(metrics[name] is None for name in METRIC_NAMES)
    assert "nan" not in "\n".join(summary_lines(metrics)).lower()


def test_json_written_whole_holds_null_where_a_float_is_not_a_number(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"loss": math.nan, "epochs": [{"loss": math.inf}, (1.5, -math.inf)], "n": 3})
    assert strict_json(path.read_text()) == {"loss": None, "epochs": [{"loss": None}, [1.5, None]], "n": 3}


def test_cnm_run_metrics_without_ground_truth_are_null(tiny_model, archive, tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", [{"video": "v0", "query": "person sits"}])
    metrics = tmp_path / "metrics.json"
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries,
                                    "-o", tmp_path / "pred.jsonl", "--metrics", metrics))
    assert code == 0, err
    written = strict_json(metrics.read_text())
    assert [written[name] for name in METRIC_NAMES] == [None] * len(METRIC_NAMES) and written["predicted"] == 1
    assert "1 queries: 1 predicted" in err and "nan" not in err.lower()
