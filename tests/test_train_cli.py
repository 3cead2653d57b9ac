"""cnm-train end to end on tiny data: training writes the original's files; --eval runs the original checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from test_train import tiny_config, write_tiny_dataset  # noqa: E402

from cnm_runtime.spans import METRIC_NAMES, grounding_metrics, temporal_iou  # noqa: E402
from cnm_train.cli import main  # noqa: E402


@pytest.fixture
def trained(tmp_path):
    """One CLI training run on a tiny dataset: (its output folder, the CLI result, the dataset paths)."""
    paths = write_tiny_dataset(tmp_path)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tiny_config(paths, tmp_path / "checkpoints", epochs=5)))
    result = CliRunner().invoke(main, ["--config-path", str(config_path), "--tag", "t", "--epochs", "2",
                                       "--num-workers", "1", "--threads", "1", "--seed", "5"])
    return tmp_path / "checkpoints" / "t", result, paths


def test_training_writes_checkpoints_and_metrics(trained):
    out, result, _ = trained
    assert result.exit_code == 0, result.output
    assert {"model-0.pt", "model-1.pt", "model-best.pt", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [0, 1]  # --epochs overrides max_num_epochs
    assert metrics["best_epoch"] in (0, 1) and metrics["validation"]["source"] == "train_data holdout"
    for split in ("val", "test"):
        assert set(metrics["best"][split]) == set(METRIC_NAMES) == set(metrics["prior"][split])
    best = metrics["epochs"][metrics["best_epoch"]]
    assert best["val"]["mIoU"] == max(r["val"]["mIoU"] for r in metrics["epochs"])
    assert metrics["epochs"][0]["seconds_per_batch"] > 0
    assert "prior (mean training span), test" in result.output


def test_our_checkpoint_evaluates_and_exports(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    from cnm_export.export import export_checkpoint

    out, _, paths = trained
    result = CliRunner().invoke(main, ["--eval", "--resume", str(out / "model-best.pt"), "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out.parent / "base" / "eval-model-best.json").read_text())
    assert set(evaluation["test"]) == set(METRIC_NAMES) and evaluation["test_queries"] == 4
    export_checkpoint(out / "model-best.pt", paths["glove"], tmp_path / "ours.onnx")
    onnx.checker.check_model(str(tmp_path / "ours.onnx"))


def test_missing_data_is_named(tmp_path):
    missing = f"dataset.vocab_path={tmp_path}/no.pkl"
    result = CliRunner().invoke(main, ["--config-path", "charades_i3d", "--set", missing])
    assert result.exit_code == 1
    assert "dataset.vocab_path" in result.output and "no.pkl does not exist" in result.output


def test_unknown_override_is_refused():
    result = CliRunner().invoke(main, ["--config-path", "charades_i3d", "--set", "dataset.featurepath=x"])
    assert result.exit_code == 2 and "dataset.featurepath" in result.output


def test_eval_runs_the_original_checkpoint(golden_dir, golden_queries, tmp_path):
    """The reference code's checkpoint on the golden features: metrics equal those of its own outputs."""
    test_json = tmp_path / "golden.json"
    test_json.write_text(json.dumps([[q["video"], q["duration"], q["timestamps"], q["query"]] for q in golden_queries]))
    result = CliRunner().invoke(main, [
        "--eval", "--resume", str(golden_dir / "model-best.pt"), "--num-workers", "0",
        "--set", f"dataset.feature_path={golden_dir / 'features.hdf5'}",
        "--set", f"dataset.vocab_path={golden_dir / 'glove.pkl'}",
        "--set", f"dataset.test_data={test_json}", "--set", f"dataset.train_data={test_json}",
        "--set", f"train.model_saved_path={tmp_path / 'eval'}",
    ])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "base" / "eval-model-best.json").read_text())
    expected = np.load(golden_dir / "expected.npz")
    truth = np.array([q["timestamps"] for q in golden_queries]) / np.array([[q["duration"]] for q in golden_queries])
    reference = grounding_metrics(temporal_iou(expected["props"], truth))
    assert evaluation["num_updates"] == 4150 and evaluation["test_queries"] == len(golden_queries)
    for name in METRIC_NAMES:
        assert evaluation["test"][name] == pytest.approx(reference[name], abs=1e-6)
