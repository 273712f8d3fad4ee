"""Classical, non-learned reference row: a Gaussian filter whose width is tuned on the
training data by the same engine (one parameter, log sigma, fitted by gradient descent)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register


@register("gaussian")
class GaussianFilter(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W): separable Gaussian blur, replicate padding.
    `tune=False` freezes sigma at its initial value (a fixed filter, for use outside the workflow:
    with nothing to train, an experiment of it is refused at planning)."""

    def __init__(self, sigma: float = 0.8, radius: int = 4, tune: bool = True):
        super().__init__()
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)), requires_grad=tune)
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.arange(-self.radius, self.radius + 1, dtype=x.dtype, device=x.device)
        g = torch.exp(-0.5 * (t / self.log_sigma.exp()) ** 2)
        g = g / g.sum()
        r = self.radius
        y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
