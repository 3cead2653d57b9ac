"""cnm-synth: write a synthetic feature archive from annotation files, or the embedded default dataset.

    cnm-synth --annotations train.json --annotations test.json --glove glove.pkl -o archive.hdf5
    cnm-synth --default -o DIR

Logs go to stderr; the paths written go to stdout, one per line.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from cnm_runtime.datasets.convert import read_annotation_files
from cnm_runtime.datasets.default import DEFAULT_NUM_VIDEOS, DEFAULT_QUERIES_PER_VIDEO, TEMPLATES, make_default_dataset
from cnm_runtime.datasets.synth import SynthInfo, synthesize_archive
from cnm_runtime.text import load_glove


def _log_info(info: SynthInfo, seconds: float) -> None:
    size_mb = info.path.stat().st_size / 1e6
    click.echo(
        f"{info.path}: {info.videos} videos, {info.rows} rows, {info.queries} moments "
        f"({info.without_signal} without a content word in the vocabulary), {size_mb:.1f} MB in {seconds:.1f} s",
        err=True,
    )
    for message in info.skipped:
        click.echo(f"skipped {message}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--annotations", "annotation_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An annotation JSON list [video, duration, [start, end], sentence]; repeat for several.")
@click.option("--glove", type=click.Path(exists=True, dir_okay=False), help="The glove.pkl giving the word vectors.")
@click.option("--default", "default", is_flag=True,
              help="Make the embedded default dataset (own vocabulary and sentences) in the folder -o.")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The archive to write (with --annotations), or the folder (with --default).")
@click.option("--frame-dim", default=1024, show_default=True, type=click.IntRange(min=1), help="Feature width.")
@click.option("--rows-per-second", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--vocab-cap", type=click.IntRange(min=1),
              help="Only the N most common words of the glove counter make signals (the model's vocab_size).")
@click.option("--num-videos", default=DEFAULT_NUM_VIDEOS, show_default=True, type=click.IntRange(min=3), help="With --default.")
@click.option("--queries-per-video", default=DEFAULT_QUERIES_PER_VIDEO, show_default=True,
              type=click.IntRange(min=1, max=len(TEMPLATES)),
              help=f"With --default: sentences a video, each of another template (1 to {len(TEMPLATES)}).")
def main(annotation_files, glove, default, out, frame_dim, rows_per_second, seed, vocab_cap, num_videos,
         queries_per_video) -> None:
    """Write an HDF5 archive of synthetic I3D-like features whose annotated moments carry their sentences."""
    started = time.perf_counter()
    if default:
        if annotation_files or glove:
            raise click.UsageError("--default makes its own annotations and glove.pkl; drop --annotations/--glove")
        try:
            dataset = make_default_dataset(out, num_videos=num_videos, queries_per_video=queries_per_video,
                                           seed=seed, frame_dim=frame_dim, rows_per_second=rows_per_second,
                                           progress=True)
        except ValueError as error:
            raise click.BadParameter(str(error)) from error
        _log_info(dataset.info, time.perf_counter() - started)
        for path in (dataset.glove, dataset.train, dataset.val, dataset.test, dataset.queries, dataset.archive):
            click.echo(path)
        return
    if not annotation_files or not glove:
        raise click.UsageError("give --annotations (one or more) and --glove, or --default")
    annotations = read_annotation_files(annotation_files)
    try:
        glove_dict = load_glove(glove)
    except (ValueError, OSError) as error:  # the message names the file
        raise click.BadParameter(str(error), param_hint="--glove") from error
    info = synthesize_archive(
        out, annotations, glove_dict, frame_dim=frame_dim, rows_per_second=rows_per_second, seed=seed,
        vocab_cap=vocab_cap, sources=[Path(path).name for path in annotation_files], progress=True,
    )
    _log_info(info, time.perf_counter() - started)
    if info.videos == 0:
        sys.exit("no video could be written: every annotation was skipped")
    click.echo(info.path)
