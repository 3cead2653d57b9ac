"""The image backbone: a CLIP vision model with its projection, through transformers, on CUDA or the CPU.

``ClipBackbone(weights)`` loads ``CLIPVisionModelWithProjection.from_pretrained(weights)``: a local folder (a
whole CLIP checkpoint such as openai/clip-vit-base-patch32 works: its text half is left out) or a hub name
that the hub cache holds. The frame features are the projected image embeddings (``image_embeds``, not
normalised): 512 wide for ViT-B/32, the features of the ``activitynet_clip`` config. On a GPU the model runs
in float16, and the features are stored as float32 either way.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from cnm_train.extract.preprocess import ClipPreprocessing

PREPROCESSOR_CONFIG = "preprocessor_config.json"
ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                       "patch_size", "projection_dim", "hidden_act", "layer_norm_eps")


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA where PyTorch sees a GPU, else the CPU; ``cuda`` without one is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: PyTorch sees no CUDA device here (torch {torch.__version__})")
    return torch.device(device)


class ClipBackbone:
    """``embed(frames)``: ``[n, height, width, 3]`` uint8 frames (``preprocessing.resize_and_crop``) ->
    ``[n, dim]`` float32 features."""

    def __init__(self, weights: str | Path, device: str = "auto"):
        from transformers import CLIPVisionModelWithProjection  # slow to import: only where a model loads
        from transformers.utils import logging as transformers_logging

        self.weights = str(weights)
        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if not Path(self.weights).exists() and (Path(self.weights).is_absolute() or self.weights.startswith(".")):
            raise ValueError(f"--weights {self.weights}: no such folder")
        # quiet: a whole CLIP checkpoint's text half is reported key by key as unexpected, which it is not here;
        # what matters (weights missing or of another shape) is checked below or raised
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        try:
            model, loading = CLIPVisionModelWithProjection.from_pretrained(self.weights, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"cannot load a CLIP vision model from {self.weights}: {error}") from error
        finally:
            transformers_logging.set_verbosity(verbosity)
            transformers_logging.enable_progress_bar()
        if loading["missing_keys"]:  # transformers would start them at random: features of a random model
            missing = sorted(loading["missing_keys"])
            raise ValueError(f"{self.weights} lacks {len(missing)} weights of a CLIP vision model with its projection "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): not such a checkpoint")
        self.model = model.to(self.device, self.dtype).eval()
        self.dim = int(model.config.projection_dim)
        self.preprocessing = ClipPreprocessing.from_config(
            _preprocessor_config(self.weights), int(model.config.image_size), f"{self.weights}/{PREPROCESSOR_CONFIG}")

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(self.preprocessing.normalize(frames)).to(self.device, self.dtype)
        return self.model(pixel_values=pixels).image_embeds.float().cpu().numpy()

    def settings(self) -> dict[str, str | int]:
        """What the features depend on, for the archive to record (a later run must match it): the network's
        shape and the preprocessing. The weights themselves are not compared; the folder name is not kept."""
        config = self.model.config
        shape = {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}
        return {
            "backbone": type(self.model).__name__,
            "backbone_shape": json.dumps(shape, sort_keys=True),
            "preprocessing": json.dumps(dataclasses.asdict(self.preprocessing)),
            "dim": self.dim,
        }


def _preprocessor_config(weights: str) -> dict:
    """The checkpoint's ``preprocessor_config.json`` (a folder, or a hub name through the hub cache); {}
    where it has none, so that CLIP's defaults apply."""
    from transformers.utils import cached_file

    path = cached_file(weights, PREPROCESSOR_CONFIG, _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(path).read_text()) if path else {}
