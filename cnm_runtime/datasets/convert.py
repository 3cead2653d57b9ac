"""Bring features and annotations from elsewhere into the formats the toolkit reads.

    python -m cnm_runtime.datasets.convert npy-to-hdf5 FOLDER -o features.hdf5 [--annotations train.json ...]
    python -m cnm_runtime.datasets.convert annotations-to-queries test.json [more.json ...] -o queries.jsonl

A bad .npy file is reported on stderr and left out; the others are still written.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import click
import numpy as np
from tqdm import tqdm

from cnm_runtime.annotations import load_annotations
from cnm_runtime.datasets.dataset_files import ArchiveWriter, write_queries
from cnm_runtime.errors import InputError
from cnm_runtime.features import validate_features
from cnm_runtime.fields import Annotation


@dataclass(frozen=True)
class ConversionReport:
    written: tuple[str, ...]  # video ids stored
    errors: tuple[str, ...]  # one message per file left out
    without_duration: tuple[str, ...]  # stored videos that no annotation gives a duration for


def convert_npy_folder(
    folder: str | Path, out_h5: str | Path, annotations: Sequence[Annotation] = (), frame_dim: int | None = None,
    progress: bool = False,
) -> ConversionReport:
    """Each ``<video>.npy`` ``[rows, dim]`` becomes dataset ``<video>``, with its duration from ``annotations``."""
    folder = Path(folder)
    durations = {annotation.video: annotation.duration for annotation in annotations}
    attrs = {
        "synthetic": False,
        "generator": "cnm_runtime.datasets.convert npy-to-hdf5",
        "cnm_version": version("cnm"),
        "sources": json.dumps([folder.name]),
    }
    written, errors = [], []
    with ArchiveWriter(out_h5, attrs) as writer:
        for path in tqdm(sorted(folder.glob("*.npy")), desc="videos", disable=not progress):
            video = path.stem
            try:
                features = validate_features(np.load(path, allow_pickle=False), frame_dim, video)
            except InputError as error:
                errors.append(f"{path.name}: {error.message}")
                continue
            except (OSError, ValueError) as error:
                errors.append(f"{path.name}: cannot read video {video!r}: {error}")
                continue
            writer.add(video, features, durations.get(video))
            written.append(video)
    without_duration = tuple(video for video in written if video not in durations)
    return ConversionReport(tuple(written), tuple(errors), without_duration)


def read_annotation_files(paths: Sequence[str]) -> list[Annotation]:
    """All annotations of ``paths`` in order; a click error naming the file when one is malformed."""
    annotations = []
    for path in paths:
        try:
            annotations += load_annotations(path)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="annotation file") from error
    return annotations


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Convert features and annotations into cnm's formats."""


@main.command("npy-to-hdf5")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The HDF5 archive to write.")
@click.option("--annotations", "annotation_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Annotation JSON lists giving each video's duration (stored as its `duration` attribute).")
@click.option("--frame-dim", type=click.IntRange(min=1), help="Leave out arrays of any other width.")
def npy_to_hdf5(folder, out, annotation_files, frame_dim) -> None:
    """Turn a FOLDER of per-video <video>.npy arrays [rows, dim] into one HDF5 archive."""
    if not any(Path(folder).glob("*.npy")):
        raise click.UsageError(f"{folder} holds no .npy file")
    annotations = read_annotation_files(annotation_files)
    report = convert_npy_folder(folder, out, annotations, frame_dim, progress=True)
    for message in report.errors:
        click.echo(f"left out {message}", err=True)
    if annotation_files and report.without_duration:
        click.echo(f"{len(report.without_duration)} videos have no duration in the annotations, "
                   f"e.g. {report.without_duration[0]!r}", err=True)
    click.echo(f"{out}: {len(report.written)} videos written, {len(report.errors)} left out", err=True)
    if not report.written:
        sys.exit(f"no video could be written to {out}")
    click.echo(out)


@main.command("annotations-to-queries")
@click.argument("annotation_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The queries.jsonl to write.")
def annotations_to_queries(annotation_files, out) -> None:
    """Turn annotation JSON lists [video, duration, [start, end], sentence] into a queries.jsonl for cnm-run."""
    annotations = read_annotation_files(annotation_files)
    write_queries(out, annotations)
    click.echo(f"{out}: {len(annotations)} queries", err=True)
    click.echo(out)


if __name__ == "__main__":
    main()
