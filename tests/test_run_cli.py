"""The cnm-run command end to end, in fresh processes where torch cannot be imported."""
from __future__ import annotations

import json
import os
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
# Ctrl-C as a terminal delivers it: a shell starts background jobs with SIGINT ignored, and Python then
# never raises KeyboardInterrupt, so a test suite run in the background would see Ctrl-C do nothing.
CNM_RUN_WITHOUT_TORCH = BLOCK_TORCH + textwrap.dedent(
    """
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
                                      golden_dir / "queries.jsonl", "--feeders", "1", "--batch-size", "16",
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


# Every kind of bad line, with the code it must produce. Only a line that is a valid query claims its qid.
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
                                      "--metrics", tmp_path / "metrics.json", "--batch-size", 4, "--feeders", 1))
    assert code == 1, err  # more errors than --max-errors 0
    assert "Traceback" not in err and f"{len(BAD_LINES)} errors" in err

    clean, _ = ground_all(Grounder(tiny_model, batch_size=4), archive, good)
    assert read_lines(tmp_path / "pred.jsonl") == clean
    errors = read_lines(tmp_path / "errors.jsonl")
    assert [(e["line"], e["code"]) for e in errors] == expected_errors
    assert [e["qid"] for e in errors[:5]] == [None, None, None, None, "b_unknown"]  # only valid queries claim
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
                                      "--max-errors", 1))
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

    ctrl_c = cnm_run(*run, "--feeders", 1)  # Ctrl-C: the run stops cleanly, its feed process with it
    _wait_for_lines(pred, 20, ctrl_c)
    ctrl_c.send_signal(signal.SIGINT)
    code, _, err = finished(ctrl_c)
    assert code == 130 and "--resume" in err and "Traceback" not in err
    after_ctrl_c = len(read_lines(pred))

    crash = cnm_run(*run, "--resume")  # a crash: killed outright
    _wait_for_lines(pred, after_ctrl_c + 20, crash)
    crash.kill()
    finished(crash)
    whole = pred.read_bytes()
    assert after_ctrl_c < whole.count(b"\n") < len(records)
    pred.write_bytes(whole + b'{"qid": "q5')  # as if killed halfway through a line

    code, _, err = finished(cnm_run(*run, "--resume", "--metrics", tmp_path / "metrics.json"))
    assert code == 0, err
    clean, _ = ground_all(Grounder(tiny_model, batch_size=1), archive, records)
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
    assert code == 2 and "model-best.onnx does not exist" in err and "Traceback" not in err


def _feed_processes(pid: int) -> list[int]:
    """The feed processes of the cnm-run ``pid``: its children started by multiprocessing's spawn."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def test_feed_processes_write_the_same_bytes_as_one_thread(tiny_model, archive, tmp_path):
    records = good_records(40) + [{"video": "nan", "query": "person sits"}, {"qid": "q1", "video": "v0", "query": "person sits"}]
    queries = write_lines(tmp_path / "q.jsonl", records)
    outputs = {}
    for feeders in (0, 2):
        pred, errors = tmp_path / f"pred{feeders}.jsonl", tmp_path / f"errors{feeders}.jsonl"
        code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries, "-o", pred,
                                        "--errors", errors, "--batch-size", 4, "--feeders", feeders,
                                        "--max-errors", 2))
        assert code == 0, err
        outputs[feeders] = (pred.read_bytes(), errors.read_bytes())
    assert outputs[0] == outputs[2] and outputs[0][0].count(b"\n") == 40
    assert [e["code"] for e in read_lines(tmp_path / "errors0.jsonl")] == ["non_finite", "duplicate_qid"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the feed processes through /proc")
def test_a_dead_feed_process_is_a_clear_error_and_resume_completes(tiny_model, archive, tmp_path):
    records = good_records(600)
    queries = write_lines(tmp_path / "q.jsonl", records)
    pred = tmp_path / "pred.jsonl"
    run = ("--model", tiny_model, "--features", archive, "--queries", queries, "-o", pred, "--batch-size", 2)

    process = cnm_run(*run, "--feeders", 2)
    _wait_for_lines(pred, 20, process)
    feeders = _feed_processes(process.pid)
    assert len(feeders) == 2
    os.kill(feeders[0], signal.SIGKILL)  # as the out-of-memory killer would
    code, _, err = finished(process)
    assert code == 70 and "a feed process died" in err and "--resume" in err and "Traceback" not in err
    written = len(read_lines(pred))
    assert 20 <= written < len(records)

    code, _, err = finished(cnm_run(*run, "--feeders", 2, "--resume", "--metrics", tmp_path / "metrics.json"))
    assert code == 0, err
    clean, _ = ground_all(Grounder(tiny_model, batch_size=2), archive, records)
    assert read_lines(pred) == clean  # nothing lost, nothing twice
    assert json.loads((tmp_path / "metrics.json").read_text())["resumed"] == written


def write_linked_archive(folder: Path) -> Path:
    """``folder/inside/archive.hdf5`` with a video ``near`` and ``linked``, an external link to the same values
    in ``folder/outside``."""
    import h5py

    (folder / "inside").mkdir()
    (folder / "outside").mkdir()
    features = np.maximum(np.random.default_rng(0).standard_normal((30, 1024)), 0).astype(np.float32)
    with h5py.File(folder / "outside" / "far.h5", "w") as far:
        far["v"] = features
    archive = folder / "inside" / "archive.hdf5"
    with h5py.File(archive, "w") as out:
        out["near"] = features
        out["linked"] = h5py.ExternalLink("../outside/far.h5", "v")
    return archive


def test_links_outside_the_archive_folder_are_refused_on_request(tiny_model, tmp_path):
    archive = write_linked_archive(tmp_path)
    queries = write_lines(tmp_path / "q.jsonl", [{"video": video, "query": "person sits"} for video in ("near", "linked")])
    run = ("--model", tiny_model, "--features", archive, "--queries", queries, "--errors", tmp_path / "errors.jsonl")

    code, out, err = finished(cnm_run(*run, "--max-errors", 0))  # followed by default: the same values as near
    near, linked = map(json.loads, out.splitlines())
    assert code == 0 and (near["center"], near["width"]) == (linked["center"], linked["width"])
    code, out, err = finished(cnm_run(*run, "--refuse-outside-links", "--max-errors", 1))
    assert code == 0 and len(out.splitlines()) == 1
    (error,) = read_lines(tmp_path / "errors.jsonl")
    assert (error["line"], error["code"]) == (2, "link_outside_archive") and "'linked'" in error["message"]


def test_tensorrt_asked_for_where_it_cannot_run_is_a_clear_error(tiny_model, archive, tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", [{"video": "v0", "query": WORDS[0]}])
    code, out, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries,
                                      "--provider", "tensorrt"))
    if code == 0:
        pytest.skip("TensorRT runs here")
    assert code == 2 and "--provider tensorrt" in err and "Traceback" not in err and out == ""
