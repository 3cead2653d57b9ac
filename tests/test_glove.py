"""glove.pkl is read as data: the original layout loads as before, a pickle that would run code does not."""
from __future__ import annotations

import os
import pickle
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_glove

from cnm_runtime.datasets import cli as synth_cli
from cnm_runtime.text import GloveFormatError, Vocabulary, load_glove


class _RunsCommand:
    """Unpickles as a call to ``os.system``: what a crafted glove.pkl holds."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_glove(tmp_path):
    """A glove.pkl of the original layout whose counter, as it is unpickled, creates ``marker``."""
    marker = tmp_path / "it-ran"
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"w2id": {}, "id2vec": [], "counter": _RunsCommand(f"touch '{marker}'")}))
    return path, marker


def glove_dict(vectors: str = "arrays") -> dict:
    rng = np.random.default_rng(0)
    words = ["person", "door", "opens"]
    id2vec = [rng.standard_normal(5).astype(np.float32) for _ in words]
    return {"w2id": {w: i for i, w in enumerate(words)},
            "id2vec": id2vec if vectors == "arrays" else [v.tolist() for v in id2vec],
            "counter": Counter({w: 10 - i for i, w in enumerate(words)})}


def assert_same_glove(loaded: dict, expected: dict) -> None:
    assert loaded["w2id"] == expected["w2id"]
    assert list(loaded["counter"].items()) == list(expected["counter"].items())  # order decides ties
    assert len(loaded["id2vec"]) == len(expected["id2vec"])
    for got, want in zip(loaded["id2vec"], expected["id2vec"]):
        assert type(got) is type(want)
        np.testing.assert_array_equal(got, want)
        assert np.asarray(got).dtype == np.asarray(want).dtype


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("vectors", ["arrays", "lists"])
def test_original_layout_loads_as_plain_unpickling_does(tmp_path, protocol, vectors):
    glove = glove_dict(vectors)
    path = tmp_path / "glove.pkl"
    path.write_bytes(pickle.dumps(glove, protocol=protocol))
    assert_same_glove(load_glove(path), pickle.loads(path.read_bytes()))


def test_arrays_pickled_by_numpy_1_load(tmp_path):
    """numpy 1.x names its array helpers ``numpy.core.*`` (numpy 2.x: ``numpy._core.*``)."""
    glove = glove_dict()
    glove["counter"]["scalar"] = 1  # a numpy scalar among the values too
    glove["id2vec"].append(np.float32(1.5) * np.ones(5, np.float32))
    glove["w2id"]["scalar"] = 3
    data = pickle.dumps(glove, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    path = tmp_path / "glove.pkl"
    path.write_bytes(data)
    assert_same_glove(load_glove(path), glove)


def test_shipped_glove_files_load_unchanged(golden_dir, charades_dir):
    for path in (golden_dir / "glove.pkl", charades_dir / "glove.pkl"):
        assert_same_glove(load_glove(path), pickle.loads(path.read_bytes()))


def test_a_pickle_that_calls_something_fails_before_calling_it(tmp_path):
    path, marker = hostile_glove(tmp_path)
    with pytest.raises(GloveFormatError, match=rf"{path}: not a CNM glove.pkl: it names (posix|os)\.system"):
        load_glove(path)
    assert not marker.exists()


@pytest.mark.parametrize("change, problem", [
    (lambda g: [g], "holds a list"),
    (lambda g: {k: v for k, v in g.items() if k != "counter"}, r"no \['counter'\]"),
    (lambda g: {**g, "id2vec": np.stack(g["id2vec"])}, "'id2vec' is not a list"),
    (lambda g: {**g, "id2vec": [*g["id2vec"][:2], "vector"]}, "'id2vec' is not a list"),
    (lambda g: {**g, "id2vec": [*g["id2vec"][:2], np.zeros((5, 1), np.float32)]}, "'id2vec' is not a list"),
    (lambda g: {**g, "id2vec": [*g["id2vec"][:2], np.zeros(4, np.float32)]}, "differ in length"),
    (lambda g: {**g, "w2id": {**g["w2id"], "cup": 3}}, r"ids 0\.\.2"),
    (lambda g: {**g, "w2id": {**g["w2id"], 7: 0}}, "'w2id'"),
    (lambda g: {**g, "counter": dict(g["counter"])}, "'counter' is not a Counter"),
    (lambda g: {**g, "counter": Counter({"door": 1.5})}, "'counter' is not a Counter"),
])
def test_other_layouts_are_refused_naming_the_file(tmp_path, change, problem):
    path = tmp_path / "glove.pkl"
    path.write_bytes(pickle.dumps(change(glove_dict())))
    with pytest.raises(GloveFormatError, match=rf"{path}: not a CNM glove.pkl: .*{problem}"):
        load_glove(path)


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", pickle.dumps(glove_dict())[:-40]])
def test_a_damaged_file_is_a_format_error(tmp_path, data):
    path = tmp_path / "glove.pkl"
    path.write_bytes(data)
    with pytest.raises(GloveFormatError, match=f"{path}: not a CNM glove.pkl"):
        load_glove(path)


def test_vocabulary_reads_the_loaded_vectors(tmp_path):
    glove = load_glove(write_glove(tmp_path / "glove.pkl", ["person", "door"], dim=4))
    table = Vocabulary.from_glove(glove, 2).word_vectors(glove)
    np.testing.assert_array_equal(table[1:], np.stack(glove["id2vec"]))


# --- the commands that read a glove.pkl ---------------------------------------------------------------

def assert_refused(result, path, marker) -> None:
    assert result.exit_code != 0 and not isinstance(result.exception, GloveFormatError), result.output
    assert f"{path}: not a CNM glove.pkl: it names" in result.output and "system" in result.output
    assert not marker.exists()


def test_cnm_synth_refuses_a_hostile_glove(tmp_path):
    path, marker = hostile_glove(tmp_path)
    annotations = tmp_path / "train.json"
    annotations.write_text('[["v1", 10.0, [1.0, 4.0], "person opens the door."]]')
    result = CliRunner().invoke(synth_cli.main, ["--annotations", str(annotations), "--glove", str(path),
                                                 "-o", str(tmp_path / "out.hdf5")])
    assert_refused(result, path, marker)


def test_cnm_export_refuses_a_hostile_vocab(tmp_path):
    pytest.importorskip("torch")
    from conftest import write_checkpoint

    from cnm_export import cli as export_cli

    checkpoint = write_checkpoint(tmp_path / "model.pt", vocab_size=3)
    path, marker = hostile_glove(tmp_path)
    result = CliRunner().invoke(export_cli.main, [str(checkpoint), "--vocab", str(path)])
    assert_refused(result, path, marker)


def test_cnm_train_refuses_a_hostile_vocab_path(tmp_path):
    pytest.importorskip("torch")
    from cnm_train import cli as train_cli

    path, marker = hostile_glove(tmp_path)
    result = CliRunner().invoke(train_cli.main, ["--config-path", "charades_i3d", "--device", "cpu",
                                                 "--set", f"dataset.vocab_path={path}",
                                                 "--set", f"train.model_saved_path={tmp_path / 'out'}"])
    assert_refused(result, path, marker)
