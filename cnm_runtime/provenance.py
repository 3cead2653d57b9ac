"""What an output was made from, so that a resumed run never mixes the records of two runs.

Both engines record, when they start writing, the SHA-256 of the queries file and of the model and the cnm
version: the local run beside its output (``<output>.run.json``), the Ray run in ``OUT/run.json``. Resuming
(``--resume``, or a Ray run's same command again) compares what it would make now with what the output was
made from, and refuses where they differ: the records of another queries file or model would otherwise be
kept beside this one's.
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from cnm_runtime.model_files import model_files


def file_digest(*paths: str | Path) -> str:
    """SHA-256 of the bytes of ``paths``, one after another (of one file's, for one)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def cnm_version() -> str:
    try:
        return metadata.version("cnm")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def provenance(queries_sha256: str, model: str | Path, **more: Any) -> dict[str, Any]:
    """What an output is made from: the queries' digest, the model's (all its files), the cnm version, and ``more``."""
    return {"cnm_version": cnm_version(), "queries_sha256": queries_sha256, "model_sha256": file_digest(*model_files(Path(model))),
            **more}


class ProvenanceMismatch(Exception):
    """An output made from other inputs than the run that would resume it."""


def check_same(recorded_at: Path, now: dict[str, Any], afresh: str) -> None:
    """ProvenanceMismatch unless ``recorded_at`` holds ``now``; ``afresh`` says how to start over instead."""
    try:
        earlier = json.loads(recorded_at.read_text())
    except FileNotFoundError:
        raise ProvenanceMismatch(f"nothing says what made the output: {recorded_at} is missing (it was written by "
                                 f"an older cnm-run, or not by cnm-run); {afresh}") from None
    except (OSError, ValueError) as error:
        raise ProvenanceMismatch(f"{recorded_at} cannot be read ({error}); {afresh}") from None
    differences = [name for name in now if not isinstance(earlier, dict) or earlier.get(name) != now[name]]
    if differences:
        what = ", ".join(f"{name} {earlier.get(name) if isinstance(earlier, dict) else None!r} then, "
                         f"{now[name]!r} now" for name in differences)
        raise ProvenanceMismatch(f"the output was made from other inputs ({what}); {afresh}")


def provenance_path(output: Path) -> Path:
    """Where the local run records what ``output`` is made from."""
    return output.with_name(output.name + ".run.json")
