"""cnm_train's training path: losses, masking, schedule, data layout, one step, resume and checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from conftest import write_glove  # noqa: E402

from cnm_runtime.fields import Annotation  # noqa: E402
from cnm_runtime.text import Vocabulary, load_glove  # noqa: E402
from cnm_train import masking  # noqa: E402
from cnm_train.checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from cnm_train.config import inject_model_keys, load_config  # noqa: E402
from cnm_train.data import GroundingDataset, holdout_by_video, prepare_samples  # noqa: E402
from cnm_train.losses import ivc_loss, query_nll, rec_loss, reconstruction_mask  # noqa: E402
from cnm_train.masking import CLOSED_CLASS_LIST, mask_probabilities, sample_masked_slots, word_weights  # noqa: E402
from cnm_train.optim import InverseSqrtSchedule, phase_optimizers  # noqa: E402
from cnm_train.trainer import RunOptions, fit, restore, train_step  # noqa: E402

WORDS = ["person", "the", "a", "door", "opens", "closes", "cup", "holds", "book", "in", "kitchen", "takes"]
SENTENCES = ["a person opens the door.", "person holds a cup in the kitchen.", "the person takes a book.",
             "person closes the door in the kitchen."]
FRAME_DIM = 8


# --- tiny data made on the fly -------------------------------------------------------------------

def write_tiny_dataset(root: Path, num_videos: int = 8, seed: int = 0) -> dict[str, Path]:
    """glove.pkl, train/test JSON lists and a random HDF5 archive (one dataset per video)."""
    rng = np.random.default_rng(seed)
    glove = write_glove(root / "glove.pkl", WORDS, seed=seed)
    annotations = {"train": [], "test": []}
    with h5py.File(root / "features.hdf5", "w") as archive:
        for v in range(num_videos):
            video, duration = f"v{v:02d}", float(rng.uniform(10, 30))
            archive[video] = rng.random((int(rng.integers(20, 60)), FRAME_DIM), dtype=np.float32)
            split = "test" if v % 4 == 3 else "train"
            for q in range(2):
                start = float(rng.uniform(0, duration / 2))
                end = float(min(duration, start + rng.uniform(2, duration / 2)))
                annotations[split].append([video, duration, [start, end], SENTENCES[(v + q) % len(SENTENCES)]])
    paths = {"glove": glove, "features": root / "features.hdf5"}
    for split, items in annotations.items():
        paths[split] = root / f"{split}.json"
        paths[split].write_text(json.dumps(items))
    return paths


def tiny_config(paths: dict[str, Path], out: Path, epochs: int = 1) -> dict:
    """The Charades config shrunk: d=16, 2+2 layers (the golden checkpoint's parameter names), 20 clips."""
    config = load_config("charades_i3d")
    config["dataset"].update(
        feature_path=str(paths["features"]), vocab_path=str(paths["glove"]), vocab_size=len(WORDS),
        frame_dim=FRAME_DIM, max_num_frames=20, train_data=str(paths["train"]), test_data=str(paths["test"]),
        val_data=str(paths["test"]),
    )
    config["train"].update(batch_size=4, max_num_epochs=epochs, model_saved_path=str(out))
    for phase in ("generator", "reconstructor"):
        config["train"][phase]["warmup_updates"] = 3
    model = config["model"]["config"]
    model["hidden_size"] = 16
    model["DualTransformer"].update(d_model=16, num_decoder_layers1=2, num_decoder_layers2=2)
    return config


@pytest.fixture
def tiny(tmp_path) -> dict[str, Path]:
    return write_tiny_dataset(tmp_path)


def tiny_batch(paths: dict[str, Path]):
    glove = load_glove(paths["glove"])
    vocabulary = Vocabulary.from_glove(glove, len(WORDS))
    annotations = [Annotation(v, d, s, e, q) for v, d, (s, e), q in json.loads(paths["train"].read_text())]
    samples = prepare_samples(annotations, vocabulary, 20, CLOSED_CLASS_LIST, "train")
    dataset = GroundingDataset(samples, paths["features"], vocabulary.word_vectors(glove), FRAME_DIM, 20)
    return dataset, dataset.collate([dataset[i] for i in range(4)]), vocabulary


# --- losses ------------------------------------------------------------------------------------------

def smoothed_nll(probs: list[float], target: int) -> float:
    """By hand: 0.9 * -log p(target) + 0.1 / V * sum_v -log p(v)."""
    return 0.9 * -math.log(probs[target]) + 0.1 / len(probs) * sum(-math.log(p) for p in probs)


def test_reconstruction_mask_counts_the_slot_after_the_last_word():
    mask = reconstruction_mask(torch.tensor([1, 3]), 3)
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_query_nll_matches_a_hand_computation():
    probs = [[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]
    logits = torch.log(torch.tensor([probs]))  # one query, three positions
    targets, mask = torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, 1.0, 0.0]])
    expected = (smoothed_nll(probs[0], 0) + smoothed_nll(probs[1], 1)) / 2  # the masked position is ignored
    assert query_nll(logits, targets, mask).item() == pytest.approx(expected, rel=1e-6)


def test_rec_and_ivc_losses_match_a_hand_computation():
    pos, hard, easy = [0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.69, 0.21, 0.1]
    output = {name: torch.log(torch.tensor([[p]])) for name, p in
              (("words_logit", pos), ("hard_neg_words_logit", hard), ("easy_neg_words_logit", easy))}
    targets, mask = torch.tensor([[0]]), torch.tensor([[1.0]])
    nll, nll_hard, nll_easy = (smoothed_nll(p, 0) for p in (pos, hard, easy))

    loss, logs = rec_loss(output, targets, mask)
    assert loss.item() == pytest.approx(nll + nll_hard, rel=1e-6)
    assert logs["nll_loss"] == pytest.approx(nll, rel=1e-6)

    loss, logs = ivc_loss(output, targets, mask, beta_1=0.1, beta_2=0.15)
    assert nll - nll_hard + 0.1 < 0 < nll - nll_easy + 0.15  # the hard hinge is inactive, the easy one is not
    assert logs["hard_neg_loss"] == 0
    assert loss.item() == pytest.approx(nll - nll_easy + 0.15, rel=1e-5)


# --- masked words ------------------------------------------------------------------------------------

def test_closed_class_weights_and_probabilities():
    weights = word_weights(["a", "person", "opens", "the", "door", "."], CLOSED_CLASS_LIST)
    assert weights.tolist() == [1, 2, 2, 1, 2, 1]
    probs = mask_probabilities(np.array([2.0, 1.0]))
    assert probs == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)], rel=1e-6)


def test_tagger_weights_follow_the_original_tag_test(monkeypatch):
    tags = ["DT", "NNS", "VBD", "WRB", "IN", "JJR", "PRP"]
    monkeypatch.setattr(masking, "pos_tag", lambda words: list(zip(words, tags)))
    weights = word_weights(["the", "cups", "opened", "where", "in", "bigger", "he"], masking.NLTK_TAGGER)
    assert weights.tolist() == [1, 2, 2, 2, 1, 2, 1]


def test_masked_slots_follow_the_original_rule():
    words_len = np.array([1, 3, 7])
    probs = np.zeros((3, 7), np.float32)
    for row, length in enumerate(words_len):
        probs[row, :length] = 1 / length
    masked = sample_masked_slots(words_len, probs, 8, np.random.default_rng(0))
    assert masked.sum(axis=1).tolist() == [1, 1, 2]  # max(l // 3, 1)
    assert not masked[:, 0].any()  # slot 0 is the start slot
    for row, length in enumerate(words_len):
        assert not masked[row, length + 1:].any()
    again = sample_masked_slots(words_len, probs, 8, np.random.default_rng(0))
    assert np.array_equal(masked, again)


def test_content_words_are_masked_more_often():
    probs = mask_probabilities(np.array([2.0, 1.0]))[None]  # slot 1 content, slot 2 function word
    rng = np.random.default_rng(1)
    picks = [sample_masked_slots(np.array([2]), probs, 3, rng)[0, 1] for _ in range(2000)]
    assert np.mean(picks) == pytest.approx(math.e / (math.e + 1), abs=0.04)


# --- schedule ----------------------------------------------------------------------------------------

def test_inverse_sqrt_schedule_is_fairseqs():
    schedule = InverseSqrtSchedule(lr=4e-4, warmup_updates=400, warmup_init_lr=1e-7)
    assert schedule.lr_at(0) == pytest.approx(1e-7)
    assert schedule.lr_at(200) == pytest.approx(1e-7 + 200 * (4e-4 - 1e-7) / 400)
    assert schedule.lr_at(400) == pytest.approx(4e-4)
    assert schedule.lr_at(1600) == pytest.approx(2e-4)


# --- data --------------------------------------------------------------------------------------------

def test_batch_layout_is_the_original_collate(tiny):
    _, batch, vocabulary = tiny_batch(tiny)
    longest = int(batch.words_len.max())
    assert batch.frames.shape == (4, 20, FRAME_DIM)
    assert batch.words_feat.shape == (4, longest + 1, 300) and batch.targets.shape == (4, longest)
    first = vocabulary.encode(SENTENCES[0])
    assert batch.targets[0, : len(first)].tolist() == list(first.word_ids)
    assert batch.targets[0, len(first):].eq(0).all()
    assert batch.words_feat[:, 0].eq(0).all()  # the start slot; the model writes its start vector there
    assert batch.mask_probs[0, : len(first)].sum() == pytest.approx(1, rel=1e-6)


def test_queries_without_a_kept_word_and_bad_videos_are_skipped(tiny, caplog):
    glove = load_glove(tiny["glove"])
    vocabulary = Vocabulary.from_glove(glove, len(WORDS))
    annotations = [Annotation("v00", 20, 1, 5, "zebra xylophone"), Annotation("v01", 20, 1, 5, "a person opens")]
    samples = prepare_samples(annotations, vocabulary, 20, CLOSED_CLASS_LIST, "train")
    assert [s.annotation.video for s in samples] == ["v01"] and "skipped 1 of 2" in caplog.text
    with h5py.File(tiny["features"], "a") as archive:
        archive["v01"][0, 0] = np.nan
    dataset = GroundingDataset(samples, tiny["features"], vocabulary.word_vectors(glove), FRAME_DIM, 20)
    assert dataset.collate([dataset[0]]) is None and "NaN" in caplog.text


def test_holdout_is_by_video_and_seeded(tiny):
    glove = load_glove(tiny["glove"])
    annotations = [Annotation(f"v{i}", 20, 1, 5, "a person opens the door") for i in range(40) for _ in range(2)]
    samples = prepare_samples(annotations, Vocabulary.from_glove(glove, len(WORDS)), 20, CLOSED_CLASS_LIST, "train")
    rest, held = holdout_by_video(samples, 0.1, seed=0)
    held_videos = {s.annotation.video for s in held}
    assert len(held_videos) == 4 and len(held) == 8
    assert not held_videos & {s.annotation.video for s in rest}
    assert [s.annotation.video for s in holdout_by_video(samples, 0.1, seed=0)[1]] == [s.annotation.video for s in held]


# --- one step, resume, checkpoints --------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["reconstructor", "generator"])
def test_a_step_changes_only_the_parameters_of_its_phase(tiny, tmp_path, phase):
    config = tiny_config(tiny, tmp_path / "out")
    _, batch, vocabulary = tiny_batch(tiny)
    torch.manual_seed(0)
    model = build_model(inject_model_keys(config, vocabulary.size)).train()
    optimizers = phase_optimizers(model, config["train"])
    frozen = optimizers[1] if phase == "reconstructor" else optimizers[0]
    for group in frozen.adam.param_groups:
        group["lr"] = 0.0  # only the other phase's optimizer may move anything
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_step(model, batch, optimizers, config["loss"], np.random.default_rng(0))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    generator_params = {"fc_mask_gen.weight", "fc_mask_gen.bias"}
    assert changed == (set(before) - generator_params if phase == "reconstructor" else generator_params)


def test_resume_continues_num_updates_schedule_and_weights(tiny, tmp_path):
    options = RunOptions(tag="", num_workers=0, threads=1, seed=3)
    straight = fit(tiny_config(tiny, tmp_path / "straight", epochs=2), options)
    fit(tiny_config(tiny, tmp_path / "split", epochs=1), options)
    resumed = fit(tiny_config(tiny, tmp_path / "split", epochs=2), options, resume=tmp_path / "split" / "model-0.pt")

    per_epoch = straight["epochs"][0]["num_updates"]
    a = torch.load(tmp_path / "straight" / "model-1.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "model-1.pt", weights_only=True)
    assert a["num_updates"] == b["num_updates"] == 2 * per_epoch
    for name, value in a["model_parameters"].items():
        torch.testing.assert_close(b["model_parameters"][name], value, rtol=0, atol=1e-6)
    state = torch.load(tmp_path / "split" / "model-1.state.pt", weights_only=True)
    schedule = InverseSqrtSchedule.from_config(tiny_config(tiny, tmp_path)["train"]["reconstructor"])
    assert state["reconstructor"]["param_groups"][0]["lr"] == pytest.approx(schedule.lr_at(2 * per_epoch))
    assert [r["epoch"] for r in resumed["epochs"]] == [0, 1]


def test_resuming_a_checkpoint_without_state_continues_the_schedule(tiny, tmp_path):
    """An original checkpoint has no .state.pt: num_updates and the learning rates still continue."""
    config = tiny_config(tiny, tmp_path)
    model = build_model(inject_model_keys(config, len(WORDS) + 1))
    save_checkpoint(tmp_path / "original.pt", model, config, num_updates=250)
    optimizers = phase_optimizers(model, config["train"])
    state = restore(load_checkpoint(tmp_path / "original.pt"), tmp_path / "original.pt", optimizers)
    assert (state.num_updates, state.next_epoch, state.history) == (250, 0, [])
    for optimizer, phase in zip(optimizers, ("reconstructor", "generator")):
        expected = InverseSqrtSchedule.from_config(config["train"][phase]).lr_at(250)
        assert optimizer.lr == pytest.approx(expected) and expected < config["train"][phase]["lr"]


def test_our_checkpoint_has_the_original_layout(tiny, tmp_path, golden_dir):
    fit(tiny_config(tiny, tmp_path / "out"), RunOptions(tag="", num_workers=0, threads=1))
    ours = torch.load(tmp_path / "out" / "model-0.pt", weights_only=True)
    original = torch.load(golden_dir / "model-best.pt", weights_only=True)
    assert set(ours) == set(original) == {"num_updates", "config", "model_parameters"}
    assert list(ours["model_parameters"]) == list(original["model_parameters"])  # same names, same order
    for section in ("dataset", "model", "loss"):
        assert set(ours["config"][section]) == set(original["config"][section])
    assert set(ours["config"]["model"]["config"]) == set(original["config"]["model"]["config"])
    assert set(original["config"]["train"]) <= set(ours["config"]["train"])
    assert ours["config"]["train"]["word_mask_weights"] in ("nltk_pos_tag", CLOSED_CLASS_LIST)
    model = build_model(inject_model_keys(ours["config"], len(WORDS) + 1))
    model.load_state_dict(ours["model_parameters"], strict=True)


def test_an_undefined_validation_miou_never_picks_the_best_epoch(tmp_path):
    """An epoch whose validation has no query to score (mIoU None) is kept only while none scored."""
    from cnm_runtime.spans import METRIC_NAMES
    from cnm_train.trainer import TrainState, format_table, keep_if_best

    state = TrainState()
    for epoch, miou in enumerate([None, 0.3, None, 0.2]):
        path = tmp_path / f"model-{epoch}.pt"
        path.write_bytes(b"%d" % epoch)
        keep_if_best({"epoch": epoch, "val": {"mIoU": miou}}, path, state)
    assert state.best_epoch == 1 and (tmp_path / "model-best.pt").read_bytes() == b"1"
    assert format_table({"val": dict.fromkeys(METRIC_NAMES)}).splitlines()[-1] == "| val | - | - | - | - | - | - |"
