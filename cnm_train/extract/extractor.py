"""The extraction loop: decoded frames -> the backbone in batches -> one ``[rows, dim]`` array per video.

Batches mix videos: the frames of short videos fill a batch together, and a video's rows stay in order.
When no decoded frame is waiting, the frames at hand run at once as a smaller batch rather than wait: the
model never idles while the decoders are behind, and a batch is full whenever they are ahead. A video is
handed to ``store`` once its last row is embedded; a video that fails is handed to ``fail`` and whatever
of it was decoded is dropped. Nothing here imports torch: the backbone comes in as a function.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cnm_train.extract.errors import VideoError
from cnm_train.extract.workers import Decoder, DecodeOptions, Done, Frames, VideoJob

Embed = Callable[[np.ndarray], np.ndarray]  # [n, height, width, 3] uint8 -> [n, dim] float32
Store = Callable[[VideoJob, np.ndarray, float], None]  # a video's features and duration
Fail = Callable[[VideoJob, VideoError], None]


@dataclass(frozen=True)
class ExtractOptions:
    decode: DecodeOptions
    batch_size: int = 64  # frames the model takes at once at most
    processes: int = 1  # decoding processes (0: a thread of this process)


@dataclass
class Tally:
    stored: int = 0  # videos handed to ``store``
    frames: int = 0  # frames embedded


@dataclass
class _Video:
    """A video whose rows are being embedded."""

    features: list[np.ndarray] = field(default_factory=list)
    embedded: int = 0
    done: Done | None = None


class _Batcher:
    def __init__(self, embed: Embed, store: Store, fail: Fail, batch_size: int, tally: Tally):
        self.embed, self.store, self.fail, self.batch_size, self.tally = embed, store, fail, batch_size, tally
        self.videos: dict[VideoJob, _Video] = {}
        self.waiting: list[tuple[VideoJob, np.ndarray]] = []  # decoded frames not embedded yet, in order
        self.waiting_rows = 0

    def take(self, job: VideoJob, message) -> None:
        if isinstance(message, Frames):
            self.videos.setdefault(job, _Video())
            self.waiting.append((job, message.pixels))
            self.waiting_rows += len(message.pixels)
            while self.waiting_rows >= self.batch_size:
                self.run(self.batch_size)
        elif isinstance(message, Done):
            self.videos.setdefault(job, _Video()).done = message
            self._finish_if_complete(job)
        else:
            self._drop(job, message)

    def run(self, rows: int) -> None:
        """Embed the first ``rows`` waiting frames (all of them where fewer wait)."""
        owners, pieces, taken = [], [], 0
        while self.waiting and taken < rows:
            job, pixels = self.waiting[0]
            piece = pixels[: rows - taken]
            if len(piece) < len(pixels):
                self.waiting[0] = (job, pixels[len(piece):])
            else:
                self.waiting.pop(0)
            owners.append((job, len(piece)))
            pieces.append(piece)
            taken += len(piece)
        if not taken:
            return
        self.waiting_rows -= taken
        features = self.embed(np.concatenate(pieces))
        self.tally.frames += taken
        start = 0
        for job, count in owners:
            video = self.videos[job]
            video.features.append(features[start:start + count])
            video.embedded += count
            start += count
            self._finish_if_complete(job)

    def _finish_if_complete(self, job: VideoJob) -> None:
        video = self.videos[job]
        if video.done is None or video.embedded < video.done.rows:
            return
        del self.videos[job]
        features = np.concatenate(video.features).astype(np.float32, copy=False)
        if not np.isfinite(features).all():
            self.fail(job, VideoError("non_finite_features", f"{job.path}: the backbone gave NaN or Inf for "
                                                                f"{int((~np.isfinite(features)).any(1).sum())} frames"))
            return
        self.store(job, features, video.done.duration)
        self.tally.stored += 1

    def _drop(self, job: VideoJob, error: VideoError) -> None:
        self.videos.pop(job, None)
        kept = [(owner, pixels) for owner, pixels in self.waiting if owner != job]
        self.waiting_rows = sum(len(pixels) for _, pixels in kept)
        self.waiting = kept
        self.fail(job, error)


def extract(jobs: list[VideoJob], embed: Embed, store: Store, fail: Fail, options: ExtractOptions) -> Tally:
    """Every job ends in ``store`` or in ``fail``, once; the counts."""
    tally = Tally()
    batcher = _Batcher(embed, store, fail, options.batch_size, tally)
    ahead = max(2, 2 * options.batch_size // options.decode.chunk_frames)
    with Decoder(jobs, options.decode, options.processes, ahead=ahead) as decoder:
        while (item := decoder.get(block=not batcher.waiting)) is not Decoder.END:
            if item is None:  # nothing decoded is waiting: run what is at hand
                batcher.run(batcher.batch_size)
            else:
                batcher.take(*item)
        batcher.run(batcher.batch_size)
    return tally
