"""Image-space KPN: per-pixel k x k kernels applied to the input image itself (Mildenhall et
al. 2018 style). The ablation that shows what filtering in feature space buys Feat-KPN."""

from __future__ import annotations

import torch
import torch.nn as nn

from models import register
from models._blocks import ResidualBlock, pad_to_multiple
from models._kernel_ops import kernel_filter


@register("kpn")
class ImageKPN(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W). A two-scale encoder-decoder predicts one k x k kernel per
    pixel; the output is the input filtered by its kernels (no residual branch)."""

    def __init__(self, nf: int = 32, kernel_size: int = 5, blocks: int = 2):
        super().__init__()
        self.k = kernel_size
        act = nn.LeakyReLU(0.2, inplace=True)
        self.enc0 = nn.Sequential(nn.Conv2d(1, nf, 3, padding=1), act, *[ResidualBlock(nf) for _ in range(blocks)])
        self.enc1 = nn.Sequential(nn.Conv2d(nf, 2 * nf, 3, stride=2, padding=1), act,
                                  *[ResidualBlock(2 * nf) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(2 * nf, 4 * nf, 3, padding=1), nn.PixelShuffle(2))
        self.dec = nn.Sequential(*[ResidualBlock(nf) for _ in range(blocks)])
        self.head = nn.Conv2d(nf, kernel_size**2, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity kernel (centre tap = 1)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[kernel_size**2 // 2] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, (h, w) = pad_to_multiple(x, 2)
        f0 = self.enc0(xp)
        f = self.dec(self.up(self.enc1(f0)) + f0)
        return kernel_filter(xp, self.head(f), self.k)[..., :h, :w]
