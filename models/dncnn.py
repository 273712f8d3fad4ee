"""DnCNN (Zhang et al., IEEE TIP 2017): a plain conv/BN/ReLU stack that predicts the noise."""

from __future__ import annotations

import torch
import torch.nn as nn

from ldct.errors import ConfigError
from models import register


@register("dncnn")
class DnCNN(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W); output = input - predicted noise. depth >= 3."""

    def __init__(self, depth: int = 17, channels: int = 64):
        super().__init__()
        if depth < 3:
            raise ConfigError(f"dncnn depth must be >= 3, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)
