"""cnm-run under a careless operator: outputs that alias inputs or one another, two runs on one output, a
resume of another run's output, a full disk, signals at any moment. Nothing written is ever lost or mixed."""
from __future__ import annotations

import json
import os
import resource
import signal
import time
from pathlib import Path

import pytest

from test_run import archive, good_records, ground_all, tiny_model, write_lines  # noqa: F401 (fixtures)
from test_run_cli import cnm_run, finished, read_lines
from cnm_runtime.grounder import Grounder
from cnm_runtime.run_files import LockedFile


def _run(tiny_model, archive, queries, *more, **popen):
    return cnm_run("--model", tiny_model, "--features", archive, "--queries", queries, *more, **popen)


@pytest.fixture
def queries(tmp_path) -> Path:
    return write_lines(tmp_path / "q.jsonl", good_records(8))


@pytest.mark.parametrize("outputs, flags", [
    (lambda d, q, a, m: ["-o", q], ("-o", "--queries")),
    (lambda d, q, a, m: ["-o", a], ("-o", "--features")),
    (lambda d, q, a, m: ["-o", m], ("-o", "--model")),
    (lambda d, q, a, m: ["-o", d / "p.jsonl", "--metrics", d / "p.jsonl"], ("--metrics", "-o")),
    (lambda d, q, a, m: ["-o", d / "p.jsonl", "--errors", d / "p.jsonl"], ("--errors", "-o")),
    (lambda d, q, a, m: ["-o", d / "link.jsonl"], ("-o", "--queries")),  # a symbolic link to the queries
    (lambda d, q, a, m: ["--errors", d / "hard.jsonl"], ("--errors", "--queries")),  # a hard link to them
])
def test_an_output_that_is_an_input_or_another_output_is_refused_untouched(tiny_model, archive, queries, tmp_path,
                                                                           outputs, flags):
    (tmp_path / "link.jsonl").symlink_to(queries)
    os.link(queries, tmp_path / "hard.jsonl")
    before = {path: path.read_bytes() for path in (queries, archive, tiny_model)}
    code, out, err = finished(_run(tiny_model, archive, queries, *outputs(tmp_path, queries, archive, tiny_model)))
    assert code == 2 and f"{flags[0]} " in err and f"same file as {flags[1]}" in err and "Traceback" not in err
    assert {path: path.read_bytes() for path in before} == before and not (tmp_path / "p.jsonl").exists()


def test_a_second_run_on_an_output_in_use_fails_at_once(tiny_model, archive, tmp_path):
    records = good_records(400)
    queries = write_lines(tmp_path / "q.jsonl", records)
    pred = tmp_path / "pred.jsonl"
    first = _run(tiny_model, archive, queries, "-o", pred, "--batch-size", 1)
    _wait_for_lines(pred, 5, first)
    first.send_signal(signal.SIGSTOP)  # paused, holding the output
    try:
        for again in (["-o", pred], ["-o", tmp_path / "other.jsonl", "--errors", pred], ["-o", pred, "--resume"],
                      ["-o", tmp_path / "third.jsonl", "--metrics", pred]):
            code, _, err = finished(_run(tiny_model, archive, queries, *again))
            assert code == 2 and "is in use by another run" in err and "Traceback" not in err
    finally:
        first.send_signal(signal.SIGCONT)
    assert finished(first)[0] == 0
    assert read_lines(pred) == ground_all(Grounder(tiny_model, batch_size=1), archive, records)[0]


def test_resume_refuses_the_output_of_other_queries_or_another_model(tiny_model, archive, tmp_path):
    first, other = (write_lines(tmp_path / f"{name}.jsonl", good_records(6, seed=seed))
                    for name, seed in (("a", 1), ("b", 2)))
    pred = tmp_path / "pred.jsonl"
    assert finished(_run(tiny_model, archive, first, "-o", pred))[0] == 0
    written = pred.read_bytes()
    code, _, err = finished(_run(tiny_model, archive, other, "-o", pred, "--resume"))
    assert code == 2 and "other inputs (queries_sha256" in err and "without --resume to start afresh" in err
    onnx = pytest.importorskip("onnx")
    other_model = tmp_path / "other.onnx"  # the same graph in another file, as another export would be
    proto = onnx.load(tiny_model)
    proto.metadata_props.add(key="note", value="another export")
    onnx.save(proto, other_model)
    code, _, err = finished(cnm_run("--model", other_model, "--features", archive, "--queries", first, "-o", pred,
                                    "--resume"))
    assert code == 2 and "model_sha256" in err and pred.read_bytes() == written
    os.remove(tmp_path / "pred.jsonl.run.json")
    code, _, err = finished(_run(tiny_model, archive, first, "-o", pred, "--resume"))
    assert code == 2 and "pred.jsonl.run.json is missing" in err and pred.read_bytes() == written


def test_a_resume_file_that_is_not_a_cnm_run_output_is_one_clear_line(tiny_model, archive, queries, tmp_path):
    pred = tmp_path / "pred.jsonl"
    assert finished(_run(tiny_model, archive, queries, "-o", pred))[0] == 0
    pred.write_text('{"qid": [1, 2], "center": 0.5}\n')
    code, _, err = finished(_run(tiny_model, archive, queries, "-o", pred, "--resume"))
    assert code == 2 and "line 1 is not a prediction record" in err and "Traceback" not in err


def test_outputs_that_cannot_be_written_exit_74_with_one_line(tiny_model, archive, queries, tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    for output in ("/dev/full", tmp_path / "plain" / "pred.jsonl"):
        code, _, err = finished(_run(tiny_model, archive, queries, "-o", output))
        assert code == 74 and str(output) in err and "Traceback" not in err


def _limit_file_size(limit: int):
    """For the child: files past ``limit`` bytes fail to grow (EFBIG), as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_keeps_what_was_written_and_resume_completes_it(tiny_model, archive, tmp_path):
    records = good_records(60)
    queries = write_lines(tmp_path / "q.jsonl", records)
    pred = tmp_path / "pred.jsonl"
    code, _, err = finished(_run(tiny_model, archive, queries, "-o", pred, "--batch-size", 4,
                                 preexec_fn=_limit_file_size(4096)))
    assert code == 74 and f"cannot write {pred}" in err and "--resume" in err and "Traceback" not in err
    written = pred.read_bytes().split(b"\n")[:-1]  # whole lines; a partial last one is cut when resuming
    assert 0 < len(written) < len(records)
    code, _, err = finished(_run(tiny_model, archive, queries, "-o", pred, "--batch-size", 4, "--resume"))
    assert code == 0, err
    assert read_lines(pred) == ground_all(Grounder(tiny_model, batch_size=4), archive, records)[0]


def _wait_for_handlers(process) -> None:
    """Until cnm-run has installed its signal handlers (SIGTERM caught): no program can handle a signal that
    arrives while its interpreter is still starting."""
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)


def _wait_for_lines(path: Path, count: int, process) -> None:
    while process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.005)
    pytest.fail(f"the run ended before writing {count} lines: {process.stderr.read()}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="sees the signal handlers through /proc")
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_any_moment_ends_with_its_status_and_resume_completes(tiny_model, archive, tmp_path, number):
    """Signals at moments from start-up to the middle of grounding: always 128 + the signal, never an abort;
    the metrics of a run stopped while grounding are written; --resume then finishes the very output."""
    records = good_records(1500)
    queries = write_lines(tmp_path / "q.jsonl", records)
    pred, metrics = tmp_path / "pred.jsonl", tmp_path / "metrics.json"
    run = ("-o", pred, "--batch-size", 2, "--metrics", metrics)
    for delay in (0.0, 0.1, 0.4, 1.0, 2.0):
        metrics.unlink(missing_ok=True)
        process = _run(tiny_model, archive, queries, *run, "--resume" if pred.exists() else "--max-errors=0",
                       "--feeders", 1)
        _wait_for_handlers(process)
        time.sleep(delay)
        process.send_signal(number)
        code, _, err = finished(process)
        assert code in (128 + number, 0), err
        assert "Traceback" not in err and "terminate called" not in err and "core dumped" not in err
        if code == 0:
            break
        if "stopped:" in err:  # it was grounding: what it did is counted
            assert json.loads(metrics.read_text())["predicted"] == len(read_lines(pred))
    code, _, err = finished(_run(tiny_model, archive, queries, *run, "--resume"))
    assert code == 0, err
    assert read_lines(pred) == ground_all(Grounder(tiny_model, batch_size=2), archive, records)[0]


def test_the_files_a_run_writes_get_the_usual_permissions(tiny_model, archive, queries, tmp_path):
    """Written whole files (metrics, provenance) as any file open() makes: what the umask leaves of 0666."""
    pred, metrics = tmp_path / "pred.jsonl", tmp_path / "metrics.json"
    code, _, err = finished(_run(tiny_model, archive, queries, "-o", pred, "--metrics", metrics,
                                 preexec_fn=lambda: os.umask(0o022)))
    assert code == 0, err
    for path in (pred, metrics, tmp_path / "pred.jsonl.run.json"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path


def test_an_openvino_irs_weights_are_guarded_as_its_graph_is(archive, queries, tmp_path):
    """An IR is two files (cnm-export --precision openvino-int8): -o naming its .bin is refused as -o naming
    its .xml is, and the digest a resume compares changes with the .bin."""
    from cnm_runtime.provenance import provenance

    graph, weights = tmp_path / "model.xml", tmp_path / "model.bin"
    graph.write_text("<net/>")
    weights.write_bytes(b"weights")
    code, _, err = finished(_run(graph, archive, queries, "-o", weights))
    assert code == 2 and "same file as --model's weights" in err and weights.read_bytes() == b"weights"
    before = provenance("queries digest", graph)["model_sha256"]
    weights.write_bytes(b"other weights")
    assert provenance("queries digest", graph)["model_sha256"] != before
