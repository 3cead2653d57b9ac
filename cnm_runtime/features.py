"""Raw clip features of any length -> exactly ``num_clips`` clips, as the original datasets do it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cnm_runtime.errors import InputError


@dataclass(frozen=True)
class Clips:
    """A video's clips as ``source[rows]`` (see ``resample_rows``), gathered only where they are needed."""

    source: np.ndarray  # [n, frame_dim] float32: the video's rows, or its resampled clips
    rows: np.ndarray  # [num_clips]: the row of source that each clip is
    duration: float | None = None  # seconds, from the archive's ``duration`` attribute: finite and positive
    # why the archive's duration cannot be used (its queries then need their own), None where it can
    duration_error: str | None = None

    @property
    def frames(self) -> np.ndarray:
        """``[num_clips, frame_dim]`` float32, what the model reads."""
        return self.source[self.rows]

    def gather_into(self, out: np.ndarray) -> None:
        """Write ``frames`` into ``out`` (float32, or float16 for a graph that takes half frames)."""
        if out.dtype != self.source.dtype:
            out[...] = self.source[self.rows]
            return
        # rows are always in range; numpy buffers ``out`` in its default mode "raise"
        np.take(self.source, self.rows, axis=0, out=out, mode="clip")


def validate_features(features: np.ndarray, frame_dim: int | None, video: str) -> np.ndarray:
    """Check a raw ``[L, D]`` array and return it as float32; InputError names the video otherwise."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise InputError("not_2d", f"video {video!r}: features must be 2-D [rows, dim], got shape {array.shape}")
    if array.shape[0] == 0:
        raise InputError("no_rows", f"video {video!r}: features have zero rows")
    if frame_dim is not None and array.shape[1] != frame_dim:
        raise InputError(
            "wrong_width", f"video {video!r}: features are {array.shape[1]} wide, the model expects {frame_dim}"
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError("non_finite", f"video {video!r}: features contain NaN or Inf")
    return array


def clip_boundaries(num_rows: int, num_clips: int) -> np.ndarray:
    """Row boundaries ``round(arange(0, n+1) / n * L)`` (float64, half to even), clipped to L-1."""
    bounds = np.round(np.arange(0, num_clips + 1) / num_clips * num_rows).astype(np.int64)
    bounds[bounds >= num_rows] = num_rows - 1
    return bounds


def resample_rows(features: np.ndarray, num_clips: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``(source, rows)`` with clip j = ``source[rows[j]]``, without building the clips when that can wait.

    Where no clip spans two rows or more (videos of up to ``num_clips`` rows, the usual case), ``source`` is
    ``features`` itself and ``rows`` picks one row per clip, so the clips are gathered only where they are
    needed (cnm-run gathers them straight into a batch); otherwise ``source`` holds the resampled clips.
    """
    features = np.asarray(features, dtype=np.float32)
    starts, lengths, longest = _clip_plan(len(features), num_clips)
    if longest < 2:
        return features, starts
    return _mean_clips(features, starts, lengths), np.arange(num_clips)


@lru_cache(maxsize=4096)
def _clip_plan(num_rows: int, num_clips: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Each clip's first row and row count (read-only), and the largest count: the same for every video of
    ``num_rows`` rows, and cnm-run resamples video after video."""
    bounds = clip_boundaries(num_rows, num_clips)
    starts, lengths = bounds[:-1], np.diff(bounds)
    starts.setflags(write=False)
    lengths.setflags(write=False)
    return starts, lengths, int(lengths.max())


def to_clips(features: np.ndarray, num_clips: int, frame_dim: int | None, video: str,
             duration: float | None = None) -> Clips:
    """Raw ``[L, D]`` features, validated (InputError names ``video``) and resampled to ``num_clips``; a
    ``duration`` that is not a finite positive number of seconds is kept as the clips' ``duration_error``."""
    source, rows = resample_rows(validate_features(features, frame_dim, video), num_clips)
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        return Clips(source, rows, None, f"video {video!r} has duration {duration} in the archive")
    return Clips(source, rows, duration)


def resample_clips(features: np.ndarray, num_clips: int = 200) -> np.ndarray:
    """Clip j is the mean of rows ``[b_j, b_j+1)``, or row ``b_j`` when the two are equal.

    Results match the original's per-clip float32 ``mean`` bit for bit (see ``_mean_clips``), but for the sign
    of a zero: a clip of one row keeps that row's -0.0, which the original's mean turns into +0.0.
    """
    source, rows = resample_rows(features, num_clips)
    return source[rows]


def _mean_clips(features: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A clip of one row is that row and a clip of two is their sum halved (exact in float32), so videos of
    up to 2 * num_clips rows need no Python loop; longer clips still take numpy's own ``mean``."""
    clips = features[starts]
    pairs = np.flatnonzero(lengths == 2)
    if len(pairs):
        clips[pairs] = (features[starts[pairs]] + features[starts[pairs] + 1]) / np.float32(2)
    for j in np.flatnonzero(lengths > 2):
        clips[j] = features[starts[j] : starts[j] + lengths[j]].mean(axis=0)
    return clips
