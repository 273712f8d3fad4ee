"""SGDNet-style structure-guided denoiser: a small residual CNN fed with the LDCT slice and
the frozen segmentation U-Net's class probabilities, which gate its features (the anatomical
guidance). About 126 k own parameters at width 32; the U-Net (31.04 M at base width 64) is a
frozen submodule, loaded from the workflow's segmenter.pt, so model.pt is self-contained."""

from __future__ import annotations

import torch
import torch.nn as nn

from ldct.classes import NUM_CLASSES
from ldct.hu import from_unit
from models import register
from models._blocks import ResidualBlock
from models.unet import HeadCTUNet


@register("sgdnet")
class SGDNet(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W). Needs the segmenter: the training engine loads its
    weights into `self.segmenter` (`needs_segmenter = True`)."""

    needs_segmenter = True

    def __init__(self, width: int = 32, blocks: int = 6, seg_width: int = 64,
                 seg_norm: str = "channel",
                 hu_range: tuple[float, float] = (-1024.0, 3072.0)):
        super().__init__()
        self.segmenter = HeadCTUNet(NUM_CLASSES, seg_width, seg_norm)
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.hu_range = tuple(hu_range)
        act = nn.LeakyReLU(0.2, inplace=True)
        self.head = nn.Sequential(nn.Conv2d(1 + NUM_CLASSES, width, 3, padding=1), act)
        self.guide = nn.ModuleList([nn.Conv2d(NUM_CLASSES, width, 1) for _ in range(blocks // 2)])
        self.body = nn.ModuleList([ResidualBlock(width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def train(self, mode: bool = True):  # the segmenter stays frozen in eval mode
        super().train(mode)
        self.segmenter.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            prob = torch.softmax(self.segmenter(from_unit(x, *self.hu_range)), dim=1)
        f = self.head(torch.cat([x, prob], dim=1))
        for i, block in enumerate(self.body):
            f = block(f)
            if i % 2 == 1:
                f = f * torch.sigmoid(self.guide[i // 2](prob))
        return x + self.tail(f)
