"""Pixel losses on the [0, 1]-scaled images: l1, mse, l1_weighted."""

from __future__ import annotations

import torch
import torch.nn as nn

from ldct.errors import ConfigError
from ldct.hu import WINDOWS, to_unit
from losses import TermsLoss, register


@register("l1")
class L1(nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean()


@register("mse")
class MSE(nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target) ** 2).mean()


@register("l1_weighted")
class WeightedL1(TermsLoss):
    """L1 plus `weight` times the L1 over pixels whose target lies in the head window
    [0, 80) HU (where brain tissue lives). As in the reference, the weight defaults to the
    scaling range over the window width (4096 / 80 = 51.2 for [-1024, 3072]), so the extra
    term is that L1 in units of the head window; a patch without such pixels adds nothing
    (the reference gives NaN there). `hu_range` is the network scaling window."""

    def __init__(self, weight: float | None = None, hu_range: tuple[float, float] = (-1024.0, 3072.0)):
        super().__init__()
        self.check_config({"weight": weight})
        lo, hi = WINDOWS["head"]
        self.weight = (hu_range[1] - hu_range[0]) / (hi - lo) if weight is None else weight
        self.bounds = (to_unit(lo, *hu_range), to_unit(hi, *hu_range))

    @staticmethod
    def check_config(kwargs: dict) -> None:
        """A negative weight would reward error in the head window (config validation)."""
        if kwargs.get("weight") is not None and kwargs["weight"] < 0:
            raise ConfigError(f"weight must be >= 0 (or null: the scaling range over the head window's width), "
                              f"got {kwargs['weight']}")

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        diff = (pred - target).abs()
        mask = (target >= self.bounds[0]) & (target < self.bounds[1])
        extra = (diff * mask).sum() / mask.sum().clamp(min=1)
        return {"l1": diff.mean(), "head_window": self.weight * extra}
