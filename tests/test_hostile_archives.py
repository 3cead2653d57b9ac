"""A hostile archive costs only its bad videos' queries: each bad video is an InputError decided from its
metadata before any value is read, and nothing a link leads to can hang the reader.

Loads that could hang (a FIFO opened blocks until someone writes to it) run in a child process that is
killed after CHILD_TIMEOUT_S, so a hang fails its test instead of stopping the suite.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest

from conftest import REPO
from poison import KINDS, POISONS, write_poisoned
from test_run import good_records, tiny_model, write_archive, write_lines  # noqa: F401  (tiny_model: a fixture)
from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import ERROR_CODES, InputError
from cnm_runtime.features import to_clips
from cnm_runtime.options import ArchiveOptions
from cnm_runtime.videos import RecentVideos, load_clips

ROWS, DIM = 12, 16
GOOD = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
OTHER = GOOD + 100
CHILD_TIMEOUT_S = 60  # far above a load's real time even on a loaded machine: only a hang reaches it

# Loads each video named on the command line and prints, for each, [code, message, digest of the values as
# loaded, duration_error]; with "h5py" as the first video, h5py's own values are printed beside ours.
LOAD_IN_CHILD = """
import hashlib, json, sys
import h5py
from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.options import ArchiveOptions
path, follow, *videos = sys.argv[1:]
outcomes = {}
with FeatureArchive(path, ArchiveOptions(follow_outside_links=follow == "follow")) as archive:
    for video in videos:
        try:
            stored = archive.load(video)
        except InputError as error:
            outcomes[video] = [error.code, error.message, None, None]
        else:
            digest = hashlib.sha256(stored.features.astype("<f4").tobytes()).hexdigest()
            outcomes[video] = ["ok", "", digest, stored.duration_error]
print(json.dumps(outcomes))
"""


def digest(values: np.ndarray) -> str:
    return hashlib.sha256(values.astype("<f4").tobytes()).hexdigest()


def run_in_child(code: str, *args: str, env: dict | None = None) -> str:
    """What ``python -c code args`` prints, in a child that is killed if it hangs."""
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, cwd=REPO, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} hung (killed after {CHILD_TIMEOUT_S} s)")
    assert done.returncode == 0, done.stderr
    return done.stdout


def load_in_child(path, videos, follow: bool = True, env: dict | None = None) -> dict[str, list]:
    """``{video: [code or "ok", message, digest, duration_error]}``."""
    return json.loads(run_in_child(LOAD_IN_CHILD, str(path), "follow" if follow else "refuse", *videos, env=env))


@pytest.fixture
def never_read(monkeypatch):
    """Fails the test if any video's values are read: every refusal must come from metadata alone."""
    reads = []
    monkeypatch.setattr(FeatureArchive, "_read_all", lambda self, *args: reads.append(args) or pytest.fail(
        "a video's values were read"))
    return reads


def poisoned_archive(tmp_path, kinds) -> tuple[object, dict[str, str]]:
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["good"] = GOOD
    return path, write_poisoned(path, {f"bad_{kind}": kind for kind in kinds}, ROWS, DIM)


# --- 1. only numbers are features ---------------------------------------------------------------------

STORED_AS = {  # each kind that is not numbers, and how its message names the stored type
    "fixed_strings": "fixed-length strings", "variable_strings": "variable-length strings",
    "compound": "compound", "opaque": "opaque values", "datetime": "datetime64",
    "object_references": "object references", "region_references": "region references", "enum": "an enum",
    "booleans": "booleans", "complex": "complex numbers", "complex_hdf5": "complex numbers",
    "array_of_arrays": "arrays", "vlen_floats": "variable-length sequences", "bitfield": "bitfields",
    "long_double": "128-bit floats",
}


def test_every_kind_that_is_not_numbers_is_named():
    assert sorted(STORED_AS) == sorted(kind for kind in KINDS if POISONS[kind][0] == "bad_dtype")


@pytest.mark.parametrize("kind", sorted(STORED_AS))
def test_a_video_that_is_not_numbers_is_bad_dtype_before_it_is_read(tmp_path, never_read, kind):
    path, _ = poisoned_archive(tmp_path, [kind])
    with FeatureArchive(path) as archive:
        error = RecentVideos(archive, DIM, 8, keep=2).get(f"bad_{kind}")
    assert isinstance(error, InputError) and error.code == "bad_dtype"
    assert repr(f"bad_{kind}") in error.message and STORED_AS[kind] in error.message


@pytest.mark.parametrize("stored", [np.int8, np.uint16, np.int64, np.float16, np.float64, ">f4"])
def test_integers_and_floats_of_every_width_are_features_as_float32(tmp_path, stored):
    values = (GOOD * 10).astype(stored)
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["v"] = values
    with FeatureArchive(path) as archive:
        clips = load_clips(archive, "v", DIM, ROWS)
    assert clips.frames.dtype == np.float32
    np.testing.assert_array_equal(clips.frames, values.astype(np.float32))


NOT_NUMBERS = {
    "objects": np.array([[1.5, None]] * 3, dtype=object),
    "str": np.full((3, 2), "1.5"),
    "bytes": np.full((3, 2), b"1.5"),
    "datetime": np.zeros((3, 2), "M8[s]"),
    "timedelta": np.zeros((3, 2), "m8[s]"),
    "structured": np.zeros((3, 2), [("a", "f4"), ("b", "f4")]),
    "complex": np.ones((3, 2), np.complex64),
    "bool": np.ones((3, 2), bool),
    "long_double": np.ones((3, 2), np.longdouble),
    "masked": np.ma.masked_array(np.ones((3, 2), np.float32), mask=[[True, False]] * 3),
    "list_of_strings": [["1.5", "2.5"]] * 3,
}


@pytest.mark.parametrize("kind", sorted(NOT_NUMBERS))
def test_an_array_that_is_not_numbers_is_bad_dtype_in_the_python_api(kind):
    """What ``Grounder.encode_video`` calls."""
    with pytest.raises(InputError) as caught:
        to_clips(NOT_NUMBERS[kind], 4, 2, "mine")
    assert caught.value.code == "bad_dtype" and "'mine'" in caught.value.message


def test_a_ragged_list_is_not_2d_in_the_python_api():
    with pytest.raises(InputError) as caught:
        to_clips([[1.0, 2.0], [3.0]], 4, 2, "mine")
    assert caught.value.code == "not_2d"


# --- 2. one video's size is capped ------------------------------------------------------------------

def test_a_video_over_the_cap_is_too_large_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["v"] = GOOD.astype(np.float64)
    with FeatureArchive(path, ArchiveOptions(max_video_bytes=GOOD.size * 8)) as archive:
        np.testing.assert_array_equal(archive.load("v").features, GOOD)
    reads = []
    monkeypatch.setattr(FeatureArchive, "_read_all", lambda self, *args: reads.append(args))
    with FeatureArchive(path, ArchiveOptions(max_video_bytes=GOOD.size * 8 - 1)) as archive:
        error = RecentVideos(archive, DIM, 8, keep=2).get("v")
    assert isinstance(error, InputError) and error.code == "video_too_large" and "'v'" in error.message
    assert not reads


def test_the_default_cap_stops_a_compressed_video_of_over_a_gibibyte(tmp_path, never_read):
    path, _ = poisoned_archive(tmp_path, ["too_large"])
    assert path.stat().st_size < 16 << 20
    with FeatureArchive(path) as archive:
        with pytest.raises(InputError) as caught:
            archive.load("bad_too_large")
    assert caught.value.code == "video_too_large"


@pytest.mark.parametrize("cap", [0, -1, True, 1.5, "1"])
def test_the_cap_is_a_positive_number_of_bytes(cap):
    with pytest.raises(ValueError):
        ArchiveOptions(max_video_bytes=cap)


# --- 3. values never written --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["unwritten_chunks", "never_written", "short_raw_file"])
def test_values_never_written_are_an_incomplete_video(tmp_path, never_read, kind):
    path, _ = poisoned_archive(tmp_path, [kind])
    with FeatureArchive(path) as archive:
        error = RecentVideos(archive, DIM, 8, keep=2).get(f"bad_{kind}")
    assert isinstance(error, InputError) and error.code == "incomplete_video"
    assert repr(f"bad_{kind}") in error.message


def test_a_chunked_video_is_complete_only_with_every_chunk(tmp_path):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out.create_dataset("part", shape=GOOD.shape, dtype="f4", chunks=(5, 8), compression="gzip")[:5] = GOOD[:5]
        out.create_dataset("whole", data=GOOD, chunks=(5, 8), compression="gzip")
    with FeatureArchive(path) as archive:
        np.testing.assert_array_equal(archive.load("whole").features, GOOD)
        with pytest.raises(InputError) as caught:
            archive.load("part")
    assert caught.value.code == "incomplete_video" and "2 of the 6 chunks" in caught.value.message


# --- 4. links are resolved and checked before anything is opened ------------------------------------------

def write_source(path, values) -> None:
    with h5py.File(path, "w") as out:
        out["v"] = values


@pytest.fixture
def special_files(tmp_path):
    """An archive whose videos lead to a FIFO, a device and a socket through every kind of link, and to a
    FIFO that HDF5 would try before the regular file that the same name also finds."""
    folder, prefix = tmp_path / "inside", tmp_path / "inside" / "prefix"
    prefix.mkdir(parents=True)
    path = folder / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["good"] = GOOD
    write_poisoned(path, {"fifo_link": "fifo_link", "fifo_raw_file": "fifo_raw_file",
                          "fifo_virtual_source": "fifo_virtual_source", "device_link": "device_link"}, ROWS, DIM)
    for name in ("early_link.h5", "early_source.h5"):  # a FIFO under the prefix, a real file beside the archive
        os.mkfifo(prefix / name)
        write_source(folder / name, GOOD)
    socket_folder = tempfile.mkdtemp(prefix="cnm-")  # a socket's path must be short
    server = socket.socket(socket.AF_UNIX)
    server.bind(os.path.join(socket_folder, "s.h5"))
    with h5py.File(path, "a") as out:
        out["early_link"] = h5py.ExternalLink("early_link.h5", "v")
        layout = h5py.VirtualLayout(shape=GOOD.shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource("early_source.h5", "v", shape=GOOD.shape)
        out.create_virtual_dataset("early_source", layout)
        out["socket_link"] = h5py.ExternalLink(os.path.join(socket_folder, "s.h5"), "v")
    yield path, {"HDF5_EXT_PREFIX": str(prefix), "HDF5_VDS_PREFIX": str(prefix)}
    server.close()
    os.unlink(os.path.join(socket_folder, "s.h5"))
    os.rmdir(socket_folder)


@pytest.mark.parametrize("follow", [True, False], ids=["follow", "refuse_outside"])
def test_a_fifo_device_or_socket_behind_any_link_is_never_opened(special_files, follow):
    path, prefixes = special_files
    videos = ["fifo_link", "fifo_raw_file", "fifo_virtual_source", "device_link", "socket_link", "early_link",
              "early_source"]
    outcomes = load_in_child(path, ["good", *videos], follow, env=prefixes)
    assert outcomes["good"][:3] == ["ok", "", digest(GOOD)]
    for video in videos:
        code, message = outcomes[video][:2]
        assert code == "unreadable_video" and "not a regular file" in message and repr(video) in message, video


def test_external_links_and_virtual_sources_are_found_where_hdf5_finds_them(tmp_path):
    """Under HDF5_EXT_PREFIX / HDF5_VDS_PREFIX first, then beside the file holding the link; an absolute name
    that is missing is looked for by its last part. Our values are h5py's in every case."""
    folder, prefix = tmp_path / "inside", tmp_path / "inside" / "prefix"
    prefix.mkdir(parents=True)
    write_source(folder / "target.h5", GOOD)
    write_source(prefix / "target.h5", OTHER)
    path = folder / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["relative"] = h5py.ExternalLink("target.h5", "v")
        out["absolute_missing"] = h5py.ExternalLink(str(tmp_path / "gone" / "target.h5"), "v")
        layout = h5py.VirtualLayout(shape=GOOD.shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource("target.h5", "v", shape=GOOD.shape)
        out.create_virtual_dataset("virtual", layout)
    videos = ["relative", "absolute_missing", "virtual"]
    for env, expected in (({}, GOOD), ({"HDF5_EXT_PREFIX": str(prefix), "HDF5_VDS_PREFIX": str(prefix)}, OTHER)):
        outcomes = load_in_child(path, videos, env=env)
        assert {video: outcomes[video][:3] for video in videos} == {
            video: ["ok", "", digest(expected)] for video in videos}, env


def test_a_link_loop_is_an_unreadable_video(tmp_path):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["a"] = h5py.SoftLink("/b")
        out["b"] = h5py.ExternalLink("archive.hdf5", "/a")
    with FeatureArchive(path) as archive, pytest.raises(InputError) as caught:
        archive.load("a")
    assert caught.value.code == "unreadable_video" and "more than 16" in caught.value.message


OPEN_IN_CHILD = """
import sys
from cnm_runtime.archive import FeatureArchive
try:
    FeatureArchive(sys.argv[1])
except FileNotFoundError as error:
    print(error)
"""


def test_an_archive_that_is_a_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "archive.hdf5")
    assert "is not a regular file" in run_in_child(OPEN_IN_CHILD, str(tmp_path / "archive.hdf5"))


# --- 5. a duration attribute that is no duration does not fail its video -------------------------------

@pytest.mark.parametrize("value, shown", [
    (np.inf, "inf"), (np.nan, "nan"), (0.0, "0.0"), (-30, "-30.0"), ("30", "strings"),
    (np.array([30.0, 40.0]), "array of shape (2,)"), (np.array([30.0]), "array of shape (1,)"),
    (True, "booleans"),
])
def test_a_bad_duration_attribute_leaves_the_video_usable_and_says_why(tmp_path, value, shown):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out.create_dataset("v", data=GOOD).attrs["duration"] = value
    with FeatureArchive(path) as archive:
        clips = RecentVideos(archive, DIM, 8, keep=2).get("v")
        with pytest.raises(InputError) as caught:
            archive.duration("v")
    assert clips.duration is None and clips.frames.shape == (8, DIM)
    assert "'v'" in clips.duration_error and shown in clips.duration_error
    assert caught.value.code == "bad_duration" and caught.value.message == clips.duration_error


@pytest.mark.parametrize("value", [30, np.float32(12.5), np.int16(7), 1e-3])
def test_a_good_duration_attribute_is_a_float(tmp_path, value):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out.create_dataset("v", data=GOOD).attrs["duration"] = value
    with FeatureArchive(path) as archive:
        clips = load_clips(archive, "v", DIM, 8)
    assert clips.duration == float(value) and isinstance(clips.duration, float) and clips.duration_error is None


@pytest.mark.parametrize("duration", [float("nan"), float("inf"), 0.0, -30.0, "30", True])
def test_a_duration_given_with_features_that_is_no_duration_is_kept_as_its_error(duration):
    clips = to_clips(GOOD, 8, DIM, "mine", duration)
    assert clips.duration is None and "'mine'" in clips.duration_error and repr(duration) in clips.duration_error


# --- 6. anything else that fails while reading a video is that video's error ---------------------------

def test_any_error_while_reading_a_video_is_that_videos_unreadable_video(tmp_path, monkeypatch):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out["v"] = GOOD
        out["w"] = GOOD
    with FeatureArchive(path) as archive:
        videos = RecentVideos(archive, DIM, 8, keep=2)
        with monkeypatch.context() as patched:
            for module in (h5py.h5d, h5py.h5o):  # however the video's dataset is opened
                patched.setattr(module, "open", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
            error = videos.get("v")
        assert isinstance(error, InputError) and error.code == "unreadable_video"
        assert "'v'" in error.message and "RuntimeError: boom" in error.message
        assert videos.get("w").frames.shape == (8, DIM)


def test_a_duration_attribute_that_cannot_be_read_leaves_the_video_usable(tmp_path, monkeypatch):
    path = tmp_path / "archive.hdf5"
    with h5py.File(path, "w") as out:
        out.create_dataset("v", data=GOOD).attrs["duration"] = 30.0
    monkeypatch.setattr(h5py.h5a, "open", lambda *args: (_ for _ in ()).throw(OSError("damaged")))
    with FeatureArchive(path) as archive:
        clips = load_clips(archive, "v", DIM, 8)
    assert clips.duration is None and "OSError: damaged" in clips.duration_error


def test_every_new_code_is_an_error_code():
    assert {"bad_dtype", "incomplete_video", "video_too_large"} <= set(ERROR_CODES)


# --- the poisoned videos the end-to-end runs use ----------------------------------------------------------

def test_each_poisoned_video_gives_its_code_and_the_good_video_its_values(tmp_path):
    path, codes = poisoned_archive(tmp_path, KINDS)
    outcomes = load_in_child(path, ["good", *codes])
    assert outcomes["good"][:3] == ["ok", "", digest(GOOD)]
    for video, code in codes.items():
        if code == "bad_duration":  # the features are fine; the duration says why it is not one
            assert outcomes[video][0] == "ok" and repr(video) in outcomes[video][3], video
        else:
            assert outcomes[video][0] == code and repr(video) in outcomes[video][1], video


# --- a grounding run over a poisoned archive --------------------------------------------------------------

GROUND_IN_CHILD = """
import json, sys
from pathlib import Path
from cnm_runtime.grounder import Grounder
model, archive, queries, feeders, out = sys.argv[1:]
grounder = Grounder(model, batch_size=4, feeders=int(feeders))
Path(out).write_text(json.dumps([result.record() for result in grounder.ground(archive, queries)]))
"""


def ground_in_child(model, archive, queries, feeders: int, out) -> list[dict]:
    run_in_child(GROUND_IN_CHILD, str(model), str(archive), str(queries), str(feeders), str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("feeders", [0, 2], ids=["thread", "feed_processes"])
def test_a_poisoned_archive_costs_only_its_bad_videos_queries(tiny_model, tmp_path, feeders):
    """Each poisoned video's queries are its error records, a query with its own duration on a video whose
    duration attribute is bad is predicted, and every other query is predicted as over the clean archive."""
    clean, poisoned = write_archive(tmp_path / "clean.hdf5"), write_archive(tmp_path / "poisoned.hdf5")
    codes = write_poisoned(poisoned, {f"bad_{kind}": kind for kind in KINDS}, rows=20)
    good = good_records(24)
    bad = [{"qid": f"{video}-{own}", "video": video, "query": "person sits", **({"duration": 30.0} if own else {})}
           for video in codes for own in (False, True)]
    mixed = [record for pair in zip(good, bad) for record in pair] + good[len(bad):] + bad[len(good):]
    write_lines(tmp_path / "good.jsonl", good)
    write_lines(tmp_path / "mixed.jsonl", mixed)
    expected = ground_in_child(tiny_model, clean, tmp_path / "good.jsonl", 0, tmp_path / "clean.json")
    results = ground_in_child(tiny_model, poisoned, tmp_path / "mixed.jsonl", feeders, tmp_path / "poisoned.json")
    by_qid = {result["qid"]: result for result in results}
    assert len(results) == len(mixed) == len(by_qid)
    assert [by_qid[record["qid"]] for record in good] == expected
    for video, code in codes.items():
        without, own = by_qid[f"{video}-False"], by_qid[f"{video}-True"]
        assert without.get("code") == code and repr(video) in without["message"], video
        if code == "bad_duration":
            assert "code" not in own and own["duration"] == 30.0, video
        else:
            assert own.get("code") == code, video
