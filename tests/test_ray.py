"""cnm-run --engine ray: the local run's records from Ray Data actors, in shard files that a rerun completes.

Ray starts once for the session (2 CPUs); a run in a subprocess joins it by its address.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_run import archive, good_records, tiny_model, write_lines  # noqa: F401 (fixtures)
from test_run_cli import BAD_LINES, cnm_run, finished
from cnm_runtime.distributed import RayOptions
from cnm_runtime.shard_files import ShardFiles
from cnm_runtime.shards import plan_shards

BATCH = 4


@pytest.fixture(scope="session")
def ray_address():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def ray_job(model: Path, archive: Path, queries: Path, out: Path, actors: int = 2):
    """The Ray engine's job in shards of one batch (as ``--shard-batches 1``)."""
    from cnm_runtime.ray_job import RayJob

    options = RayOptions(actors=actors, provider="cpu", batch_size=BATCH)
    return RayJob(model, archive, queries, out, address=None, options=options, shard_batches=1)


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
    shards = list(plan_shards(queries, 3))
    assert [[entry.line for entry in shard.entries] for shard in shards] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert [set(shard.claimed) for shard in shards] == [set(), {(True, "a")}, {(True, "b"), (False, 1)}, {(True, "x")}]


def test_a_shard_is_complete_once_its_predictions_are_renamed(tmp_path):
    files = ShardFiles(tmp_path / "out", shards=3)
    files.start({"queries_sha256": "abc", "shard_size": 8, "shards": 3})
    files.write(1, ['{"qid": 1}'], [])
    assert [files.complete(shard) for shard in range(3)] == [False, True, False]
    assert sorted(path.name for path in files.folder.iterdir()) == [
        "errors-00001.jsonl", "predictions-00001.jsonl", "run.json"]
    (files.folder / ".predictions-00002.jsonl.x.tmp").write_text('{"qid": 2')  # a killed run's
    files.start({"queries_sha256": "abc", "shard_size": 8, "shards": 3})
    assert not list(files.folder.glob(".*.tmp"))
    with pytest.raises(ValueError, match="another run"):
        files.start({"queries_sha256": "abc", "shard_size": 16, "shards": 2})


@pytest.mark.parametrize("args, message", [
    (("--address", "ray://head:10001", "-o", "out"), "Ray Data does not run through Ray Client"),
    ((), "--engine ray needs -o FOLDER"),
    (("--errors", "e.jsonl", "-o", "out"), "drop --errors"),
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
    from cnm_runtime.ray_job import run

    folder = tmp_path_factory.mktemp("mixed")
    queries = write_lines(folder / "q.jsonl", mixed_lines())
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", queries,
                                    "-o", folder / "local.jsonl", "--errors", folder / "local-errors.jsonl",
                                    "--metrics", folder / "local-metrics.json", "--batch-size", BATCH,
                                    "--provider", "cpu"))  # the Ray job's engine
    assert code == 1, err  # more errors than --max-errors 0
    metrics = run(ray_job(tiny_model, archive, queries, folder / "out"))
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
    assert errors[0]["qid"] == 1 and errors[0]["code"] == "malformed_json"  # line 2: its default qid


def test_metrics_equal_the_local_runs(local_and_ray):
    folder, metrics = local_and_ray
    local = json.loads((folder / "local-metrics.json").read_text())
    speed = {"wall_s", "queries_per_s"}
    assert {k: v for k, v in metrics.items() if k not in speed} == {k: v for k, v in local.items() if k not in speed}
    assert metrics["errors"] == len(BAD_LINES) + 3 and metrics["with_ground_truth"] > 0


def test_the_python_api_gives_the_same_records(local_and_ray, tiny_model, archive):
    from cnm_runtime.distributed import ground_dataset, queries_dataset

    folder, _ = local_and_ray
    dataset = ground_dataset(queries_dataset(folder / "q.jsonl", shard_size=BATCH), tiny_model, archive,
                             RayOptions(actors=1, provider="cpu", batch_size=BATCH))
    rows = sorted(dataset.take_all(), key=lambda row: row["line"])
    assert [json.loads(row["record"]) for row in rows if row["kind"] == "prediction"] == file_records(
        folder / "local.jsonl")
    assert [json.loads(row["record"]) for row in rows if row["kind"] == "error"] == file_records(
        folder / "local-errors.jsonl")
    assert {row["provider"] for row in rows} == {"CPUExecutionProvider"}


def test_actors_run_openvino_as_the_local_run_does(local_and_ray, tiny_model, archive):
    pytest.importorskip("openvino")
    from cnm_runtime.distributed import ground_dataset, queries_dataset

    folder, _ = local_and_ray
    code, _, err = finished(cnm_run("--model", tiny_model, "--features", archive, "--queries", folder / "q.jsonl",
                                    "-o", folder / "openvino.jsonl", "--batch-size", BATCH, "--provider", "openvino"))
    assert code == 1, err
    dataset = ground_dataset(queries_dataset(folder / "q.jsonl", shard_size=BATCH), tiny_model, archive,
                             RayOptions(actors=1, provider="openvino", batch_size=BATCH))
    rows = sorted(dataset.take_all(), key=lambda row: row["line"])
    assert [json.loads(row["record"]) for row in rows if row["kind"] == "prediction"] == file_records(
        folder / "openvino.jsonl")
    assert {row["provider"] for row in rows} == {"OpenVINO CPU fp32"}


def test_a_killed_run_run_again_has_every_qid_once(ray_address, tiny_model, archive, tmp_path):
    """The driver is killed once shard files appear; the same command finishes the others, and leaves the
    finished ones as they were."""
    from cnm_runtime.ray_job import run

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

    metrics = run(ray_job(tiny_model, archive, queries, out, actors=1))
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
    assert code == 1 and "another run" in err and "Traceback" not in err
