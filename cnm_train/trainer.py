"""The original runner's training procedure: two phases per batch, a checkpoint per epoch, best by validation.

Per batch (``runners/main_runner.py``): freeze the mask generator and step the reconstructor on the
reconstruction loss; freeze the rest and step the generator on the intra-video contrastive loss; clip
the gradient norm at 10 in both; then both schedules advance. Each phase runs its own forward pass, so
dropout and the masked words differ between the two, as in the original.

Checkpoints (``model-{epoch}.pt``, ``model-best.pt``) keep the original format; beside each epoch's
checkpoint, ``model-{epoch}.state.pt`` holds the optimizers and the history, so ``--resume`` continues
exactly where training stopped. Randomness is re-seeded from (seed, epoch) at every epoch for the same reason.
"""
from __future__ import annotations

import copy
import logging
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cnm_runtime.annotations import load_annotations
from cnm_runtime.cores import available_cores
from cnm_train.tables import markdown_table
from cnm_runtime.run_files import write_json_atomic
from cnm_runtime.spans import METRIC_NAMES
from cnm_runtime.text import Vocabulary, load_glove
from cnm_train.checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from cnm_train.config import inject_model_keys
from cnm_train.data import Batch, GroundingDataset, Sample, existing_file, load_split, load_splits, make_loader
from cnm_train.evaluation import evaluate, prior_metrics
from cnm_train.losses import ivc_loss, rec_loss, reconstruction_mask
from cnm_train.masking import choose_method, sample_masked_slots
from cnm_train.model import CNM
from cnm_train.optim import PhaseOptimizer, phase_optimizers

log = logging.getLogger(__name__)

GRAD_CLIP_NORM = 10.0
LOG_EVERY_BATCHES = 50  # as the original


@dataclass(frozen=True)
class RunOptions:
    tag: str = "base"
    seed: int = 8
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 1
    threads: int | None = None  # torch CPU threads; None: every core this process may use


@dataclass
class TrainState:
    """What ``--resume`` restores besides the weights."""

    num_updates: int = 0
    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch: losses, speed, metrics
    best_epoch: int | None = None

    def best(self) -> dict[str, Any] | None:
        return next((r for r in self.history if r["epoch"] == self.best_epoch), None)


# --- setup -------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """python, numpy and torch, with the original's offsets."""
    random.seed(seed)
    np.random.seed(seed + 1)
    torch.manual_seed(seed + 2)


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): an epoch replays identically whether or not training was resumed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch here")
    return torch.device(name)


def configure_torch(options: RunOptions) -> torch.device:
    seed_everything(options.seed)
    torch.set_num_threads(options.threads or available_cores())
    return resolve_device(options.device)


def load_vocabulary(dataset_cfg: dict[str, Any]) -> tuple[Vocabulary, np.ndarray]:
    """The kept words and their ``[size, 300]`` vector table (row 0 zeros)."""
    glove = load_glove(existing_file(dataset_cfg["vocab_path"], "dataset.vocab_path"))
    vocabulary = Vocabulary.from_glove(glove, int(dataset_cfg["vocab_size"]))
    return vocabulary, vocabulary.word_vectors(glove)


def make_dataset(samples: list[Sample], dataset_cfg: dict[str, Any], word_vectors: np.ndarray) -> GroundingDataset:
    return GroundingDataset(samples, dataset_cfg["feature_path"], word_vectors,
                            int(dataset_cfg["frame_dim"]), int(dataset_cfg["max_num_frames"]))


def tagged_copy(config: dict[str, Any], tag: str) -> dict[str, Any]:
    """A copy of ``config`` as the original runner holds it: ``train.model_saved_path`` ends in the tag."""
    config = copy.deepcopy(config)
    config["train"]["model_saved_path"] = str(Path(config["train"]["model_saved_path"]) / tag)
    return config


def epoch_checkpoint(out: Path, epoch: int) -> Path:
    """The checkpoint of ``epoch`` in ``out``, named as the original runner names it."""
    return out / f"model-{epoch}.pt"


def state_path(checkpoint: Path) -> Path:
    """``model-3.pt`` -> ``model-3.state.pt``."""
    return checkpoint.with_suffix(".state.pt")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table, one row per entry, one column per metric."""
    return "\n".join(markdown_table(["", *METRIC_NAMES],
                                    [[name, *(f"{metrics[m]:.4f}" for m in METRIC_NAMES)] for name, metrics in rows.items()]))


# --- one batch, one epoch ----------------------------------------------------------------------------

def train_step(model: CNM, batch: Batch, optimizers: tuple[PhaseOptimizer, PhaseOptimizer],
               loss_cfg: dict[str, Any], rng: np.random.Generator) -> dict[str, float]:
    """Reconstructor step, then generator step, on one batch (already on the model's device).

    Each optimizer clears only its own gradients and the clip covers every parameter, as in the
    original: the other phase's last gradients count toward the norm but are never applied.
    """
    reconstructor, generator = optimizers
    words_len = batch.words_len.cpu().numpy()
    mask = reconstruction_mask(batch.words_len, batch.targets.shape[1])

    def forward(easy_negative: bool) -> dict[str, torch.Tensor]:
        masked = sample_masked_slots(words_len, batch.mask_probs, batch.words_feat.shape[1], rng)
        masked = torch.from_numpy(masked).to(batch.frames.device)
        return model(batch.frames, batch.words_feat, batch.words_len, masked, easy_negative)

    model.freeze_mask_generator()
    reconstructor.adam.zero_grad()
    loss, logs = rec_loss(forward(easy_negative=False), batch.targets, mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    reconstructor.adam.step()

    model.freeze_reconstructor()
    generator.adam.zero_grad()
    beta_1, beta_2 = float(loss_cfg["beta_1"]), float(loss_cfg["beta_2"])
    loss, ivc_logs = ivc_loss(forward(easy_negative=True), batch.targets, mask, beta_1, beta_2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    generator.adam.step()
    return {**logs, **ivc_logs}


def train_epoch(model: CNM, loader, optimizers: tuple[PhaseOptimizer, PhaseOptimizer], loss_cfg: dict[str, Any],
                state: TrainState, epoch: int, seed: int, device: torch.device) -> dict[str, Any]:
    """One pass over ``loader``; returns the mean losses and the wall-clock seconds per batch."""
    model.train()
    torch.manual_seed(epoch_seed(seed, epoch))
    loader.generator.manual_seed(epoch_seed(seed, epoch))
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    totals: dict[str, float] = defaultdict(float)
    window: dict[str, float] = defaultdict(float)
    batches, start = 0, time.perf_counter()
    for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None, file=sys.stderr):
        if batch is None:
            continue
        logs = train_step(model, batch.to(device), optimizers, loss_cfg, rng)
        state.num_updates += 1
        lr = optimizers[0].step_update(state.num_updates)
        optimizers[1].step_update(state.num_updates)
        batches += 1
        for key, value in logs.items():
            totals[key] += value
            window[key] += value
        if batches % LOG_EVERY_BATCHES == 0:
            losses = ", ".join(f"{k} = {v / LOG_EVERY_BATCHES:.4f}" for k, v in window.items())
            log.info("epoch %d, batch %d, lr = %.6f, %s, %.3f seconds/batch",
                     epoch, batches, lr, losses, (time.perf_counter() - start) / batches)
            window.clear()
    if not batches:
        raise RuntimeError(f"epoch {epoch}: no usable training batch (see the warnings above)")
    return {"seconds_per_batch": (time.perf_counter() - start) / batches, "batches": batches,
            "losses": {k: v / batches for k, v in totals.items()}}


# --- whole runs --------------------------------------------------------------------------------------

def restore(checkpoint: Checkpoint, checkpoint_path: Path,
            optimizers: tuple[PhaseOptimizer, PhaseOptimizer]) -> TrainState:
    """The weights are loaded already; continue ``num_updates`` and the schedules, and, where the
    checkpoint has its ``.state.pt`` (ours do), the optimizers, the epoch count and the history."""
    state = TrainState(num_updates=checkpoint.num_updates)
    sidecar = state_path(checkpoint_path)
    if sidecar.is_file():
        saved = torch.load(sidecar, map_location="cpu", weights_only=True)
        if int(saved["num_updates"]) == checkpoint.num_updates:
            optimizers[0].adam.load_state_dict(saved["reconstructor"])
            optimizers[1].adam.load_state_dict(saved["generator"])
            state = TrainState(checkpoint.num_updates, int(saved["epoch"]) + 1, saved["history"],
                               saved["best_epoch"])
    for optimizer in optimizers:
        optimizer.step_update(state.num_updates)
    log.info("resumed from %s: num_updates %d, next epoch %d", checkpoint_path, state.num_updates, state.next_epoch)
    return state


def fit(config: dict[str, Any], options: RunOptions, resume: Path | None = None) -> dict[str, Any]:
    """Train as the original runner does; returns (and writes to ``metrics.json``) the per-epoch metrics,
    the epoch selected by validation mIoU and its test metrics, beside the prior's."""
    config = tagged_copy(config, options.tag)
    device = configure_torch(options)
    dataset_cfg, train_cfg = config["dataset"], config["train"]
    vocabulary, word_vectors = load_vocabulary(dataset_cfg)
    train_cfg["word_mask_weights"] = choose_method()
    splits = load_splits(dataset_cfg, vocabulary, train_cfg["word_mask_weights"])
    train_cfg["validation"], train_cfg["seed"] = splits.validation, options.seed
    log.info("train: %d queries, val: %d, test: %d; masked words weighted by %s",
             len(splits.train), len(splits.val), len(splits.test), train_cfg["word_mask_weights"])

    checkpoint = load_checkpoint(resume) if resume else None
    model = build_model(inject_model_keys(config, vocabulary.size),
                        checkpoint.model_parameters if checkpoint else None).to(device)
    optimizers = phase_optimizers(model, train_cfg)
    state = restore(checkpoint, resume, optimizers) if checkpoint else TrainState()
    num_epochs = int(train_cfg["max_num_epochs"])
    if state.next_epoch >= num_epochs:
        raise ValueError(f"nothing to train: {resume} ends epoch {state.next_epoch - 1} of {num_epochs}; "
                         "raise --epochs")

    batch_size = int(train_cfg["batch_size"])
    train_loader = make_loader(make_dataset(splits.train, dataset_cfg, word_vectors), batch_size, True,
                               options.num_workers, options.seed)
    eval_loaders = {name: make_loader(make_dataset(samples, dataset_cfg, word_vectors), batch_size, False,
                                      options.num_workers, options.seed)
                    for name, samples in (("val", splits.val), ("test", splits.test))}
    trained_on = [s.annotation for s in splits.train]
    prior = {"val": prior_metrics(trained_on, splits.val), "test": prior_metrics(trained_on, splits.test)}

    out = Path(train_cfg["model_saved_path"])
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(state.next_epoch, num_epochs):
        log.info("start epoch %d", epoch)
        stats = train_epoch(model, train_loader, optimizers, config["loss"], state, epoch, options.seed, device)
        path = epoch_checkpoint(out, epoch)
        save_checkpoint(path, model, config, state.num_updates)
        record = {"epoch": epoch, "num_updates": state.num_updates, **stats}
        record.update({name: evaluate(model, loader, device) for name, loader in eval_loaders.items()})
        log.info("epoch %d: val mIoU %.4f, test mIoU %.4f, %.3f seconds/batch",
                 epoch, record["val"]["mIoU"], record["test"]["mIoU"], stats["seconds_per_batch"])
        keep_if_best(record, path, state)
        save_train_state(path, epoch, state, optimizers)
        write_json_atomic(out / "metrics.json", metrics_summary(state, prior, splits.validation))
    return metrics_summary(state, prior, splits.validation)


def keep_if_best(record: dict[str, Any], path: Path, state: TrainState) -> None:
    """Add the epoch's record; copy its checkpoint to ``model-best.pt`` when its validation mIoU is the best."""
    best = state.best()
    state.history.append(record)
    if best is None or record["val"]["mIoU"] > best["val"]["mIoU"]:
        state.best_epoch = record["epoch"]
        tmp = path.with_name("model-best.pt.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, path.with_name("model-best.pt"))
        log.info("best validation mIoU so far: epoch %d", record["epoch"])


def save_train_state(path: Path, epoch: int, state: TrainState, optimizers: tuple[PhaseOptimizer, ...]) -> None:
    """Beside the checkpoint, what resuming needs that the original format has no room for."""
    torch.save({"epoch": epoch, "num_updates": state.num_updates, "history": state.history,
                "best_epoch": state.best_epoch, "reconstructor": optimizers[0].adam.state_dict(),
                "generator": optimizers[1].adam.state_dict()}, state_path(path))


def metrics_summary(state: TrainState, prior: dict[str, dict[str, float]],
                    validation: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: every epoch, the one validation picked and its test metrics, and the prior."""
    best = state.best()
    return {
        "selected_by": "val mIoU",
        "validation": validation,
        "best_epoch": state.best_epoch,
        "best": None if best is None else {"val": best["val"], "test": best["test"]},
        "prior": prior,
        "epochs": state.history,
    }


def evaluate_checkpoint(config: dict[str, Any], checkpoint_path: Path, options: RunOptions) -> dict[str, Any]:
    """Test-split metrics of a checkpoint (ours or the original's) beside the prior's; written to
    ``eval-{checkpoint name}.json`` in the output directory."""
    config = tagged_copy(config, options.tag)
    device = configure_torch(options)
    dataset_cfg = config["dataset"]
    vocabulary, word_vectors = load_vocabulary(dataset_cfg)
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(inject_model_keys(config, vocabulary.size), checkpoint.model_parameters).to(device)
    feature_path = existing_file(dataset_cfg["feature_path"], "dataset.feature_path")
    test = load_split(dataset_cfg, "test_data", vocabulary, choose_method(), feature_path)
    train = load_annotations(existing_file(dataset_cfg["train_data"], "dataset.train_data"))
    loader = make_loader(make_dataset(test, dataset_cfg, word_vectors), int(config["train"]["batch_size"]), False,
                         options.num_workers, options.seed)
    result = {
        "checkpoint": str(checkpoint_path),
        "num_updates": checkpoint.num_updates,
        "test_queries": len(test),
        "test": evaluate(model, loader, device),
        "prior": prior_metrics(train, test),
    }
    out = Path(config["train"]["model_saved_path"])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"eval-{checkpoint_path.stem}.json", result)
    return result
