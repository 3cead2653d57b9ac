"""A video of an archive as the model reads it: read, validated and resampled once while it is in use.

Queries of one video usually come together (the original annotation files order them so), so the most
recent videos are kept, and a video that cannot be read is remembered as its error: each of its
queries gets that error without another read.
"""
from __future__ import annotations

from collections import OrderedDict

from cnm_runtime.archive import FeatureArchive
from cnm_runtime.errors import InputError
from cnm_runtime.features import Clips, to_clips
from cnm_runtime.outcomes import contained


def load_clips(archive: FeatureArchive, video: str, frame_dim: int, num_clips: int) -> Clips:
    """Validated, resampled features of ``video``; InputError names the video otherwise."""
    raw, duration = archive.load(video)
    return to_clips(raw, num_clips, frame_dim, video, duration)


class RecentVideos:
    """``get(video)``: the video's ``Clips``, or the ``InputError`` that reading it gave, reading it only
    when it is not among the ``keep`` most recently asked for."""

    def __init__(self, archive: FeatureArchive, frame_dim: int, num_clips: int, keep: int):
        self.archive, self.frame_dim, self.num_clips, self.keep = archive, frame_dim, num_clips, keep
        self._recent: OrderedDict[str, Clips | InputError] = OrderedDict()

    def get(self, video: str) -> Clips | InputError:
        clips = self._recent.pop(video, None)
        if clips is None:  # the boundary of one video: whatever reading it raises is its error
            clips = contained(lambda: load_clips(self.archive, video, self.frame_dim, self.num_clips),
                              f"video {video!r}")
        self._recent[video] = clips
        if len(self._recent) > self.keep:
            self._recent.popitem(last=False)
        return clips
