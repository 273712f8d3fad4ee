"""Anatomical perception losses: match the frozen segmentation U-Net's view of the
prediction to its view of the NDCT target (the paper's contribution).

Images are converted back to HU before entering the U-Net (it takes raw HU). Gradients flow
through the frozen U-Net for the prediction; the target pass runs under no_grad.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ldct.classes import CLASS_NAMES, NUM_CLASSES
from ldct.errors import ConfigError
from ldct.hu import from_unit
from losses import TermsLoss, register


class _Anatomical(TermsLoss):
    needs_segmenter = True

    def __init__(self, segmenter: nn.Module, hu_range: tuple[float, float], ana_weight: float = 0.01):
        super().__init__()
        _Anatomical.check_config({"ana_weight": ana_weight})
        self.segmenter = segmenter.eval()
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.hu_range = tuple(hu_range)
        self.w = ana_weight

    @staticmethod
    def check_config(kwargs: dict) -> None:
        """The weight of the anatomical term (config validation; the types are checked there)."""
        w = kwargs.get("ana_weight", 0.01)
        if not 0.0 <= w <= 1.0:
            raise ConfigError(f"ana_weight must be in [0, 1], got {w}")

    def train(self, mode: bool = True):  # the segmenter stays in eval mode
        super().train(mode)
        self.segmenter.eval()
        return self

    def views(self, pred: torch.Tensor, target: torch.Tensor):
        with torch.no_grad():
            t_logits, t_feats = self.segmenter(from_unit(target, *self.hu_range), return_features=True)
        p_logits, p_feats = self.segmenter(from_unit(pred, *self.hu_range), return_features=True)
        return p_logits, p_feats, t_logits, t_feats


@register("l1_l1ana_1")
class AnatomicalFeatureLoss(_Anatomical):
    """(1 - w) L1 + w A, A = mean L1 over the four decoder stages and the logits."""

    def term(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A alone: the mean L1 distance of the segmenter's views of `pred` and `target`."""
        p_logits, p_feats, t_logits, t_feats = self.views(pred, target)
        return torch.stack([(a - b).abs().mean() for a, b in zip(p_feats + [p_logits], t_feats + [t_logits])]).mean()

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"l1": (1 - self.w) * (pred - target).abs().mean(), "anatomical": self.w * self.term(pred, target)}


@register("l1_l1ana_2")
class AnatomicalLogitsLoss(_Anatomical):
    """(1 - w) L1 + w L1 on the logits of `classes` (class ids; default: every class)."""

    def __init__(self, segmenter: nn.Module, hu_range: tuple[float, float], ana_weight: float = 0.01,
                 classes: list[int] | None = None):
        super().__init__(segmenter, hu_range, ana_weight)
        self.check_config({"classes": classes})  # ana_weight: checked by _Anatomical.__init__
        self.classes = list(classes) if classes else None

    @staticmethod
    def check_config(kwargs: dict) -> None:
        _Anatomical.check_config(kwargs)
        bad = [c for c in kwargs.get("classes") or [] if not isinstance(c, int) or not 0 <= c < NUM_CLASSES]
        if bad:
            raise ConfigError(f"classes {bad} are not class ids of the segmenter (0-{NUM_CLASSES - 1}: "
                             + ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES)) + ")")

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        p_logits, _, t_logits, _ = self.views(pred, target)
        if self.classes is not None:
            p_logits, t_logits = p_logits[:, self.classes], t_logits[:, self.classes]
        ana = (p_logits - t_logits).abs().mean()
        return {"l1": (1 - self.w) * (pred - target).abs().mean(), "anatomical": self.w * ana}
