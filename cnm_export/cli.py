"""``cnm-export``: a checkpoint -> one self-contained ONNX file for ``cnm-run``, optionally verified."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cnm_export.export import DEFAULT_OPSET, PRECISIONS, export_model, load_source, unpruned_flops
from cnm_export.flops import graph_flops
from cnm_export.verify import verify_export


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="glove.pkl of training  [default: the checkpoint config's dataset.vocab_path]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write  [default: CHECKPOINT with .onnx]")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp16: fp16 math and frames, float32 outputs (GPU providers); int8: dynamic quantization (CPU)")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="skip work whose result is never read: all but the last position in the last frame-decoder layer, "
                   "and the blocked keys of the clips' causal self-attention")
@click.option("--verify", is_flag=True, help="compare with PyTorch in ONNX Runtime; exit 1 when fp32 is off by >1e-5")
@click.option("--golden", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="labelled set to verify on too (queries.jsonl, features.hdf5, optional expected.npz); "
                   "implies --verify")
def main(checkpoint: Path, vocab: Path | None, output: Path | None, precision: str, opset: int, prune: bool,
         verify: bool, golden: Path | None) -> None:
    """Export the mask generator of CHECKPOINT (ours or the original repo's) to one ONNX file."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("cnm_export").setLevel(logging.INFO)  # ours; the quantizer's INFO chatter stays quiet
    output = output or checkpoint.with_suffix(".onnx")
    try:
        source = load_source(checkpoint, vocab)
        spec = export_model(source, output, precision, opset, prune=prune)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    size_mb = output.stat().st_size / 1e6
    click.echo(f"wrote {output} ({precision}, opset {opset}, {size_mb:.1f} MB, {len(spec.words)} words, "
               f"{spec.frame_dim}-d frames)")
    flops = graph_flops(output)
    before = f" (unpruned: {unpruned_flops(source, opset).per_query_at() / 1e9:.3f})" if prune else ""
    click.echo(f"GFLOPs per query: {flops.per_query_at() / 1e9:.3f}{before}, of which "
               f"{flops.per_video / 1e9:.3f} once per video however many queries share it")
    if verify or golden:
        report = verify_export(output, source.model, source.word_vectors, golden)
        click.echo(report.table())
        if not report.passed:
            sys.exit(1)
