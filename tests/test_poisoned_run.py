"""cnm-run over an archive where one video in 100 is poisoned costs exactly the poisoned videos' queries.

10,000 queries over 3,100 videos, each video's queries together as in real annotation files: video k is
poisoned when ``k % 100 == POISONED_AT``, of kind ``KINDS[k // 100]``, so each of tests/poison.py's kinds (bad
dtypes, links to FIFOs and devices, unwritten chunks, bad durations...) is one video among 99 good ones. The
same command runs in a thread, with feed processes and on Ray; each run must give byte for byte the predictions
of a clean run (the predicted queries alone, over the archive before the poisoned videos were added), one
error record with poison.py's code for every other query, and the exit status of too many errors, never a
traceback or a hang.

A query that carries its own duration on a video whose ``duration`` attribute is bad is predicted (the
clean archive holds that video's features without the attribute); without one it is ``bad_duration``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from poison import KINDS, POISONS, write_poisoned
from test_run import WORDS, tiny_model, write_lines  # noqa: F401 (tiny_model: a fixture)
from test_run_cli import cnm_run
from cnm_runtime.archive import C3D_DATASET

VIDEOS = 100 * len(KINDS)  # one poisoned video in each 100, every kind once
POISONED_AT = 50
QUERIES = 10_000
BATCH = 64
RUN_TIMEOUT_S = 240  # a run takes seconds; only a hang (a FIFO opened after all) gets near this


def video_name(k: int) -> str:
    return f"video{k:04d}"


def poison_of(k: int) -> str | None:
    """The poisoned kind of video k, None for a good video."""
    return KINDS[k // 100] if k % 100 == POISONED_AT else None


def write_good_videos(path: Path) -> None:
    """The good videos, 8 to 20 rows each, in the layouts real archives use (contiguous float16, compressed
    float16 or float32 chunks, an ActivityNet C3D group), a third of them with a duration attribute. Their
    values are multiples of 1/4 (exact in float16), so that compressed they take a few KB each."""
    rng = np.random.default_rng(0)
    compressed = {"chunks": (8, 1024), "compression": "gzip", "shuffle": True}
    with h5py.File(path, "w") as out:
        for k in range(VIDEOS):
            if poison_of(k) is not None:
                continue
            values = np.round(4 * np.maximum(rng.standard_normal((int(rng.integers(8, 21)), 1024)), 0)) / 4
            name, layout = video_name(k), k % 4
            if layout == 0:
                dataset = out.create_dataset(name, data=values.astype(np.float16))
            elif layout == 1:
                dataset = out.create_dataset(name, data=values.astype(np.float16), **compressed)
            elif layout == 2:
                dataset = out.create_dataset(name, data=values.astype(np.float32), **compressed)
            else:
                dataset = out.create_group(name)
                dataset.create_dataset(C3D_DATASET, data=values.astype(np.float16), **compressed)
            if k % 3 == 0:
                dataset.attrs["duration"] = 10.0 + k % 20


def query_records() -> list[dict]:
    """QUERIES queries, 3 or 4 a video, video by video; a video's second and fourth queries carry a duration
    and timestamps, so each poisoned video has queries with and without one."""
    rng = np.random.default_rng(1)
    records = []
    for k in range(VIDEOS):
        for nth in range(QUERIES // VIDEOS + (k < QUERIES % VIDEOS)):
            words = list(rng.choice(WORDS, size=int(rng.integers(2, 9))))
            if len(records) % 7 == 0:
                words.insert(1, "zebra")  # not in the vocabulary: dropped
            record = {"qid": f"q{len(records)}", "video": video_name(k), "query": " ".join(words) + "."}
            if nth % 2:
                start = float(rng.uniform(0, 20))
                record.update(duration=30.0, timestamps=[start, start + float(rng.uniform(1, 10))])
            records.append(record)
    assert len(records) == QUERIES
    return records


def expected_code(record: dict) -> str | None:
    """The error code of a query of the poisoned archive; None where it is predicted as over the clean one."""
    kind = poison_of(int(record["video"].removeprefix("video")))
    if kind is None:
        return None
    code = POISONS[kind][0]
    return None if code == "bad_duration" and "duration" in record else code


def run_within(*args) -> tuple[int, str]:
    """cnm-run's exit status and standard error; a run past RUN_TIMEOUT_S fails the test, killed with its feed
    processes (a feed process that opened a FIFO would block for ever)."""
    process = cnm_run(*args, start_new_session=True)
    try:
        _, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f"cnm-run hung (killed after {RUN_TIMEOUT_S} s): {err[-2000:]}")
    return process.returncode, err


def assert_same_bytes(written: bytes, expected: bytes) -> None:
    """``written == expected``, or a failure that shows the first line that differs (not a diff of megabytes)."""
    if written != expected:
        got, want = written.splitlines(), expected.splitlines()
        first = next((i for i, pair in enumerate(zip(got, want)) if pair[0] != pair[1]), min(len(got), len(want)))
        pytest.fail(f"{len(got)} lines written, {len(want)} expected; line {first + 1} differs:\n"
                    f"written  {got[first:first + 1]}\nexpected {want[first:first + 1]}")


class Poisoned:
    """The poisoned archive and its queries, and what a run over them must write."""

    def __init__(self, folder: Path, model: Path):
        self.model, self.archive = model, folder / "features.hdf5"
        poisoned = {video_name(k): poison_of(k) for k in range(VIDEOS) if poison_of(k) is not None}
        assert sorted(poisoned.values()) == sorted(KINDS)
        bad_duration = {video: kind for video, kind in poisoned.items() if POISONS[kind][0] == "bad_duration"}
        self.records = query_records()
        self.failing = [(line, record["qid"], expected_code(record))  # (line, qid, code) of each error record
                        for line, record in enumerate(self.records, start=1) if expected_code(record)]
        assert 0 < len(self.failing) < QUERIES // 50

        # The clean run: the archive of the good videos, and of the bad-duration videos' features without their
        # attribute, grounding the queries that the poisoned run must predict
        write_good_videos(self.archive)
        write_poisoned(self.archive, bad_duration, rows=20)
        with h5py.File(self.archive, "a") as out:
            for video in bad_duration:
                del out[video].attrs["duration"]
        clean_queries = write_lines(folder / "clean-queries.jsonl",
                                    [record for record in self.records if expected_code(record) is None])
        self.expected = folder / "clean.jsonl"
        code, err = run_within("--model", model, "--features", self.archive, "--queries", clean_queries,
                               "-o", self.expected, "--batch-size", BATCH, "--feeders", 0, "--provider", "cpu")
        assert code == 0, err
        assert self.expected.read_bytes().count(b"\n") == QUERIES - len(self.failing)

        # Then the same archive poisoned: poison.py writes the bad-duration videos again, with their attribute
        with h5py.File(self.archive, "a") as out:
            for video in bad_duration:
                del out[video]
        write_poisoned(self.archive, poisoned, rows=20)
        self.queries = write_lines(folder / "queries.jsonl", self.records)
        self.inputs = {path: path.read_bytes() for path in (self.queries, self.archive)}

    def run(self, *flags) -> tuple[int, str]:
        return run_within("--model", self.model, "--features", self.archive, "--queries", self.queries,
                          "--batch-size", BATCH, "--provider", "cpu", *flags)  # one engine: the very same bytes

    def check(self, code: int, err: str, predictions: bytes, errors: bytes, metrics: dict) -> None:
        assert code == 1, err  # more errors than --max-errors 0
        assert "Traceback" not in err
        assert f"{len(self.failing)} errors, more than --max-errors 0" in err
        assert_same_bytes(predictions, self.expected.read_bytes())  # every other query, as in the clean run
        records = [json.loads(line) for line in errors.splitlines()]
        assert [(r["line"], r["qid"], r["code"]) for r in records] == self.failing
        video_of = {record["qid"]: record["video"] for record in self.records}
        for record in records:
            assert repr(video_of[record["qid"]]) in record["message"], record
        # every line once: a prediction or an error record
        predicted_qids = [json.loads(line)["qid"] for line in predictions.splitlines()]
        assert sorted(predicted_qids + [r["qid"] for r in records]) == sorted(r["qid"] for r in self.records)
        assert (metrics["queries"], metrics["errors"]) == (QUERIES, len(self.failing))
        assert metrics["errors_by_code"] == dict(sorted(Counter(code for *_, code in self.failing).items()))
        assert {path: path.read_bytes() for path in self.inputs} == self.inputs


@pytest.fixture(scope="module")
def poisoned(tiny_model, tmp_path_factory) -> Poisoned:
    return Poisoned(tmp_path_factory.mktemp("poisoned"), tiny_model)


@pytest.mark.parametrize("feeders", [0, 2], ids=["thread", "feed_processes"])
def test_a_poisoned_archive_costs_only_its_poisoned_queries_locally(poisoned, tmp_path, feeders):
    pred, errors, metrics = tmp_path / "pred.jsonl", tmp_path / "errors.jsonl", tmp_path / "metrics.json"
    code, err = poisoned.run("-o", pred, "--errors", errors, "--metrics", metrics, "--feeders", feeders)
    poisoned.check(code, err, pred.read_bytes(), errors.read_bytes(), json.loads(metrics.read_text()))


def test_a_poisoned_archive_costs_only_its_poisoned_queries_on_ray(poisoned, ray_address, tmp_path):
    out = tmp_path / "out"
    code, err = poisoned.run("--engine", "ray", "--address", ray_address, "--actors", 2, "--shard-batches", 16,
                             "-o", out)
    assert len(list(out.glob("predictions-*.jsonl"))) == -(-QUERIES // (16 * BATCH))

    def joined(kind: str) -> bytes:
        return b"".join(path.read_bytes() for path in sorted(out.glob(f"{kind}-*.jsonl")))

    poisoned.check(code, err, joined("predictions"), joined("errors"), json.loads((out / "metrics.json").read_text()))
