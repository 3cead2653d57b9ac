"""cnm-features: videos -> an HDF5 feature archive that cnm-train and cnm-run read.

    cnm-features videos/ -o features.hdf5 --weights clip-vit-base-patch32/ --fps 1 --errors errors.jsonl

Each video's frames at ``--fps`` (or ``--frames`` evenly spread, or one in ``--every``) go through a CLIP vision model, and the
archive gets one float32 ``[rows, dim]`` dataset per video id with its ``duration`` in seconds. The same
command again continues a run that stopped (videos in the archive are skipped); a video that cannot be used
becomes a line of ``--errors`` and the run goes on; the exit status is 1 when there are more of them than
``--max-errors``, 130 after Ctrl-C (what was made is kept). Progress and logs go to standard error.

The backbone (torch, transformers) is imported only inside ``main``: decoding processes start from this
module, and must start light.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cnm_runtime.cores import available_cores
from cnm_runtime.datasets.resumable import ResumableArchive, SettingsMismatch
from cnm_runtime.run_files import (
    JsonLines, LockedFile, OutputError, OutputInUse, refuse_aliases, write_json_atomic,
)
from cnm_train.extract.decode import Sampling
from cnm_train.extract.errors import VideoError
from cnm_train.extract.extractor import ExtractOptions, extract
from cnm_train.extract.sources import video_jobs, video_paths
from cnm_train.extract.workers import DecodeOptions, VideoJob

log = logging.getLogger("cnm-features")
EXIT_TOO_MANY_ERRORS = 1
EXIT_INTERRUPTED = 130
DEFAULT_FPS = 1.0


def default_processes() -> int:
    """One decoding process a core but one (the model's), at least one, at most 8."""
    return max(1, min(8, available_cores() - 1))


@dataclass(frozen=True)
class RunSettings:
    sampling: Sampling
    weights: str
    device: str
    threads: int  # PyTorch's on the CPU; 0: its default
    batch_size: int
    processes: int  # decoding processes; 0: a thread
    errors_path: Path | None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("videos", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--list", "lists", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file naming one video a line (relative to the file's folder); repeat for several.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HDF5 archive to write, or to continue where it exists.")
@click.option("--weights", required=True,
              help="CLIP checkpoint: a folder saved by transformers (config.json, model weights, "
                   "preprocessor_config.json), or a hub name in the hub cache.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Rows a second of video, from its first frame [default: {DEFAULT_FPS:g}].")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Instead of --fps: this many rows a video, evenly spread.")
@click.option("--every", type=click.IntRange(min=1), default=None,
              help="Instead of --fps: one frame in N, from the first (the original ActivityNet CLIP features: 8).")
@click.option("--max-duration", type=click.FloatRange(min=0, min_open=True), default=3 * 3600.0,
              show_default=True, help="Seconds; a longer video is a too_long error.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path),
              help="One JSON line per video without features (default: logged to standard error).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Frames the model takes at once at most.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes (0: a thread of this process) [default: one a core but one, at most 8].")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA where there is a GPU, else the CPU), cpu, cuda or cuda:N; float16 on a GPU.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="PyTorch threads on the CPU (0: PyTorch's default).")
@click.option("--max-errors", type=click.IntRange(min=0), default=0, show_default=True,
              help="Exit with status 1 when more videos than this have no features.")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              help="This run's counts (videos written, errors by code, frames) and speed, as JSON.")
def main(videos: tuple[Path, ...], lists: tuple[Path, ...], output: Path, weights: str, fps: float | None,
         frames: int | None, every: int | None, max_duration: float, errors_path: Path | None, batch_size: int,
         workers: int | None, device: str, threads: int, max_errors: int, metrics_path: Path | None) -> None:
    """Write CLIP features of VIDEOS (files or folders of videos) into the archive -o."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="cnm-features: %(message)s", force=True)
    if sum(choice is not None for choice in (fps, frames, every)) > 1:
        raise click.UsageError("give one of --fps, --frames and --every")
    if frames is None and every is None:
        fps = fps or DEFAULT_FPS
    settings = RunSettings(Sampling(fps=fps, frames=frames, every=every, max_duration=max_duration), weights, device,
                           threads, batch_size, default_processes() if workers is None else workers, errors_path)
    try:
        paths = video_paths(videos, lists)
        outputs = {"-o": output, "--errors": errors_path, "--metrics": metrics_path}
        refuse_aliases({f"video {path}": path for path in paths} | {f"--list {path}": path for path in lists},
                       {flag: path for flag, path in outputs.items() if path is not None})
    except (OSError, ValueError) as error:
        raise click.UsageError(str(error)) from error
    jobs, duplicates = video_jobs(paths)
    if not jobs:
        raise click.UsageError("no videos: give files, folders or --list")
    try:
        with ResumableArchive(output) as archive:  # the lock first: a second run fails before loading a model
            metrics = _run(archive, jobs, duplicates, settings)
    except (OutputInUse, OutputError, SettingsMismatch, ValueError) as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:  # the archive folded what was made when its block was left
        log.info("interrupted: the videos finished so far are in %s; the same command continues the run", output)
        sys.exit(EXIT_INTERRUPTED)
    if metrics_path:
        write_json_atomic(metrics_path, metrics)
    errors = sum(metrics["errors"].values())
    if errors > max_errors:
        log.error("%d videos without features, more than --max-errors %d%s", errors, max_errors,
                  f" (see {errors_path})" if errors_path else "")
        sys.exit(EXIT_TOO_MANY_ERRORS)


def _run(archive: ResumableArchive, jobs: list[VideoJob], duplicates: list[tuple[VideoJob, VideoError]],
         settings: RunSettings) -> dict:
    """Load the backbone, extract every video not in the archive yet; the run's counts and speed."""
    import torch

    from cnm_train.extract.backbone import ClipBackbone

    if settings.threads:
        torch.set_num_threads(settings.threads)
    backbone = ClipBackbone(settings.weights, settings.device)
    sampling, processes = settings.sampling, settings.processes
    done = archive.start({"extractor": "cnm-features", **backbone.settings(), "fps": sampling.fps or 0,
                          "frames": sampling.frames or 0, "every": sampling.every or 0})
    todo = [job for job in jobs if job.video not in done]
    log.info("%s (%d-d) on %s (%s); %d videos, %d already in %s; decoding in %s", settings.weights, backbone.dim,
             backbone.device, str(backbone.dtype).removeprefix("torch."), len(jobs), len(jobs) - len(todo),
             archive.path, f"{processes} process{'es' if processes > 1 else ''}" if processes else "a thread")
    options = ExtractOptions(DecodeOptions(sampling, backbone.preprocessing), batch_size=settings.batch_size,
                             processes=processes)
    codes: Counter = Counter()
    started = time.perf_counter()
    with ExitStack() as stack:
        error_file = None
        if settings.errors_path:
            error_file = stack.enter_context(JsonLines(stack.enter_context(LockedFile(settings.errors_path,
                                                                                      "--errors"))))
        progress = stack.enter_context(tqdm(total=len(jobs) + len(duplicates), initial=len(jobs) - len(todo),
                                            unit="video", file=sys.stderr, disable=None, dynamic_ncols=True))
        stack.enter_context(logging_redirect_tqdm())

        def store(job: VideoJob, features: np.ndarray, duration: float) -> None:
            archive.add(job.video, features, duration)
            progress.update(1)

        def fail(job: VideoJob, error: VideoError) -> None:
            codes[error.code] += 1
            if error_file:
                error_file.write(error.record(job.video, job.path))
            else:
                log.warning("%s (%s): %s: %s", job.video, job.path, error.code, error.message)
            progress.update(1)

        for job, error in duplicates:
            fail(job, error)
        tally = extract(todo, backbone.embed, store, fail, options)
    seconds = time.perf_counter() - started
    by_code = ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))
    log.info("%d videos written, %d without features%s; %d frames in %.1f s (%.1f frames/s)", tally.stored,
             codes.total(), f" ({by_code})" if codes else "", tally.frames, seconds, tally.frames / seconds)
    return {"videos": len(jobs) + len(duplicates), "already_done": len(jobs) - len(todo), "written": tally.stored,
            "errors": dict(sorted(codes.items())), "frames": tally.frames, "seconds": round(seconds, 3),
            "frames_per_s": round(tally.frames / seconds, 2), "device": str(backbone.device),
            "dtype": str(backbone.dtype).removeprefix("torch."), "decoding_processes": processes,
            "batch_size": settings.batch_size}
