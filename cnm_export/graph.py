"""The module that becomes the ONNX graph: the mask generator with the word-vector table inside."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from cnm_train.model import CNM


class GeneratorGraph(nn.Module):
    """``(frames, word_ids, words_len) -> (center, width)``; the reconstructor is left out.

    The kept words' GloVe vectors live in ``word_vectors`` (row 0 zeros for padding and the start slot,
    which the model replaces by its start vector), so the runtime needs no ``glove.pkl``.
    The graph holds its own copy of the model, so putting it in eval mode or casting it to ``dtype``
    never changes the caller's module. With ``dtype=torch.float16`` the math runs in fp16 (attention
    softmax stays float32, as in the model) while ``frames`` and the outputs stay float32.
    ``last_only`` prunes the last frame-decoder layer to the one position the head reads.
    """

    def __init__(self, model: CNM, word_vectors: np.ndarray, last_only: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.last_only = last_only
        self.dtype = dtype
        table = torch.from_numpy(np.asarray(word_vectors, dtype=np.float32)).to(dtype)
        self.register_buffer("word_vectors", table)

    def forward(self, frames, word_ids, words_len):
        words_feat = self.word_vectors[word_ids]
        center, width = self.model.generate(frames.to(self.dtype), words_feat, words_len, last_only=self.last_only)
        return center.float(), width.float()
