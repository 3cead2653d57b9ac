"""Small videos and a tiny CLIP checkpoint made on the fly, for the cnm-features tests.

Every frame of a video is one flat grey whose level encodes the frame's index (``level``), so that a
decoded frame says which one it is (``index_of``) through any codec.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

import pytest

av = pytest.importorskip("av")

SIZE = 64  # pixels, square
TIME_BASE = Fraction(1, 1000)
MAX_FRAMES = 40  # levels stay this far apart that lossy codecs keep them apart


def level(index: int) -> int:
    return 20 + 5 * index


def index_of(pixels: np.ndarray) -> int:
    """The index of a decoded frame (any size, any crop) from its mean level."""
    return int(round((float(pixels.mean()) - 20) / 5))


def write_video(path: Path, frame_times: list[float], codec: str = "mpeg4", pix_fmt: str = "yuv420p",
                width: int = SIZE, height: int = SIZE) -> Path:
    """Frame i shown from ``frame_times[i]`` seconds (any spacing: variable frame rates too) until the next;
    the stream's nominal rate, which gives the last frame's length, is the mean rate."""
    assert len(frame_times) <= MAX_FRAMES
    rate = (len(frame_times) - 1) / Fraction(frame_times[-1] - frame_times[0]).limit_denominator(1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate.limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.bit_rate = 2_000_000  # plenty for 64x64: the levels come back within a step
        stream.codec_context.time_base = TIME_BASE
        for index, seconds in enumerate(frame_times):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level(index), np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(seconds / TIME_BASE), TIME_BASE
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def regular_times(seconds: float, fps: float) -> list[float]:
    return [i / fps for i in range(round(seconds * fps))]


def write_audio_only(path: Path, seconds: float = 1.0, cover: bool = False) -> Path:
    """Sound only; with ``cover``, also a picture in a video stream marked as the cover (``attached_pic``),
    as music files carry one."""
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        if cover:
            picture = container.add_stream("mjpeg", rate=1)
            picture.width, picture.height, picture.pix_fmt = SIZE, SIZE, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), 100, np.uint8), format="rgb24")
            container.mux(picture.encode(frame.reformat(format="yuvj420p")))
            container.mux(picture.encode())
        samples = (0.1 * np.sin(np.arange(int(seconds * rate)) / 10)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="mono")
            frame.rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised CLIP vision model (16-d features, 32x32 input) saved as a real checkpoint is:
    weights and config by ``save_pretrained``, and the image processor's ``preprocessor_config.json``."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
