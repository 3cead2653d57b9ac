"""The module that becomes the ONNX graph: the mask generator with the word-vector table inside."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from cnm_train.model import CNM, MultiheadAttention, causal_block, score_bias

CAUSAL_CHUNKS = 4  # more chunks skip more of the square but add more small products; 4 leave 5/8 of it


class ChunkedCausalAttention(nn.Module):
    """Causal self-attention over the clips with the scores computed in ``chunks`` slices of query rows,
    each against only the keys it may see (rows a..b read keys 0..b); projections are computed once.

    The same values as one full product: a blocked key gets weight exactly 0 either way. With 4 chunks
    the scores, softmax and weighted sum cover 62.5% of the full square, and over 200 clips that square
    is most of the generator's work. The model itself keeps the plain form of the original. It wraps the
    frame decoder's self-attention, whose only mask is the causal one (clips have no padding); any other
    call (a per-query bias, Gaussian weights, the pruned layer's single row) goes to the plain attention.
    """

    def __init__(self, attention: MultiheadAttention, chunks: int = CAUSAL_CHUNKS):
        super().__init__()
        self.attention = attention
        self.chunks = chunks

    def forward(self, query, key, bias=None, gauss_weight=None):
        num_q, num_k = int(query.shape[1]), int(key.shape[1])
        causal_only = bias is not None and bias.shape[0] == 1 and gauss_weight is None  # one mask for all queries
        if not causal_only or num_q != num_k or num_q < 2 * self.chunks:
            return self.attention(query, key, bias, gauss_weight)
        q, k, v = self.attention.project(query, key)
        edges = [round(i * num_q / self.chunks) for i in range(self.chunks + 1)]
        heads = [
            self.attention.attend(q[:, :, start:end], k[:, :, :end], v[:, :, :end],
                                  score_bias(causal_block(end - start, end, query.device)))
            for start, end in zip(edges[:-1], edges[1:])
        ]
        return self.attention.merge(torch.cat(heads, dim=2))


class GeneratorGraph(nn.Module):
    """``(frames, video_index, word_ids, words_len) -> (center, width)``; the reconstructor is left out.

    ``frames`` holds the batch's videos and ``video_index`` names each query's one, so the work that reads
    no words (the clips' projection, the frame decoder's first self-attention) runs once per video.

    The kept words' GloVe vectors live in ``word_vectors`` (row 0 zeros for padding and the start slot,
    which the model replaces by its start vector), so the runtime needs no ``glove.pkl``.
    The graph holds its own copy of the model, so putting it in eval mode or casting it to ``dtype``
    never changes the caller's module. With ``dtype=torch.float16`` the math runs in fp16 (attention
    softmax stays float32, as in the model) and ``frames`` come in float16; the outputs stay float32.
    ``prune`` skips work whose result is never read: the last frame-decoder layer computes only the one
    position the head reads, and the clips' causal self-attention runs in chunks (``ChunkedCausalAttention``).
    """

    def __init__(self, model: CNM, word_vectors: np.ndarray, prune: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.prune = prune
        if prune:
            for layer in self.model.trans.decoder1.decoder_layers:
                layer.self_attn = ChunkedCausalAttention(layer.self_attn)
        self.dtype = dtype
        table = torch.from_numpy(np.asarray(word_vectors, dtype=np.float32)).to(dtype)
        self.register_buffer("word_vectors", table)

    def forward(self, frames, video_index, word_ids, words_len):
        words_feat = self.word_vectors[word_ids]
        center, width = self.model.generate(frames, words_feat, words_len, last_only=self.prune,
                                            video_index=video_index)
        return center.float(), width.float()
