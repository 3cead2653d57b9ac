"""tests/golden holds the full golden set's own values (checked where ../shared has it)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import GOLDEN, SHARED
from golden.derive import SUBSET, write_expected

FULL = SHARED / "golden" / "charades_small"


@pytest.fixture
def full() -> Path:
    if not FULL.exists():
        pytest.skip(f"{FULL} is not available on this machine")
    return FULL


def test_files_copied_as_they_are(full):
    for name in ("model-best.pt", "glove.pkl"):
        assert (GOLDEN / name).read_bytes() == (full / name).read_bytes(), name
    lines = (full / "queries.jsonl").read_text().splitlines()
    assert (GOLDEN / "queries.jsonl").read_text().splitlines() == [lines[i] for i in SUBSET]


def test_videos_hold_the_same_bits(full):
    videos = [json.loads(line)["video"] for line in (GOLDEN / "queries.jsonl").read_text().splitlines()]
    with h5py.File(full / "features.hdf5", "r") as original, h5py.File(GOLDEN / "features.hdf5", "r") as ours:
        assert sorted(ours) == sorted(videos)
        for video in videos:
            rows = ours[video][()]
            assert rows.dtype == np.float32 and rows.tobytes() == original[video][()].tobytes(), video


def test_expected_outputs_are_derived_again_byte_for_byte(full, tmp_path):
    write_expected(full / "expected.npz", tmp_path / "expected.npz")
    assert (tmp_path / "expected.npz").read_bytes() == (GOLDEN / "expected.npz").read_bytes()
