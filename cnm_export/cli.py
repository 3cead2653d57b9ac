"""``cnm-export``: a checkpoint -> one self-contained ONNX file for ``cnm-run``, optionally verified."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cnm_export.export import DEFAULT_OPSET, PRECISIONS, export_model, load_source, unpruned_flops
from cnm_export.flops import graph_flops
from cnm_export import openvino_int8
from cnm_export.verify import verify_engines
from cnm_runtime.model_files import IR_SUFFIX, model_files
from cnm_runtime.openvino_session import OPENVINO_INT8
from cnm_runtime.run_files import refuse_aliases


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="glove.pkl of training  [default: the checkpoint config's dataset.vocab_path]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write  [default: CHECKPOINT with .onnx; openvino-int8: with .xml]")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp32 runs everywhere (and in bf16 where cnm-run --precision bf16 asks for it); fp16: fp16 "
                   "math and frames, float32 outputs (GPU providers); int8: ONNX Runtime's dynamic quantization "
                   "(CPU); openvino-int8: NNCF's static quantization for OpenVINO, calibrated on training queries, "
                   "an OpenVINO IR (.xml and .bin). Each CPU engine needs its own int8 file: each runs the "
                   "other's slower than fp32.")
@click.option("--calibration-queries", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="openvino-int8: training queries to calibrate on  [default: the checkpoint config's "
                   "dataset.train_data; never the test split]")
@click.option("--calibration-features", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="openvino-int8: the archive of their videos  [default: the config's dataset.feature_path]")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="skip work whose result is never read: all but the last position in the last frame-decoder layer, "
                   "and the blocked keys of the clips' causal self-attention")
@click.option("--verify", is_flag=True, help="compare with PyTorch on every engine and precision that runs the file (ONNX "
              "Runtime; OpenVINO at fp32, bf16 and int8 where installed), each one's drift reported; exit 1 when fp32 "
              "is off by >1e-5")
@click.option("--golden", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="labelled set to verify on too (queries.jsonl, features.hdf5, optional expected.npz); "
                   "implies --verify")
def main(checkpoint: Path, vocab: Path | None, output: Path | None, precision: str,
         calibration_queries: Path | None, calibration_features: Path | None, opset: int, prune: bool,
         verify: bool, golden: Path | None) -> None:
    """Export the mask generator of CHECKPOINT (ours or the original repo's) to one ONNX file (openvino-int8:
    one OpenVINO IR)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("cnm_export").setLevel(logging.INFO)  # ours; the quantizer's INFO chatter stays quiet
    if precision != OPENVINO_INT8 and (calibration_queries or calibration_features):
        raise click.UsageError(f"--calibration-queries and --calibration-features are for {OPENVINO_INT8}")
    output = output or checkpoint.with_suffix(IR_SUFFIX if precision == OPENVINO_INT8 else ".onnx")
    inputs = {"CHECKPOINT": checkpoint, "--vocab": vocab, "--calibration-queries": calibration_queries,
              "--calibration-features": calibration_features}
    try:  # before anything is written: a trained checkpoint is not to be lost to a slip of -o
        refuse_aliases({flag: path for flag, path in inputs.items() if path},
                       dict(zip(("-o", "-o's weights"), model_files(output))))
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    try:
        source = load_source(checkpoint, vocab)
        calibration = openvino_int8.training_split(source, calibration_queries, calibration_features) \
            if precision == OPENVINO_INT8 else None
        spec = export_model(source, output, precision, opset, prune=prune, calibration=calibration)
    except (OSError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    files = model_files(output)
    size_mb = sum(path.stat().st_size for path in files) / 1e6
    click.echo(f"wrote {' and '.join(map(str, files))} ({precision}, opset {opset}, {size_mb:.1f} MB, "
               f"{len(spec.words)} words, {spec.frame_dim}-d frames)")
    if output.suffix != IR_SUFFIX:  # the FLOPs are read from an ONNX graph
        flops = graph_flops(output)
        before = f" (unpruned: {unpruned_flops(source, opset).per_query_at() / 1e9:.3f})" if prune else ""
        click.echo(f"GFLOPs per query: {flops.per_query_at() / 1e9:.3f}{before}, of which "
                   f"{flops.per_video / 1e9:.3f} once per video however many queries share it")
    if verify or golden:
        reports = verify_engines(output, source.model, source.word_vectors, golden)
        click.echo("\n\n".join(report.table() for report in reports))
        if not all(report.passed for report in reports):
            sys.exit(1)
