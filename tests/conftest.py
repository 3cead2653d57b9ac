"""Shared fixtures: paths into ../shared (tests skip cleanly where it is absent) and tiny configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden" / "charades_small"
CHARADES = SHARED / "data" / "charades"
ACTIVITYNET = SHARED / "data" / "activitynet"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return _require(GOLDEN)


@pytest.fixture
def charades_dir() -> Path:
    return _require(CHARADES)


@pytest.fixture
def activitynet_dir() -> Path:
    return _require(ACTIVITYNET)


@pytest.fixture
def golden_queries(golden_dir) -> list[dict]:
    return [json.loads(line) for line in (golden_dir / "queries.jsonl").read_text().splitlines()]
