"""``python -m benchmarks.features``: how fast cnm-features turns videos into features, and which part limits it.

No model weights can be fetched on our machines: the backbone is a CLIP vision model of ViT-B/32's shape
(12 layers, width 768, patch 32, 224 px, 512-d projection) with random weights, saved and loaded as a real
checkpoint is; speed does not depend on the weights. The videos are synthetic (a moving pattern, encoded
here with H.264 at the chosen size and rate). Three measurements, each on the same videos:

- decoding: PyAV decoding and CLIP's resize and crop, in this process, one video after another (what one
  decoding process does): rows/s, and seconds of video decoded a second;
- the model alone: batches of ``--batch-size`` random crops through the backbone (fp32 on the CPU, fp16 on a
  GPU), after a warm-up: frames/s, the median of ``--rounds``; on the CPU also the same model exported to ONNX
  and run by ONNX Runtime, the engine that could run it without torch;
- end to end: the ``cnm-features`` command on the videos, for each ``--workers`` count, in a process of its
  own: its own frames/s (``--metrics``: from the first video to the last, the model's loading left out) and
  the whole command's seconds.

Results go to ``<out-dir>/<machine>-<date>.json`` and ``.md``; ``python -m benchmarks.readme`` renders them.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks.machine import cpu_model, gpu_name, slug
from cnm_runtime.cores import available_cores
from cnm_train.tables import markdown_table
from cnm_runtime.run_files import write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "features"
VIT_B_32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
                patch_size=32, projection_dim=512)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=16)  # --quick: to check the benchmark runs, not to measure


def write_backbone(folder: Path, shape: dict[str, int]) -> Path:
    """A random CLIP vision model of ``shape`` with CLIP's preprocessor config, as a checkpoint folder."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**shape)).save_pretrained(folder)
    edge = shape["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": edge}, crop_size={"height": edge, "width": edge}).save_pretrained(folder)
    return folder


def write_moving_pattern(path: Path, seconds: float, rate: int, width: int, height: int, seed: int) -> Path:
    """An H.264 video of a drifting colour gradient with a bright square crossing it: frames that change
    everywhere, as camera footage does, so the decoder does real work."""
    import av

    rng = np.random.default_rng(seed)
    colour = rng.uniform(0.3, 1.0, 3)
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * rate)):
            phase = index / rate
            shade = (np.sin(xs / 37 + phase) + np.cos(ys / 23 - 2 * phase) + 2) / 4
            pixels = (255 * shade[..., None] * colour).astype(np.uint8)
            left = int((index * 7) % max(1, width - height // 4))
            pixels[height // 3: height // 3 + height // 4, left: left + height // 4] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def measure_decoding(videos: list[Path], preprocessing, fps: float) -> dict[str, Any]:
    from cnm_train.extract.decode import Sampling, probe
    from cnm_train.extract.workers import DecodeOptions, Frames, VideoJob, video_messages

    options = DecodeOptions(Sampling(fps=fps), preprocessing)
    started, rows = time.perf_counter(), 0
    for path in videos:
        for message in video_messages(VideoJob(path.stem, str(path)), options):
            rows += len(message.pixels) if isinstance(message, Frames) else 0
    seconds = time.perf_counter() - started
    video_seconds = sum(probe(str(path)).duration for path in videos)
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 2),
            "video_seconds_per_s": round(video_seconds / seconds, 2)}


def measure_model(backbone, batch_size: int, rounds: int) -> dict[str, Any]:
    """Frames/s of ``backbone.embed`` (which hands back host arrays: a GPU's work is finished when it returns)."""
    edge = backbone.preprocessing.crop[0]
    frames = np.random.default_rng(0).integers(0, 256, (batch_size, edge, edge, 3), dtype=np.uint8)
    backbone.embed(frames)  # warm-up: allocations, kernels, threads
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        backbone.embed(frames)
        rates.append(batch_size / (time.perf_counter() - started))
    return {"device": str(backbone.device), "dtype": str(backbone.dtype).removeprefix("torch."),
            "batch_size": batch_size, "frames_per_s": {"median": round(statistics.median(rates), 2),
                                                       "min": round(min(rates), 2), "max": round(max(rates), 2)}}


def measure_onnx(backbone, batch_size: int, rounds: int, work: Path) -> dict[str, Any]:
    """The same model exported to ONNX and run by ONNX Runtime on the CPU, the engine cnm-run uses: the
    figure behind running the backbone in PyTorch (see the README draft). Not run where the model is on a GPU."""
    if backbone.device.type != "cpu":
        return {"status": "not run: the backbone runs on a GPU here"}
    import onnxruntime
    import torch

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).image_embeds

    edge = backbone.preprocessing.crop[0]
    frames = np.random.default_rng(0).integers(0, 256, (batch_size, edge, edge, 3), dtype=np.uint8)
    pixels = backbone.preprocessing.normalize(frames)
    path = work / "backbone.onnx"
    with warnings.catch_warnings():  # the tracer's notes on transformers' shape checks, fixed for export
        warnings.simplefilter("ignore")
        torch.onnx.export(ImageEmbeds(backbone.model), (torch.from_numpy(pixels[:2]),), str(path),
                          input_names=["pixel_values"], output_names=["image_embeds"],
                          dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = available_cores()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": pixels})[0]  # also the warm-up
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        session.run(None, {"pixel_values": pixels})
        rates.append(batch_size / (time.perf_counter() - started))
    return {"status": "ran", "batch_size": batch_size, "threads": available_cores(),
            "max_abs_diff_vs_torch": float(np.abs(got - backbone.embed(frames)).max()),
            "frames_per_s": {"median": round(statistics.median(rates), 2), "min": round(min(rates), 2),
                             "max": round(max(rates), 2)}}


def measure_command(videos: list[Path], weights: Path, fps: float, workers: int, batch_size: int,
                    work: Path) -> dict[str, Any]:
    out, metrics = work / f"features-{workers}.hdf5", work / f"metrics-{workers}.json"
    command = [sys.executable, "-m", "cnm_train.extract", *map(str, videos), "-o", str(out), "--weights",
               str(weights), "--fps", str(fps), "--workers", str(workers), "--batch-size", str(batch_size),
               "--metrics", str(metrics)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    run = json.loads(metrics.read_text())
    return {"workers": workers, "frames_per_s": run["frames_per_s"], "frames": run["frames"],
            "command_s": round(time.perf_counter() - started, 2), "device": run["device"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def markdown(results: dict[str, Any]) -> str:
    """One run as benchmarks/README.md shows it."""
    setup = results["videos"]
    model, decoding = results["model_alone"], results["decoding"]
    rows = [["decoding + resize/crop, 1 process", "-", f"{decoding['rows_per_s']:,.1f}",
             f"{decoding['video_seconds_per_s']:,.1f} s of video a second"],
            [f"backbone alone, batch {model['batch_size']} ({model['device']}, {model['dtype']})", "-",
             f"{model['frames_per_s']['median']:,.1f}",
             f"min-max {model['frames_per_s']['min']:,.1f}-{model['frames_per_s']['max']:,.1f}"]]
    onnx = results["model_alone_onnx_runtime"]
    if onnx["status"] == "ran":
        rows.append([f"the same model in ONNX Runtime, batch {onnx['batch_size']} (cpu, float32)", "-",
                     f"{onnx['frames_per_s']['median']:,.1f}",
                     f"{onnx['frames_per_s']['median'] / model['frames_per_s']['median']:.2f}x PyTorch; max abs "
                     f"diff {onnx['max_abs_diff_vs_torch']:.1e}"])
    for run in results["end_to_end"]:
        rows.append([f"cnm-features end to end ({run['device']})", str(run["workers"]), f"{run['frames_per_s']:,.1f}",
                     f"command {run['command_s']:,.1f} s; load {run['load_before']:.1f} before"])
    gpu = results["machine"]["gpu"] or "no GPU"
    return "\n".join([
        f"## cnm-features: {results['machine']['cpu']}, {results['machine']['cores']} cores, {gpu} "
        f"({results['date']})", "",
        f"`{results['command']}`", "",
        f"Backbone: {results['backbone']} (random weights: none can be fetched here; speed does not depend on them). "
        f"Videos: {setup['count']} synthetic H.264 videos of {setup['seconds']:g} s, {setup['width']}x"
        f"{setup['height']} at {setup['rate']} frames/s, sampled at --fps {results['fps']:g} "
        f"({decoding['rows']} rows in all).", "",
        *markdown_table(["what", "decoding processes", "rows (frames) / s", "notes"], rows, "lrrl"), "",
        "Rows: the frames that become features (--fps a second of video); decoding reads every frame of the "
        "video to reach them. End to end: the run's own rate (--metrics: from its first video to its last, the "
        "model's loading left out); the command's seconds include starting Python, torch and the model."])


@click.command()
@click.option("--videos", "count", default=6, show_default=True, type=click.IntRange(min=1))
@click.option("--seconds", default=20.0, show_default=True, help="length of each synthetic video")
@click.option("--size", default="640x360", show_default=True, help="WIDTHxHEIGHT of the videos")
@click.option("--rate", default=30, show_default=True, help="frames a second of the videos")
@click.option("--fps", default=2.0, show_default=True, help="rows a second, as cnm-features --fps")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default="0,1", show_default=True, help="cnm-features --workers counts to run")
@click.option("--rounds", default=3, show_default=True, help="batches timed for the model alone")
@click.option("--quick", is_flag=True, help="a tiny model and tiny videos: checks that it runs, measures nothing")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR, show_default=True)
def main(count: int, seconds: float, size: str, rate: int, fps: float, batch_size: int, workers: str, rounds: int,
         quick: bool, out_dir: Path) -> None:
    """Frames a second that cnm-features decodes, embeds, and does end to end, on synthetic videos."""
    width, height = map(int, size.lower().split("x"))
    if quick:
        count, seconds, width, height, rate, batch_size, rounds = 2, 1.0, 64, 48, 10, 4, 1
    started = datetime.now().astimezone()
    with tempfile.TemporaryDirectory(prefix="cnm-features-bench-") as folder:
        work = Path(folder)
        weights = write_backbone(work / "backbone", TINY if quick else VIT_B_32)
        videos = [write_moving_pattern(work / f"video{i}.mp4", seconds, rate, width, height, seed=i)
                  for i in range(count)]
        from cnm_train.extract.backbone import ClipBackbone

        backbone = ClipBackbone(weights, "auto")
        decoding = measure_decoding(videos, backbone.preprocessing, fps)
        model = measure_model(backbone, batch_size, rounds)
        onnx = measure_onnx(backbone, batch_size, rounds, work)
        del backbone  # the command runs its own
        end_to_end = [measure_command(videos, weights, fps, int(w), batch_size, work) for w in workers.split(",")]
    results = {
        "command": " ".join(["python -m benchmarks.features", *sys.argv[1:]]),
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": available_cores(), "gpu": gpu_name()},
        "backbone": "tiny CLIP vision model (--quick)" if quick else "CLIP ViT-B/32 shape (CLIPVisionModelWithProjection)",
        "videos": {"count": count, "seconds": seconds, "width": width, "height": height, "rate": rate,
                   "codec": "libx264", "synthetic": True},
        "fps": fps, "decoding": decoding, "model_alone": model, "model_alone_onnx_runtime": onnx,
        "end_to_end": end_to_end,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    name = slug(results["machine"]["cpu"], f"{results['machine']['cores']}c", results["machine"]["gpu"] or "",
                started.date().isoformat())
    write_json_atomic(out_dir / f"{name}.json", results)
    (out_dir / f"{name}.md").write_text(markdown(results) + "\n")
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
