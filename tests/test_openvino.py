"""OpenVINO beside ONNX Runtime: the same numbers at fp32, bf16 and int8 within stated tolerances, safe from
several threads, an int8 export calibrated on the training split only, and which engine runs what."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

from click.testing import CliRunner  # noqa: E402
from conftest import REPO, write_checkpoint  # noqa: E402

from cnm_export import cli as export_cli  # noqa: E402
from cnm_export.export import export_model, load_source  # noqa: E402
from cnm_export.openvino_int8 import training_split  # noqa: E402
from cnm_export.verify import random_batch, verify_engines  # noqa: E402
from cnm_runtime import engines, openvino_session  # noqa: E402
from cnm_runtime.archive import FeatureArchive  # noqa: E402
from cnm_runtime.datasets.default import make_default_dataset  # noqa: E402
from cnm_runtime.grounder import Grounder  # noqa: E402
from cnm_runtime.openvino_session import OpenVinoSession, cpu_has_bf16  # noqa: E402
from cnm_runtime.options import RunOptions  # noqa: E402
from cnm_runtime.queries import read_queries  # noqa: E402
from cnm_runtime.session import ModelSession  # noqa: E402
from cnm_runtime.text import load_glove  # noqa: E402

# Largest |d center| and |d width| from ONNX Runtime fp32 on the tiny random-weight model, at each precision:
# fp32 is the exactness promise; bf16 keeps 8 bits of mantissa (~4e-3 relative per operation); int8 (static,
# per-tensor activations) is judged on a trained model by the benchmark, here it must stay within this.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2, "int8": 1e-1}
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 arithmetic")


def videos_of(path) -> set[str]:
    return {query.video for query in read_queries(path)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model whose config names a synthetic dataset's splits, exported at fp32, ONNX Runtime int8 and
    openvino-int8, the last with the test split deleted and every video it read recorded."""
    folder = tmp_path_factory.mktemp("openvino")
    data = make_default_dataset(folder / "data", num_videos=20, queries_per_video=2, seed=0)
    splits = {"train_data": str(data.train), "val_data": str(data.val), "test_data": str(data.test),
              "feature_path": str(data.archive)}
    checkpoint = write_checkpoint(folder / "model.pt", vocab_size=len(load_glove(data.glove)["counter"]),
                                  glove_path=data.glove, dataset=splits)
    source = load_source(checkpoint)
    export_model(source, folder / "fp32.onnx")
    export_model(source, folder / "int8.onnx", "int8")
    test_split = data.test.read_bytes()
    data.test.unlink()  # calibration must not need it
    read = []
    original = FeatureArchive.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureArchive, "load", lambda self, name: read.append(name) or original(self, name))
        spec = export_model(source, folder / "openvino-int8.xml", "openvino-int8")
    data.test.write_bytes(test_split)
    return {"folder": folder, "data": data, "source": source, "spec": spec, "calibration_videos": set(read)}


def batches(spec, sizes=(1, 7, 64, 5, 16, 3, 33, 2), seed=0):
    rng = np.random.default_rng(seed)
    return [random_batch(spec, size, rng) for size in sizes]


def max_difference(ours, reference) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ours, reference))


def test_openvino_fp32_gives_onnx_runtimes_numbers(exported):
    reference = ModelSession(exported["folder"] / "fp32.onnx", RunOptions(provider="cpu"))
    session = OpenVinoSession(exported["folder"] / "fp32.onnx")
    assert session.provider == "OpenVINO CPU fp32" and session.spec == reference.spec
    assert session.runs >= 1 and session.device == "cpu" and session.default_feeders() == 0
    for batch in batches(session.spec):
        center, width = session.run(batch)
        assert center.dtype == width.dtype == np.float32 and center.shape == (len(batch),)
        assert max_difference((center, width), reference.run(batch)) <= TOLERANCE["fp32"]


@needs_bf16
def test_bf16_drifts_within_its_tolerance(exported):
    reference = ModelSession(exported["folder"] / "fp32.onnx", RunOptions(provider="cpu"))
    session = OpenVinoSession(exported["folder"] / "fp32.onnx", RunOptions(precision="bf16"))
    assert session.provider == "OpenVINO CPU bf16"
    drift = max(max_difference(session.run(batch), reference.run(batch)) for batch in batches(session.spec))
    assert 1e-6 < drift <= TOLERANCE["bf16"]  # it did run in bf16, and close to fp32


def test_int8_ir_carries_the_metadata_and_drifts_within_its_tolerance(exported):
    session = OpenVinoSession(exported["folder"] / "openvino-int8.xml")
    source_spec = exported["source"].spec
    assert session.spec == exported["spec"] and session.spec.precision == "openvino-int8"
    assert (session.spec.words, session.spec.checkpoint_sha256) == (source_spec.words, source_spec.checkpoint_sha256)
    assert {"openvino", "nncf", "torch"} <= set(session.spec.versions)
    assert session.provider == "OpenVINO CPU int8"
    reference = ModelSession(exported["folder"] / "fp32.onnx", RunOptions(provider="cpu"))
    drift = max(max_difference(session.run(batch), reference.run(batch)) for batch in batches(session.spec))
    assert 1e-6 < drift <= TOLERANCE["int8"]


def test_int8_is_calibrated_on_training_videos_only(exported):
    data = exported["data"]
    assert exported["calibration_videos"] and exported["calibration_videos"] <= videos_of(data.train)
    assert not exported["calibration_videos"] & videos_of(data.test)


def test_calibrating_on_the_test_split_is_refused(exported, tmp_path):
    source, data = exported["source"], exported["data"]
    calibration = training_split(source, queries=data.test)
    with pytest.raises(ValueError, match="test split"):
        export_model(source, tmp_path / "model.xml", "openvino-int8", calibration=calibration)
    assert not list(tmp_path.iterdir())


def test_several_batches_at_once_give_what_one_at_a_time_gives(exported):
    for path in ("fp32.onnx", "openvino-int8.xml"):
        session = OpenVinoSession(exported["folder"] / path)
        inputs = batches(session.spec, seed=1) * 2
        one_at_a_time = [session.run(batch) for batch in inputs]
        with ThreadPoolExecutor(2 * session.runs + 1) as pool:
            at_once = list(pool.map(session.run, inputs))
        for (center, width), (expected_center, expected_width) in zip(at_once, one_at_a_time):
            np.testing.assert_array_equal(center, expected_center)
            np.testing.assert_array_equal(width, expected_width)


def test_cnm_run_on_openvino_predicts_what_onnx_runtime_predicts(exported):
    data, model = exported["data"], exported["folder"] / "fp32.onnx"
    ours = list(Grounder(model, provider="openvino", batch_size=8).ground(data.archive, data.train))
    theirs = list(Grounder(model, provider="cpu", batch_size=8).ground(data.archive, data.train))
    assert [p.qid for p in ours] == [p.qid for p in theirs] and len(ours) > 16
    assert max(abs(a.center - b.center) + abs(a.width - b.width) for a, b in zip(ours, theirs)) <= TOLERANCE["fp32"]


def test_the_engine_follows_the_file_the_provider_and_the_precision(exported, monkeypatch):
    folder = exported["folder"]
    monkeypatch.setattr(engines, "OPENVINO_FOR_FP32", True)
    assert isinstance(engines.open_session(folder / "fp32.onnx"), OpenVinoSession)
    assert isinstance(engines.open_session(folder / "fp32.onnx", RunOptions(provider="cpu")), ModelSession)
    assert isinstance(engines.open_session(folder / "int8.onnx"), ModelSession)  # OpenVINO would dequantize it
    assert engines.open_session(folder / "openvino-int8.xml").provider == "OpenVINO CPU int8"
    monkeypatch.setattr(engines, "OPENVINO_FOR_FP32", False)
    assert isinstance(engines.open_session(folder / "fp32.onnx"), ModelSession)
    monkeypatch.setattr(openvino_session, "is_installed", lambda: False)
    assert isinstance(engines.open_session(folder / "fp32.onnx"), ModelSession)


@pytest.mark.parametrize("path, provider, precision, error", [
    ("openvino-int8.xml", "cpu", None, "OpenVINO IR"),
    ("openvino-int8.xml", "auto", "fp32", "cannot run at fp32"),
    ("int8.onnx", "openvino", None, "--provider cpu"),
    ("int8.onnx", "auto", "fp32", "cannot run at fp32"),
    ("fp32.onnx", "cpu", "bf16", "no bf16"),
    ("fp32.onnx", "auto", "int8", "chosen at export"),
])
def test_what_cannot_run_says_why(exported, path, provider, precision, error):
    with pytest.raises(ValueError, match=error):
        engines.open_session(exported["folder"] / path, RunOptions(provider=provider, precision=precision))


def test_bf16_where_the_cpu_lacks_it_is_refused(exported, monkeypatch):
    monkeypatch.setattr(openvino_session, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="no bf16 arithmetic"):
        OpenVinoSession(exported["folder"] / "fp32.onnx", RunOptions(precision="bf16"))


def test_verify_reports_every_engine_and_precision(exported):
    source, folder = exported["source"], exported["folder"]
    reports = verify_engines(folder / "fp32.onnx", source.model, source.word_vectors)
    assert [(report.engine, report.precision) for report in reports] == [
        ("ONNX Runtime (CPU)", "fp32"), ("OpenVINO (CPU)", "fp32"), *([("OpenVINO (CPU)", "bf16")] * cpu_has_bf16())]
    assert [report.passed for report in reports] == [True] * len(reports)
    (report,) = verify_engines(folder / "openvino-int8.xml", source.model, source.word_vectors)
    assert (report.engine, report.precision, report.tolerance) == ("OpenVINO (CPU)", "int8", None)


def test_export_cli_names_the_int8_file_for_openvino_and_refuses_a_mismatch(exported, tmp_path):
    checkpoint = exported["source"].checkpoint
    result = CliRunner().invoke(export_cli.main, [str(checkpoint), "--precision", "openvino-int8",
                                                  "-o", str(tmp_path / "model.onnx")])
    assert result.exit_code != 0 and "ends in .xml" in result.output
    result = CliRunner().invoke(export_cli.main, [str(checkpoint), "-o", str(tmp_path / "model.onnx"),
                                                  "--calibration-queries", str(exported["data"].train)])
    assert result.exit_code != 0 and "are for openvino-int8" in result.output
    assert not (tmp_path / "model.onnx").exists()


AFTER_ONNX_RUNTIME = """
import sys, numpy as np
from cnm_export.verify import random_batch
from cnm_runtime.openvino_session import OpenVinoSession
from cnm_runtime.options import RunOptions
from cnm_runtime.session import ModelSession
reference = ModelSession(sys.argv[1], RunOptions(provider="cpu"))  # ONNX Runtime may flush denormals here
session = OpenVinoSession(sys.argv[1])
batch = random_batch(session.spec, 16, np.random.default_rng(0))
print(max(float(np.abs(a - b).max()) for a, b in zip(session.run(batch), reference.run(batch))))
"""


def test_openvinos_avx2_code_paths_run_after_onnx_runtime_set_flush_to_zero(exported):
    """oneDNN's ISA cap makes OpenVINO take the code paths of a CPU without AVX-512 on any x86 CPU."""
    result = subprocess.run([sys.executable, "-c", AFTER_ONNX_RUNTIME, str(exported["folder"] / "fp32.onnx")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) <= TOLERANCE["fp32"]


SIGNAL_AFTER_VERIFY = """
import os, signal, sys
from cnm_export.export import load_source
from cnm_export.verify import verify_engines
source = load_source(sys.argv[1])
verify_engines(sys.argv[2], source.model, source.word_vectors)  # sessions, and Cores, made and dropped
signal.signal(signal.SIGCHLD, lambda *_: print("handled"))
os.kill(os.getpid(), signal.SIGCHLD)
"""


def test_a_signal_after_every_engine_ran_is_handled(exported):
    """OpenVINO's CPU plugin swaps the thread's signal stack as Cores come and go; a stale one crashed the next
    signal (pytest died in a later test, when a DataLoader's worker process ended)."""
    result = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_VERIFY, str(exported["source"].checkpoint),
                             str(exported["folder"] / "fp32.onnx")], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout.strip()) == (0, "handled"), result.stderr[-2000:]


# Runs cnm-run or cnm-export in a process where openvino (and nncf) cannot be imported.
WITHOUT_OPENVINO = "import sys; sys.modules['openvino'] = sys.modules['nncf'] = None; from {module} import main; main()"


@pytest.mark.parametrize("model, options", [
    ("fp32.onnx", ["--provider", "openvino"]), ("fp32.onnx", ["--precision", "bf16"]), ("openvino-int8.xml", [])])
def test_without_openvino_cnm_run_says_so_in_one_line(exported, model, options, tmp_path):
    data = exported["data"]
    command = [sys.executable, "-c", WITHOUT_OPENVINO.format(module="cnm_runtime.cli"),
               "--model", str(exported["folder"] / model), "--features", str(data.archive),
               "--queries", str(data.queries), "-o", str(tmp_path / "out.jsonl"), *options]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"cnm-run: {openvino_session.MISSING}"]
    # without openvino, auto runs an fp32 file on ONNX Runtime as before
    command = command[: command.index("-o") + 2]
    if model == "fp32.onnx":
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0 and "on CPUExecutionProvider" in result.stderr


def test_without_nncf_the_openvino_int8_export_says_so_in_one_line(exported, tmp_path):
    command = [sys.executable, "-c", WITHOUT_OPENVINO.format(module="cnm_export.cli"),
               str(exported["source"].checkpoint), "--precision", "openvino-int8", "-o", str(tmp_path / "m.xml")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("Error: --precision openvino-int8 needs")
