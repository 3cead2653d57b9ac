"""Adam with fairseq's inverse-square-root schedule, one per training phase, in plain torch.optim.

The original builds two such optimizers (reconstructor, generator) from the ``train`` section of the
config and calls ``step_update(num_updates)`` on both after every batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class InverseSqrtSchedule:
    """Linear warmup from ``warmup_init_lr`` to ``lr`` over ``warmup_updates``, then ``lr * sqrt(warmup / n)``."""

    lr: float
    warmup_updates: int
    warmup_init_lr: float

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "InverseSqrtSchedule":
        return cls(float(section["lr"]), int(section["warmup_updates"]), float(section["warmup_init_lr"]))

    def lr_at(self, num_updates: int) -> float:
        """The learning rate once ``num_updates`` updates are done (the first update uses ``lr_at(0)``)."""
        if num_updates < self.warmup_updates:
            return self.warmup_init_lr + num_updates * (self.lr - self.warmup_init_lr) / self.warmup_updates
        return self.lr * math.sqrt(max(self.warmup_updates, 1) / max(num_updates, 1))


class PhaseOptimizer:
    """``torch.optim.Adam`` over the parameters one phase trains, its rate set by the schedule."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], section: dict[str, Any]):
        self.schedule = InverseSqrtSchedule.from_config(section)
        self.adam = torch.optim.Adam(
            list(parameters), lr=self.schedule.lr_at(0), betas=ADAM_BETAS, eps=ADAM_EPS,
            weight_decay=float(section.get("weight_decay", 0)),
        )

    @property
    def lr(self) -> float:
        return self.adam.param_groups[0]["lr"]

    def step_update(self, num_updates: int) -> float:
        """Set the rate for the update after ``num_updates`` (fairseq's ``step_update``); returns it."""
        lr = self.schedule.lr_at(num_updates)
        for group in self.adam.param_groups:
            group["lr"] = lr
        return lr


def phase_optimizers(model: torch.nn.Module, train_section: dict[str, Any]) -> tuple[PhaseOptimizer, PhaseOptimizer]:
    """``(reconstructor, generator)`` over the parameters each phase unfreezes, as the original builds them."""
    model.freeze_mask_generator()
    reconstructor = PhaseOptimizer([p for p in model.parameters() if p.requires_grad], train_section["reconstructor"])
    model.freeze_reconstructor()
    generator = PhaseOptimizer([p for p in model.parameters() if p.requires_grad], train_section["generator"])
    return reconstructor, generator
