"""The cnm-run command end to end, in fresh processes where torch cannot be imported."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BLOCK_TORCH, REPO
from test_run import WORDS, archive, good_records, ground_all, tiny_model, write_lines  # noqa: F401 (fixtures)
from cnm_runtime.grounder import Grounder

# cnm-run in a process where any import of torch fails
CNM_RUN_WITHOUT_TORCH = BLOCK_TORCH + textwrap.dedent(
    """
    from cnm_runtime.cli import main
    main(prog_name="cnm-run")
    """
)


def cnm_run(*args, cwd: Path = REPO, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CNM_RUN_WITHOUT_TORCH, *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_golden_reproduced_without_torch(golden_dir, tmp_path):
    """The golden checkpoint, exported, run from the model's folder with the default --model."""
    pytest.importorskip("torch")
    from cnm_export.export import export_checkpoint

    export_checkpoint(golden_dir / "model-best.pt", golden_dir / "glove.pkl", tmp_path / "model-best.onnx")
    code, out, err = finished(cnm_run("--features", golden_dir / "features.hdf5", "--queries",
                                      golden_dir / "queries.jsonl", "--workers", "1", "--batch-size", "16",
                                      "--metrics", tmp_path / "metrics.json", cwd=tmp_path))
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    expected = np.load(golden_dir / "expected.npz")
    queries = len(expected["center"])
    assert [r["qid"] for r in records] == list(range(queries))
    np.testing.assert_allclose([r["center"] for r in records], expected["center"], atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["width"] for r in records], expected["width"], atol=1e-5, rtol=0)
    spans = np.array([np.array(r["pred_relevant_windows"][0][:2]) / r["duration"] for r in records])
    np.testing.assert_allclose(spans, expected["props"], atol=1e-5, rtol=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["predicted"], metrics["with_ground_truth"], metrics["errors"]) == (queries, queries, 0)
    assert metrics["provider"] in err and "queries/s" in err


# Every kind of bad line, with the code it must produce. Lines without a usable qid get their line number.
BAD_LINES = [
    ('{"video": "v0", "query": "person', "malformed_json"),
    ('[1, 2]', "not_an_object"),
    ({"qid": "b_no_video", "query": "person sits"}, "missing_field"),
    ({"qid": "b_no_query", "video": "v0"}, "missing_field"),
    ({"qid": "b_unknown", "video": "nope", "query": "person sits"}, "unknown_video"),
    ({"qid": "b_empty", "video": "v0", "query": "   "}, "empty_query"),
    ({"qid": "b_oov", "video": "v0", "query": "zebra giraffe!"}, "out_of_vocabulary"),
    ({"qid": "b_nan", "video": "nan", "query": "person sits"}, "non_finite"),
    ({"qid": "b_wide", "video": "wide", "query": "person sits"}, "wrong_width"),
    ({"qid": "b_empty_video", "video": "empty", "query": "person sits"}, "no_rows"),
    ({"qid": "b_flat", "video": "flat", "query": "person sits"}, "not_2d"),
    ({"qid": "b_zero_duration", "video": "v0", "query": "person sits", "duration": 0}, "bad_duration"),
    ({"qid": "b_archive_duration", "video": "negdur", "query": "person sits"}, "bad_duration"),
    ({"qid": "b_timestamps", "video": "v0", "query": "person sits", "timestamps": [4, 1]}, "bad_field"),
]


def test_bad_lines_are_recorded_and_good_lines_unchanged(tiny_model, archive, tmp_path):
    good = good_records(14)
    lines, expected_errors = [], []
    for record, (bad, code) in zip(good, BAD_LINES):  # good and bad lines alternate
        lines += [record, bad]
        expected_errors.append((len(lines), code))
    queries = write_lines(tmp_path / "mixed.jsonl", lines)
    code, out, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries,
                                      "-o", tmp_path / "pred.jsonl", "--errors", tmp_path / "errors.jsonl",
                                      "--metrics", tmp_path / "metrics.json", "--batch-size", 4, "--workers", 1))
    assert code == 1, err  # more errors than --max-errors 0
    assert "Traceback" not in err and f"{len(BAD_LINES)} errors" in err

    clean, _ = ground_all(Grounder(tiny_model, batch_size=4, workers=0), archive, good)
    assert read_lines(tmp_path / "pred.jsonl") == clean
    errors = read_lines(tmp_path / "errors.jsonl")
    assert [(e["line"], e["code"]) for e in errors] == expected_errors
    assert [e["qid"] for e in errors[:2]] == [1, 3]  # malformed lines: their 0-based line number
    assert all(e["message"] for e in errors)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["queries"], metrics["predicted"], metrics["errors"]) == (28, 14, 14)
    assert metrics["errors_by_code"]["missing_field"] == 2 and metrics["errors_by_code"]["bad_duration"] == 2
    assert metrics["dropped_tokens"] == sum(len(r["dropped_words"]) for r in clean) == 14 + 3  # "." and "zebra"
    assert metrics["truncated_queries"] == 1


def test_max_errors_sets_the_exit_status(tiny_model, archive, tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", [{"video": "v0", "query": "person sits"},
                                                 {"video": "nope", "query": "person sits"}])
    code, out, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries,
                                      "--max-errors", 1, "--workers", 0))
    assert code == 0, err
    assert len(out.splitlines()) == 1 and "unknown_video" in err  # without --errors, errors are logged


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen) -> None:
    while process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.005)
    pytest.fail(f"the run ended before writing {count} lines: {process.stderr.read()}")


def test_interrupted_and_killed_runs_resume_to_the_uninterrupted_result(tiny_model, archive, tmp_path):
    records = good_records(600)
    queries = write_lines(tmp_path / "q.jsonl", records)
    pred = tmp_path / "pred.jsonl"
    run = ("--model", tiny_model, "--features", archive, "--queries", queries, "-o", pred, "--batch-size", 1)

    ctrl_c = cnm_run(*run, "--workers", 1)  # Ctrl-C: the run stops cleanly, its workers with it
    _wait_for_lines(pred, 20, ctrl_c)
    ctrl_c.send_signal(signal.SIGINT)
    code, _, err = finished(ctrl_c)
    assert code == 130 and "--resume" in err and "Traceback" not in err
    after_ctrl_c = len(read_lines(pred))

    crash = cnm_run(*run, "--workers", 0, "--resume")  # a crash: killed outright
    _wait_for_lines(pred, after_ctrl_c + 20, crash)
    crash.kill()
    finished(crash)
    whole = pred.read_bytes()
    assert after_ctrl_c < whole.count(b"\n") < len(records)
    pred.write_bytes(whole + b'{"qid": "q5')  # as if killed halfway through a line

    code, _, err = finished(cnm_run(*run, "--workers", 0, "--resume", "--metrics", tmp_path / "metrics.json"))
    assert code == 0, err
    clean, _ = ground_all(Grounder(tiny_model, batch_size=1, workers=0), archive, records)
    assert read_lines(pred) == clean
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["predicted"] == len(records) and 0 < metrics["resumed"] < len(records)


def test_resume_needs_an_output_file(tiny_model, archive, tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", [{"video": "v0", "query": WORDS[0]}])
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries, "--resume"))
    assert code == 2 and "--resume needs -o" in err


def test_missing_model_is_a_clear_error(archive, tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", [{"video": "v0", "query": WORDS[0]}])
    code, _, err = finished(cnm_run("--features", archive, "--queries", queries, cwd=tmp_path))
    assert code == 1 and "model-best.onnx does not exist" in err and "Traceback" not in err
