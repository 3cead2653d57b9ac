"""The two CNM objectives (the original ``models/loss.py``).

- Reconstruction loss (steps the reconstructor): NLL of the masked query reconstructed from the
  Gaussian-weighted clips (positive) plus from the whole video (hard negative).
- Intra-video contrastive loss (steps the mask generator): the positive must reconstruct the query
  better than the whole video by ``beta_1`` and better than the complement ``1 - Gaussian`` by ``beta_2``.
"""
from __future__ import annotations

import torch

LABEL_SMOOTHING = 0.1


def reconstruction_mask(words_len: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Float ``[B, num_positions]``: 1 at decoder positions 0..words_len (the original ``words_mask[:, :-1]``).

    Position t predicts slot t+1, so position ``words_len`` predicts the padding id 0 after the last
    word; the original counts it for every query shorter than the longest of its batch, and so do we.
    """
    positions = torch.arange(num_positions, device=words_len.device)
    return (positions[None, :] <= words_len[:, None]).float()


def query_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: per-query mean over ``mask`` of the label-smoothed NLL (the original ``cal_nll_loss``).

    Per position: ``(1 - eps) * -log p(target) + eps / V * sum_v -log p(v)`` with eps 0.1.
    """
    log_probs = logits.log_softmax(dim=-1)
    nll = -log_probs.gather(dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)
    smooth = -log_probs.sum(dim=-1)
    per_position = (1 - LABEL_SMOOTHING) * nll + LABEL_SMOOTHING / logits.size(-1) * smooth
    return (per_position * mask).sum(dim=-1) / mask.sum(dim=-1)


def rec_loss(output: dict[str, torch.Tensor], targets: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Positive NLL plus hard-negative NLL (only the positive without ``use_negative``), batch means."""
    nll = query_nll(output["words_logit"], targets, mask).mean()
    loss, logs = nll, {"nll_loss": nll.item()}
    if "hard_neg_words_logit" in output:
        hard_nll = query_nll(output["hard_neg_words_logit"], targets, mask).mean()
        loss, logs["neg_nll_loss"] = loss + hard_nll, hard_nll.item()
    logs["rec_loss"] = loss.item()
    return loss, logs


def ivc_loss(output: dict[str, torch.Tensor], targets: torch.Tensor, mask: torch.Tensor,
             beta_1: float, beta_2: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``mean(max(0, nll - nll_hard + beta_1)) + mean(max(0, nll - nll_easy + beta_2))``.

    Without negatives (``use_negative`` false) it is the positive NLL alone, as in the original.
    """
    nll = query_nll(output["words_logit"], targets, mask)
    if "hard_neg_words_logit" not in output:
        loss = nll.mean()
        return loss, {"ivc_loss": loss.item()}
    hard_nll = query_nll(output["hard_neg_words_logit"], targets, mask)
    easy_nll = query_nll(output["easy_neg_words_logit"], targets, mask)
    hard = (nll - hard_nll + beta_1).clamp(min=0).mean()
    easy = (nll - easy_nll + beta_2).clamp(min=0).mean()
    loss = hard + easy
    return loss, {"ivc_loss": loss.item(), "hard_neg_loss": hard.item(), "easy_neg_loss": easy.item()}
