"""ResumableArchive: parts folded into the archive by a new file renamed over the old, settings kept, one run
at a time. (A run killed by SIGKILL and continued: tests/test_features.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.datasets.dataset_files import ArchiveWriter
from cnm_runtime.datasets.resumable import ResumableArchive, SettingsMismatch
from cnm_runtime.run_files import OutputInUse

SETTINGS = {"extractor": "test", "fps": 2.0, "dim": 3}


def rows(value: float, count: int = 4) -> np.ndarray:
    return np.full((count, 3), value, np.float32)


def contents(path) -> dict:
    with FeatureArchive(path) as archive:
        return {video: (stored.features, stored.duration)
                for video, stored in ((video, archive.load(video)) for video in archive.videos())}


def test_videos_added_are_folded_in_and_counted_done_next_time(tmp_path):
    path = tmp_path / "a.hdf5"
    with ResumableArchive(path) as archive:
        assert archive.start(SETTINGS) == set()
        archive.add("v1", rows(1), 2.0)
        archive.add("v 2: odd, näme", rows(2, 3), 1.5)
        assert not path.exists() and len(list(archive.parts.glob("*.npz"))) == 2  # parts until the end
    assert not archive.parts.exists()
    found = contents(path)
    assert set(found) == {"v1", "v 2: odd, näme"}
    np.testing.assert_array_equal(found["v 2: odd, näme"][0], rows(2, 3))
    assert found["v1"][1] == 2.0

    with ResumableArchive(path) as archive:
        assert archive.start(SETTINGS) == {"v1", "v 2: odd, näme"}
        archive.add("v3", rows(3), 1.0)
    assert set(contents(path)) == {"v1", "v 2: odd, näme", "v3"}
    with FeatureArchive(path) as archive:
        assert archive.attrs == SETTINGS


def test_parts_left_by_a_stopped_run_are_done_and_the_archive_keeps_its_own(tmp_path):
    path = tmp_path / "a.hdf5"
    with ResumableArchive(path) as archive:
        archive.start(SETTINGS)
        archive.add("old", rows(1), 1.0)
    stopped = ResumableArchive(path)
    with stopped:  # a run that stops before its fold: its parts stay
        stopped.start(SETTINGS)
        stopped.add("new", rows(2), 1.0)
        stopped.add("old", rows(9), 9.0)  # as a run killed after its fold's rename but before its clean-up
        stopped.settings = None  # leaves without folding, as a killed run does
    (stopped.parts / "0123.npz.tmp").write_bytes(b"half a part")
    (stopped.parts / "4567.npz").write_bytes(b"not a zip")
    with ResumableArchive(path) as archive:
        assert archive.start(SETTINGS) == {"old", "new"}
        assert not list(archive.parts.glob("*.tmp"))
    found = contents(path)
    assert set(found) == {"old", "new"} and found["old"][1] == 1.0


def test_other_settings_are_refused_and_nothing_changes(tmp_path):
    path = tmp_path / "a.hdf5"
    with ResumableArchive(path) as archive:
        archive.start(SETTINGS)
        archive.add("v", rows(1), 1.0)
    before = path.read_bytes()
    with ResumableArchive(path) as archive, pytest.raises(SettingsMismatch, match="fps=2.0, this run asks for 4.0"):
        archive.start({**SETTINGS, "fps": 4.0})
    assert path.read_bytes() == before

    foreign = tmp_path / "synth.hdf5"
    with ArchiveWriter(foreign, {"generator": "cnm-synth"}) as writer:
        writer.add("x", rows(1), 1.0)
    with ResumableArchive(foreign) as archive, pytest.raises(SettingsMismatch, match="not made by this tool"):
        archive.start(SETTINGS)

    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("my notes")
    with ResumableArchive(not_hdf5) as archive, pytest.raises(ValueError, match="not a readable HDF5"):
        archive.start(SETTINGS)
    assert not_hdf5.read_text() == "my notes"


def test_a_name_hdf5_would_read_as_a_path_is_refused(tmp_path):
    with ResumableArchive(tmp_path / "a.hdf5") as archive:
        archive.start(SETTINGS)
        for name in ("a/b", ".", "a\x00b", ""):
            with pytest.raises(ValueError, match="cannot be a video id"):
                archive.add(name, rows(1), 1.0)


def test_one_run_at_a_time(tmp_path):
    path = tmp_path / "a.hdf5"
    with ResumableArchive(path):
        with pytest.raises(OutputInUse, match="a.hdf5.lock is in use by another run"):
            ResumableArchive(path).__enter__()
    with ResumableArchive(path) as archive:  # released on leaving
        archive.start(SETTINGS)
    assert contents(path) == {}
