"""Which files are the videos of a run, and the id each is stored under.

A folder gives its files whose extension names a video container (not its subfolders); a file given by
name is taken whatever its extension; a list file gives one path a line (relative paths from the list's
folder; blank lines and lines starting with ``#`` skipped). A video's id is its file name without the
extension (``3MSZA.mp4`` -> ``3MSZA``), as feature archives name videos; a later path with an id taken
already is a ``duplicate_video`` error, and the first keeps it.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cnm_train.extract.errors import VideoError
from cnm_train.extract.workers import VideoJob

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
    ".ogv", ".3gp", ".3g2", ".mxf", ".vob", ".divx", ".asf",
})


def video_paths(arguments: Iterable[Path], lists: Iterable[Path]) -> list[Path]:
    """The paths in the order given (a folder's sorted by name); ValueError for a folder without videos."""
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            found = sorted(p for p in argument.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir())
            if not found:
                raise ValueError(f"folder {argument} holds no file with a video extension "
                                 f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
            paths += found
        else:
            paths.append(argument)
    for list_file in lists:
        for line in list_file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                paths.append(list_file.parent / line.strip())
    return paths


def video_jobs(paths: Iterable[Path]) -> tuple[list[VideoJob], list[tuple[VideoJob, VideoError]]]:
    """``(jobs, duplicates)``: one job per video id, and each later path with a taken id as its error."""
    jobs: dict[str, VideoJob] = {}
    duplicates = []
    for path in paths:
        job = VideoJob(path.stem, str(path))
        first = jobs.setdefault(job.video, job)
        if first is not job:
            duplicates.append((job, VideoError("duplicate_video", f"{path}: video id {job.video!r} is taken by "
                                                                  f"{first.path}, which keeps it")))
    return list(jobs.values()), duplicates
