"""``--precision openvino-int8``: NNCF post-training quantization of the fp32 graph, for OpenVINO.

Each engine needs an int8 file of its own: OpenVINO runs ONNX Runtime's dynamic-int8 file with its weights
dequantized, and ONNX Runtime runs the static quantize/dequantize graph that NNCF writes as ONNX without
fusing it, each slower than its own fp32; and OpenVINO itself runs that ONNX graph slower than the IR that
NNCF's OpenVINO backend writes. So the model OpenVINO reads from the fp32 ONNX file is quantized by that
backend and saved as an OpenVINO IR: ``.xml`` (the graph and the ``cnm`` metadata) and ``.bin`` (the
weights, the unquantized ones kept in fp32).

Static quantization fixes each activation's scale from calibration data: queries of the TRAINING split (by
default the checkpoint config's ``dataset.train_data`` over its ``dataset.feature_path``), spread evenly
over the file and prepared by cnm-run's own batch maker. The test split is never read, so its metrics stay
a fair measure of the quantized model; a calibration file that is the config's test split is refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cnm_runtime import openvino_session
from cnm_runtime.batch import Batch
from cnm_runtime.chunks import BatchMaker
from cnm_runtime.model_files import IR_SUFFIX
from cnm_runtime.model_spec import ModelSpec
from cnm_runtime.openvino_session import write_spec
from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import QueryError
from cnm_runtime.queries import read_lines

log = logging.getLogger(__name__)

MISSING = "--precision openvino-int8 needs openvino and nncf: pip install 'cnm[openvino-int8]'"
CALIBRATION_QUERIES = 512  # spread over the training split, CALIBRATION_BATCH queries a sample
CALIBRATION_BATCH = 16  # queries a calibration batch (one NNCF sample)


@dataclass(frozen=True)
class Calibration:
    """Where the calibration queries come from: a training split and the archive holding its videos."""

    features: Path
    queries: Path
    count: int = CALIBRATION_QUERIES


def _nncf():
    try:
        import nncf
        import openvino
    except ImportError as error:
        raise RuntimeError(MISSING) from error
    return nncf, openvino


def versions() -> dict[str, str]:
    """The versions of the tools that make the file, for its metadata."""
    _nncf()
    return {name: metadata.version(name) for name in ("openvino", "nncf")}


def training_split(source, queries: Path | None = None, features: Path | None = None) -> Calibration:
    """``queries`` over ``features``, each by default the checkpoint's own (``source`` is an ``ExportSource``):
    its config's training split and feature archive."""
    from cnm_export.export import resolve_dataset_file

    config, checkpoint = source.config, source.checkpoint
    return Calibration(
        resolve_dataset_file(config, "feature_path", features, checkpoint,
                             "--calibration-features", "the archive of the training videos"),
        resolve_dataset_file(config, "train_data", queries, checkpoint, "--calibration-queries", "a training split"))


def refuse_test_split(calibration: Calibration, config: dict, checkpoint: Path) -> None:
    """ValueError when the calibration queries are the config's test split (judged on the quantized model)."""
    from cnm_export.export import resolve_dataset_file

    try:
        test = resolve_dataset_file(config, "test_data", None, checkpoint, "", "the test split")
    except FileNotFoundError:
        return
    if os.path.samefile(test, calibration.queries):
        raise ValueError(f"{calibration.queries} is the checkpoint's test split; calibrate on training queries")


def calibration_batches(calibration: Calibration, spec: ModelSpec) -> list[Batch]:
    """``calibration.count`` queries spread evenly over the split, in batches of ``CALIBRATION_BATCH``, as cnm-run
    prepares them; a line or video that cannot be prepared is left out. ValueError when none can."""
    lines = list(read_lines(calibration.queries))
    step = max(1, len(lines) // calibration.count)
    picked = lines[::step][: calibration.count]
    maker = BatchMaker(calibration.features, spec, RunOptions(keep_videos=CALIBRATION_BATCH))
    batches, skipped = [], 0
    try:
        for start in range(0, len(picked), CALIBRATION_BATCH):
            chunk = maker.prepare(picked[start:start + CALIBRATION_BATCH])
            skipped += sum(isinstance(outcome, QueryError) for outcome in chunk.outcomes)
            if chunk.batch is not None:
                batches.append(chunk.batch)
    finally:
        maker.close()
    if not batches:
        raise ValueError(f"{calibration.queries}: no query could be prepared over {calibration.features} to "
                         "calibrate on")
    if skipped:
        log.warning("calibration: %d of %d queries could not be prepared and were left out", skipped, len(picked))
    log.info("calibrating on %d queries of %s", len(picked) - skipped, calibration.queries)
    return batches


def write_quantized(fp32_onnx: Path, spec: ModelSpec, calibration: Calibration, out: Path) -> None:
    """Quantize the fp32 graph at ``fp32_onnx`` and write the IR to ``out`` (.xml) and its .bin, carrying
    ``spec``; the .xml, which names the .bin, appears last."""
    nncf, ov = _nncf()
    batches = calibration_batches(calibration, spec)
    model = openvino_session.core().read_model(str(fp32_onnx))
    # NNCF logs its notices to standard output, where our results go: only its errors are let through, and
    # only while it runs (its own set_log_level would also change handlers that others attached to its logger)
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress bars
            quantized = nncf.quantize(model, nncf.Dataset([batch.inputs() for batch in batches]),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))
    finally:
        nncf_log.setLevel(level)
    write_spec(quantized, spec)
    staged = fp32_onnx.with_name("quantized" + IR_SUFFIX)
    ov.save_model(quantized, str(staged), compress_to_fp16=False)  # fp16 storage would round the fp32 weights
    os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(staged, out)
