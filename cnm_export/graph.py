"""The module that becomes the ONNX graph: the mask generator with the word-vector table inside."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from cnm_train.model import CNM


class GeneratorGraph(nn.Module):
    """``(frames, word_ids, words_len) -> (center, width)``; the reconstructor is left out.

    The kept words' GloVe vectors live in ``word_vectors`` (row 0 zeros for padding and the start slot,
    which the model replaces by its start vector), so the runtime needs no ``glove.pkl``.
    """

    def __init__(self, model: CNM, word_vectors: np.ndarray, last_only: bool = True):
        super().__init__()
        self.model = model.eval()
        self.last_only = last_only
        self.register_buffer("word_vectors", torch.from_numpy(np.asarray(word_vectors, dtype=np.float32)))

    def forward(self, frames, word_ids, words_len):
        words_feat = self.word_vectors[word_ids]
        return self.model.generate(frames, words_feat, words_len, last_only=self.last_only)
