"""What a video that gives no features becomes: a ``VideoError``, written as one line of ``--errors``.

``VIDEO_ERROR_CODES`` lists every code with what it means: a record never carries a code missing there.
"""
from __future__ import annotations

from typing import Any

VIDEO_ERROR_CODES: dict[str, str] = {
    "missing_file": "the path does not exist or is not a file",
    "duplicate_video": "an earlier path of this run has the same video id (the file name without its extension)",
    "undecodable": "FFmpeg cannot open the file, read its packets or decode a frame of it",
    "no_video_stream": "the file has no video stream (audio only, or a cover picture only)",
    "empty_video": "the video stream has no frame, or no duration",
    "too_long": "the video is longer than --max-duration",
    "decoder_crashed": "the process decoding the video died (FFmpeg crashed on it, or it was killed)",
    "non_finite_features": "the backbone gave NaN or Inf for a frame of the video",
}


class VideoError(Exception):
    """A video that gives no features; ``code`` is one of ``VIDEO_ERROR_CODES``, the message names the file."""

    def __init__(self, code: str, message: str):
        if code not in VIDEO_ERROR_CODES:
            raise ValueError(f"{code!r} is not one of VIDEO_ERROR_CODES")
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # so that it crosses from a decoding process as it is
        return VideoError, (self.code, self.message)

    def record(self, video: str, path: str) -> dict[str, Any]:
        """The line of ``--errors``."""
        return {"video": video, "path": path, "code": self.code, "message": self.message}
