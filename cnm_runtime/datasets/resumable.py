"""An archive that a long run fills video by video, so that the run can be killed at any moment and continued.

Each finished video goes at once to a part file of its own in ``<archive>.parts/`` (written whole, flushed to
disk, then renamed into place), never into the HDF5 file itself: HDF5 keeps no journal, and a process killed
while it changes a file can leave the file unreadable. When the run ends, or stops on an exception or Ctrl-C,
``fold`` writes a new archive holding the old one's videos and the parts (``ArchiveWriter``: a new file
renamed over the old one) and then removes the parts. So at every moment the archive is whole (the one of the
last fold), and every finished video is in it or in a part, both of which the next run counts as done.

One run at a time: the lock of ``<archive>.lock`` (``LockedFile``, as cnm-run locks its outputs; not the
archive itself, which each fold replaces) is held from start to end. The settings that made the features
(backbone, preprocessing, sampling) are kept as the archive's attributes and beside the parts, and a run with
other settings is refused, so that one archive never mixes features made two ways.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Union

import h5py
import numpy as np

from cnm_runtime.datasets.dataset_files import ArchiveWriter, sync_to_disk
from cnm_runtime.run_files import LockedFile, write_json_atomic

log = logging.getLogger(__name__)

Setting = Union[str, int, float]
PARTS_SUFFIX = ".parts"
LOCK_SUFFIX = ".lock"
SETTINGS_FILE = "settings.json"


class SettingsMismatch(ValueError):
    """The archive, or the parts an earlier run left, were made with other settings than this run's."""


class ResumableArchive:
    """``with ResumableArchive(path) as archive:`` holds ``path``'s lock (OutputInUse at once where another
    run holds it); ``archive.start(settings)`` checks the settings and fills ``archive.done`` with the videos
    already made (skip them); ``archive.add`` keeps a finished video for good; leaving the block folds them all
    into ``path``.

    ``start`` raises SettingsMismatch, or ValueError where ``path`` exists and is not a readable HDF5 file (it
    is left alone).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + PARTS_SUFFIX)
        self.settings: dict[str, Setting] | None = None  # None until ``start``
        self.done: set[str] = set()
        self._lock: LockedFile | None = None

    def __enter__(self) -> "ResumableArchive":
        self._lock = LockedFile(self.path.with_name(self.path.name + LOCK_SUFFIX), "-o")
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.settings is not None:
                self.fold()
        finally:
            self._lock.close()  # left in place: removing it would let a third run lock a new one meanwhile

    def start(self, settings: dict[str, Setting]) -> set[str]:
        """Check ``settings`` against the archive's and the parts'; the videos already made."""
        self.done = self._archived(settings) | set(self._check_parts(settings))
        self.settings = dict(settings)
        return self.done

    def add(self, video: str, features: np.ndarray, duration: float | None) -> None:
        """Keep ``video``'s float32 ``[rows, dim]`` features: once this returns, a killed run keeps them."""
        if not video or video == "." or "/" in video or "\x00" in video:
            raise ValueError(f"{video!r} cannot be a video id: HDF5 would not read it as one top-level name")
        part = self.parts / _part_name(video)
        temporary = part.with_name(part.name + ".tmp")
        arrays = {"video": np.str_(video), "features": np.asarray(features, dtype=np.float32)}
        if duration is not None:
            arrays["duration"] = np.float64(duration)
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, part)
        self.done.add(video)

    def fold(self) -> int:
        """Write the parts into the archive (a new file renamed over the old one) and remove them; the number
        of videos added. Writes an archive with no video where there was none, so that a run always leaves one."""
        parts = sorted(self.parts.glob("*.npz")) if self.parts.exists() else []
        if not parts and self.path.exists():
            return 0
        added = 0
        with ArchiveWriter(self.path, self.settings) as writer:
            kept = set(writer.copy_from(self.path)) if self.path.exists() else set()
            for part in parts:
                video, features, duration = _read_part(part)
                if video is not None and video not in kept:  # a kill between rename and clean-up: the archive has it
                    writer.add(video, features, duration)
                    kept.add(video)
                    added += 1
        shutil.rmtree(self.parts, ignore_errors=True)
        return added

    def _archived(self, settings: dict[str, Setting]) -> set[str]:
        """The videos of the archive, once its settings are checked against ``settings``."""
        if not self.path.exists():
            return set()
        try:
            with h5py.File(self.path, "r") as archive:
                _compare(settings, {key: _plain(value) for key, value in archive.attrs.items()},
                         f"archive {self.path}")
                return set(archive)
        except OSError as error:
            raise ValueError(f"{self.path} exists and is not a readable HDF5 archive ({error}); "
                             "it is left as it is: write to another path") from error

    def _check_parts(self, settings: dict[str, Setting]) -> list[str]:
        """The videos of the parts an earlier run left (their settings checked), the folder made ready."""
        settings_file = self.parts / SETTINGS_FILE
        if settings_file.exists():
            _compare(settings, json.loads(settings_file.read_text()), f"the parts in {self.parts}")
        else:
            self.parts.mkdir(parents=True, exist_ok=True)
            write_json_atomic(settings_file, settings)
            sync_to_disk(self.parts)
        for temporary in self.parts.glob("*.tmp"):  # a part a killed run was writing: its video is not done
            temporary.unlink()
        videos = []
        for part in sorted(self.parts.glob("*.npz")):
            video = _read_part(part)[0]
            if video is not None:
                videos.append(video)
        return videos


def _part_name(video: str) -> str:
    """A file name for any video id (ids may hold characters a file name cannot)."""
    return hashlib.sha1(video.encode("utf-8", "surrogatepass")).hexdigest() + ".npz"


def _read_part(part: Path) -> tuple[str | None, np.ndarray, float | None]:
    """``(video, features, duration)``; video None for a part that cannot be read (its video is redone)."""
    try:
        with np.load(part, allow_pickle=False) as data:
            duration = float(data["duration"]) if "duration" in data else None
            return str(data["video"]), data["features"], duration
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.warning("ignoring %s, which cannot be read (%s); its video is made again", part, error)
        part.unlink(missing_ok=True)
        return None, np.empty((0, 0), np.float32), None


def _plain(value):
    """An HDF5 attribute as the JSON value it was written from."""
    return value.item() if isinstance(value, np.generic) else value


def _compare(wanted: dict[str, Setting], found: dict, where: str) -> None:
    for key, value in wanted.items():
        if key not in found:
            raise SettingsMismatch(f"{where} was not made by this tool with these settings (it has no {key!r}); "
                                   "write to another path")
        if found[key] != value:
            raise SettingsMismatch(f"{where} was made with {key}={found[key]!r}, this run asks for {value!r}; "
                                   "write to another path, or run again with the same settings")
