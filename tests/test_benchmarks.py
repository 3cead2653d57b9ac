"""benchmarks/: a quick run on tiny data produces the JSON, the markdown and the plot (no timing is judged)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from click.testing import CliRunner  # noqa: E402
from conftest import REPO, write_checkpoint, write_glove  # noqa: E402

if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import run  # noqa: E402
from benchmarks.engines import torch_runner  # noqa: E402
from benchmarks.summary import check_targets, speed_figures  # noqa: E402
from benchmarks.worker import Worker  # noqa: E402
from cnm_export.export import export_checkpoint  # noqa: E402
from cnm_export.flops import Flops  # noqa: E402
from cnm_runtime.batch import Batch  # noqa: E402
from cnm_runtime.datasets.default import make_default_dataset  # noqa: E402
from cnm_runtime.text import load_glove  # noqa: E402

CPU_ENGINES = ("torch-eager", "torch-compile", "torch-compile-bf16", "ort-fp32", "ort-int8", "ort-fp32-side",
               "ov-fp32", "ov-int8")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``--quick`` on a random-weight model and a 10-video synthetic archive, with one bad query added."""
    folder = tmp_path_factory.mktemp("bench")
    data = make_default_dataset(folder / "data", num_videos=10, queries_per_video=2, seed=0)
    words = len(load_glove(data.glove)["counter"])
    checkpoint = write_checkpoint(folder / "model.pt", vocab_size=words, glove_path=data.glove)
    queries = folder / "queries.jsonl"
    queries.write_text(data.queries.read_text() + json.dumps({"video": "missing", "query": "a person opens the door.",
                                                              "duration": 10, "timestamps": [1, 2]}) + "\n")
    out = folder / "results"
    result = CliRunner().invoke(run.main, [
        "--checkpoint", str(checkpoint), "--vocab", str(data.glove), "--features", str(data.archive),
        "--queries", str(queries), "--calibration-queries", str(data.train), "--calibration-features", str(data.archive),
        "--quick", "--out-dir", str(out),
    ])
    assert result.exit_code == 0, result.output
    return result.stdout, out  # what it printed; its progress and logs go to standard error


def test_quick_run_writes_json_markdown_and_plot(tiny_run):
    printed, out = tiny_run
    (json_path,) = out.glob("*.json")
    results = json.loads(json_path.read_text())
    assert out.joinpath(json_path.stem + ".md").read_text() == printed
    assert out.joinpath(json_path.stem + ".png").read_bytes().startswith(b"\x89PNG")

    assert results["inputs"]["queries_used"] == 2 and results["inputs"]["queries_skipped"] == 1
    assert results["inputs"]["synthetic_features"] is True
    quick = run.Settings(**run.QUICK, threads=1, feed_processes=(0, 1), quick=True)
    for name in CPU_ENGINES:
        engine = results["engines"][name]
        assert engine["status"] == "ran"
        assert set(engine["speed"]) == {"1", "4"}
        for batch, figures in engine["speed"].items():
            assert len(figures["queries_per_s"]["rounds"]) == quick.rounds
            assert 0 < figures["queries_per_s"]["min"] <= figures["queries_per_s"]["median"]
            assert figures["latency_ms"]["batches"] == quick.rounds * quick.batches(int(batch))
            assert figures["gflops_per_s"] > 0
            assert 1 <= figures["videos_per_batch"] <= int(batch)
        assert set(engine["accuracy"]) >= {"IoU@0.3", "IoU@0.5", "IoU@0.7", "mIoU", "max_abs_d_center"}
    engines = results["engines"]
    assert engines["torch-eager"]["accuracy"]["max_abs_d_center"] == 0
    assert engines["ort-fp32"]["accuracy"]["max_abs_d_center"] < 1e-5
    assert engines["torch-eager"]["flops_per_query"] > engines["ort-fp32"]["flops_per_query"] > 0  # pruned
    if results["machine"]["gpu"] is None:
        assert engines["ort-trt-fp16"]["status"] == "not run: no GPU" and "speed" not in engines["ort-trt-fp16"]
    assert results["machine"]["sgemm_gflops"] > 0

    e2e = results["end_to_end"]
    assert e2e["batch_size"] == 4 and e2e["queries"] == 32 and e2e["errors"] == 0
    assert e2e["peak_rss_mb"] > 0 and e2e["mIoU"] == pytest.approx(engines["ort-fp32"]["accuracy"]["mIoU"], abs=1e-6)
    assert e2e["side_by_side_ratio"] == pytest.approx(
        e2e["queries_per_s"]["median"] / engines["ort-fp32-side"]["speed"]["4"]["queries_per_s"]["median"])
    assert engines["ort-fp32-side"]["accuracy"] == engines["ort-fp32"]["accuracy"]  # the same graph
    assert all(target["met"] is not None for target in results["targets"]), results["targets"]
    assert engines["ov-fp32"]["accuracy"]["max_abs_d_center"] < 1e-5
    assert engines["torch-compile"]["accuracy"]["max_abs_d_center"] < 1e-5
    for name in ("ov-fp32", "ov-bf16", "ov-int8"):  # cnm-run through its command line on each OpenVINO engine
        end = results["end_to_end_by_engine"][name]
        if name != "ov-bf16" or engines[name]["status"] == "ran":
            assert end["queries"] == 32 and end["provider"].startswith("OpenVINO CPU") and end["ratio"] > 0
    feed = results["feed_only"]
    assert set(feed["by_processes"]) == {"0", "1"} and feed["queries"] == 32
    assert all(figures["queries_per_s"]["median"] > 0 for figures in feed["by_processes"].values())
    assert feed["by_processes"]["1"]["vs_one_process"] == 1.0 and "Feed only" in printed
    assert "| ONNX Runtime int8 | 4 |" in printed and "not run: no GPU" in printed
    for batch, name in results["fastest"].items():
        medians = [e["speed"][batch]["queries_per_s"]["median"] for e in engines.values() if "speed" in e]
        assert engines[name]["speed"][batch]["queries_per_s"]["median"] == max(medians)
    assert f"batch 4: {engines[results['fastest']['4']]['label']}" in printed


def test_without_inputs_the_error_says_how_to_make_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(run.main, ["--quick"])
    assert result.exit_code == 2
    assert "cnm-demo --out runs/demo" in result.output


def test_summary_figures():
    flops = Flops(per_video=2e9, per_query=1e9)
    figures = speed_figures([10.0, 30.0, 20.0], [0.1] * 99 + [1.0], [1, 3] * 50, 4, flops)
    assert figures["queries_per_s"]["median"] == 20 and figures["queries_per_s"]["min"] == 10
    assert figures["latency_ms"]["p50"] == pytest.approx(100) and figures["latency_ms"]["p99"] > 100
    assert figures["videos_per_batch"] == 2  # half a video per query: 1e9 + 2e9 / 2 FLOPs per query
    assert figures["gflops_per_s"] == pytest.approx(40)

    def engine(qps, miou):
        return {"speed": {"64": {"queries_per_s": {"median": qps}}}, "accuracy": {"IoU@0.5": miou, "mIoU": miou}}

    engines = {"torch-eager": engine(100, 0.5), "ort-fp32": engine(200, 0.5), "ort-int8": engine(310, 0.48)}
    met = [t["met"] for t in check_targets(engines, {"queries_per_s": {"median": 180}}, None, 64)]
    assert met[:5] == [True, True, False, False, True] and met[5:] == [None]  # no CPU engine: no best one
    assert check_targets({**engines, "ort-int8": {}}, None, None, 64)[1]["met"] is None
    unshared = check_targets(engines, {"queries_per_s": {"median": 180}}, None, 64, videos_shared=False)[4]
    assert unshared["met"] is None and unshared["value"] == 0.9 and "not judged" in unshared["target"]

    feed = {"by_processes": {"1": {"vs_one_process": 1.0}, "2": {"vs_one_process": 1.5},
                             "16": {"vs_one_process": 6.0}}}
    assert [(t["value"], t["met"]) for t in check_targets(engines, None, feed, 64)[5:7]] == [(1.5, False), (6.0, True)]
    gpu = {**engines, "torch-cuda-fp16": {"speed": {"16": engine(900, 0)["speed"]["64"], "64": engine(1000, 0)["speed"]["64"]}},
           "ort-cuda-fp32": {"speed": {"64": engine(800, 0)["speed"]["64"]}},
           "ort-cuda-fp16": {"speed": {"64": engine(1200, 0)["speed"]["64"]}}}
    gpu_run = {"queries_per_s": {"median": 180}, "gpu": {"batch_size": 64, "ratio": 0.7}}
    (peer, end_to_end) = check_targets(gpu, gpu_run, None, 64)[5:7]
    assert (peer["value"], peer["met"], end_to_end["met"]) == (1.2, True, False) and "batch 64" in peer["target"]


def test_cpu_engine_targets():
    def engine(qps, iou, miou, device="cpu"):
        return {"device": device, "label": f"label {qps}", "speed": {"64": {"queries_per_s": {"median": qps}}},
                "accuracy": {"IoU@0.5": iou, "mIoU": miou}}

    engines = {"torch-eager": engine(50, 0.5, 0.4), "ort-fp32": engine(100, 0.5, 0.4), "ort-int8": engine(250, 0.5, 0.4),
               "ort-fp32-side": engine(110, 0.5, 0.4), "ov-fp32": engine(120, 0.5, 0.4),
               "ov-bf16": engine(280, 0.496, 0.4), "ov-int8": engine(400, 0.48, 0.4)}  # int8 costs 2 points
    ends = {"ov-bf16": {"ratio": 0.9, "model_only_queries_per_s": 280}, "ov-fp32": {"ratio": 0.5,
                                                                                     "model_only_queries_per_s": 120}}
    best, bf16, int8, e2e, auto = check_targets(engines, None, None, 64, engine_ends=ends)[5:]
    assert "OpenVINO" not in best["target"] and "label 280" in best["target"]  # int8 is too far from fp32
    assert (best["value"], best["met"]) == (2.8, False)
    assert (bf16["value"], bf16["met"]) == (pytest.approx(0.004), True) and "label 280" in bf16["target"]
    assert (int8["value"], int8["met"]) == (pytest.approx(0.02), False)
    assert (e2e["value"], e2e["met"]) == (0.9, True) and "label 280" in e2e["target"]
    assert (auto["value"], auto["met"]) == (pytest.approx(120 / 110), True)


def test_pytorch_half_engine_runs_the_model_in_float16(tmp_path):
    """The GPU fp16 engine's path, run on the CPU: same outputs as fp32 up to float16 rounding."""
    glove = write_glove(tmp_path / "glove.pkl", [f"w{i}" for i in range(20)])
    checkpoint = write_checkpoint(tmp_path / "model.pt", vocab_size=20, glove_path=glove)
    rng = np.random.default_rng(0)
    batch = Batch(rng.random((2, 200, 1024), dtype=np.float32), np.array([0, 1, 1]), rng.integers(1, 21, (3, 21)),
                  np.array([20, 5, 1]))
    fp32, fp16 = (torch_runner(checkpoint, glove, "cpu", 1, half)(batch) for half in (False, True))
    for ours, reference in zip(fp16, fp32):
        assert ours.dtype == np.float32
        assert 0 < np.abs(ours - reference).max() < 1e-2


def test_an_engine_that_cannot_start_answers_why(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA engine starts")
    glove = write_glove(tmp_path / "glove.pkl", [f"w{i}" for i in range(20)])
    model = tmp_path / "model.onnx"
    export_checkpoint(write_checkpoint(tmp_path / "model.pt", vocab_size=20, glove_path=glove), glove, model)
    inputs = tmp_path / "batch.npz"
    Batch(np.zeros((1, 200, 1024), np.float32), np.zeros(1, np.int64), np.zeros((1, 21), np.int64),
          np.ones(1, np.int64)).save(inputs)
    options = ["--inputs", str(inputs), "--model", str(model), "--threads", "1", "--max-batch", "1"]
    worker = Worker("ort-cuda-fp16", options, {})
    worker.close()
    assert "--provider cuda: " in worker.started["error"]
    worker = Worker("ort-fp32", options, {})
    try:
        assert worker.started == {"ready": True, "provider": "CPUExecutionProvider"}
        assert len(worker.ask({"cmd": "measure", "batch_size": 1, "batches": 2})["latencies_s"]) == 2
    finally:
        worker.close()


def test_model_only_batches_share_videos_unless_told_not_to(tmp_path):
    glove = write_glove(tmp_path / "glove.pkl", [f"w{i}" for i in range(20)])
    model = tmp_path / "model.onnx"
    export_checkpoint(write_checkpoint(tmp_path / "model.pt", vocab_size=20, glove_path=glove), glove, model)
    inputs = tmp_path / "batch.npz"
    Batch(np.ones((2, 200, 1024), np.float32), np.array([0, 0, 1, 1]), np.ones((4, 21), np.int64),
          np.full(4, 20, np.int64)).save(inputs)
    options = ["--inputs", str(inputs), "--model", str(model), "--threads", "1", "--max-batch", "4"]
    for extra, videos in (([], [2, 2]), (["--one-video-per-query"], [4, 4])):
        worker = Worker("ort-fp32", options + extra, {})
        try:
            assert worker.ask({"cmd": "measure", "batch_size": 4, "batches": 2})["videos"] == videos
        finally:
            worker.close()


def test_the_readmes_figures_are_generated_from_the_results_json():
    """benchmarks/README.md and the top README's generated blocks (results table, worst seed) are what the results
    JSON gives: a figure typed by hand, or a result added without regenerating, fails here (python -m
    benchmarks.readme mends it)."""
    from benchmarks import readme

    assert (readme.BENCHMARKS / "README.md").read_text() == readme.benchmarks_readme()
    top = readme.TOP_README.read_text()
    for (start, end), lines in readme.generated_blocks():
        assert "\n".join([start, *lines, end]) in top


def test_features_benchmark_quick_run_is_rendered(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("transformers")
    from benchmarks import features
    from benchmarks.readme import BENCHMARKS_SHOWN, render

    result = CliRunner().invoke(features.main, ["--quick", "--workers", "0", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert results["decoding"]["rows"] == 4 and results["model_alone"]["frames_per_s"]["median"] > 0
    onnx = results["model_alone_onnx_runtime"]
    if results["model_alone"]["device"] == "cpu":
        assert onnx["status"] == "ran" and onnx["max_abs_diff_vs_torch"] < 1e-4
    (run,) = results["end_to_end"]
    assert run["workers"] == 0 and run["frames"] == 4 and run["frames_per_s"] > 0
    (shown,) = [b for b in BENCHMARKS_SHOWN if b.folder == "features"]
    assert "cnm-features end to end" in render(shown, results)
