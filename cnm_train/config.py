"""The original JSON config layout (dataset, train, model, loss) and the model part as a dataclass."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SHIPPED_CONFIGS = {
    "charades_i3d": "charades_i3d.json",
    "activitynet_clip": "activitynet_clip.json",
    "activitynet_c3d": "activitynet_c3d.json",
    "charades_synth_small": "charades_synth_small.json",  # d=128, 2+2 layers, on a synthetic archive
    "default": "default.json",  # the embedded synthetic dataset in data/default, made on first use
}


def load_config(path: str | Path) -> dict[str, Any]:
    """A user's config file, or the name of a shipped one (``charades_i3d``, ``activitynet_clip``, ...)."""
    if str(path) in SHIPPED_CONFIGS:
        text = resources.files("cnm_train.configs").joinpath(SHIPPED_CONFIGS[str(path)]).read_text()
    else:
        text = Path(path).read_text()
    return json.loads(text)


def inject_model_keys(config: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """Copy into ``model.config`` the four keys the original runner injects from the dataset section."""
    dataset, model = config["dataset"], config["model"]["config"]
    model["max_num_words"] = dataset["max_num_words"]
    model["frames_input_size"] = dataset["frame_dim"]
    model["words_input_size"] = dataset["word_dim"]
    model["vocab_size"] = vocab_size
    return config


@dataclass(frozen=True)
class ModelConfig:
    """Everything the network's shape and inference depend on (``config['model']['config']``)."""

    frames_input_size: int
    words_input_size: int
    vocab_size: int
    max_num_words: int
    hidden_size: int
    num_heads: int
    num_decoder_layers1: int  # frame decoder (the mask generator reads its last position)
    num_decoder_layers2: int  # word decoder
    dropout: float = 0.1  # on the input frame and word features
    decoder_dropout: float = 0.1  # inside the decoder layers
    alpha: float = 5.5
    max_width: float = 1.0
    use_negative: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelConfig":
        """From a full config (with the injected keys) or from its ``model.config`` section."""
        model = config["model"]["config"] if "model" in config else config
        missing = [k for k in ("frames_input_size", "words_input_size", "vocab_size", "max_num_words") if k not in model]
        if missing:
            raise ValueError(f"model config lacks the injected keys {missing}; call inject_model_keys first")
        trans = model["DualTransformer"]
        if trans["d_model"] != model["hidden_size"]:
            raise ValueError("DualTransformer.d_model must equal hidden_size")
        return cls(
            frames_input_size=int(model["frames_input_size"]),
            words_input_size=int(model["words_input_size"]),
            vocab_size=int(model["vocab_size"]),
            max_num_words=int(model["max_num_words"]),
            hidden_size=int(model["hidden_size"]),
            num_heads=int(trans["num_heads"]),
            num_decoder_layers1=int(trans["num_decoder_layers1"]),
            num_decoder_layers2=int(trans["num_decoder_layers2"]),
            dropout=float(model["dropout"]),
            decoder_dropout=float(trans.get("dropout", 0.0)),
            alpha=float(model["alpha"]),
            max_width=float(model.get("max_width", 1.0)),
            use_negative=bool(model.get("use_negative", True)),
        )
