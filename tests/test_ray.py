"""cnm-run --engine ray: the local run's records from Ray Data actors, in shard files that a rerun completes.

Ray starts once for the session (conftest's ``ray_address``, 2 CPUs); a run in a subprocess joins it by its
address.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from test_run import archive, good_records, tiny_model, write_lines  # noqa: F401 (fixtures)
from test_run_cli import BAD_LINES, cnm_run, finished, write_linked_archive
from cnm_runtime.options import RunOptions
from cnm_runtime.provenance import ProvenanceMismatch
from cnm_runtime.queries import read_lines
from cnm_runtime.run_files import RunFiles
from cnm_runtime.scaleout.shard_files import ShardFiles
from cnm_runtime.scaleout.shards import plan_shards
from cnm_runtime.stop import StopSignals

BATCH = 4


def run_ray(model: Path, archive: Path, queries: Path, out: Path, actors: int = 2) -> dict:
    """The Ray engine's run in shards of one batch (as ``--shard-batches 1``), in this process; its metrics."""
    from cnm_runtime.scaleout.job import RayOptions, run_ray

    return run_ray(RunFiles(model, archive, queries, out), RunOptions(provider="cpu", batch_size=BATCH),
                   RayOptions(actors=actors, shard_batches=1), StopSignals())


def shard_records(out: Path, kind: str) -> list[dict]:
    """The shard files of ``kind`` in name order: the local run's file."""
    return [json.loads(line) for path in sorted(out.glob(f"{kind}-*.jsonl")) for line in path.read_text().splitlines()]


def file_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mixed_lines() -> list:
    """Good lines, every kind of bad line, and qids repeated within a shard and across shards (shards of
    one batch of 4 queries): a later line with an earlier qid, good or bad, is a duplicate_qid error."""
    lines: list = []
    for record, (bad, _) in zip(good_records(len(BAD_LINES)), BAD_LINES):
        lines += [record, bad]
    lines.insert(3, "")  # blank: no entry, yet a line number
    lines += [{"qid": "q0", "video": "v1", "query": "person sits"},  # q0: line 1's
              {"qid": "b_unknown", "video": "v2", "query": "person sits"},  # an error line's qid
              {"qid": "late", "video": "v3", "query": "person sits"},
              {"qid": "late", "video": "v3", "query": "person stands"}]  # within one shard
    return lines


# --- the plan and the files, without Ray --------------------------------------------------------------

def test_shards_carry_the_qids_that_earlier_shards_claimed(tmp_path):
    queries = write_lines(tmp_path / "q.jsonl", [{"qid": qid, "video": "v0", "query": "person sits"}
                                                 for qid in ("a", "b", "c", "a", 1, "1", "b", 1, "x", "x")])
    shards = list(plan_shards(read_lines(queries), 3))
    assert [[entry.line for entry in shard.entries] for shard in shards] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert [set(shard.claimed) for shard in shards] == [set(), {(True, "a")}, {(True, "b"), (False, 1)}, {(True, "x")}]


def test_a_shard_is_complete_once_its_predictions_are_renamed(tmp_path):
    files = ShardFiles(tmp_path / "out", shards=3).__enter__()
    files.start({"queries_sha256": "abc", "shard_size": 8, "shards": 3})
    files.write(1, ['{"qid": 1}'], [])
    assert [files.complete(shard) for shard in range(3)] == [False, True, False]
    assert sorted(path.name for path in files.folder.iterdir()) == [
        ".lock", "errors-00001.jsonl", "predictions-00001.jsonl", "run.json"]
    (files.folder / ".predictions-00002.jsonl.x.tmp").write_text('{"qid": 2')  # a killed run's
    files.start({"queries_sha256": "abc", "shard_size": 8, "shards": 3})
    assert not list(files.folder.glob(".*.tmp"))
    with pytest.raises(ProvenanceMismatch, match="shard_size 8 then, 16 now"):
        files.start({"queries_sha256": "abc", "shard_size": 16, "shards": 2})


@pytest.mark.parametrize("args, message", [
    (("--address", "ray://head:10001", "-o", "out"), "Ray Data does not run through Ray Client"),
    ((), "--engine ray needs -o FOLDER"),
    (("--errors", "e.jsonl", "-o", "out"), "--engine ray does not take --errors"),
])
def test_what_the_ray_engine_cannot_do_is_a_usage_error(archive, tmp_path, args, message):
    queries = write_lines(tmp_path / "q.jsonl", good_records(2))
    code, _, err = finished(cnm_run("--engine", "ray", "--features", archive, "--queries", queries, *args,
                                    cwd=tmp_path))
    assert code == 2 and message in err and not (tmp_path / "out").exists()


# --- on Ray ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_and_ray(ray_address, tiny_model, archive, tmp_path_factory):
    """The mixed queries grounded by the local cnm-run and by the Ray engine (2 actors)."""
    folder = tmp_path_factory.mktemp("mixed")
    queries = write_lines(folder / "q.jsonl", mixed_lines())
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries,
                                    "-o", folder / "local.jsonl", "--errors", folder / "local-errors.jsonl",
                                    "--metrics", folder / "local-metrics.json", "--batch-size", BATCH,
                                    "--provider", "cpu"))  # the Ray job's engine
    assert code == 1, err  # more errors than --max-errors 0
    metrics = run_ray(tiny_model, archive, queries, folder / "out")
    return folder, metrics


def test_predictions_equal_the_local_runs(local_and_ray):
    folder, _ = local_and_ray
    local, sharded = file_records(folder / "local.jsonl"), shard_records(folder / "out", "predictions")
    assert len(list((folder / "out").glob("predictions-*.jsonl"))) == 8  # 32 queries in shards of 4
    assert sorted(sharded, key=lambda r: r["qid"]) == sorted(local, key=lambda r: r["qid"])
    assert sharded == local  # the very bytes' records, and in order


def test_bad_lines_give_the_local_runs_error_records(local_and_ray):
    folder, _ = local_and_ray
    errors = shard_records(folder / "out", "errors")
    assert errors == file_records(folder / "local-errors.jsonl")
    codes = [error["code"] for error in errors]
    assert {code for _, code in BAD_LINES} <= set(codes) and codes.count("duplicate_qid") == 3
    assert errors[0]["qid"] is None and errors[0]["code"] == "malformed_json"  # line 2 claims no qid


def test_metrics_equal_the_local_runs(local_and_ray):
    folder, metrics = local_and_ray
    local = json.loads((folder / "local-metrics.json").read_text())
    speed = {"wall_s", "queries_per_s"}
    assert {k: v for k, v in metrics.items() if k not in speed} == {k: v for k, v in local.items() if k not in speed}
    assert metrics["errors"] == len(BAD_LINES) + 3 and metrics["with_ground_truth"] > 0


def test_the_python_api_gives_the_same_records(local_and_ray, tiny_model, archive):
    from cnm_runtime.scaleout.dataset import ground_dataset, queries_dataset

    folder, _ = local_and_ray
    dataset = ground_dataset(queries_dataset(folder / "q.jsonl", shard_size=BATCH), tiny_model, archive,
                             RunOptions(provider="cpu", batch_size=BATCH), actors=1)
    rows = sorted(dataset.take_all(), key=lambda row: row["line"])
    assert [json.loads(row["record"]) for row in rows if row["kind"] == "prediction"] == file_records(
        folder / "local.jsonl")
    assert [json.loads(row["record"]) for row in rows if row["kind"] == "error"] == file_records(
        folder / "local-errors.jsonl")
    assert {row["provider"] for row in rows} == {"CPUExecutionProvider"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_actors_run_openvino_as_the_local_run_does(local_and_ray, tiny_model, archive, precision):
    pytest.importorskip("openvino")
    from cnm_runtime.openvino_session import cpu_has_bf16
    from cnm_runtime.scaleout.dataset import ground_dataset, queries_dataset

    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16")
    folder, _ = local_and_ray
    local = folder / f"openvino-{precision}.jsonl"
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", folder / "q.jsonl",
                                    "-o", local, "--batch-size", BATCH, "--provider", "openvino",
                                    "--precision", precision))
    assert code == 1, err
    dataset = ground_dataset(queries_dataset(folder / "q.jsonl", shard_size=BATCH), tiny_model, archive,
                             RunOptions(provider="openvino", precision=precision, batch_size=BATCH), actors=1)
    rows = sorted(dataset.take_all(), key=lambda row: row["line"])
    assert [json.loads(row["record"]) for row in rows if row["kind"] == "prediction"] == file_records(local)
    assert {row["provider"] for row in rows} == {f"OpenVINO CPU {precision}"}


def test_a_killed_run_run_again_has_every_qid_once(ray_address, tiny_model, archive, tmp_path):
    """The driver is killed once shard files appear; the same command finishes the others, and leaves the
    finished ones as they were."""
    records = good_records(480)
    queries = write_lines(tmp_path / "q.jsonl", records)
    out = tmp_path / "out"
    args = ("--model", tiny_model, "--features", archive, "--queries", queries, "-o", out, "--batch-size", BATCH,
            "--shard-batches", 1, "--provider", "cpu", "--actors", 1)
    driver = cnm_run("--engine", "ray", "--address", ray_address, *args)
    while not list(out.glob("predictions-*.jsonl")):
        if driver.poll() is not None:
            pytest.fail(f"the run ended before writing a shard: {finished(driver)[2]}")
        time.sleep(0.01)
    driver.kill()
    finished(driver)
    done = {path: (path.stat().st_ino, path.read_bytes()) for path in out.glob("predictions-*.jsonl")}
    assert 0 < len(done) < 120  # killed midway

    metrics = run_ray(tiny_model, archive, queries, out, actors=1)
    predictions = shard_records(out, "predictions")
    assert sorted(r["qid"] for r in predictions) == sorted(r["qid"] for r in records)  # each once
    assert [r["qid"] for r in predictions] == [r["qid"] for r in records]
    assert all((path.stat().st_ino, path.read_bytes()) == kept for path, kept in done.items())  # not written again
    assert (metrics["predicted"], metrics["resumed"]) == (480, sum(data.count(b"\n") for _, data in done.values()))
    code, _, err = finished(cnm_run("--engine", "ray", "--address", ray_address, *args))
    assert code == 0 and "0 shards to ground" in err and shard_records(out, "predictions") == predictions


def test_another_queries_file_into_the_same_folder_is_refused(ray_address, tiny_model, archive, tmp_path):
    first = write_lines(tmp_path / "a.jsonl", good_records(6))
    second = write_lines(tmp_path / "b.jsonl", good_records(6, seed=2))
    args = ("--engine", "ray", "--address", ray_address, "--model", tiny_model, "--features", archive,
            "-o", tmp_path / "out", "--batch-size", BATCH, "--provider", "cpu", "--actors", 1)
    assert finished(cnm_run(*args, "--queries", first))[0] == 0
    code, _, err = finished(cnm_run(*args, "--queries", second))
    assert code == 2 and "other inputs (queries_sha256" in err and "Traceback" not in err


def _listening(pids: set[int]) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of the TCP sockets that ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.append(fields[1].split(":")[0])
    return found


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        found.add(current := todo.pop())
        todo += children.get(current, [])
    return found


# 127.0.0.1, ::ffff:127.0.0.1 and ::1 as /proc/net/tcp* write them (32-bit words in host order)
LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")
def test_a_ray_that_cnm_run_starts_listens_on_the_loopback_interface_only(tmp_path):
    pytest.importorskip("ray")
    script = textwrap.dedent("""
        import json, os, sys
        sys.path.insert(0, os.getcwd())
        from cnm_runtime.scaleout.job import _start_ray
        from test_ray import _descendants, _listening
        _start_ray(None)
        import ray
        print(json.dumps(_listening(_descendants(os.getpid()))))
        ray.shutdown()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    addresses = json.loads(result.stdout.splitlines()[-1])
    assert addresses and set(addresses) <= LOOPBACK_HEX, addresses  # the GCS, raylet, workers...


def test_every_flag_that_changes_records_reaches_the_actors(ray_address, tiny_model, tmp_path):
    """--refuse-outside-links and --max-video-mb: the Ray engine's records equal the local run's with each flag
    (and each flag changes them)."""
    import h5py

    archive = write_linked_archive(tmp_path)
    with h5py.File(archive, "a") as out:
        out["big"] = np.ones((300, 1024), np.float32)  # 1.2 MB of features: over a cap of 1 MB
    queries = write_lines(tmp_path / "q.jsonl", [{"video": video, "query": "person sits"}
                                                 for video in ("near", "linked", "big") * 2])
    common = ("--model", tiny_model, "--features", archive, "--queries", queries, "--batch-size", BATCH,
              "--provider", "cpu", "--max-errors", 10)
    predicted = {}
    for name, flags in (("none", ()), ("links", ("--refuse-outside-links",)), ("cap", ("--max-video-mb", 1))):
        local, errors = tmp_path / f"local-{name}.jsonl", tmp_path / f"errors-{name}.jsonl"
        code, _, err = finished(cnm_run(*common, *flags, "-o", local, "--errors", errors))
        assert code == 0, err
        out = tmp_path / f"ray-{name}"
        code, _, err = finished(cnm_run("--engine", "ray", "--address", ray_address, "--actors", 1, *common, *flags,
                                        "-o", out))
        assert code == 0, err
        assert shard_records(out, "predictions") == file_records(local)
        assert shard_records(out, "errors") == file_records(errors)
        predicted[name] = {record["vid"] for record in file_records(local)}
    assert predicted == {"none": {"near", "linked", "big"}, "links": {"near", "big"}, "cap": {"near", "linked"}}


def test_a_rerun_with_another_model_is_refused(ray_address, tiny_model, archive, tmp_path):
    onnx = pytest.importorskip("onnx")
    other = tmp_path / "other.onnx"
    proto = onnx.load(tiny_model)
    proto.metadata_props.add(key="note", value="another export")
    onnx.save(proto, other)
    queries = write_lines(tmp_path / "q.jsonl", good_records(6))
    args = ("--engine", "ray", "--address", ray_address, "--features", archive, "--queries", queries,
            "-o", tmp_path / "out", "--batch-size", BATCH, "--provider", "cpu", "--actors", 1)
    assert finished(cnm_run(*args, "--model", tiny_model))[0] == 0
    code, _, err = finished(cnm_run(*args, "--model", other))
    assert code == 2 and "model_sha256" in err and "Traceback" not in err


@pytest.mark.parametrize("number, local_ray", [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_signal_ends_a_ray_run_with_its_status(ray_address, tiny_model, archive, tmp_path, number, local_ray):
    """Ctrl-C or SIGTERM while the driver grounds (joined to a cluster, or with a Ray of its own): 128 + the
    signal, never a crash; the same command then finishes the folder."""
    queries = write_lines(tmp_path / "q.jsonl", good_records(600))
    out = tmp_path / "out"
    args = ("--engine", "ray", "--model", tiny_model, "--features", archive, "--queries", queries, "-o", out,
            "--batch-size", 1, "--shard-batches", 1, "--provider", "cpu", "--actors", 1)
    address = () if local_ray else ("--address", ray_address)
    driver = cnm_run(*args, *address)
    while not list(out.glob("predictions-*.jsonl")):
        if driver.poll() is not None:
            pytest.fail(f"the run ended before writing a shard: {finished(driver)[2]}")
        time.sleep(0.01)
    driver.send_signal(number)
    code, _, err = finished(driver)
    assert code == 128 + number, err
    assert not any(crash in err for crash in ("Traceback", "Segmentation", "core dumped", "terminate called"))
    code, _, err = finished(cnm_run(*args, "--address", ray_address))
    assert code == 0, err
    assert [r["qid"] for r in shard_records(out, "predictions")] == [f"q{i}" for i in range(600)]
