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
from dataclasses import MISSING, asdict, dataclass, field, fields

from cnm_runtime.text import Vocabulary

METADATA_KEY = "cnm"
INPUT_NAMES = ("frames", "video_index", "word_ids", "words_len")  # a Batch's fields
OUTPUT_NAMES = ("center", "width")
# The element types an export gives each input and output, as ONNX Runtime names them.
INPUT_TYPES = {"frames": ("tensor(float)", "tensor(float16)"), "video_index": ("tensor(int64)",),
               "word_ids": ("tensor(int64)",), "words_len": ("tensor(int64)",)}
OUTPUT_TYPES = ("tensor(float)",)


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
        """The spec an export carries; ValueError, in one line naming ``source``, for anything else."""
        if METADATA_KEY not in metadata:
            raise ValueError(f"{source}: no '{METADATA_KEY}' metadata; was it written by cnm-export?")
        try:
            values = json.loads(metadata[METADATA_KEY])
        except ValueError:
            raise ValueError(f"{source}: its '{METADATA_KEY}' metadata is not JSON; not a cnm-export model") from None
        problem = _spec_problem(values)
        if problem:
            raise ValueError(f"{source}: its '{METADATA_KEY}' metadata is not cnm-export's: {problem}")
        return cls(**{**values, "words": tuple(values["words"])})


def _spec_problem(values: object) -> str | None:
    """What makes ``values`` not the fields of a ModelSpec, or None."""
    if not isinstance(values, dict):
        return "not an object"
    names = {f.name for f in fields(ModelSpec)}
    required = {f.name for f in fields(ModelSpec) if f.default is MISSING and f.default_factory is MISSING}
    if set(values) - names or required - set(values):
        return f"fields {sorted(values)}, expected {sorted(names)}"
    if not (isinstance(values["words"], list) and values["words"] and all(isinstance(w, str) for w in values["words"])
            and len(set(values["words"])) == len(values["words"])):
        return "'words' is not a list of distinct strings"
    for name in ("max_num_words", "max_num_frames", "frame_dim"):
        if type(values[name]) is not int or values[name] < 1:
            return f"{name!r} is not a positive integer"
    if type(values["max_width"]) not in (int, float) or not 0 < values["max_width"] <= 1:
        return "'max_width' is not a number in (0, 1]"
    if not all(isinstance(values.get(name, ""), str) for name in ("dataset", "precision", "checkpoint_sha256")):
        return "'dataset', 'precision' or 'checkpoint_sha256' is not a string"
    if not isinstance(values.get("versions", {}), dict):
        return "'versions' is not an object"
    return None


def check_graph(inputs: dict[str, str], outputs: dict[str, str], source: str = "model") -> None:
    """ValueError, in one line naming ``source``, unless the graph takes and gives what cnm-export writes
    (names to ONNX Runtime's element types, e.g. ``tensor(float)``)."""
    if set(inputs) == set(INPUT_NAMES) - {"video_index"}:
        raise ValueError(f"{source}: exported by cnm 0.1.0, whose graphs lack the video_index input; "
                         "export the checkpoint again with this cnm-export")
    if set(inputs) != set(INPUT_NAMES):
        raise ValueError(f"{source}: inputs {sorted(inputs)} are not a CNM model's {list(INPUT_NAMES)}")
    wrong = [f"{name} is {kind}" for name, kind in inputs.items() if kind not in INPUT_TYPES[name]]
    if set(outputs) != set(OUTPUT_NAMES):
        raise ValueError(f"{source}: outputs {sorted(outputs)} are not a CNM model's {list(OUTPUT_NAMES)}")
    wrong += [f"{name} is {kind}" for name, kind in outputs.items() if kind not in OUTPUT_TYPES]
    if wrong:
        raise ValueError(f"{source}: not the types cnm-export writes ({', '.join(wrong)})")
