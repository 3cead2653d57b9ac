"""Shared fixtures: the golden set in tests/golden, paths into ../shared (tests skip cleanly where it is
absent) and tiny configs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
# The original code's outputs for part of ../shared/golden/charades_small (tests/golden/README.txt), inside
# the repository so that every clone proves fidelity.
GOLDEN = REPO / "tests" / "golden"
GOLDEN_WORD_SLOTS = 12  # the original padded words to its longest query (11 words) plus the start slot
CHARADES = SHARED / "data" / "charades"
ACTIVITYNET = SHARED / "data" / "activitynet"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture
def charades_dir() -> Path:
    return _require(CHARADES)


@pytest.fixture
def activitynet_dir() -> Path:
    return _require(ACTIVITYNET)


def read_golden_queries() -> list[dict]:
    return [json.loads(line) for line in (GOLDEN / "queries.jsonl").read_text().splitlines()]


@pytest.fixture
def golden_queries() -> list[dict]:
    return read_golden_queries()


@dataclass
class GoldenInputs:
    """The golden queries prepared by this code, row i for line i of queries.jsonl.

    expected.npz keeps digests of the original's model inputs, not the inputs: test_preprocessing proves
    these bit-identical to them, and the model tests feed them.
    """

    raw_num_rows: np.ndarray  # [n] rows of each raw feature array
    frames: np.ndarray  # [n, 200, 1024] float32 clips, resampled as cnm-run does
    word_ids: np.ndarray  # [n, GOLDEN_WORD_SLOTS]: slot 0 the start slot, then the kept words' ids, zero padded
    words_len: np.ndarray  # [n]
    word_vectors: np.ndarray  # [1112, 300] the model's word table, row 0 the padding

    @property
    def words_feat(self) -> np.ndarray:
        """[n, GOLDEN_WORD_SLOTS, 300] float32, the words as the model takes them."""
        return self.word_vectors[self.word_ids]


@pytest.fixture(scope="session")
def golden_inputs() -> GoldenInputs:
    from cnm_runtime import Vocabulary, resample_clips, validate_features
    from cnm_runtime.archive import FeatureArchive
    from cnm_runtime.text import load_glove, pad_word_ids

    queries = read_golden_queries()
    with FeatureArchive(GOLDEN / "features.hdf5") as archive:
        raw = [validate_features(archive.read(q["video"]), 1024, q["video"]) for q in queries]
    glove = load_glove(GOLDEN / "glove.pkl")
    vocab = Vocabulary.from_glove(glove, 1111)
    word_ids, words_len = pad_word_ids([vocab.encode(q["query"], 20) for q in queries], GOLDEN_WORD_SLOTS)
    return GoldenInputs(np.array([len(rows) for rows in raw]), np.stack([resample_clips(rows, 200) for rows in raw]),
                        word_ids, words_len, vocab.word_vectors(glove))


@pytest.fixture(scope="session")
def ray_address():
    """The address of a Ray started once for the whole session (2 CPUs), which cnm-run --engine ray joins with
    --address: Ray's start-up is paid once, and a second ray.init in this process would fail."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# --- small artefacts made on the fly -------------------------------------------------------------

def write_glove(path: Path, words: list[str], dim: int = 300, seed: int = 0) -> Path:
    """A glove.pkl in the original layout; ``words`` get strictly decreasing counts (so ids follow the list)."""
    import pickle
    from collections import Counter

    rng = np.random.default_rng(seed)
    glove = {
        "w2id": {w: i for i, w in enumerate(words)},
        "id2vec": [rng.standard_normal(dim).astype(np.float32) for _ in words],
        "counter": Counter({w: len(words) - i for i, w in enumerate(words)}),
    }
    path.write_bytes(pickle.dumps(glove))
    return path


def write_checkpoint(path: Path, config_name: str = "charades_i3d", vocab_size: int = 50, d_model: int = 32,
                     layers: tuple[int, int] = (1, 1), seed: int = 0, glove_path: Path | None = None,
                     dataset: dict[str, str] | None = None) -> Path:
    """A random-weight checkpoint in the original format for one of the shipped configs, shrunk for speed;
    ``dataset`` overrides entries of the config's dataset section (e.g. where its splits lie)."""
    import torch

    from cnm_train.checkpoint import save_checkpoint
    from cnm_train.config import ModelConfig, inject_model_keys, load_config
    from cnm_train.model import CNM

    config = load_config(config_name)
    config["dataset"]["vocab_size"] = vocab_size
    if glove_path is not None:
        config["dataset"]["vocab_path"] = str(glove_path)
    config["dataset"].update(dataset or {})
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
