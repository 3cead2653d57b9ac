"""Frames -> the pixel values a CLIP vision model takes, as transformers' own CLIP image processor makes them
(its PIL backend), value for value, without torchvision.

The steps: resize (Pillow, the processor's filter, bicubic for CLIP) so that the shorter side is
``shortest_edge``, or to ``height x width``; cut the centre ``crop`` out; scale the bytes by
``rescale_factor`` (in float64, then float32, as the processor does); subtract the mean and divide by the
standard deviation per channel (float32). The first two run where the frame is decoded (``resize_and_crop``,
so that only the small crop travels between processes), the last two on whole batches (``normalize``).
The settings come from the checkpoint's ``preprocessor_config.json`` (``from_config``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# transformers' CLIP image processor defaults, used for any key its config file leaves out
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL's number for it, as the config files write it


@dataclass(frozen=True)
class ClipPreprocessing:
    shortest_edge: int | None  # resize so that the shorter side is this long (the longer one keeps the ratio)
    resize_to: tuple[int, int] | None  # or resize to (height, width); neither: no resize
    crop: tuple[int, int] | None  # (height, width) cut from the centre; None: no crop
    resample: int = BICUBIC  # a PIL.Image.Resampling value
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, float, float] | None = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] | None = OPENAI_CLIP_STD

    @classmethod
    def from_config(cls, config: dict[str, Any], image_size: int, where: str = "preprocessor config"
                    ) -> "ClipPreprocessing":
        """The settings of a ``preprocessor_config.json`` (``{}`` where the checkpoint has none: CLIP's
        defaults at the model's ``image_size``); ValueError, naming ``where``, for what cannot be matched."""
        shortest_edge, resize_to = None, None
        if config.get("do_resize", True):
            size = config.get("size", image_size)
            if isinstance(size, int):
                shortest_edge = size
            elif isinstance(size, dict) and set(size) == {"shortest_edge"}:
                shortest_edge = int(size["shortest_edge"])
            elif isinstance(size, dict) and set(size) == {"height", "width"}:
                resize_to = (int(size["height"]), int(size["width"]))
            else:
                raise ValueError(f"{where}: size {size!r} is not supported (an int, shortest_edge, or height and width)")
        crop = None
        if config.get("do_center_crop", True):
            crop_size = config.get("crop_size", image_size)
            crop = (crop_size, crop_size) if isinstance(crop_size, int) else (int(crop_size["height"]),
                                                                             int(crop_size["width"]))
            smallest = (shortest_edge, shortest_edge) if shortest_edge else resize_to
            if smallest is None or smallest[0] < crop[0] or smallest[1] < crop[1]:
                # the processor would pad with zeros here: a checkpoint never asks for it, so it is not mirrored
                raise ValueError(f"{where}: a {crop} centre crop of frames resized to {smallest} is not supported")
        normalize = config.get("do_normalize", True)
        return cls(
            shortest_edge=shortest_edge, resize_to=resize_to, crop=crop,
            resample=int(config.get("resample", BICUBIC)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None,
            mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)) if normalize else None,
            std=tuple(config.get("image_std", OPENAI_CLIP_STD)) if normalize else None,
        )

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, rounded as the processor rounds (the longer side truncated)."""
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is None:
            return height, width
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)

    def resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """An RGB frame -> ``[height, width, 3]`` uint8, resized and centre-cropped."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        height, width = self.resized_shape(image.height, image.width)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), resample=self.resample)
        pixels = np.asarray(image)
        if self.crop is None:
            return pixels
        top, left = (height - self.crop[0]) // 2, (width - self.crop[1]) // 2
        return pixels[top:top + self.crop[0], left:left + self.crop[1]]

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """``[n, height, width, 3]`` uint8 -> ``[n, 3, height, width]`` float32 pixel values."""
        if self.rescale_factor is not None:
            pixels = (frames.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            pixels = frames.astype(np.float32)
        if self.mean is not None:
            pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
