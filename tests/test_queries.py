"""Queries in: JSON lines or one annotation list, every value checked and never coerced, each entry one query or
one error record, a qid claimed only by a valid query; and every number written finite."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnm_runtime import queries as queries_module
from cnm_runtime.annotations import load_annotations
from cnm_runtime.errors import InputError
from cnm_runtime.fields import Annotation
from cnm_runtime.grounder import Grounder
from cnm_runtime.outcomes import QueryError
from cnm_runtime.queries import BOM, MAX_LINE_BYTES, Query, count_queries, read_queries
from cnm_runtime.report import RunTally, summary_lines
from cnm_runtime.run_files import write_json_atomic
from cnm_runtime.spans import METRIC_NAMES, grounding_metrics, temporal_iou
from cnm_runtime.text import Vocabulary
from test_run import archive, good_records, ground_all, tiny_model, write_lines  # noqa: F401 (fixtures)
from test_run_cli import cnm_run, finished, read_lines


def strict_json(text: str):
    """``text`` as JSON that holds no NaN or Infinity (Python's reader would take them)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} written"))


# --- JSON lines or one annotation list ---------------------------------------------------------------

def test_json_lines_default_qids_and_fields(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [
        {"video": "a", "query": "person opens the door"},
        "",
        {"video": "b", "query": "x", "qid": "mine", "duration": 12, "timestamps": [1, 2.5]},
    ])
    first, second = read_queries(path)
    assert (first.qid, first.line, first.duration, first.timestamps) == (0, 1, None, None)
    assert (second.qid, second.line, second.duration, second.timestamps) == ("mine", 3, 12.0, (1.0, 2.5))
    assert count_queries(path) == 2


def test_a_json_lines_file_whose_first_line_is_an_array_loses_that_line_only(tmp_path):
    records = good_records(64)
    path = write_lines(tmp_path / "q.jsonl", ['["v0", 30, [1, 4], "person sits."]', *records])
    first, *rest = read_queries(path)
    assert (first.code, first.line, first.qid) == ("not_an_object", 1, None) and "not one JSON array" in first.message
    assert [query.qid for query in rest] == [record["qid"] for record in records]
    assert count_queries(path) == 65


def test_an_annotation_list_is_one_array_however_it_is_laid_out(tmp_path):
    entries = [["v1", 30.0, [1.0, 4.0], "person opens the door."], ["v2", 12.5, [0, 3], "person sits."]]
    path = tmp_path / "test.json"
    path.write_bytes(BOM + b"\n  \n" + json.dumps(entries, indent=2).encode() + b"\n")
    assert list(read_queries(path)) == [Query(1, 0, "v1", "person opens the door.", 30.0, (1.0, 4.0)),
                                        Query(2, 1, "v2", "person sits.", 12.5, (0.0, 3.0))]


def test_a_broken_annotation_list_is_read_line_by_line_and_its_first_error_says_where_it_breaks(tmp_path):
    text = json.dumps([["v1", 30, [1, 4], "person sits."]] * 3, indent=2).replace("30", "3O", 1)
    path = tmp_path / "test.json"
    path.write_text(text)
    results = list(read_queries(path))
    assert len(results) == count_queries(path) == len(text.splitlines())
    assert all(isinstance(result, QueryError) and result.qid is None for result in results)
    assert results[0].message.endswith("not one JSON array (as a whole: not valid JSON (Expecting ',' delimiter: "
                                       "line 4 column 6))")


GOOD_LINES = [json.dumps(record) for record in good_records(3)]
LIST = [["v1", 30.0, [1.0, 4.0], "person sits."]] * 40


@pytest.mark.parametrize("text, codes", [
    # its first line ends the array, or is no JSON: the file cannot be one array, every line is read
    ("\n".join(['[1, 2]', *GOOD_LINES]), ["not_an_object", None, None, None]),
    ("\n".join(['[1, 2 x', *GOOD_LINES]), ["malformed_json", None, None, None]),
    ("\n".join(['["v1', *GOOD_LINES]), ["malformed_json", None, None, None]),  # no JSON string spans lines
    # the array is still open where the first line ends: too large to tell, so too large a list
    (json.dumps(LIST, indent=2), ["list_too_large"]),
    (json.dumps(LIST), ["list_too_large"]),
    ("\n".join(['[1,', *GOOD_LINES]), ["list_too_large"]),
])
def test_a_file_over_the_list_cap_is_json_lines_unless_it_may_be_one_array(tmp_path, monkeypatch, text, codes):
    path = tmp_path / "q.jsonl"
    path.write_text(text + "\n")
    monkeypatch.setattr(queries_module, "MAX_LIST_BYTES", len(text) // 2)
    results = list(read_queries(path))
    assert [getattr(result, "code", None) for result in results] == codes and count_queries(path) == len(codes)
    assert all(result.qid is None for result in results if isinstance(result, QueryError))


def test_an_annotation_list_over_the_cap_is_one_error_record(tmp_path, monkeypatch):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([["v1", 30, [1, 4], "person sits."]] * 10))
    monkeypatch.setattr(queries_module, "MAX_LIST_BYTES", path.stat().st_size - 1)
    (result,) = read_queries(path)
    assert (result.code, result.qid) == ("list_too_large", None) and count_queries(path) == 1


# --- every value checked, nothing coerced ------------------------------------------------------------

@pytest.mark.parametrize("line, code", [
    ('{"video": "a", "query": ', "malformed_json"),
    ('["a", "b"]', "not_an_object"),
    ('{"query": "person"}', "missing_field"),
    ('{"video": "a"}', "missing_field"),
    ('{"video": 3, "query": "person"}', "bad_field"),
    ('{"video": "", "query": "person"}', "bad_field"),
    ('{"video": "a", "query": ["person"]}', "bad_field"),
    ('{"video": "a", "query": null}', "bad_field"),
    ('{"video": "a", "query": "person", "qid": 1.5}', "bad_field"),
    ('{"video": "a", "query": "person", "duration": "long"}', "bad_field"),
    ('{"video": "a", "query": "person", "duration": "30"}', "bad_field"),
    ('{"video": "a", "query": "person", "duration": true}', "bad_field"),
    ('{"video": "a", "query": "person", "duration": [30]}', "bad_field"),
    ('{"video": "a", "query": "person", "duration": 0}', "bad_duration"),
    ('{"video": "a", "query": "person", "duration": -4.0}', "bad_duration"),
    ('{"video": "a", "query": "person", "duration": 1e309}', "bad_duration"),
    ('{"video": "a", "query": "person", "timestamps": [3]}', "bad_field"),
    ('{"video": "a", "query": "person", "timestamps": [5, 2]}', "bad_field"),
    ('{"video": "a", "query": "person", "timestamps": [-1, 2]}', "bad_field"),
    ('{"video": "a", "query": "person", "timestamps": ["1", 2]}', "bad_field"),
    ('{"video": "a", "query": "person", "timestamps": [1, 1e309]}', "bad_field"),
])
def test_bad_lines_become_error_records(tmp_path, line, code):
    path = write_lines(tmp_path / "q.jsonl", [{"video": "a", "query": "fine"}, line])
    good, bad = read_queries(path)
    assert isinstance(good, Query) and isinstance(bad, QueryError)
    assert (bad.code, bad.line, bad.qid) == (code, 2, None)
    assert bad.message.startswith("line 2: ")


def test_original_annotation_list(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([["3MSZA", 30.96, [24.3, 30.4], "person turn a light on."], ["X", 8, "broken"],
                                ["Y", 0, [1, 2], "person sits."], ["Z", 10, [4, 12.5], "person sits."]]))
    first, broken, zero, past_the_end = read_queries(path)
    assert first == Query(1, 0, "3MSZA", "person turn a light on.", 30.96, (24.3, 30.4))
    assert (broken.qid, broken.code) == (None, "malformed_entry")
    assert (zero.qid, zero.code) == (None, "bad_duration")
    # an end past the duration, as real ActivityNet Captions annotations have
    assert past_the_end == Query(4, 3, "Z", "person sits.", 10.0, (4.0, 12.5))
    assert count_queries(path) == 4


@pytest.mark.parametrize("entry, code", [
    ('["v1", 30, [1, 4], ["person", "sits"]]', "bad_field"),
    ('["v1", 30, [1, 4], {"person": "sits"}]', "bad_field"),
    ('["v1", 30, [1, 4], 7]', "bad_field"),
    ('["v1", 30, [1, 4], null]', "bad_field"),
    ('[7, 30, [1, 4], "person sits."]', "bad_field"),
    ('["", 30, [1, 4], "person sits."]', "bad_field"),
    ('["v1", "30", [1, 4], "person sits."]', "bad_field"),
    ('["v1", [30], [1, 4], "person sits."]', "bad_field"),
    ('["v1", true, [1, 4], "person sits."]', "bad_field"),
    ('["v1", 30, ["1", 4], "person sits."]', "bad_field"),
    ('["v1", 30, [1, false], "person sits."]', "bad_field"),
    ('["v1", 30, [-1, 4], "person sits."]', "bad_field"),
    ('["v1", 30, [4, 1], "person sits."]', "bad_field"),
    ('["v1", 30, [1, 1e999], "person sits."]', "bad_field"),
    ('["v1", 0, [1, 4], "person sits."]', "bad_duration"),
    ('["v1", 1e999, [1, 4], "person sits."]', "bad_duration"),
    ('["v1", 30, [1, 4, 5], "person sits."]', "malformed_entry"),
    ('["v1", 30, 1, "person sits."]', "malformed_entry"),
    ('["v1", 30, [1, 4]]', "malformed_entry"),
    ('{"video": "v1", "query": "person sits."}', "malformed_entry"),
    ('"person sits."', "malformed_entry"),
])
def test_annotation_entries_are_checked_never_coerced(tmp_path, entry, code):
    path = tmp_path / "test.json"
    path.write_text(f'[["v1", 30, [1, 4], "person sits."], {entry}]')
    good, bad = read_queries(path)
    assert good == Query(1, 0, "v1", "person sits.", 30.0, (1.0, 4.0))
    assert (bad.code, bad.line, bad.qid) == (code, 2, None) and bad.message.startswith("entry 1: ")
    with pytest.raises(InputError, match="entry 1: ") as raised:  # training and the dataset tools read the same
        load_annotations(path)
    assert raised.value.code == code and str(path) in raised.value.message


@pytest.mark.parametrize("name", ["charades/train.json", "charades/test.json", "activitynet/val_data.json",
                                  "activitynet/test_data.json"])
def test_the_real_annotation_files_load_as_they_are(charades_dir, name):
    path = charades_dir.parent / name
    raw = json.loads(path.read_text())
    assert load_annotations(path) == [Annotation(video, duration, start, end, sentence)
                                      for video, duration, (start, end), sentence in raw]


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


# --- a qid is claimed by a valid query only ------------------------------------------------------------

def test_a_line_that_is_no_query_claims_no_qid(tiny_model, archive, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\n".join([
        b'{"video": "v0", "query": ',  # malformed: its default qid would be 0
        b'{"qid": "a", "video": 3, "query": "person sits"}',  # names qid "a", but is no query
        b"x" * (MAX_LINE_BYTES + 1),  # too long: its default qid would be 2
        b'{"qid": 0, "video": "v0", "query": "person sits"}',
        b'{"qid": "a", "video": "v1", "query": "person sits"}',
        b'{"qid": 2, "video": "v2", "query": "person sits"}',
        b'{"qid": "a", "video": "v2", "query": "person sits"}',  # a valid query's qid again
    ]) + b"\n")
    predictions, errors = ground_all(Grounder(tiny_model, batch_size=2), archive, path)
    assert [p["qid"] for p in predictions] == [0, "a", 2]
    assert [(e.line, e.qid, e.code) for e in errors] == [
        (1, None, "malformed_json"), (2, None, "bad_field"), (3, None, "line_too_long"), (7, "a", "duplicate_qid")]


# --- sentences -----------------------------------------------------------------------------------------

def test_a_sentence_is_out_of_vocabulary_unless_a_word_of_it_is_known():
    vocabulary = Vocabulary(["person", "sits", ".", ",", "'s", "42"])
    for sentence in ("they sit down.", "they , sit down .", "zebras!"):
        with pytest.raises(InputError) as raised:
            vocabulary.encode(sentence, name="line 3")
        assert raised.value.code == "out_of_vocabulary" and raised.value.message.startswith("query line 3: ")
    # a sentence with a known word keeps its known punctuation, as the original does
    assert vocabulary.encode("person sits, then stands.").words == ("person", "sits", ",", ".")
    assert vocabulary.encode("it's 42.").words == ("'s", "42", ".")  # a contraction and a number are words


@pytest.mark.parametrize("sentence", [b"person sits", None, 3, ["person", "sits"]])
def test_a_sentence_that_is_not_a_str_is_a_bad_field(tiny_model, sentence):
    with pytest.raises(InputError) as raised:
        Vocabulary(["person", "sits"]).encode(sentence)
    assert raised.value.code == "bad_field" and type(sentence).__name__ in raised.value.message
    grounder = Grounder(tiny_model)
    clips = grounder.encode_video(np.ones((10, grounder.spec.frame_dim), np.float32))
    with pytest.raises(InputError) as raised:
        grounder.predict(clips, ["person sits", sentence], duration=10.0)
    assert raised.value.code == "bad_field"


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


def test_a_queries_file_is_read_once_for_its_digest_count_and_list(tmp_path):
    """scan() reads the bytes once for the digest and the count; an annotation list parsed then is kept, so
    grounding does not read the file again (JSON lines are streamed again: memory stays bounded)."""
    import hashlib

    from cnm_runtime.queries import QueriesFile

    path = tmp_path / "list.json"
    path.write_text(json.dumps([["v1", 30, [1, 4], "person sits."], ["v2", 20, [2, 3], "a door opens."]]))
    queries = QueriesFile(path)
    assert queries.scan() == (2, hashlib.sha256(path.read_bytes()).hexdigest())
    path.unlink()
    assert [entry.content[0] for entry in queries.entries()] == ["v1", "v2"]


def test_a_pipe_of_queries_is_grounded_as_it_streams(tiny_model, archive, tmp_path):
    import os
    import threading

    records = good_records(6)
    fifo = tmp_path / "q.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("".join(json.dumps(r) + "\n" for r in records)))
    writer.start()
    code, out, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", fifo))
    writer.join()
    assert code == 0, err
    assert [json.loads(line)["qid"] for line in out.splitlines()] == [r["qid"] for r in records]
