"""cnm-export: one self-contained ONNX file that computes what PyTorch computes, at every precision."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from conftest import GOLDEN, write_checkpoint, write_glove  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from cnm_export import cli  # noqa: E402
from cnm_export.export import export_checkpoint, export_model, load_source, nonfinite_constants  # noqa: E402
from cnm_export.flops import graph_flops  # noqa: E402
from cnm_export.graph import ChunkedCausalAttention  # noqa: E402
from cnm_export.verify import TOLERANCE, load_labelled_set, random_batch, verify_export  # noqa: E402
from cnm_runtime.model_spec import ModelSpec  # noqa: E402
from cnm_runtime.provenance import file_digest  # noqa: E402
from cnm_runtime.spans import HEADLINE_METRICS  # noqa: E402
from cnm_runtime.text import Vocabulary, load_glove  # noqa: E402
from cnm_train.checkpoint import load_checkpoint  # noqa: E402
from cnm_train.model import MultiheadAttention, causal_block, score_bias  # noqa: E402


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def spec_of(path) -> ModelSpec:
    return ModelSpec.from_metadata(session(path).get_modelmeta().custom_metadata_map)


def golden_feed(inputs, rows=slice(None)) -> dict:
    ids = inputs.word_ids[rows]
    word_ids = np.zeros((len(ids), 21), np.int64)
    word_ids[:, : ids.shape[1]] = ids
    frames = inputs.frames[rows]  # each golden query has a video of its own
    return {"frames": frames, "video_index": np.arange(len(frames), dtype=np.int64), "word_ids": word_ids,
            "words_len": inputs.words_len[rows].astype(np.int64)}


def tiny_checkpoint(tmp_path, config="charades_i3d", vocab_size=40, **kw):
    glove = write_glove(tmp_path / "glove.pkl", [f"w{i}" for i in range(vocab_size)])
    return write_checkpoint(tmp_path / "model-best.pt", config, vocab_size=vocab_size, glove_path=glove, **kw), glove


@pytest.fixture(scope="module")
def golden_exports(tmp_path_factory):
    """The golden checkpoint at all three precisions (exported once for the module)."""
    out = tmp_path_factory.mktemp("golden")
    source = load_source(GOLDEN / "model-best.pt", GOLDEN / "glove.pkl")
    for precision in ("fp32", "fp16", "int8"):
        export_model(source, out / f"{precision}.onnx", precision)
    return source, out


# --- the golden checkpoint -----------------------------------------------------------------------

def test_golden_outputs_in_one_batch_and_one_by_one(golden_exports, golden_inputs):
    _, out = golden_exports
    expected = np.load(GOLDEN / "expected.npz")
    run = session(out / "fp32.onnx")
    center, width = run.run(None, golden_feed(golden_inputs))
    np.testing.assert_allclose(center, expected["center"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(width, expected["width"], atol=1e-5, rtol=0)
    for i in range(len(expected["center"])):
        center, width = run.run(None, golden_feed(golden_inputs, slice(i, i + 1)))
        assert abs(center[0] - expected["center"][i]) < 1e-5 and abs(width[0] - expected["width"][i]) < 1e-5


def test_metadata_carries_what_the_runtime_needs(golden_exports):
    _, out = golden_exports
    spec = spec_of(out / "fp32.onnx")
    assert list(spec.words) == Vocabulary.from_glove(load_glove(GOLDEN / "glove.pkl"), 1111).words
    assert (spec.max_num_words, spec.max_num_frames, spec.frame_dim) == (20, 200, 1024)
    assert spec.max_width == pytest.approx(0.45) and spec.dataset == "CharadesSTA" and spec.precision == "fp32"
    assert spec.checkpoint_sha256 == file_digest(GOLDEN / "model-best.pt")
    assert {"torch", "onnx", "cnm"} <= set(spec.versions)
    assert spec_of(out / "int8.onnx").precision == "int8" and "onnxruntime" in spec_of(out / "int8.onnx").versions
    assert spec_of(out / "fp16.onnx").precision == "fp16"


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim], value.type.tensor_type.elem_type


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_interface_has_a_dynamic_batch_and_half_frames_for_fp16(golden_exports, precision):
    """Outputs are float32 at every precision; an fp16 graph takes its frames in float16 (half the bytes)."""
    _, out = golden_exports
    graph = onnx.load(str(out / f"{precision}.onnx")).graph
    inputs = {v.name: _dims(v) for v in graph.input}
    outputs = {v.name: _dims(v) for v in graph.output}
    FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    frames = onnx.TensorProto.FLOAT16 if precision == "fp16" else FLOAT
    assert inputs == {"frames": (["videos", 200, 1024], frames), "video_index": (["batch"], INT64),
                      "word_ids": (["batch", 21], INT64), "words_len": (["batch"], INT64)}
    assert outputs == {"center": (["batch"], FLOAT), "width": (["batch"], FLOAT)}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_file_is_checked_self_contained_and_finite(golden_exports, golden_inputs, tmp_path, precision):
    _, out = golden_exports
    alone = tmp_path / "alone" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(out / f"{precision}.onnx", alone)
    onnx.checker.check_model(str(alone), full_check=True)
    proto = onnx.load(str(alone))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert nonfinite_constants(proto) == []
    inputs = golden_feed(golden_inputs, slice(0, 3))
    inputs["frames"] = inputs["frames"].astype(np.float16 if precision == "fp16" else np.float32)
    center, _ = session(alone).run(None, inputs)
    assert np.isfinite(center).all()


def test_nonfinite_constants_are_found():
    mask = numpy_helper.from_array(np.array([0.0, -np.inf], np.float32), "mask")
    node = helper.make_node("Constant", [], ["fill"], value=numpy_helper.from_array(np.array(np.nan, np.float32)))
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("fill", onnx.TensorProto.FLOAT, [])],
                              initializer=[mask])
    assert nonfinite_constants(helper.make_model(graph)) == ["mask", "fill"]


def test_only_the_mask_generator_and_the_word_table_are_inside(golden_exports):
    source, out = golden_exports
    proto = onnx.load(str(out / "fp32.onnx"))
    stored = sum(numpy_helper.to_array(init).size for init in proto.graph.initializer)
    params = load_checkpoint(GOLDEN / "model-best.pt").model_parameters
    # The word decoder runs without memory in the generator, so its cross-attention is training-only too.
    training_only = ("fc_rec.", "mask_vec", "decoder2.decoder_layers.0.encoder_attn",
                     "decoder2.decoder_layers.1.encoder_attn")
    generator = sum(v.numel() for k, v in params.items() if not any(part in k for part in training_only))
    assert stored == generator + source.word_vectors.size
    assert stored < sum(v.numel() for v in params.values()) + source.word_vectors.size


@pytest.mark.parametrize("precision, max_error", [("fp16", 5e-3), ("int8", 5e-2)])
def test_reduced_precision_is_verified_and_reported(golden_exports, precision, max_error):
    source, out = golden_exports
    report = verify_export(out / f"{precision}.onnx", source.model, source.word_vectors, GOLDEN)
    assert report.passed
    for case in report.cases:
        assert report.verdict(case) == "reported"
        assert 0 < max(case.max_center, case.max_width) < max_error  # really reduced, still close
    labelled, queries = report.cases[3], len(np.load(GOLDEN / "expected.npz")["center"])
    assert labelled.case == "labelled set vs PyTorch" and labelled.queries == queries
    # at most two queries change sides of IoU 0.5
    assert abs(labelled.metric_change["IoU@0.5"]) <= 2 / queries and abs(labelled.metric_change["mIoU"]) < 0.01
    assert "reported" in report.table() and "d IoU@0.5" in report.table()
    assert graph_flops(out / f"{precision}.onnx") == graph_flops(out / "fp32.onnx")


def test_fp16_math_and_int8_weights(golden_exports):
    _, out = golden_exports
    fp16 = onnx.load(str(out / "fp16.onnx")).graph
    weight_types = {init.data_type for init in fp16.initializer if len(init.dims) == 2}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    int8 = onnx.load(str(out / "int8.onnx")).graph
    assert sum(node.op_type == "MatMulInteger" for node in int8.node) >= 20
    assert any(init.data_type == onnx.TensorProto.INT8 for init in int8.initializer)


def test_fp32_verification_passes_on_random_and_golden_inputs(golden_exports):
    source, out = golden_exports
    report = verify_export(out / "fp32.onnx", source.model, source.word_vectors, GOLDEN)
    assert [case.case for case in report.cases] == [
        "random, batch 1", "random, batch 7", "random, batch 64", "labelled set vs PyTorch",
        "labelled set vs expected.npz"]
    assert report.passed and all(report.verdict(case) == "ok" for case in report.cases)
    assert report.cases[3].metric_change == {name: pytest.approx(0.0, abs=1e-6) for name in HEADLINE_METRICS}


def test_verification_fails_against_another_model(golden_exports):
    source, out = golden_exports
    other = load_checkpoint(GOLDEN / "model-best.pt").build_model()
    with torch.no_grad():
        other.fc_mask_gen.bias.add_(0.01)
    report = verify_export(out / "fp32.onnx", other, source.word_vectors, batch_sizes=(1,))
    assert not report.passed and "FAIL" in report.table()


# --- export in general ---------------------------------------------------------------------------

def test_random_inputs_cover_every_query_length():
    spec = ModelSpec(words=tuple(f"w{i}" for i in range(9)), max_num_words=20, max_num_frames=200, frame_dim=8,
                     max_width=1.0)
    rng = np.random.default_rng(0)
    assert random_batch(spec, 1, rng).words_len.tolist() == [20]
    batch = random_batch(spec, 64, rng)
    assert set(batch.words_len.tolist()) == set(range(1, 21))
    assert batch.frames.shape == (32, 200, 8) and batch.word_ids.shape == (64, 21)  # two queries a video
    assert batch.video_index.tolist() == [i // 2 for i in range(64)]
    assert batch.word_ids.max() == 9 and (batch.word_ids[:, 0] == 0).all()
    assert ((batch.word_ids > 0).sum(axis=1) == batch.words_len).all()


@pytest.mark.parametrize("config, vocab_size, frame_dim", [
    ("charades_i3d", 1111, 1024), ("activitynet_clip", 8000, 512), ("activitynet_c3d", 8000, 500)])
def test_every_original_config_exports_and_verifies(tmp_path, config, vocab_size, frame_dim):
    checkpoint, glove = tiny_checkpoint(tmp_path, config, vocab_size)
    spec = export_checkpoint(checkpoint, glove, tmp_path / "model.onnx")
    assert spec.frame_dim == frame_dim and len(spec.words) == vocab_size
    assert spec_of(tmp_path / "model.onnx") == spec
    source = load_source(checkpoint, glove)
    report = verify_export(tmp_path / "model.onnx", source.model, source.word_vectors)
    assert report.passed, report.table()
    assert [case.queries for case in report.cases] == [1, 7, 64]


def _analytic_flops(d, layers, frame_dim, pruned, frames=200, slots=21, word_dim=300, chunks=4):
    """Matrix-product FLOPs of the generator counted by hand (2 per multiply-add), as (per video, per query):
    the clips' projection and the first frame layer's self-attention run once per video. Pruned, the last
    frame layer computes one position and the clips' causal self-attention runs in ``chunks`` slices of
    rows, each against the keys up to its end. ``layers`` >= 2."""
    def attention(queries, keys, products=None):  # projections of q, k, v, out; scores; weighted sum
        products = 2 * queries * keys * d if products is None else products
        return 2 * (2 * queries * d * d + 2 * keys * d * d + products)

    def ffn(queries):
        return 2 * 2 * queries * d * 2 * d

    causal = None
    if pruned:
        rows = frames // chunks
        causal = sum(2 * rows * (i + 1) * rows * d for i in range(chunks))
    per_video = 2 * frames * frame_dim * d + attention(frames, frames, causal)
    after_self = attention(frames, slots) + ffn(frames)  # the rest of a full frame layer
    last = 1 if pruned else frames
    frame_layers = after_self + (layers - 2) * (attention(frames, frames, causal) + after_self)
    frame_layers += attention(last, frames) + attention(last, slots) + ffn(last)
    words = 2 * slots * word_dim * d + layers * (attention(slots, slots) + ffn(slots))
    return per_video, words + frame_layers + 2 * d * 2


@pytest.mark.parametrize("num_clips, chunks", [(200, 4), (37, 3), (8, 4)])
def test_chunked_causal_attention_equals_the_full_product(num_clips, chunks):
    torch.manual_seed(0)
    attention = MultiheadAttention(16, 4).eval()
    clips = torch.randn(3, num_clips, 16)
    causal = score_bias(causal_block(num_clips, num_clips, clips.device))[None, None]
    with torch.no_grad():
        expected = attention(clips, clips, causal)
        got = ChunkedCausalAttention(attention, chunks)(clips, clips, causal)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_pruned_graph_matches_the_full_one_with_fewer_flops(tmp_path):
    """The Charades shape (d=256, 3+3 layers, 1024-d frames): about 1.11 GFLOP per query before pruning."""
    checkpoint, glove = tiny_checkpoint(tmp_path, d_model=256, layers=(3, 3))
    export_checkpoint(checkpoint, glove, tmp_path / "full.onnx", prune=False)
    export_checkpoint(checkpoint, glove, tmp_path / "pruned.onnx")
    full, pruned = graph_flops(tmp_path / "full.onnx"), graph_flops(tmp_path / "pruned.onnx")
    assert (full.per_video, full.per_query) == _analytic_flops(256, 3, 1024, pruned=False)
    assert (pruned.per_video, pruned.per_query) == _analytic_flops(256, 3, 1024, pruned=True)
    assert 1.10e9 < full.per_query_at() < 1.12e9 and pruned.per_query_at() < 0.8 * full.per_query_at()
    inputs = random_batch(spec_of(tmp_path / "full.onnx"), 7, np.random.default_rng(1)).inputs()
    full_outputs = session(tmp_path / "full.onnx").run(None, inputs)
    for expected, got in zip(full_outputs, session(tmp_path / "pruned.onnx").run(None, inputs)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_export_leaves_the_live_module_unchanged(tmp_path):
    checkpoint, glove = tiny_checkpoint(tmp_path)
    source = load_source(checkpoint, glove)
    feed = {k: torch.from_numpy(v) for k, v in random_batch(source.spec, 5, np.random.default_rng(2)).inputs().items()}
    words = torch.from_numpy(source.word_vectors)[feed["word_ids"]]

    def eager():
        with torch.no_grad():
            return source.model.generate(feed["frames"], words, feed["words_len"], video_index=feed["video_index"])

    before = eager()
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    source.model.train()
    for precision in ("fp16", "fp32", "int8"):
        export_model(source, tmp_path / f"{precision}.onnx", precision)
    assert source.model.training
    source.model.eval()
    assert all(torch.equal(v, state[k]) for k, v in source.model.state_dict().items())
    after = eager()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_opset_is_honoured(tmp_path):
    checkpoint, glove = tiny_checkpoint(tmp_path)
    export_checkpoint(checkpoint, glove, tmp_path / "m.onnx", opset=17)
    assert {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}[""] == 17


def test_wrong_vocabulary_is_a_clear_error(tmp_path):
    checkpoint, _ = tiny_checkpoint(tmp_path, vocab_size=40)
    small = write_glove(tmp_path / "small.pkl", ["a", "b"])
    with pytest.raises(ValueError, match="small.pkl: 3 ids but the checkpoint expects 41"):
        export_checkpoint(checkpoint, small, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_labelled_set_skips_bad_queries(tmp_path):
    import h5py

    spec = ModelSpec(words=("person", "door"), max_num_words=20, max_num_frames=200, frame_dim=4, max_width=1.0)
    with h5py.File(tmp_path / "features.hdf5", "w") as archive:
        archive["good"] = np.ones((30, 4), np.float32)
        archive["narrow"] = np.ones((30, 3), np.float32)
    lines = [
        {"video": "good", "query": "zebra", "duration": 10.0, "timestamps": [1, 2]},
        {"video": "narrow", "query": "person", "duration": 10.0, "timestamps": [1, 2]},
        {"video": "good", "query": "the person opens the door", "duration": 10.0, "timestamps": [2, 5]},
        {"video": "good", "query": "person"},  # no ground truth
    ]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    labelled = load_labelled_set(tmp_path / "features.hdf5", tmp_path / "queries.jsonl", spec)
    assert [query.line for query in labelled.queries] == [3] and labelled.read == 4
    assert labelled.batch.word_ids.tolist() == [[0, 1, 2] + [0] * 18] and labelled.batch.words_len.tolist() == [2]
    assert labelled.batch.frames.shape == (1, 200, 4)
    np.testing.assert_allclose(labelled.truth, [[0.2, 0.5]])


# --- the command ---------------------------------------------------------------------------------

def test_command_defaults_vocab_and_output_and_verifies(tmp_path):
    checkpoint, _ = tiny_checkpoint(tmp_path)
    result = CliRunner().invoke(cli.main, [str(checkpoint), "--verify"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "model-best.onnx"
    assert f"wrote {written}" in result.output and "GFLOPs per query" in result.output
    judged = result.output.count("fp32, vs PyTorch (fp32, unpruned); tolerance: 1e-05")  # ONNX Runtime, OpenVINO
    assert "ONNX Runtime (CPU), fp32, vs PyTorch" in result.output and result.output.count(" ok") == 3 * judged
    assert spec_of(written).precision == "fp32"


def test_command_exits_non_zero_when_fp32_verification_fails(tmp_path, monkeypatch):
    checkpoint, glove = tiny_checkpoint(tmp_path)
    monkeypatch.setitem(TOLERANCE, "fp32", -1.0)  # nothing can agree within a negative tolerance
    args = [str(checkpoint), "--vocab", str(glove), "-o", str(tmp_path / "x.onnx"), "--verify"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1 and "FAIL" in result.output


def test_command_names_the_missing_vocabulary(tmp_path):
    glove = write_glove(tmp_path / "glove.pkl", [f"w{i}" for i in range(40)])
    checkpoint = write_checkpoint(tmp_path / "m.pt", vocab_size=40, glove_path=glove)
    glove.unlink()
    result = CliRunner().invoke(cli.main, [str(checkpoint)])
    assert result.exit_code != 0 and "vocab_path" in result.output and str(glove) in result.output


def write_training_output(glove: Path, checkpoint: Path, vocab_path: str, saved_path: str) -> dict:
    """A vocabulary and a checkpoint whose config names them as training, run elsewhere, would have: the
    checkpoint's contents."""
    glove.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    write_glove(glove, [f"w{i}" for i in range(40)])
    write_checkpoint(checkpoint, vocab_size=40)
    raw = torch.load(checkpoint, weights_only=True)
    raw["config"]["dataset"]["vocab_path"] = vocab_path
    raw["config"]["train"]["model_saved_path"] = saved_path
    torch.save(raw, checkpoint)
    return raw


def test_vocabulary_found_from_the_checkpoint_folder(tmp_path, monkeypatch):
    """`cnm-export model-best.pt` run where training saved it: config paths are relative to where training ran."""
    trained_in, folder = tmp_path / "project", tmp_path / "project" / "checkpoints" / "run" / "base"
    checkpoint = folder / "model-best.pt"
    raw = write_training_output(trained_in / "data" / "glove.pkl", checkpoint, "data/glove.pkl", "checkpoints/run/base")
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(cli.main, ["model-best.pt"])
    assert result.exit_code == 0, result.output
    assert (folder / "model-best.onnx").is_file()
    raw["config"]["train"]["model_saved_path"] = "elsewhere/base"  # training dir unknown: a clear error
    torch.save(raw, checkpoint)
    result = CliRunner().invoke(cli.main, ["model-best.pt", "-o", "x.onnx"])
    assert result.exit_code != 0 and "data/glove.pkl" in result.output


def test_vocabulary_found_in_a_moved_training_folder(tmp_path, monkeypatch):
    """`cp -r runs/demo X && cd X && cnm-export model-best.pt`: the vocabulary kept in training's own output
    folder travels with it."""
    trained = tmp_path / "runs" / "demo"
    write_training_output(trained / "data" / "glove.pkl", trained / "model-best.pt", "runs/demo/data/glove.pkl",
                          "runs/demo")
    moved = tmp_path / "X"
    shutil.copytree(trained, moved)
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.chdir(moved)
    result = CliRunner().invoke(cli.main, ["model-best.pt", "--verify"])
    assert result.exit_code == 0, result.output
    assert (moved / "model-best.onnx").is_file()


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('RAN', 'w').write('code ran')",))


@pytest.mark.parametrize("output, flag", [("model.pt", "CHECKPOINT"), ("link.pt", "CHECKPOINT"),
                                          ("glove.pkl", "--vocab"), ("glove.xml", "--vocab")])
def test_an_output_that_is_an_input_is_refused_untouched(tmp_path, monkeypatch, output, flag):
    """`cnm-export model.pt -o model.pt` would replace the trained checkpoint with its export; an IR's .bin
    counts as an output too."""
    monkeypatch.chdir(tmp_path)
    write_glove(tmp_path / "glove.pkl", [f"w{i}" for i in range(40)])
    write_checkpoint(tmp_path / "model.pt", vocab_size=40)
    (tmp_path / "link.pt").symlink_to("model.pt")
    (tmp_path / "glove.bin").symlink_to("glove.pkl")  # glove.xml's weights would be written here
    before = {name: (tmp_path / name).read_bytes() for name in ("model.pt", "glove.pkl")}
    precision = ["--precision", "openvino-int8"] if output.endswith(".xml") else []
    result = CliRunner().invoke(cli.main, ["model.pt", "--vocab", "glove.pkl", "-o", output, *precision])
    assert result.exit_code == 2 and f"is the same file as {flag}" in result.output, result.output
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("content", [
    {"num_updates": 1, "config": _RunsCode(), "model_parameters": {}},  # loading it would run code
    b"not a checkpoint at all",
    [1, 2, 3],
    {"num_updates": 1, "config": "a string", "model_parameters": {}},
])
def test_a_file_that_is_not_a_cnm_checkpoint_is_one_clear_line(tmp_path, monkeypatch, content):
    import torch

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "crafted.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    result = CliRunner().invoke(cli.main, [str(path), "--vocab", str(write_glove(tmp_path / "g.pkl", ["a"]))])
    assert result.exit_code != 0 and "not a CNM checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "RAN").exists()
