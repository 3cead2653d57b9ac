"""How a run grounds: one frozen ``RunOptions``, built once (from cnm-run's flags or the API's keywords) and
passed whole to the model session, the feed and its processes, and the Ray actors, so that no layer re-lists
the options and none can be left behind on the way. This module imports nothing heavy: cnm-run reads it before
it loads anything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# What --provider may name (cnm_runtime.engines says which engine each runs, cnm_runtime.session what ONNX
# Runtime tries), and the arithmetic a run may ask for (int8 and fp16 are chosen at export).
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")
PRECISION_CHOICES = ("fp32", "bf16")
# Far above any real clip-feature file (hours of 2048-d features a second are a few hundred MB), and low
# enough that a damaged or hostile dataset declared at terabytes is refused instead of read.
DEFAULT_MAX_VIDEO_BYTES = 1 << 30


@dataclass(frozen=True)
class ArchiveOptions:
    """What an archive may make a reader do. ``follow_outside_links=False``: a video whose values would be read
    from a file outside the archive's folder (an external link, a virtual dataset, external raw storage) is
    refused. ``max_video_bytes``: a larger video is refused before it is read."""

    follow_outside_links: bool = True
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.max_video_bytes, bool) or not isinstance(self.max_video_bytes, int) \
                or self.max_video_bytes < 1:
            raise ValueError(f"max_video_bytes must be 1 or more, got {self.max_video_bytes!r}")


@dataclass(frozen=True)
class RunOptions:
    """Every choice of a run that is not one of its files.

    Three numbers say how much runs at once: ``threads`` (the engine's threads inside one batch), ``runs``
    (batches in the model at once) and ``feeders`` (processes that read videos and build batches). ``None``
    lets the session choose for its device (``ModelSession.default_*``).
    """

    provider: str = "auto"
    precision: str | None = None  # None: the model file's own arithmetic
    threads: int | None = None
    runs: int | None = None
    batch_size: int = 64
    feeders: int | None = None
    keep_videos: int = 64  # recent videos each preparer keeps, so nearby queries of one video share a read
    trt_cache: Path | None = None  # TensorRT engines and timing caches (None: ~/.cache/cnm/tensorrt)
    # Denormal results flushed to zero in the model's own threads: faster where a softmax underflows (python -m
    # benchmarks.run sets it against keeping them); values below 1.2e-38 then count as 0.
    flush_denormals: bool = True
    archive: ArchiveOptions = field(default_factory=ArchiveOptions)

    def __post_init__(self) -> None:
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(f"provider must be one of {', '.join(PROVIDER_CHOICES)}, got {self.provider!r}")
        if self.precision is not None and self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)} or None (int8 and fp16 are "
                             f"chosen at export), got {self.precision!r}")
        for name in ("threads", "runs", "feeders"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "feeders" else 1)):
                raise ValueError(f"{name} must be {'0' if name == 'feeders' else '1'} or more (or None), got {value!r}")
        for name in ("batch_size", "keep_videos"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)!r}")
