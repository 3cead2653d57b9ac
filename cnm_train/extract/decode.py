"""A video file -> the frames shown at chosen instants, by PyAV (FFmpeg: any container and codec it reads).

A video is read twice. ``probe`` reads its packets without decoding them (cheap) for the first frame's time and
the duration; ``frames_at`` then decodes it and yields, for each instant, the frame on screen then: the last
frame whose time is at or before it. Frames carry their own timestamps, so variable frame rates, B-frames
and streams that do not start at zero come out right. Decoding stops once the last instant is served.

Everything that goes wrong with a file is a ``VideoError``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np

from cnm_train.extract.errors import VideoError

# A frame whose time is this close after an instant counts as shown at it: timestamps are rationals, the
# instants floats, and a frame exactly at an instant must not lose to its predecessor by a rounding.
TIME_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class Timing:
    start: float  # seconds: the time of the first frame, in the stream's own clock
    duration: float  # seconds: from the first frame's start to the last frame's end
    frame_times: np.ndarray  # seconds from the first frame, each frame's, in presentation order


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video become rows: ``fps`` a second (from the first frame on), ``frames`` evenly
    spread (the middle of each of ``frames`` equal parts), or ``every``-th frame (the first, the
    every+1-th, ...: the original CNM's ActivityNet CLIP features took one in 8); videos over
    ``max_duration`` seconds are refused."""

    fps: float | None = None
    frames: int | None = None
    every: int | None = None
    max_duration: float = 3 * 3600.0

    def __post_init__(self):
        chosen = [value for value in (self.fps, self.frames, self.every) if value is not None]
        if len(chosen) != 1 or not chosen[0] > 0:
            raise ValueError(f"give one of fps (> 0), frames or every (>= 1); got fps={self.fps}, "
                             f"frames={self.frames}, every={self.every}")

    def instants(self, timing: Timing) -> np.ndarray:
        """Seconds from the first frame: ``ceil(duration * fps)`` instants (at least one), ``frames`` of them,
        or the times of every ``every``-th frame."""
        if self.every is not None:
            return timing.frame_times[::self.every]
        if self.frames is not None:
            return (np.arange(self.frames) + 0.5) * (timing.duration / self.frames)
        return np.arange(max(1, math.ceil(timing.duration * self.fps - TIME_TOLERANCE_S))) / self.fps


@contextmanager
def _opened(path: str) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The container and its first video stream (a cover picture is not a video)."""
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError("undecodable", f"{path}: FFmpeg cannot open it ({_reason(error)})") from error
    try:
        streams = [stream for stream in container.streams.video
                   if not stream.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise VideoError("no_video_stream", f"{path}: no video stream (streams: "
                                                f"{', '.join(s.type for s in container.streams) or 'none'})")
        yield container, streams[0]
    finally:
        container.close()


def probe(path: str) -> Timing:
    """The first frame's time and the duration, from the packets' timestamps (nothing decoded)."""
    times, durations = [], []
    with _opened(path) as (container, stream):
        try:
            for packet in container.demux(stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is not None and packet.size:  # the last packet of a demux is an empty one
                    times.append(pts)
                    durations.append(packet.duration or 0)
        except av.FFmpegError as error:
            raise VideoError("undecodable", f"{path}: cannot read its packets ({_reason(error)})") from error
        time_base = float(stream.time_base)
        rate = stream.average_rate
    if not times:
        raise VideoError("empty_video", f"{path}: the video stream has no frame")
    order = np.argsort(times, kind="stable")
    times_s = np.asarray(times, dtype=np.float64)[order] * time_base
    last_length = durations[order[-1]] * time_base
    if not last_length > 0:  # the last frame's own length is unknown: the usual gap, else the nominal rate
        gaps = np.diff(times_s)
        last_length = float(np.median(gaps)) if len(gaps) else (1 / float(rate) if rate else 0.0)
    duration = float(times_s[-1] - times_s[0] + last_length)
    if not duration > 0:
        raise VideoError("empty_video", f"{path}: the video has no duration (one frame, no frame rate)")
    return Timing(float(times_s[0]), duration, times_s - times_s[0])


def frames_at(path: str, instants: np.ndarray) -> Iterator[av.VideoFrame]:
    """For each instant (stream seconds, increasing), the frame on screen then: one frame per instant, the
    same frame object again where it covers several instants."""
    wanted = iter(instants)
    instant = next(wanted, None)
    shown = None
    with _opened(path) as (container, stream):
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    raise VideoError("undecodable", f"{path}: a decoded frame has no timestamp")
                while shown is not None and instant is not None and instant < frame.time - TIME_TOLERANCE_S:
                    yield shown
                    instant = next(wanted, None)
                if instant is None:
                    return
                shown = frame
        except av.FFmpegError as error:
            raise VideoError("undecodable", f"{path}: decoding failed ({_reason(error)})") from error
    if shown is None:
        raise VideoError("undecodable", f"{path}: no frame could be decoded")
    while instant is not None:  # the last frame stays on screen to the end
        yield shown
        instant = next(wanted, None)


def _reason(error: Exception) -> str:
    """FFmpeg's words without the path, which the message names already."""
    return getattr(error, "strerror", None) or str(error)
