"""The CNM network (Zheng et al., AAAI 2022) with the parameter names of minghangz/cnm.

Two causal post-LN transformer decoders share their weights between two jobs:
- mask generator: the word decoder encodes the sentence, the frame decoder reads the 200 clips while
  cross-attending to the words, and its last position predicts a Gaussian (center, width);
- reconstructor (training only): the frame decoder encodes the clips re-weighted by a Gaussian, the
  word decoder reconstructs masked words while cross-attending to them.
Masks are built from tensors on every call (nothing cached) and inputs are never written to, so the
module exports cleanly and stays correct after an export.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnm_train.config import ModelConfig

MASKED = -1e30  # score of a blocked key; finite, so fp16 graphs clip it instead of producing NaN


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """``[num_positions, dim]``: sin | cos halves concatenated, position 0 all zeros (fairseq layout)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[0] = 0
    return table


def causal_block(num_queries: int, num_keys: int, device: torch.device) -> torch.Tensor:
    """True where query i (the last ``num_queries`` positions of ``num_keys``) may not see key j > i."""
    rows = torch.arange(num_keys - num_queries, num_keys, device=device).unsqueeze(1)
    return torch.arange(num_keys, device=device).unsqueeze(0) > rows


def score_bias(blocked: torch.Tensor) -> torch.Tensor:
    """Additive float32 attention bias: ``MASKED`` where ``blocked``, 0 elsewhere."""
    return torch.zeros(blocked.shape, device=blocked.device).masked_fill(blocked, MASKED)


class MultiheadAttention(nn.Module):
    """fairseq-style attention: packed ``in_proj_weight``, softmax in float32, optional Gaussian re-weighting."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, bias=None, gauss_weight=None):
        """query ``[B, Tq, D]``, key ``[B, Tk, D]``; ``bias`` float32, broadcastable to ``[B, H, Tq, Tk]``,
        is added to the scores (``MASKED`` at blocked keys: an Add runs faster than a masked fill and gives
        the same softmax); ``gauss_weight`` ``[B, Tk]`` multiplies the attention, which is then renormalised."""
        return self.merge(self.attend(*self.project(query, key), bias, gauss_weight))

    def project(self, query, key):
        """Per-head ``[B, H, T, head_dim]`` queries (already scaled), keys and values."""
        (batch, num_q, _), num_k = query.shape, key.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q) * self.head_dim**-0.5
        k, v = F.linear(key, w_k, b_k), F.linear(key, w_v, b_v)
        q = q.view(batch, num_q, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, num_k, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, num_k, self.num_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    @staticmethod
    def attend(q, k, v, bias=None, gauss_weight=None):
        """``[B, H, Tq, head_dim]``: the attention-weighted values of each head."""
        scores = (q @ k.transpose(-1, -2)).float()
        if bias is not None:
            scores = scores + bias
        weights = scores.softmax(dim=-1).type_as(q)
        if gauss_weight is not None:
            weights = weights * (gauss_weight[:, None, None, :] + 1e-10)
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights @ v

    def merge(self, heads):
        """``[B, H, T, head_dim]`` -> ``[B, T, D]`` through the output projection."""
        batch, _, num_q, _ = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(batch, num_q, self.num_heads * self.head_dim))


class TransformerDecoderLayer(nn.Module):
    """Post-LN: causal self-attention, optional cross-attention, FFN of width 2*d."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.self_attn = MultiheadAttention(d_model, num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.encoder_attn = MultiheadAttention(d_model, num_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 2 * d_model)
        self.fc2 = nn.Linear(2 * d_model, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def _residual(self, x, update, norm):
        return norm(x + F.dropout(update, self.dropout, self.training))

    def forward(self, x, x_pad=None, memory=None, memory_pad=None, self_gauss=None, cross_gauss=None,
                last_only=False, x_index=None):
        """``x_pad``/``memory_pad``: bool ``[B, T]``, True at padding. ``last_only`` computes the last
        position alone (keys and values still from every position): all a caller reading ``h[:, -1]`` needs.
        ``x_index`` ``[B]``: ``x`` holds fewer rows than ``memory`` and row b of the output continues from
        ``x[x_index[b]]`` after the self-attention, which reads ``x`` alone (so it runs once per row of ``x``)."""
        query = x[:, -1:] if last_only else x
        blocked = causal_block(query.shape[1], x.shape[1], x.device)[None, None]
        if x_pad is not None:
            blocked = blocked | x_pad[:, None, None, :]
        h = self._residual(query, self.self_attn(query, x, score_bias(blocked), self_gauss), self.self_attn_layer_norm)
        if x_index is not None:
            h = h[x_index]
        if memory is not None:
            cross_bias = None if memory_pad is None else score_bias(memory_pad[:, None, None, :])
            h = self._residual(h, self.encoder_attn(h, memory, cross_bias, cross_gauss), self.encoder_attn_layer_norm)
        return self._residual(h, self.fc2(F.relu(self.fc1(h))), self.final_layer_norm)


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.decoder_layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, num_heads, dropout) for _ in range(num_layers)
        )

    def forward(self, x, x_pad=None, memory=None, memory_pad=None, self_gauss=None, cross_gauss=None,
                last_only=False, x_index=None):
        """``last_only`` prunes the final layer to the last position (returns ``[B, 1, D]``); ``x_index``
        maps each row of ``memory`` to its row of ``x`` inside the first layer (see the layer)."""
        for i, layer in enumerate(self.decoder_layers):
            prune = last_only and i == len(self.decoder_layers) - 1
            x = layer(x, x_pad, memory, memory_pad, self_gauss, cross_gauss, last_only=prune,
                      x_index=x_index if i == 0 else None)
        return x


class DualTransformer(nn.Module):
    """decoder1 runs over clips, decoder2 over words (the original's names)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, heads, p = cfg.hidden_size, cfg.num_heads, cfg.decoder_dropout
        self.decoder1 = TransformerDecoder(cfg.num_decoder_layers1, d, heads, p)
        self.decoder2 = TransformerDecoder(cfg.num_decoder_layers2, d, heads, p)


class CNM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.frame_fc = nn.Linear(cfg.frames_input_size, d)
        self.word_fc = nn.Linear(cfg.words_input_size, d)
        self.mask_vec = nn.Parameter(torch.zeros(cfg.words_input_size))
        self.start_vec = nn.Parameter(torch.zeros(cfg.words_input_size))
        self.trans = DualTransformer(cfg)
        self.fc_rec = nn.Linear(d, cfg.vocab_size)
        self.fc_mask_gen = nn.Linear(d, 2)
        # Not a parameter and not in the state dict (the original keeps it as a plain attribute).
        self.register_buffer("word_positions", sinusoidal_positions(cfg.max_num_words + 1, d), persistent=False)

    def _encode_inputs(self, frames_feat, words_feat, words_len):
        """Project clips and words; slot 0 of the words becomes the start vector (a new tensor, not in place)."""
        batch, num_slots, _ = words_feat.shape
        frames = self.frame_fc(F.dropout(frames_feat, self.cfg.dropout, self.training))
        start = self.start_vec.to(words_feat.dtype).expand(batch, 1, -1)
        words_feat = torch.cat([start, words_feat[:, 1:]], dim=1)
        words = self.word_fc(F.dropout(words_feat, self.cfg.dropout, self.training))
        words_pad = torch.arange(num_slots, device=words_len.device)[None, :] > words_len[:, None]
        return frames, words, self.word_positions[:num_slots].to(words.dtype), words_pad

    def _gaussian_head(self, frames, words, words_pad, last_only=False, video_index=None):
        words_enc = self.trans.decoder2(words, words_pad)
        h = self.trans.decoder1(frames, memory=words_enc, memory_pad=words_pad, last_only=last_only,
                                x_index=video_index)
        center, width = torch.sigmoid(self.fc_mask_gen(h[:, -1])).unbind(-1)
        return center, width * self.cfg.max_width

    def generate(self, frames_feat, words_feat, words_len, last_only: bool = False, video_index=None):
        """The mask generator: ``(center, width)`` ``[B]`` each, width already times ``max_width``.

        frames_feat ``[B, n_clips, frame_dim]``; words_feat ``[B, T, word_dim]`` with slot 0 the start slot
        and slots 1..words_len the words; ``last_only`` skips work whose result ``h[:, -1]`` never reads.
        With ``video_index`` ``[B]`` int64, frames_feat holds ``[V, n_clips, frame_dim]`` videos and query b
        reads video ``video_index[b]``: the clips' projection and the frame decoder's first self-attention
        read no words, so they run once per video however many queries share it (same values).
        """
        frames, words, positions, words_pad = self._encode_inputs(frames_feat, words_feat, words_len)
        return self._gaussian_head(frames, words + positions, words_pad, last_only, video_index)

    def gauss_weight(self, num_props: int, center, width):
        """``exp(-alpha (t - c)^2 / w^2)`` over ``num_props`` evenly spaced positions, width clamped at 0.1."""
        grid = torch.linspace(0, 1, num_props, device=center.device)[None, :]
        width = width.unsqueeze(-1).clamp(min=0.1)
        return torch.exp(-self.cfg.alpha * (grid - center.unsqueeze(-1)).pow(2) / width.pow(2))

    def forward(self, frames_feat, words_feat, words_len, masked_words, easy_negative: bool = True):
        """Training path: Gaussian, then masked-word logits from the positive, hard and easy negatives.

        ``masked_words`` bool ``[B, T]`` marks the word slots replaced by the mask vector. Logits are
        ``[B, T-1, vocab]``: position t predicts slot t+1 (see ``cnm_train.losses``). The reconstruction
        loss never reads the easy negative, so its phase skips it (``easy_negative=False``).
        """
        frames, words, positions, words_pad = self._encode_inputs(frames_feat, words_feat, words_len)
        # Only h[:, -1] feeds the Gaussian, so pruning the last layer gives the same values and gradients.
        center, width = self._gaussian_head(frames, words + positions, words_pad, last_only=True)

        num_clips = frames.shape[1]
        keep = torch.linspace(0, num_clips - 1, steps=num_clips // 4).long()  # downsampled for speed
        props = frames[:, keep]
        gauss = self.gauss_weight(len(keep), center, width)

        mask_token = self.word_fc(self.mask_vec.unsqueeze(0))
        words = torch.where(masked_words.unsqueeze(-1), mask_token, words) + positions
        words, words_pad = words[:, :-1], words_pad[:, :-1]

        def reconstruct(weight):
            clips = self.trans.decoder1(props, self_gauss=weight)
            h = self.trans.decoder2(words, words_pad, memory=clips, cross_gauss=weight)
            return self.fc_rec(h)

        out = {"center": center, "width": width, "gauss_weight": gauss, "words_logit": reconstruct(gauss)}
        if self.cfg.use_negative:
            out["hard_neg_words_logit"] = reconstruct(None)
            if easy_negative:
                out["easy_neg_words_logit"] = reconstruct(1 - gauss)
        return out

    def freeze_mask_generator(self) -> None:
        """Reconstructor phase: everything trains except ``fc_mask_gen``."""
        for name, param in self.named_parameters():
            param.requires_grad = "mask_gen" not in name

    def freeze_reconstructor(self) -> None:
        """Generator phase: only ``fc_mask_gen`` trains (the original shares all other weights)."""
        for name, param in self.named_parameters():
            param.requires_grad = "mask_gen" in name
