"""Synthetic archives (cnm-synth) and the converters: layout, determinism, and a signal inside the moments."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnm_runtime.annotations import load_annotations
from cnm_runtime.archive import FeatureArchive
from cnm_runtime.datasets.cli import main as synth_main
from cnm_runtime.datasets.convert import convert_npy_folder
from cnm_runtime.datasets.convert import main as convert_main
from cnm_runtime.datasets.default import DEFAULT_RECIPE, make_default_dataset
from cnm_runtime.datasets.synth import I3D_LIKE, SentenceSignal, moment_rows, synthesize_archive
from cnm_runtime.fields import Annotation
from cnm_runtime.text import Vocabulary, load_glove
from conftest import write_glove

WORDS = [".", "a", "person", "the", "opens", "door", "eats", "sandwich", "closes", "window", "in", "kitchen"]
ANNOTATIONS = [
    Annotation("vid_a", 30.0, 3.0, 12.0, "a person opens the door."),
    Annotation("vid_a", 30.0, 18.0, 27.0, "the person eats a sandwich in the kitchen."),
    Annotation("vid_b", 20.5, 0.0, 6.0, "person closes the window."),
    Annotation("vid_c", 11.0, 5.0, 9.0, "the person eats the sandwich."),
]


@pytest.fixture
def glove(tmp_path):
    return load_glove(write_glove(tmp_path / "glove.pkl", WORDS))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_layout_attributes_and_durations(tmp_path, glove):
    info = synthesize_archive(tmp_path / "a.hdf5", ANNOTATIONS, glove, frame_dim=48, rows_per_second=3.0, seed=5,
                              sources=["train.json"])
    assert (info.videos, info.queries, info.without_signal, info.skipped) == (3, 4, 0, ())
    with FeatureArchive(tmp_path / "a.hdf5") as archive:
        assert sorted(archive.videos()) == ["vid_a", "vid_b", "vid_c"]
        for video, duration in [("vid_a", 30.0), ("vid_b", 20.5), ("vid_c", 11.0)]:
            features = archive.read(video)
            assert features.dtype == np.float32
            assert features.shape == (round(duration * 3), 48)
            assert archive.duration(video) == duration
            assert features.min() >= 0 and features.mean() > 0.3  # I3D-like: non-negative, mostly active
        attrs = archive.attrs
    assert attrs["synthetic"] and attrs["generator"] == "cnm_runtime.datasets.synth"
    assert (attrs["seed"], attrs["frame_dim"], attrs["rows_per_second"]) == (5, 48, 3.0)
    assert json.loads(attrs["sources"]) == ["train.json"]
    assert info.rows == 90 + 62 + 33
    assert not list(tmp_path.glob("*.partial"))


def test_deterministic_by_seed_and_independent_of_other_videos(tmp_path, glove):
    first = synthesize_archive(tmp_path / "1.hdf5", ANNOTATIONS, glove, frame_dim=32, seed=1).path
    again = synthesize_archive(tmp_path / "2.hdf5", ANNOTATIONS, glove, frame_dim=32, seed=1).path
    other_seed = synthesize_archive(tmp_path / "3.hdf5", ANNOTATIONS, glove, frame_dim=32, seed=2).path
    only_b = synthesize_archive(tmp_path / "4.hdf5", ANNOTATIONS[2:3], glove, frame_dim=32, seed=1).path
    assert sha256(first) == sha256(again)
    with FeatureArchive(first) as a, FeatureArchive(other_seed) as b, FeatureArchive(only_b) as c:
        assert not np.allclose(a.read("vid_a"), b.read("vid_a"))
        np.testing.assert_array_equal(a.read("vid_b"), c.read("vid_b"))


def test_signal_lies_inside_the_moments(tmp_path, glove):
    frame_dim = 256
    synthesize_archive(tmp_path / "a.hdf5", ANNOTATIONS, glove, frame_dim=frame_dim, seed=3)
    signal_of = SentenceSignal(glove, frame_dim, seed=3)
    with FeatureArchive(tmp_path / "a.hdf5") as archive:
        for moment in ANNOTATIONS:
            features = archive.read(moment.video)
            signal = signal_of(moment.sentence)
            inside = moment_rows(moment, len(features))
            covered = np.any([moment_rows(m, len(features)) for m in ANNOTATIONS if m.video == moment.video], axis=0)
            corr_inside = np.corrcoef(features[inside].mean(axis=0), signal)[0, 1]
            corr_outside = np.corrcoef(features[~covered].mean(axis=0), signal)[0, 1]
            assert corr_inside > 0.5, moment
            assert abs(corr_outside) < 0.25, moment


def test_signal_depends_on_content_words_only(glove):
    signal_of = SentenceSignal(glove, 64, seed=0)
    assert signal_of.content_words("The person opens a door.") == ["person", "opens", "door"]
    np.testing.assert_allclose(signal_of("a person opens the door"), signal_of("person opens door ."), rtol=1e-6)
    assert np.corrcoef(signal_of("person opens door"), signal_of("person eats sandwich"))[0, 1] < 0.8
    assert signal_of("the a in .") is None
    # with a vocabulary cap, words beyond it make no signal
    assert SentenceSignal(glove, 64, vocab_cap=4).content_words("person opens door") == ["person"]


def test_bad_annotations_are_skipped_not_fatal(tmp_path, glove):
    annotations = ANNOTATIONS + [
        Annotation("vid_bad", -1.0, 0.0, 1.0, "a person opens the door."),
        Annotation("vid_a", 30.0, 40.0, 50.0, "the person closes the window."),
        Annotation("vid_b", 20.5, 1.0, 2.0, "the ."),
        Annotation("dir/vid", 20.5, 1.0, 2.0, "a person opens the door."),
    ]
    info = synthesize_archive(tmp_path / "a.hdf5", annotations, glove, frame_dim=16)
    assert info.videos == 3 and info.queries == 5 and info.without_signal == 1
    assert len(info.skipped) == 3
    assert "'vid_bad'" in info.skipped[0] and "duration" in info.skipped[0]
    assert "'vid_a'" in info.skipped[1] and "empty" in info.skipped[1]
    assert "'dir/vid'" in info.skipped[2] and "HDF5" in info.skipped[2]


def test_short_moment_still_gets_a_row():
    rows = moment_rows(Annotation("v", 30.0, 10.0, 10.1, "x"), 90)
    assert rows.sum() == 1 and rows[30]


def test_default_dataset_is_complete_and_loadable(tmp_path):
    dataset = make_default_dataset(tmp_path / "default", num_videos=20, queries_per_video=3, seed=0, frame_dim=32)
    glove = load_glove(dataset.glove)
    assert len(glove["w2id"]) == len(glove["id2vec"]) == len(glove["counter"])
    vocab = Vocabulary.from_glove(glove, 1111)
    splits = {name: load_annotations(getattr(dataset, name)) for name in ("train", "val", "test")}
    assert [len({a.video for a in items}) for items in splits.values()] == [16, 2, 2]
    all_annotations = [a for items in splits.values() for a in items]
    assert len(all_annotations) == 60 and dataset.info.without_signal == 0
    queries = [json.loads(line) for line in dataset.queries.read_text().splitlines()]
    assert [(q["video"], q["query"], q["duration"], q["timestamps"]) for q in queries] == [
        (a.video, a.sentence, a.duration, [a.start, a.end]) for a in splits["test"]
    ]
    with FeatureArchive(dataset.archive) as archive:
        assert archive.attrs["synthetic"]
        assert set(archive.videos()) == {a.video for a in all_annotations}
        for annotation in all_annotations:
            assert 0 <= annotation.start < annotation.end <= annotation.duration
            assert not vocab.encode(annotation.sentence).dropped
            assert archive.duration(annotation.video) == annotation.duration
            assert archive.read(annotation.video).shape[1] == 32


def test_default_dataset_rejects_impossible_sizes(tmp_path):
    with pytest.raises(ValueError, match="num_videos"):
        make_default_dataset(tmp_path, num_videos=2)
    with pytest.raises(ValueError, match="queries_per_video"):
        make_default_dataset(tmp_path, num_videos=5, queries_per_video=99)


def test_cli_default_and_annotation_modes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(synth_main, ["--default", "-o", str(tmp_path / "d"), "--num-videos", "10",
                                        "--frame-dim", "16", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "features.hdf5").exists() and (tmp_path / "d" / "queries.jsonl").exists()
    d = tmp_path / "d"
    result = runner.invoke(synth_main, ["--annotations", str(d / "train.json"), "--annotations", str(d / "test.json"),
                                        "--glove", str(d / "glove.pkl"), "-o", str(tmp_path / "a.hdf5"),
                                        "--frame-dim", "16", "--seed", "4"])
    assert result.exit_code == 0, result.output
    with FeatureArchive(tmp_path / "a.hdf5") as part, FeatureArchive(d / "features.hdf5") as whole:
        assert json.loads(part.attrs["sources"]) == ["train.json", "test.json"]
        assert part.attrs["recipe"] == I3D_LIKE.describe() and whole.attrs["recipe"] == DEFAULT_RECIPE.describe()
        assert len(part.videos()) == 9  # train and test, not val
    # a video's features depend on the seed, its id, its sentences and the recipe alone
    test = load_annotations(d / "test.json")
    again = synthesize_archive(tmp_path / "again.hdf5", test, load_glove(d / "glove.pkl"), frame_dim=16, seed=4,
                               recipe=DEFAULT_RECIPE)
    with FeatureArchive(again.path) as part, FeatureArchive(d / "features.hdf5") as whole:
        np.testing.assert_array_equal(part.read(test[0].video), whole.read(test[0].video))


def test_cli_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(synth_main, ["-o", str(tmp_path / "a.hdf5")]).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2]]")
    glove = write_glove(tmp_path / "glove.pkl", WORDS)
    result = runner.invoke(synth_main, ["--annotations", str(bad), "--glove", str(glove), "-o", str(tmp_path / "a.h5")])
    assert result.exit_code == 2 and "bad.json entry 0" in result.output
    result = runner.invoke(synth_main, ["--default", "--glove", str(glove), "-o", str(tmp_path / "d")])
    assert result.exit_code == 2


def test_npy_folder_to_archive_leaves_out_bad_files(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    good = np.arange(40, dtype=np.float64).reshape(5, 8)
    np.save(folder / "good.npy", good)
    np.save(folder / "nodur.npy", np.ones((3, 8), dtype=np.float32))
    np.save(folder / "flat.npy", np.ones(8, dtype=np.float32))
    np.save(folder / "narrow.npy", np.ones((3, 4), dtype=np.float32))
    (folder / "junk.npy").write_text("not numpy")
    report = convert_npy_folder(folder, tmp_path / "a.hdf5", [Annotation("good", 1.5, 0, 1, "x")], frame_dim=8)
    assert report.written == ("good", "nodur") and report.without_duration == ("nodur",)
    assert [message.split(":")[0] for message in report.errors] == ["flat.npy", "junk.npy", "narrow.npy"]
    with FeatureArchive(tmp_path / "a.hdf5") as archive:
        np.testing.assert_array_equal(archive.read("good"), good.astype(np.float32))
        assert archive.duration("good") == 1.5 and archive.duration("nodur") is None
        assert not archive.attrs["synthetic"]


def test_convert_cli(tmp_path):
    annotations = tmp_path / "test.json"
    annotations.write_text(json.dumps([["v1", 10.0, [1.0, 4.0], "a person opens the door."]]))
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "v1.npy", np.ones((30, 8), dtype=np.float32))
    runner = CliRunner()
    result = runner.invoke(convert_main, ["annotations-to-queries", str(annotations), "-o", str(tmp_path / "q.jsonl")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "q.jsonl").read_text()) == {
        "video": "v1", "query": "a person opens the door.", "duration": 10.0, "timestamps": [1.0, 4.0]
    }
    result = runner.invoke(convert_main, ["npy-to-hdf5", str(folder), "-o", str(tmp_path / "a.hdf5"),
                                          "--annotations", str(annotations)])
    assert result.exit_code == 0, result.output
    with FeatureArchive(tmp_path / "a.hdf5") as archive:
        assert archive.duration("v1") == 10.0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(convert_main, ["npy-to-hdf5", str(empty), "-o", str(tmp_path / "b.hdf5")]).exit_code == 2


def test_real_charades_annotations_make_signals(tmp_path, charades_dir):
    annotations = load_annotations(charades_dir / "test.json")[:40]
    glove = load_glove(charades_dir / "glove.pkl")
    info = synthesize_archive(tmp_path / "c.hdf5", annotations, glove, frame_dim=64, vocab_cap=1111)
    assert info.queries == 40 and info.without_signal == 0 and not info.skipped
    with FeatureArchive(tmp_path / "c.hdf5") as archive:
        for annotation in annotations:
            assert archive.read(annotation.video).shape == (round(annotation.duration * 3), 64)
