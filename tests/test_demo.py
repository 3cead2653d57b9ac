"""cnm-demo end to end at tiny sizes: it leaves what it lists, no more, and cnm-run agrees with PyTorch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from cnm_export.demo import left_behind, run_demo  # noqa: E402


LEFT_BEHIND = ["data/", "demo.json", "errors.jsonl", "eval-model-best.json", "metrics-onnx.json", "metrics.json",
               "model-best.onnx", "model-best.pt", "predictions.jsonl", "predictions.jsonl.run.json", "report.md"]


def test_tiny_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, seed=1, epochs=2, num_videos=12, hidden_size=16)
    assert left_behind(out) == LEFT_BEHIND  # the per-epoch checkpoints are gone
    for name in ("data/features.hdf5", "data/queries.jsonl", "data/glove.pkl"):
        assert (out / name).is_file(), name
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    queries = (out / "data" / "queries.jsonl").read_text().splitlines()
    assert len(predictions) == len(queries) == summary["pytorch"]["test_queries"]
    assert summary["onnx"]["errors"] == 0
    for metric in ("IoU@0.1", "IoU@0.3", "IoU@0.5", "IoU@0.7", "IoU@0.9", "mIoU"):
        assert summary["onnx"][metric] == pytest.approx(summary["pytorch"]["test"][metric], abs=1e-6), metric
    report = (out / "report.md").read_text()
    assert "prior" in report and "PyTorch" in report
    assert f"cnm-run on the ONNX file ({summary['onnx']['provider']})" in report
    assert report.startswith("Seed 1 ") and summary["seed"] == 1
    assert "queries/s" not in report and "python -m benchmarks.run" in report


def test_go_on_by_hand_names_a_command_the_shell_finds(monkeypatch):
    """After the set-up commands the virtual environment is not active: the line the demo prints must run as
    printed, so it names this installation's cnm-run by its path unless the shell finds that very one."""
    from cnm_export.demo import command_path

    installed = Path(sys.executable).parent / "cnm-run"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_path("cnm-run") == str(installed.resolve())
    monkeypatch.setenv("PATH", f"{installed.parent}:/usr/bin")
    assert command_path("cnm-run") == "cnm-run"
