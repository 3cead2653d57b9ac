"""Training on the built-in data moves the predicted centers toward the true ones.

The ``default`` config's model, losses and alternating steps on ``make_default_dataset``, shrunk to run in
about half a minute: narrow features, few clips, fewer videos and a short schedule (a larger step and a
shorter warmup than the demo's, which a run this short needs). It is judged by the correlation between
the predicted and the true centers of the validation split, which must clear a floor, and must fall far
below it when the same model is shown zeroed frames: the centers come from the video, not the sentences.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cnm_runtime.datasets.default import make_default_dataset  # noqa: E402
from cnm_runtime.text import load_glove  # noqa: E402
from cnm_train.checkpoint import load_checkpoint  # noqa: E402
from cnm_train.config import load_config  # noqa: E402
from cnm_train.data import load_splits, make_loader  # noqa: E402
from cnm_train.masking import choose_method  # noqa: E402
from cnm_train.trainer import RunOptions, fit, load_vocabulary, make_dataset  # noqa: E402

NUM_VIDEOS = 600  # 480 to train on, 60 (180 queries) to validate on
FRAME_DIM, NUM_CLIPS = 64, 32
EPOCHS, LR, WARMUP_UPDATES = 4, 0.002, 20  # 4 epochs of 45 updates
FLOOR = 0.6  # correlation the trained model must reach on the validation split
BLIND_CEILING = 0.3  # and stay under on zeroed frames (chance correlations over 60 videos stay well below)


def tiny_default_config(data, out) -> dict:
    config = load_config("default")
    config["dataset"].update(
        feature_path=str(data.archive), vocab_path=str(data.glove), vocab_size=len(load_glove(data.glove)["counter"]),
        train_data=str(data.train), val_data=str(data.val), test_data=str(data.test),
        frame_dim=FRAME_DIM, max_num_frames=NUM_CLIPS,
    )
    config["train"].update(max_num_epochs=EPOCHS, model_saved_path=str(out))
    for phase in ("generator", "reconstructor"):
        config["train"][phase].update(lr=LR, warmup_updates=WARMUP_UPDATES)
    return config


def validation_center_correlation(config: dict, checkpoint: Path, zero_frames: bool = False) -> float:
    """Pearson correlation of predicted and true centers over the validation queries (0 when constant)."""
    dataset_cfg = config["dataset"]
    vocabulary, word_vectors = load_vocabulary(dataset_cfg)
    val = load_splits(dataset_cfg, vocabulary, choose_method()).val
    model = load_checkpoint(checkpoint).build_model()
    predicted, true = [], []
    with torch.inference_mode():
        for batch in make_loader(make_dataset(val, dataset_cfg, word_vectors), 64, False, 0, 0):
            frames = torch.zeros_like(batch.frames) if zero_frames else batch.frames
            center, _ = model.generate(frames, batch.words_feat, batch.words_len, last_only=True)
            predicted.append(center.numpy())
            true.append(batch.spans.mean(axis=1))
    predicted, true = np.concatenate(predicted), np.concatenate(true)
    return 0.0 if predicted.std() == 0 else float(np.corrcoef(predicted, true)[0, 1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, Path]:
    """The config and the selected checkpoint of one tiny training run."""
    folder = tmp_path_factory.mktemp("default-learns")
    data = make_default_dataset(folder / "data", num_videos=NUM_VIDEOS, seed=0, frame_dim=FRAME_DIM)
    config = tiny_default_config(data, folder / "out")
    fit(config, RunOptions(tag="", seed=0, num_workers=0, threads=1))  # small operations: one thread is faster
    return config, folder / "out" / "model-best.pt"


def test_training_moves_the_predicted_centers_toward_the_true_ones(trained):
    assert validation_center_correlation(*trained) >= FLOOR


def test_the_centers_come_from_the_video(trained):
    assert validation_center_correlation(*trained, zero_frames=True) < BLIND_CEILING
