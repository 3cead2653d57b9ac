"""The PyTorch model loads the original checkpoint strictly and reproduces the golden outputs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import GOLDEN_WORD_SLOTS  # noqa: E402
from cnm_train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


@pytest.fixture
def golden(golden_dir):
    return np.load(golden_dir / "expected.npz")


@pytest.fixture
def golden_model(golden_dir):
    return load_checkpoint(golden_dir / "model-best.pt").build_model()


def _generate(model, frames, words, lengths, **kw):
    with torch.inference_mode():
        center, width = model.generate(torch.from_numpy(frames), torch.from_numpy(words), torch.from_numpy(lengths), **kw)
    return center.numpy(), width.numpy()


@pytest.mark.parametrize("last_only", [False, True])
def test_golden_batch(golden_model, golden_inputs, golden, last_only):
    center, width = _generate(golden_model, golden_inputs.frames, golden_inputs.words_feat, golden_inputs.words_len,
                              last_only=last_only)
    np.testing.assert_allclose(center, golden["center"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(width, golden["width"], atol=1e-5, rtol=0)


def test_golden_one_query_at_a_time(golden_model, golden_inputs, golden):
    inputs = golden_inputs
    for i in range(len(inputs.words_len)):
        n = int(inputs.words_len[i]) + 1
        center, width = _generate(golden_model, inputs.frames[i : i + 1], inputs.words_feat[i : i + 1, :n], inputs.words_len[i : i + 1])
        assert abs(center[0] - golden["center"][i]) < 1e-5 and abs(width[0] - golden["width"][i]) < 1e-5


@pytest.mark.parametrize("last_only", [False, True])
def test_queries_sharing_a_video_get_what_they_get_alone(golden_model, golden_inputs, last_only):
    """``video_index``: four videos read by eight queries give each query the outputs of its own copy."""
    video_index = np.array([0, 1, 0, 2, 3, 3, 1, 0])
    frames = golden_inputs.frames[:4]
    words, lengths = golden_inputs.words_feat[:8], golden_inputs.words_len[:8]
    shared = _generate(golden_model, frames, words, lengths, last_only=last_only,
                       video_index=torch.from_numpy(video_index))
    copies = _generate(golden_model, frames[video_index], words, lengths, last_only=last_only)
    np.testing.assert_allclose(shared, copies, atol=1e-6, rtol=0)


def test_padding_width_does_not_change_outputs(golden_model, golden_inputs, golden):
    words = np.zeros((len(golden_inputs.words_len), 21, 300), np.float32)
    words[:, :GOLDEN_WORD_SLOTS] = golden_inputs.words_feat
    center, width = _generate(golden_model, golden_inputs.frames, words, golden_inputs.words_len)
    np.testing.assert_allclose(center, golden["center"], atol=1e-5, rtol=0)


def test_inputs_are_not_modified(golden_model, golden_inputs):
    words = golden_inputs.words_feat[:4]
    _generate(golden_model, golden_inputs.frames[:4], words, golden_inputs.words_len[:4])
    np.testing.assert_array_equal(words, golden_inputs.words_feat[:4])


def test_checkpoint_roundtrip_is_strict_and_complete(golden_dir, tmp_path):
    original = load_checkpoint(golden_dir / "model-best.pt")
    assert len(original.model_parameters) == 82
    model = original.build_model()
    save_checkpoint(tmp_path / "copy.pt", model, original.config, original.num_updates)
    raw = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert set(raw) == {"num_updates", "config", "model_parameters"}
    assert raw["config"] == original.config and raw["num_updates"] == 4150
    assert list(raw["model_parameters"]) == list(original.model_parameters)
    for name, value in original.model_parameters.items():
        assert torch.equal(raw["model_parameters"][name], value)
