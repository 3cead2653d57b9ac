"""``cnm-train``: the original ``train.py`` flags, plus device, epochs, workers, threads and config overrides.

Logs go to stderr (and to ``--log_dir`` when given); the final metrics table goes to stdout.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from cnm_train.config import SHIPPED_CONFIGS

DEFAULT_CONFIG = "default"


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """``dataset.feature_path=x.h5``: set an existing key; the value is read as JSON when it parses."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise click.BadParameter(f"{assignment!r} is not KEY=VALUE", param_hint="--set")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise click.BadParameter(f"the config has no key {key!r}", param_hint="--set")
    try:
        node[leaf] = json.loads(raw)
    except json.JSONDecodeError:
        node[leaf] = raw


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The config saved in a checkpoint, its ``model_saved_path`` without the tag the runner appended."""
    from cnm_train.checkpoint import load_checkpoint

    config = copy.deepcopy(load_checkpoint(path).config)
    config["train"]["model_saved_path"] = str(Path(config["train"]["model_saved_path"]).parent)
    return config


def ensure_default_data(config: dict[str, Any]) -> None:
    """Make the embedded synthetic dataset where the default config expects it, so that a bare
    ``cnm-train`` works on a fresh machine with nothing downloaded."""
    from cnm_runtime.datasets.default import make_default_dataset

    data_dir = Path(config["dataset"]["feature_path"]).parent
    if not Path(config["dataset"]["feature_path"]).exists():
        logging.getLogger(__name__).info("no data yet: making the embedded synthetic dataset in %s", data_dir)
        make_default_dataset(data_dir, frame_dim=int(config["dataset"]["frame_dim"]))


def setup_logging(log_dir: Path | None, tag: str) -> None:
    """INFO to stderr, and to ``LOG_DIR/TAG_<time>.log`` as the original names its log files."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / f"{tag}_{time.strftime('%Y-%m-%d_%H-%M-%S')}.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(message)s", handlers=handlers, force=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config-path", help=f"Config JSON (the original layout), or a shipped name: {', '.join(SHIPPED_CONFIGS)} "
              "[default: default, the embedded synthetic dataset, made in data/default on first use]. "
              "Optional with --resume, which then uses the checkpoint's config.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint to continue from (num_updates, schedule; optimizers too for ours).")
@click.option("--eval", "eval_only", is_flag=True, help="Only evaluate the --resume checkpoint on the test split.")
@click.option("--log_dir", "--log-dir", "log_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the log to LOG_DIR/TAG_<time>.log.")
@click.option("--tag", default="base", show_default=True, help="Checkpoints go to train.model_saved_path/TAG/.")
@click.option("--seed", default=8, show_default=True, help="Seeds python, numpy, torch, shuffling and masking.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), help="Overrides train.max_num_epochs.")
@click.option("--num-workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Data-loader worker processes (0: load in the training process).")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads [default: all usable cores].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set dataset.feature_path=feats.h5 (repeatable).")
def main(config_path: str | None, resume: Path | None, eval_only: bool, log_dir: Path | None, tag: str, seed: int,
         device: str, epochs: int | None, num_workers: int, threads: int | None, overrides: tuple[str, ...]) -> None:
    """Train CNM as the original code does (or evaluate a checkpoint with --eval --resume)."""
    from cnm_train.config import load_config
    from cnm_train.trainer import RunOptions, evaluate_checkpoint, fit, format_table

    setup_logging(log_dir, tag)
    if config_path is None and resume is None:
        config_path = DEFAULT_CONFIG
    if eval_only and resume is None:
        raise click.UsageError("--eval needs --resume CHECKPOINT")
    try:
        config = load_config(config_path) if config_path else checkpoint_config(resume)
    except (OSError, json.JSONDecodeError) as error:
        raise click.BadParameter(str(error), param_hint="--config-path") from None
    for assignment in overrides:
        apply_override(config, assignment)
    if epochs is not None:
        config["train"]["max_num_epochs"] = epochs
    if config_path == DEFAULT_CONFIG:
        ensure_default_data(config)
    logging.getLogger(__name__).info("config: %s", json.dumps(config))
    options = RunOptions(tag=tag, seed=seed, device=device, num_workers=num_workers, threads=threads)

    try:
        if eval_only:
            result = evaluate_checkpoint(config, resume, options)
            click.echo(format_table({"prior (mean training span), test": result["prior"],
                                     f"{resume.name}, test": result["test"]}))
            return
        summary = fit(config, options, resume)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    best = summary["best_epoch"]
    click.echo(format_table({"prior (mean training span), test": summary["prior"]["test"],
                             f"CNM epoch {best} (best val mIoU), test": summary["best"]["test"]}))
