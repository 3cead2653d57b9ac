"""cnm-run's engine: queries in, predictions in input order out, bad input as error records, bounded memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnm_runtime import cores as cores_module
from cnm_runtime import session as session_module
from cnm_runtime.archive import C3D_DATASET, FeatureArchive
from cnm_runtime.batch import Batch
from cnm_runtime.errors import InputError
from cnm_runtime.grounder import Grounder, ground
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import Prediction, QueryError
from cnm_runtime.report import RunTally
from cnm_runtime.run_files import JsonLines, LockedFile, OutputError, read_back, write_json_atomic
from cnm_runtime.session import PROVIDERS, ModelSession, cuda_devices, provider_chain

WORDS = (
    "person the a door opens closes light turns on off walks sits chair table holds cup drinks from puts down "
    "picks up book reads laptop phone runs stands window looks out eats sandwich takes towel washes hands "
    "smiles laughs pours water bag shoes box mirror floor bed blanket pillow sofa"
).split()
assert len(WORDS) == 50 and len(set(WORDS)) == 50
FRAME_DIM = 1024  # the Charades config's, as write_checkpoint builds it


# --- small artefacts made on the fly, shared with test_run_cli.py --------------------------------

def export_tiny_model(folder: Path) -> Path:
    """A random-weight CNM over WORDS, exported by cnm_export (torch is needed here, not at run time)."""
    pytest.importorskip("torch")
    from cnm_export.export import export_checkpoint
    from conftest import write_checkpoint, write_glove

    glove = write_glove(folder / "glove.pkl", list(WORDS))
    checkpoint = write_checkpoint(folder / "model.pt", vocab_size=len(WORDS), glove_path=glove)
    export_checkpoint(checkpoint, glove, folder / "model.onnx")
    return folder / "model.onnx"


def _features(rng: np.random.Generator, rows: int, dim: int = FRAME_DIM) -> np.ndarray:
    return np.maximum(rng.standard_normal((rows, dim)), 0).astype(np.float32)


GOOD_VIDEOS = ("v0", "v1", "v2", "v3", "v4", "v5", "g0")  # g0: the ActivityNet C3D layout, a group


def write_archive(path: Path, videos: int = 6, seed: int = 0) -> Path:
    """Good videos v0.. (the first three with a duration attribute), a C3D-layout group g0 and one bad video
    of each kind: nan, wide, empty, flat (1-D), negdur (a non-positive duration attribute) and strdur (a
    duration attribute that is no number)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as out:
        for v in range(videos):
            dataset = out.create_dataset(f"v{v}", data=_features(rng, int(rng.integers(3, 40))))
            if v < 3:
                dataset.attrs["duration"] = 10.0 + v
        out.create_group("g0").create_dataset("c3d_features", data=_features(rng, 17))
        out["g0"].attrs["duration"] = 25.0
        nan = _features(rng, 12)
        nan[3, 5] = np.nan
        out.create_dataset("nan", data=nan)
        out.create_dataset("wide", data=_features(rng, 12, dim=512))
        out.create_dataset("empty", data=np.zeros((0, FRAME_DIM), np.float32))
        out.create_dataset("flat", data=np.ones(FRAME_DIM, np.float32))
        out.create_dataset("negdur", data=_features(rng, 12)).attrs["duration"] = -3.0
        out.create_dataset("strdur", data=_features(rng, 12)).attrs["duration"] = "long"
    return path


def good_records(count: int, seed: int = 1) -> list[dict]:
    """Valid queries over GOOD_VIDEOS with explicit qids; some with out-of-vocabulary words, one overlong."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        words = list(rng.choice(WORDS, size=int(rng.integers(2, 9))))
        if i % 5 == 1:
            words.insert(1, "zebra")  # dropped: not in the vocabulary
        if i == 3:
            words = list(WORDS[:25])  # more than max_num_words (20): truncated
        record = {"qid": f"q{i}", "video": GOOD_VIDEOS[i % len(GOOD_VIDEOS)], "query": " ".join(words) + "."}
        if i % 3 == 0:
            record["duration"] = 30.0
            record["timestamps"] = [float(i % 10), float(i % 10) + 7.5]
        records.append(record)
    return records


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("archive") / "features.hdf5")


def ground_all(grounder: Grounder, archive: Path, queries) -> tuple[list[dict], list[QueryError]]:
    predictions, errors = [], []
    for result in grounder.ground(archive, queries):
        if isinstance(result, Prediction):
            predictions.append(json.loads(json.dumps(result.record())))
        else:
            errors.append(result)
    return predictions, errors


# --- archives --------------------------------------------------------------------------------------

def test_archive_reads_every_storage_layout_alike(tmp_path):
    """Contiguous numbers are read from the file's bytes, everything else through HDF5: the same values."""
    features = np.random.default_rng(0).random((37, 8), dtype=np.float32)
    path = tmp_path / "layouts.hdf5"
    with h5py.File(path, "w", userblock_size=1024) as out:  # a user block shifts every offset
        out["contiguous"] = features
        out["big_endian"] = features.astype(">f4")
        out["float64"] = features.astype(np.float64)
        out.create_dataset("chunked", data=features, chunks=(5, 8), compression="gzip")
        out.create_dataset("external", shape=features.shape, dtype=np.float32,
                           external=[(str(tmp_path / "raw.bin"), 0, features.nbytes)])[...] = features
        out.create_group("group")[C3D_DATASET] = features
        out["empty"] = np.zeros((0, 8), np.float32)
        out["strings"] = np.array([b"ab", b"cd"])
    with FeatureArchive(path) as archive:
        for video in ("contiguous", "big_endian", "float64", "chunked", "external", "group"):
            np.testing.assert_array_equal(archive.read(video), features)
        assert archive.read("big_endian").dtype == np.dtype(">f4")
        assert archive.read("empty").shape == (0, 8)
        with pytest.raises(InputError, match="strings") as refused:
            archive.read("strings")
    assert refused.value.code == "bad_dtype"


# --- sessions and providers ------------------------------------------------------------------------

def test_provider_reported_is_the_one_that_runs(tiny_model):
    session = ModelSession(tiny_model, RunOptions(batch_size=4))
    assert session.provider == session._session().get_providers()[0]
    assert session.device == ("cpu" if session.provider == PROVIDERS["cpu"] else "cuda")


def test_auto_without_a_gpu_is_quiet_and_makes_no_tensorrt_cache(tiny_model, tmp_path, caplog):
    if cuda_devices():
        pytest.skip("a GPU is visible here")
    with caplog.at_level("DEBUG"):
        session = ModelSession(tiny_model, RunOptions(trt_cache=tmp_path / "trt"))
    assert session.provider == PROVIDERS["cpu"] and not (tmp_path / "trt").exists()
    assert not [record for record in caplog.records if record.levelno >= 20]  # not even an INFO line


def test_cpu_runs_one_thread_each_one_run_a_core_at_most_eight(tiny_model, monkeypatch):
    for cores, runs in ((2, 2), (16, 8)):
        monkeypatch.setattr(cores_module, "available_cores", lambda: cores)
        session = ModelSession(tiny_model, RunOptions(provider="cpu"))
        assert session.threads == 1 and session.runs == runs
        assert session._session().get_session_options().intra_op_num_threads == 1
    session = ModelSession(tiny_model, RunOptions(provider="cpu", threads=3))  # 16 cores: 8 threads hold two runs of 3
    assert session._session().get_session_options().intra_op_num_threads == 3 and session.runs == 2
    assert Grounder(tiny_model, provider="cpu").session.runs == 8
    assert Grounder(tiny_model, provider="cpu", runs=3).session.runs == 3


def test_named_provider_that_cannot_start_is_one_clear_error(tiny_model):
    if cuda_devices():
        pytest.skip("a GPU is visible here")
    with pytest.raises(RuntimeError, match="--provider cuda: no CUDA GPU is visible here"):
        ModelSession(tiny_model, RunOptions(provider="cuda", batch_size=4))
    with pytest.raises(RuntimeError, match="--provider tensorrt: "):  # its libraries are not on the package index
        ModelSession(tiny_model, RunOptions(provider="tensorrt", batch_size=4))


def test_a_file_exported_by_cnm_0_1_says_to_export_again(tmp_path):
    onnx = pytest.importorskip("onnx")
    names = ("frames", "word_ids", "words_len")  # the inputs before video_index
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [name], [f"{name}_out"]) for name in names], "old",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names],
        [onnx.helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, None) for name in names])
    path = tmp_path / "old.onnx"
    onnx.save(onnx.helper.make_model(graph, ir_version=9, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    with pytest.raises(ValueError, match="exported by cnm 0.1.0.*export the checkpoint again"):
        ModelSession(path, RunOptions(provider="cpu"))


def test_tensorrt_options_cover_batch_one_to_max(tiny_model, tmp_path, monkeypatch):
    spec = ModelSession(tiny_model, RunOptions(provider="cpu")).spec
    monkeypatch.setattr(session_module, "_runnable", lambda short: None)  # as on a machine with TensorRT
    chain = provider_chain(RunOptions(batch_size=48, trt_cache=tmp_path / "trt"), spec)
    name, options = chain[0]
    assert name == PROVIDERS["tensorrt"] and chain[-1] == PROVIDERS["cpu"]
    assert options["trt_fp16_enable"] and options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert options["trt_profile_min_shapes"] == "frames:1x200x1024,video_index:1,word_ids:1x21,words_len:1"
    assert options["trt_profile_max_shapes"] == "frames:48x200x1024,video_index:48,word_ids:48x21,words_len:48"


# --- grounding -------------------------------------------------------------------------------------

def test_predictions_match_single_query_runs(tiny_model, archive):
    """Batching across videos changes nothing: each prediction equals the model run on that query alone."""
    records = good_records(10)
    predictions, errors = ground_all(Grounder(tiny_model, batch_size=4), archive, records)
    assert errors == [] and [p["qid"] for p in predictions] == [r["qid"] for r in records]
    alone = Grounder(tiny_model, batch_size=1)
    for record, prediction in zip(records, predictions):
        (single,), _ = ground_all(alone, archive, [record])
        assert abs(single["center"] - prediction["center"]) < 1e-5
        assert abs(single["width"] - prediction["width"]) < 1e-5


def test_a_batch_holds_each_video_once(tiny_model, archive, monkeypatch):
    """Queries of one video in a batch share its clips (and the graph's work on them), with the same predictions."""
    records = [{"video": video, "query": "person opens the door"} for video in ("v0", "v1", "v0", "v2", "v1", "v0")]
    records[2]["query"] = "person sits"
    grounder = Grounder(tiny_model, batch_size=6)
    batches, submit = [], grounder.session.submit
    monkeypatch.setattr(grounder.session, "submit", lambda batch: batches.append(
        (len(batch.frames), batch.video_index.tolist())) or submit(batch))
    predictions, errors = ground_all(grounder, archive, records)
    assert errors == [] and batches == [(3, [0, 1, 0, 2, 1, 0])]
    alone = Grounder(tiny_model, batch_size=1)
    for record, prediction in zip(records, predictions):
        (single,), _ = ground_all(alone, archive, [record])
        assert abs(single["center"] - prediction["center"]) < 1e-5 and abs(single["width"] - prediction["width"]) < 1e-5


def test_the_next_batch_runs_while_the_caller_holds_a_prediction(tiny_model, archive, monkeypatch):
    """The model runs in a thread of its own: what the caller does with a batch's predictions (cnm-run writes
    them) never holds up the next batch."""
    grounder = Grounder(tiny_model, batch_size=2, runs=1)
    callers, second_batch_ran, run = [], threading.Event(), grounder.session._run

    def counted(batch):
        callers.append(threading.get_ident())
        if len(callers) == 2:
            second_batch_ran.set()
        return run(batch)

    monkeypatch.setattr(grounder.session, "_run", counted)
    results = grounder.ground(archive, good_records(6))
    next(results)
    assert second_batch_ran.wait(timeout=60)
    assert len(list(results)) == 5 and len(callers) == 3 and threading.get_ident() not in callers


def test_batches_run_side_by_side_with_the_same_predictions(tiny_model, archive, monkeypatch):
    """With ``runs=2`` two batches are in the model at once (each of the six waits here for another to start),
    and the predictions are those of one batch at a time, in input order."""
    records = good_records(12) + [{"qid": "bad", "video": "nan", "query": "person sits"}]
    expected = ground_all(Grounder(tiny_model, batch_size=2, runs=1), archive, records)
    grounder = Grounder(tiny_model, batch_size=2, runs=2)
    both_in, run = threading.Barrier(2, timeout=60), grounder.session._run

    def meeting(batch):
        both_in.wait()  # BrokenBarrierError, and the test fails, unless another run is in at the same time
        return run(batch)

    monkeypatch.setattr(grounder.session, "_run", meeting)
    assert ground_all(grounder, archive, records) == expected and len(expected[0]) == 12


def test_a_failing_batch_costs_its_queries_and_the_run_goes_on(tiny_model, archive, monkeypatch):
    records = good_records(6)
    expected, _ = ground_all(Grounder(tiny_model, batch_size=2), archive, records)
    grounder = Grounder(tiny_model, batch_size=2)
    batches, run = [], grounder.session._run

    def second_fails(batch):
        batches.append(len(batch))
        if len(batches) == 2:
            raise RuntimeError("the model failed")
        return run(batch)

    monkeypatch.setattr(grounder.session, "_run", second_fails)
    predictions, errors = ground_all(grounder, archive, records)
    assert predictions == expected[:2] + expected[4:]
    assert [(e.qid, e.line, e.code) for e in errors] == [("q2", 3, "internal_error"), ("q3", 4, "internal_error")]
    assert "RuntimeError: the model failed" in errors[0].message
    grounder.close()
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("cnm-")] == []


def test_a_batch_of_some_queries_keeps_only_their_videos():
    whole = Batch(np.arange(4.0)[:, None, None] * np.ones((4, 2, 3), np.float32), np.array([2, 0, 2, 3, 1]),
                  np.arange(5)[:, None], np.arange(5))
    batch = whole.take(np.array([0, 2, 3]))
    assert batch.video_index.tolist() == [0, 0, 1] and batch.frames[:, 0, 0].tolist() == [2, 3]
    assert batch.words_len.tolist() == [0, 2, 3]
    alone = batch.one_video_per_query()
    assert alone.frames[:, 0, 0].tolist() == [2, 2, 3] and alone.video_index.tolist() == [0, 1, 2]


def test_prediction_record_layout(tiny_model, archive):
    records = [
        {"qid": "with_gt", "video": "v3", "query": "person opens the zebra door", "duration": 20.0,
         "timestamps": [2.0, 9.0]},
        {"qid": "archive_duration", "video": "v1", "query": "person sits"},
        {"qid": "c3d_group", "video": "g0", "query": "person sits"},
        {"qid": "no_duration", "video": "v4", "query": "person sits"},
        {"qid": "long", "video": "v4", "query": " ".join(WORDS[:25])},
    ]
    predictions, errors = ground_all(Grounder(tiny_model, batch_size=8), archive, records)
    assert errors == []
    gt, from_archive, c3d, fractions, long = predictions
    assert gt["dropped_words"] == ["zebra"] and not gt["truncated"]
    start, end, score = gt["pred_relevant_windows"][0]
    assert score == 1.0 and 0 <= start <= end <= 20.0
    assert start == pytest.approx(max(gt["center"] - gt["width"] / 2, 0) * 20.0, abs=1e-5)
    truth = (2.0 / 20.0, 9.0 / 20.0)
    inter = max(0.0, min(end / 20, truth[1]) - max(start / 20, truth[0]))
    union = max(end / 20, truth[1]) - min(start / 20, truth[0])
    assert gt["iou"] == pytest.approx(inter / union, abs=1e-6)
    assert from_archive["duration"] == 11.0 and "iou" not in from_archive
    assert c3d["duration"] == 25.0
    assert fractions["duration"] is None and 0 <= fractions["pred_relevant_windows"][0][1] <= 1
    assert long["truncated"] and long["dropped_words"] == []


def test_each_video_is_read_once(tiny_model, archive, monkeypatch):
    reads = []
    original = FeatureArchive.load
    monkeypatch.setattr(FeatureArchive, "load", lambda self, video: reads.append(video) or original(self, video))
    # interleaved videos within the kept window, and one video with more queries than a batch
    records = [{"video": f"v{i % 3}", "query": "person opens the door"} for i in range(12)]
    records += [{"video": "v5", "query": "person sits"} for _ in range(9)]
    predictions, errors = ground_all(Grounder(tiny_model, batch_size=4, keep_videos=3), archive, records)
    assert len(predictions) == 21 and errors == []
    assert sorted(reads) == ["v0", "v1", "v2", "v5"]


def test_feed_processes_give_byte_identical_results(tiny_model, archive):
    """Chunks prepared in two feed processes (frames through shared memory) give what one thread gives,
    bad videos, long videos and a video whose queries span chunks included."""
    records = good_records(9) + [{"video": "nan", "query": "person sits"}]
    records += [{**record, "qid": f"again-{record['qid']}"} for record in good_records(7, seed=3)]
    inline = ground_all(Grounder(tiny_model, batch_size=4), archive, records)
    parallel = ground_all(Grounder(tiny_model, batch_size=4, feeders=2), archive, records)
    assert json.dumps(inline[0]) == json.dumps(parallel[0]) and inline[1] == parallel[1]
    assert len(inline[0]) == 16 and inline[1][0].code == "non_finite"


@pytest.mark.parametrize("video, code", [
    ("missing", "unknown_video"), ("nan", "non_finite"), ("wide", "wrong_width"), ("empty", "no_rows"),
    ("flat", "not_2d"), ("negdur", "bad_duration"), ("strdur", "bad_duration"),
])
def test_bad_video_costs_only_its_queries(tiny_model, archive, video, code):
    records = [{"qid": 0, "video": "v0", "query": "person sits"}, {"qid": 1, "video": video, "query": "person sits"},
               {"qid": 2, "video": "v1", "query": "person sits"}]
    predictions, errors = ground_all(Grounder(tiny_model, batch_size=2), archive, records)
    assert [p["qid"] for p in predictions] == [0, 2]
    assert [(e.qid, e.line, e.code) for e in errors] == [(1, 2, code)]
    assert repr(video) in errors[0].message


def test_memory_does_not_grow_with_the_archive(tiny_model, tmp_path):
    """Peak traced memory for 96 one-query videos is about that for 24: videos are not kept."""
    grounder = Grounder(tiny_model, batch_size=4, keep_videos=4)
    peaks = []
    for videos in (24, 96):
        path = write_archive(tmp_path / f"a{videos}.hdf5", videos=videos)
        records = [{"video": f"v{v}", "query": "person opens the door"} for v in range(videos)]
        tracemalloc.start()
        predictions, _ = ground_all(grounder, path, records)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(predictions) == videos
    clips_bytes = 200 * FRAME_DIM * 4  # one resampled video
    assert peaks[1] < 1.3 * peaks[0]
    assert peaks[1] < 40 * clips_bytes  # far below the 96 videos


# --- output files ----------------------------------------------------------------------------------

def test_read_back_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "pred.jsonl"
    with LockedFile(path, "-o") as file, JsonLines(file) as out:
        for qid in range(3):
            out.write({"qid": qid, "center": 0.5})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"qid": 3, "cen')
    with LockedFile(path, "-o") as file:
        assert [r["qid"] for r in read_back(file)] == [0, 1, 2]
    assert path.read_bytes() == whole


def test_read_back_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with LockedFile(path, "-o") as file, pytest.raises(ValueError, match="line 1"):
        list(read_back(file))
    assert path.read_text() == "hello\n"


def test_write_json_atomic_replaces_whole(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_write_json_atomic_writes_into_a_device_it_cannot_replace(tmp_path):
    """Renaming a file over /dev/null would replace it for every program (root may do it): a device is written
    into, here through symbolic links, which stay as they are."""
    null, full = tmp_path / "null", tmp_path / "full"
    null.symlink_to(os.devnull)
    full.symlink_to("/dev/full")
    write_json_atomic(null, {"a": 1})
    with pytest.raises(OutputError, match="cannot write .*full: No space left on device"):
        write_json_atomic(full, {"a": 1})
    assert null.is_symlink() and full.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["full", "null"]


def test_tally_counts_and_metrics():
    tally = RunTally()
    tally.add_prediction({"qid": 0, "iou": 0.6, "dropped_words": ["zebra", "x"], "truncated": True}, resumed=True)
    tally.add_prediction({"qid": 1, "iou": 0.2, "dropped_words": [], "truncated": False})
    tally.add_prediction({"qid": 2, "dropped_words": [], "truncated": False})
    tally.add_error(QueryError(3, 4, "unknown_video", "x"))
    metrics = tally.metrics("CPUExecutionProvider", wall_s=2.0)
    assert metrics["IoU@0.5"] == 0.5 and metrics["mIoU"] == pytest.approx(0.4)
    assert (metrics["queries"], metrics["predicted"], metrics["with_ground_truth"], metrics["errors"]) == (4, 3, 2, 1)
    assert (metrics["dropped_tokens"], metrics["truncated_queries"], metrics["resumed"]) == (2, 1, 1)
    assert metrics["errors_by_code"] == {"unknown_video": 1} and metrics["queries_per_s"] == 1.5
    tally.add_error(QueryError(5, 6, "empty_query", "x"), resumed=True)  # an earlier run's: counted, not timed
    metrics = tally.metrics("CPUExecutionProvider", wall_s=2.0)
    assert (metrics["errors"], metrics["queries_per_s"]) == (2, 1.5)


# --- one qid, one result; only finite outputs --------------------------------------------------------

def test_a_later_line_with_an_earlier_qid_is_a_duplicate_error(tiny_model, archive):
    """Explicit qids that repeat, and an explicit qid equal to another line's default (its 0-based line):
    the first line keeps the qid, every later one is a duplicate_qid error, in every batch layout."""
    records = [
        {"video": "v0", "query": "person sits"},  # qid 0 by default
        {"qid": "a", "video": "v1", "query": "person sits"},
        {"qid": "a", "video": "v2", "query": "person opens the door"},
        {"qid": 0, "video": "v3", "query": "person sits"},
        {"qid": "b", "video": "missing", "query": "person sits"},  # an error still claims its qid
        {"qid": "b", "video": "v1", "query": "person sits"},
        {"qid": "a", "video": "v1", "query": "person sits"},
    ]
    for batch_size in (1, 3, 8):
        predictions, errors = ground_all(Grounder(tiny_model, batch_size=batch_size), archive, records)
        assert [p["qid"] for p in predictions] == [0, "a"]
        assert [(e.line, e.qid, e.code) for e in errors] == [
            (3, "a", "duplicate_qid"), (4, 0, "duplicate_qid"), (5, "b", "unknown_video"), (6, "b", "duplicate_qid"),
            (7, "a", "duplicate_qid")]
        assert "line 3: qid 'a'" in errors[0].message


def test_a_non_finite_or_out_of_range_output_is_an_error_record_never_a_prediction(tiny_model, archive,
                                                                                       monkeypatch):
    """A damaged model's outputs: the second query of each batch NaN, the first one's center past 1."""
    records = good_records(4)
    grounder = Grounder(tiny_model, batch_size=2)
    run = grounder.session._run

    def damaged(batch):
        center, width = run(batch)
        center[0], center[1:2] = 1.5, np.nan
        return center, width

    monkeypatch.setattr(grounder.session, "_run", damaged)
    predictions, errors = ground_all(grounder, archive, records)
    assert predictions == []
    assert [(e.qid, e.code) for e in errors] == [("q0", "output_out_of_range"), ("q1", "non_finite_output"),
                                               ("q2", "output_out_of_range"), ("q3", "non_finite_output")]
    with pytest.raises(InputError, match="line 1: the model gave center 1.5") as raised:
        grounder.predict(grounder.encode_video(_features(np.random.default_rng(0), 30)), ["person sits", "door"])
    assert raised.value.code == "output_out_of_range"


def test_output_lines_are_strict_json(tmp_path):
    with LockedFile(tmp_path / "out.jsonl", "-o") as file, JsonLines(file) as out:
        out.write({"qid": 1, "center": 0.5})
        with pytest.raises(ValueError):
            out.write({"qid": 2, "center": float("nan")})
    assert (tmp_path / "out.jsonl").read_text() == '{"qid": 1, "center": 0.5}\n'


# --- the Python API ------------------------------------------------------------------------------------

def test_encode_a_video_once_and_ask_many_sentences(tiny_model, archive):
    """predict gives what ground gives for the same video and sentences, with windows in seconds."""
    grounder = Grounder(tiny_model, batch_size=2)
    with FeatureArchive(archive) as features:
        stored = features.load("v1")
    sentences = ["person opens the zebra door.", "person sits", " ".join(WORDS[:25])]
    clips = grounder.encode_video(stored.features, stored.duration)
    predicted = grounder.predict(clips, sentences, video="v1")
    grounded, _ = ground_all(grounder, archive, [{"video": "v1", "query": s} for s in sentences])
    assert [p.record() for p in predicted] == grounded
    first = predicted[0]
    assert first.dropped_words == ("zebra", ".") and first.duration == 11.0
    assert first.window == pytest.approx((first.span[0] * 11.0, first.span[1] * 11.0))
    with pytest.raises(InputError, match="no word") as raised:
        grounder.predict(clips, ["zebra zebra"])
    assert raised.value.code == "out_of_vocabulary"
    with pytest.raises(InputError) as raised:
        grounder.encode_video(stored.features[:, :10])
    assert raised.value.code == "wrong_width"


def test_ground_reads_files_in_one_call(tiny_model, archive, tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", good_records(5))
    results = list(ground(archive, queries, model=tiny_model, batch_size=2))
    assert [r.qid for r in results] == [f"q{i}" for i in range(5)] and all(isinstance(r, Prediction) for r in results)


def test_an_fp16_model_is_fed_half_frames(tiny_model, archive, tmp_path, monkeypatch):
    """The feed gathers clips straight into float16 slots for a graph that takes half frames; the results
    are the same whether a thread or a feed process prepared them."""
    pytest.importorskip("torch")
    from cnm_export.export import export_checkpoint

    fp16 = export_checkpoint(tiny_model.with_name("model.pt"), tiny_model.with_name("glove.pkl"),
                             tmp_path / "fp16.onnx", precision="fp16")
    assert fp16.precision == "fp16"
    grounder = Grounder(tmp_path / "fp16.onnx", batch_size=4)
    frames_types, submit = [], grounder.session.submit
    monkeypatch.setattr(grounder.session, "submit",
                        lambda batch: frames_types.append(batch.frames.dtype) or submit(batch))
    records = good_records(10)
    inline = ground_all(grounder, archive, records)
    assert set(frames_types) == {np.dtype(np.float16)} and len(inline[0]) == 10
    assert ground_all(Grounder(tmp_path / "fp16.onnx", batch_size=4, feeders=1), archive, records) == inline


def test_the_api_leaves_the_callers_floating_point_state_alone(tiny_model, archive, tmp_path):
    """ONNX Runtime flushes denormals to zero in the threads that make and run sessions: only the session's
    own threads, never the caller's or threads the caller starts later."""
    script = textwrap.dedent(f"""
        import threading
        import numpy as np
        from cnm_runtime import Grounder, ground

        def flushes():
            return bool(np.array([2.2250738585072014e-308])[0] / 4 == 0.0)

        grounder = Grounder({str(tiny_model)!r}, batch_size=2)
        clips = grounder.encode_video(np.ones((30, {FRAME_DIM}), np.float32))
        grounder.predict(clips, ["person sits", "door opens"])
        list(grounder.ground({str(archive)!r}, [{{"video": "v0", "query": "person sits"}}]))
        later = []
        thread = threading.Thread(target=lambda: later.append(flushes()))
        thread.start()
        thread.join()
        print(flushes(), later[0], float("5e-324") != 0.0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True"]


def test_encode_video_keeps_a_copy_not_the_callers_array(tiny_model):
    grounder = Grounder(tiny_model, batch_size=2)
    raw = _features(np.random.default_rng(4), 30)  # 30 rows: the clips could be views of them
    clips = grounder.encode_video(raw, 12.0)
    before = grounder.predict(clips, ["person sits"])
    raw[:] = 0
    assert grounder.predict(clips, ["person sits"]) == before


@pytest.mark.parametrize("call, code", [
    (lambda g, clips: g.encode_video(np.ones((30, FRAME_DIM), np.float32), float("nan")), "bad_duration"),
    (lambda g, clips: g.encode_video(np.ones((30, FRAME_DIM), np.float32), -30.0), "bad_duration"),
    (lambda g, clips: g.predict(clips, ["person sits"], duration=-30.0), "bad_duration"),
    (lambda g, clips: g.predict(clips, [b"person sits"]), "bad_field"),
    (lambda g, clips: g.predict(clips, [None]), "bad_field"),
])
def test_the_api_raises_input_error_with_a_code(tiny_model, call, code):
    grounder = Grounder(tiny_model, batch_size=2)
    clips = grounder.encode_video(np.ones((30, FRAME_DIM), np.float32))
    with pytest.raises(InputError) as raised:
        call(grounder, clips)
    assert raised.value.code == code


# --- containment: a bug costs its item, never the run ---------------------------------------------------

def test_an_unexpected_exception_for_one_query_or_video_is_its_internal_error(tiny_model, archive, monkeypatch):
    """Exceptions no check foresaw, raised while parsing one line, reading one video and preparing one query,
    become those items' ``internal_error`` records naming the exception; every other query is predicted as in
    a clean run."""
    import cnm_runtime.chunks as chunks_module
    import cnm_runtime.queries as queries_module
    import cnm_runtime.videos as videos_module

    records = good_records(14)
    clean, _ = ground_all(Grounder(tiny_model, batch_size=4), archive, records)
    parse, to_clips, prepare = queries_module.query_from_record, videos_module.to_clips, chunks_module.prepare_query

    def parse_fails_on_q1(record, line):
        if record.get("qid") == "q1":
            raise KeyError("a parser bug")
        return parse(record, line)

    def v2_fails(features, num_clips, frame_dim, video, *durations):
        if video == "v2":
            raise ZeroDivisionError("a reader bug")
        return to_clips(features, num_clips, frame_dim, video, *durations)

    def prepare_fails_on_q4(query, *rest):
        if query.qid == "q4":
            raise AttributeError("a preparation bug")
        return prepare(query, *rest)

    monkeypatch.setattr(queries_module, "query_from_record", parse_fails_on_q1)
    monkeypatch.setattr(videos_module, "to_clips", v2_fails)
    monkeypatch.setattr(chunks_module, "prepare_query", prepare_fails_on_q4)
    predictions, errors = ground_all(Grounder(tiny_model, batch_size=4), archive, records)
    failed = {"q1", "q4"} | {r["qid"] for r in records if r["video"] == "v2"}
    assert predictions == [p for p in clean if p["qid"] not in failed]
    assert {(e.qid, e.code) for e in errors} == {(None, "internal_error")} | {
        (qid, "internal_error") for qid in failed - {"q1"}}
    messages = " ".join(e.message for e in errors)
    assert "KeyError" in messages and "ZeroDivisionError: a reader bug" in messages and "AttributeError" in messages


@pytest.mark.parametrize("flush", [True, False])
def test_the_sessions_own_threads_flush_denormals_as_asked(tiny_model, flush):
    def flushes() -> bool:
        return bool(np.array([2.2250738585072014e-308])[0] / 4 == 0.0)

    session = ModelSession(tiny_model, RunOptions(provider="cpu", runs=1, flush_denormals=flush))
    frames = np.ones((1, 200, FRAME_DIM), np.float32)
    session.run(Batch(frames, np.zeros(1, np.int64), np.ones((1, 21), np.int64), np.ones(1, np.int64)))
    assert session._pool.submit(flushes).result() == flush and not flushes()
    session.close()


def test_a_batchs_fields_are_the_graphs_inputs():
    from dataclasses import fields

    from cnm_runtime.model_spec import INPUT_NAMES

    assert tuple(field.name for field in fields(Batch)) == INPUT_NAMES
