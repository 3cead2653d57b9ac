"""Shared fixtures: paths into ../shared (tests skip cleanly where it is absent) and tiny configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Prepended to code run with `python -c`: any import of torch fails in that process.
BLOCK_TORCH = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Blocker())
"""
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden" / "charades_small"
CHARADES = SHARED / "data" / "charades"
ACTIVITYNET = SHARED / "data" / "activitynet"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return _require(GOLDEN)


@pytest.fixture
def charades_dir() -> Path:
    return _require(CHARADES)


@pytest.fixture
def activitynet_dir() -> Path:
    return _require(ACTIVITYNET)


@pytest.fixture
def golden_queries(golden_dir) -> list[dict]:
    return [json.loads(line) for line in (golden_dir / "queries.jsonl").read_text().splitlines()]


# --- small artefacts made on the fly -------------------------------------------------------------

def write_glove(path: Path, words: list[str], dim: int = 300, seed: int = 0) -> Path:
    """A glove.pkl in the original layout; ``words`` get strictly decreasing counts (so ids follow the list)."""
    import pickle
    from collections import Counter

    import numpy as np

    rng = np.random.default_rng(seed)
    glove = {
        "w2id": {w: i for i, w in enumerate(words)},
        "id2vec": [rng.standard_normal(dim).astype(np.float32) for _ in words],
        "counter": Counter({w: len(words) - i for i, w in enumerate(words)}),
    }
    path.write_bytes(pickle.dumps(glove))
    return path


def write_checkpoint(path: Path, config_name: str = "charades_i3d", vocab_size: int = 50, d_model: int = 32,
                     layers: tuple[int, int] = (1, 1), seed: int = 0, glove_path: Path | None = None) -> Path:
    """A random-weight checkpoint in the original format for one of the shipped configs, shrunk for speed."""
    import torch

    from cnm_train.checkpoint import save_checkpoint
    from cnm_train.config import ModelConfig, inject_model_keys, load_config
    from cnm_train.model import CNM

    config = load_config(config_name)
    config["dataset"]["vocab_size"] = vocab_size
    if glove_path is not None:
        config["dataset"]["vocab_path"] = str(glove_path)
    model_cfg = config["model"]["config"]
    model_cfg["hidden_size"] = d_model
    model_cfg["DualTransformer"].update(d_model=d_model, num_decoder_layers1=layers[0], num_decoder_layers2=layers[1])
    inject_model_keys(config, vocab_size + 1)
    torch.manual_seed(seed)
    model = CNM(ModelConfig.from_config(config))
    with torch.no_grad():  # make every parameter matter, as the golden checkpoint does
        for name, param in model.named_parameters():
            if "norm" in name or "bias" in name or name in ("start_vec", "mask_vec"):
                param.add_(0.1 * torch.randn_like(param))
    save_checkpoint(path, model, config, num_updates=7)
    return path
