"""The README is the front door: its Python example runs as written, and its error codes are the code's."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from conftest import REPO
from test_run import export_tiny_model, good_records, write_archive, write_lines
from cnm_runtime.errors import ERROR_CODES

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_python_example_runs_as_written(tmp_path, capsys):
    (example,) = re.findall(r"```python\n(.*?)```", section("Python API"), re.S)
    export_tiny_model(tmp_path)
    (tmp_path / "model.onnx").rename(tmp_path / "model-best.onnx")
    np.save(tmp_path / "video.npy", np.random.default_rng(0).random((40, 1024), dtype=np.float32))
    write_archive(tmp_path / "archive.hdf5")
    write_lines(tmp_path / "queries.jsonl", good_records(3) + [{"video": "missing", "query": "person sits"}])
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(example, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 + 4
    start, end = eval(printed[0].split(") ")[0] + ")")
    assert 0 <= start <= end <= 30.0
    records = [eval(line) for line in printed[2:]]
    assert [record["qid"] for record in records] == ["q0", "q1", "q2", 3] and records[3]["code"] == "unknown_video"


def test_the_error_codes_listed_are_the_codes_the_code_emits():
    listed = section("Formats").split("Codes:", 1)[1].split("What each means", 1)[0]
    assert sorted(re.findall(r"`([a-z_0-9]+)`", listed)) == sorted(ERROR_CODES)


def test_the_exit_statuses_listed_are_cnm_runs():
    from cnm_runtime.cli import EXIT_STATUSES

    listed = README.split("<!-- exit statuses -->", 1)[1].split("<!-- end of exit statuses -->", 1)[0]
    assert sorted(int(status) for status in re.findall(r"`(\d+)`", listed)) == sorted(EXIT_STATUSES)
