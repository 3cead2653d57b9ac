"""cnm-demo: the whole toolkit on a fresh machine, nothing downloaded, in about three minutes on 2 cores.

1. ``cnm-synth`` makes a synthetic archive and queries (the built-in vocabulary, or real Charades-STA
   annotations and GloVe words with ``--charades DIR``);
2. ``cnm-train`` trains a small CNM on it (model selected on the validation split);
3. ``cnm-export`` freezes the selected model to ONNX;
4. ``cnm-run`` grounds the test queries with the engine its ``auto`` picks (ONNX Runtime or OpenVINO);
5. a table compares PyTorch and that engine on accuracy, beside the prior. Speed is left to
   ``python -m benchmarks.run``: a demo-sized run would time mostly start-up.
The per-epoch checkpoints go once the best one is picked; everything else stays in ``--out`` (the demo
lists it) so the user can go on with cnm-run by hand. This module sits in cnm_export, the top layer,
because it drives all three packages.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cnm_export.export import export_checkpoint
from cnm_runtime.annotations import load_annotations
from cnm_runtime.datasets.dataset_files import write_queries
from cnm_runtime.datasets.default import DEFAULT_NUM_VIDEOS, make_default_dataset
from cnm_runtime.datasets.synth import synthesize_archive
from cnm_runtime.report import metric_text
from cnm_runtime.run_files import write_json_atomic
from cnm_runtime.spans import HEADLINE_METRICS
from cnm_runtime.text import load_glove
from cnm_train.config import load_config
from cnm_train.tables import markdown_table
from cnm_train.trainer import RunOptions, epoch_checkpoint, evaluate_checkpoint, fit, state_path

log = logging.getLogger("cnm-demo")


@dataclass(frozen=True)
class DemoData:
    glove: Path
    train: Path
    val: Path | None  # None: the trainer holds out a slice of the training videos
    test: Path
    queries: Path  # the test split as cnm-run reads it
    archive: Path
    vocab_size: int


def make_data(out: Path, num_videos: int, seed: int, frame_dim: int, charades: Path | None) -> DemoData:
    """The built-in synthetic dataset, or synthetic features for the real Charades-STA annotations."""
    data_dir = out / "data"
    if charades is None:
        made = make_default_dataset(data_dir, num_videos=num_videos, seed=seed, frame_dim=frame_dim)
        vocab_size = len(load_glove(made.glove)["counter"])
        return DemoData(made.glove, made.train, made.val, made.test, made.queries, made.archive, vocab_size)
    vocab_size = load_config("charades_i3d")["dataset"]["vocab_size"]
    glove_path, train, test = charades / "glove.pkl", charades / "train.json", charades / "test.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = synthesize_archive(data_dir / "features.hdf5", load_annotations(train) + load_annotations(test),
                                 load_glove(glove_path), frame_dim=frame_dim, seed=seed, vocab_cap=vocab_size,
                                 sources=[train.name, test.name], progress=True).path
    queries = write_queries(data_dir / "queries.jsonl", load_annotations(test))
    return DemoData(glove_path, train, None, test, queries, archive, vocab_size)


def demo_config(data: DemoData, out: Path, epochs: int | None, hidden_size: int | None) -> dict[str, Any]:
    """The shipped ``default`` config (what a bare ``cnm-train`` trains), pointed at the demo's data."""
    config = load_config("default")
    config["dataset"].update(
        feature_path=str(data.archive), vocab_path=str(data.glove), vocab_size=data.vocab_size,
        train_data=str(data.train), test_data=str(data.test), val_data=str(data.val or data.test),
    )
    config["train"]["model_saved_path"] = str(out)
    if epochs is not None:
        config["train"]["max_num_epochs"] = epochs
    if hidden_size is not None:
        config["model"]["config"]["hidden_size"] = hidden_size
        config["model"]["config"]["DualTransformer"]["d_model"] = hidden_size
    return config


def run_cnm_run(out: Path, data: DemoData) -> tuple[list[str], dict[str, Any]]:
    """cnm-run as a user types it (through this interpreter); returns the command and its metrics."""
    command = [sys.executable, "-m", "cnm_runtime.cli", "--model", str(out / "model-best.onnx"),
               "--features", str(data.archive), "--queries", str(data.queries),
               "-o", str(out / "predictions.jsonl"), "--errors", str(out / "errors.jsonl"),
               "--metrics", str(out / "metrics-onnx.json")]
    subprocess.run(command, check=True)
    return command, json.loads((out / "metrics-onnx.json").read_text())


def format_report(pytorch: dict[str, Any], onnx: dict[str, Any], seed: int) -> str:
    """The seed, then accuracy on the test split beside the prior's."""
    rows = [
        ("prior (mean training span)", pytorch["prior"]),
        ("PyTorch (eager, cnm-train --eval)", pytorch["test"]),
        (f"cnm-run on the ONNX file ({onnx['provider']})", onnx),
    ]
    return "\n".join([
        f"Seed {seed} (data and training); test split, {pytorch['test_queries']} queries, synthetic features.",
        "",
        *markdown_table(["engine", *HEADLINE_METRICS],
                        [[name, *(metric_text(metrics[m]) for m in HEADLINE_METRICS)] for name, metrics in rows]),
        "",
        "Speed is measured by `python -m benchmarks.run` (benchmarks/README.md), not by this demo.",
    ])


def remove_epoch_checkpoints(out: Path, epochs: list[dict[str, Any]]) -> None:
    """Drop every epoch's checkpoint and resume state; ``model-best.pt`` (a copy of the best) stays."""
    for record in epochs:
        checkpoint = epoch_checkpoint(out, record["epoch"])
        checkpoint.unlink(missing_ok=True)
        state_path(checkpoint).unlink(missing_ok=True)


def left_behind(out: Path) -> list[str]:
    """What ``out`` holds, sorted, folders with a trailing slash."""
    return sorted(f"{path.name}/" if path.is_dir() else path.name for path in out.iterdir())


def run_demo(out: Path, seed: int = 0, charades: Path | None = None, epochs: int | None = None,
             num_videos: int = DEFAULT_NUM_VIDEOS, hidden_size: int | None = None) -> dict[str, Any]:
    """Every step; returns the metrics of both engines and writes ``demo.json`` and ``report.md`` to ``out``.

    ``epochs``, ``num_videos`` and ``hidden_size`` shrink the demo (the tests run a tiny one).
    """
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frame_dim = load_config("default")["dataset"]["frame_dim"]
    log.info("1/4 synthetic data in %s", out / "data")
    data = make_data(out, num_videos, seed, frame_dim, charades)
    config = demo_config(data, out, epochs, hidden_size)
    log.info("2/4 training a small CNM (config 'default', %d epochs)", config["train"]["max_num_epochs"])
    options = RunOptions(tag="", seed=seed, num_workers=0)
    remove_epoch_checkpoints(out, fit(config, options)["epochs"])
    log.info("3/4 exporting %s", out / "model-best.onnx")
    export_checkpoint(out / "model-best.pt", data.glove, out / "model-best.onnx")
    log.info("4/4 grounding the test queries with PyTorch and with cnm-run")
    pytorch = evaluate_checkpoint(config, out / "model-best.pt", options)
    command, onnx = run_cnm_run(out, data)
    report = format_report(pytorch, onnx, seed)
    summary = {"seed": seed, "pytorch": pytorch, "onnx": onnx, "cnm_run": command,
               "total_s": time.perf_counter() - started, "features": "synthetic (cnm-synth)"}
    write_json_atomic(out / "demo.json", summary)
    (out / "report.md").write_text(report + "\n")
    return summary


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="runs/demo", show_default=True,
              help="Directory for the data, checkpoint, ONNX file, predictions and metrics.")
@click.option("--charades", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Use real Charades-STA annotations and GloVe words from DIR (e.g. ../shared/data/charades).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: the default config's]")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out: Path, charades: Path | None, epochs: int, seed: int) -> None:
    """Synthesize data, train, export, ground and compare PyTorch with cnm-run."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_demo(out, seed, charades, epochs)
    click.echo(f"\nDone in {summary['total_s']:.0f} s.\n")
    click.echo((out / "report.md").read_text())
    click.echo(f"Left in {out}: {', '.join(left_behind(out))}.\n"
               f"Go on by hand: cd {out} && {command_path('cnm-run')} --features data/features.hdf5 "
               "--queries data/queries.jsonl")


def command_path(name: str) -> str:
    """How to type ``name`` here: bare where the shell finds this installation's, else its full path (the
    set-up commands install into a virtual environment that need not be active)."""
    installed = Path(sys.executable).parent / name
    found = shutil.which(name)
    if installed.exists() and not (found and Path(found).resolve() == installed.resolve()):
        return str(installed.resolve())
    return name


if __name__ == "__main__":
    main()
