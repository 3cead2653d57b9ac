"""What an exported CNM graph carries besides its weights: the contract between cnm-export and cnm-run.

The ONNX file holds one metadata entry, ``cnm`` (JSON of ``ModelSpec``), so that the runtime needs
nothing else beside the file: the kept words turn sentences into ``word_ids``, the sizes turn raw
features into ``frames``. Graph inputs: ``frames`` float32 ``[V, max_num_frames, frame_dim]``, the
batch's videos; ``video_index`` int64 ``[B]``, each query's row of ``frames``; ``word_ids`` int64
``[B, max_num_words + 1]`` (slot 0 the start slot); ``words_len`` int64 ``[B]``. Outputs: ``center`` and
``width`` ``[B]`` (width already times ``max_width``). Files exported before ``video_index`` existed
(cnm 0.1.0) lack that input and must be exported again.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from cnm_runtime.text import Vocabulary

METADATA_KEY = "cnm"
INPUT_NAMES = ("frames", "video_index", "word_ids", "words_len")
OUTPUT_NAMES = ("center", "width")


def check_input_names(names: tuple[str, ...], source: str) -> None:
    """ValueError unless a graph's inputs are a CNM model's (naming the files of cnm 0.1.0, which lack one)."""
    if set(names) == set(INPUT_NAMES) - {"video_index"}:
        raise ValueError(f"{source}: exported by cnm 0.1.0, whose graphs lack the video_index input; "
                         "export the checkpoint again with this cnm-export")
    if set(names) != set(INPUT_NAMES):
        raise ValueError(f"{source}: inputs {names} are not a CNM model's {INPUT_NAMES}")


@dataclass(frozen=True)
class ModelSpec:
    words: tuple[str, ...]  # the kept vocabulary, id i+1 for words[i]
    max_num_words: int
    max_num_frames: int
    frame_dim: int
    max_width: float
    dataset: str = ""
    precision: str = "fp32"
    checkpoint_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # torch / onnx / cnm used to export

    @property
    def word_slots(self) -> int:
        return self.max_num_words + 1

    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.words)

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "model") -> "ModelSpec":
        if METADATA_KEY not in metadata:
            raise ValueError(f"{source}: no '{METADATA_KEY}' metadata; was it written by cnm-export?")
        fields = json.loads(metadata[METADATA_KEY])
        fields["words"] = tuple(fields["words"])
        return cls(**fields)
