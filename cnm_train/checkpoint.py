"""Checkpoints in the original format: ``{'num_updates', 'config', 'model_parameters'}``.

The model is rebuilt from ``config`` alone, so checkpoints of minghangz/cnm and ours are interchangeable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnm_train.config import ModelConfig
from cnm_train.model import CNM


def build_model(config: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> CNM:
    """The CNM of ``config`` (a full config with the runner's injected keys), with ``weights`` if given
    (strict: every name must match; ValueError otherwise)."""
    model = CNM(ModelConfig.from_config(config))
    if weights is not None:
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(f"the checkpoint's weights do not fit the config's model: {first_line}") from None
    return model


@dataclass
class Checkpoint:
    num_updates: int
    config: dict[str, Any]
    model_parameters: dict[str, torch.Tensor]

    def build_model(self) -> CNM:
        """A CNM in eval mode with these weights, built from the checkpoint's own config."""
        return build_model(self.config, self.model_parameters).eval()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with ``weights_only=True``; ``map_location`` lets CUDA-saved checkpoints load on CPU."""
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # not a torch file, or one that would run code as it loads: torch refuses it
        raise ValueError(f"{path}: not a CNM checkpoint (torch.load with weights only refuses it: "
                         f"{type(error).__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a CNM checkpoint, it holds a {type(raw).__name__}, not a dict")
    missing = {"num_updates", "config", "model_parameters"} - set(raw)
    if missing:
        raise ValueError(f"{path}: not a CNM checkpoint, missing {sorted(missing)}")
    if not (isinstance(raw["config"], dict) and isinstance(raw["model_parameters"], dict)
            and all(isinstance(value, torch.Tensor) for value in raw["model_parameters"].values())):
        raise ValueError(f"{path}: not a CNM checkpoint, its config or model_parameters is not a dict of the "
                         "original layout")
    return Checkpoint(int(raw["num_updates"]), raw["config"], raw["model_parameters"])


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict[str, Any], num_updates: int) -> None:
    """Write atomically (temp file, then rename) so an interrupted save never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"num_updates": num_updates, "config": config, "model_parameters": state}, tmp)
    os.replace(tmp, path)
