"""Training losses, one family per file, built by name (same contract as models/).

    import losses
    loss = losses.build("l1")          # kwargs = the experiment's loss keys
    value = loss(pred, target)         # both (N, 1, H, W) in network units

A loss made of several terms subclasses `TermsLoss` and returns them by name from `terms`;
the training engine logs each on its own in history.csv (loss_<term>).

A loss class with `needs_segmenter = True` receives the frozen segmentation U-Net and the
HU scaling as constructor arguments `segmenter=` and `hu_range=` from the training engine.
"""

from abc import ABC, abstractmethod
from functools import reduce
from operator import add

import torch
import torch.nn as nn

from ldct.registry import Registry

REGISTRY = Registry("loss")
register = REGISTRY.register


class TermsLoss(nn.Module, ABC):
    """A loss that is the sum of named (already weighted) terms; after each call,
    `last_terms` holds their values (detached) for the training history."""

    last_terms: dict[str, torch.Tensor] = {}

    @abstractmethod
    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named terms whose sum is the loss."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = self.terms(pred, target)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return reduce(add, terms.values())


def build(name: str, **kwargs):
    return REGISTRY.build(name, **kwargs)


def available() -> list[str]:
    return REGISTRY.available()


def needs_segmenter(name: str) -> bool:
    return bool(getattr(REGISTRY.get(name), "needs_segmenter", False))


REGISTRY.import_all(__name__, __path__)
