"""EDCNN (Liang et al., 2020): a trainable Sobel edge layer and densely fed 1x1/3x3 convs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register


class SobelConv2d(nn.Module):
    """Fixed Sobel 3x3 filters times a trainable per-channel factor, plus a bias. The filters
    cycle over the output channels in the reference's order and sign: vertical gradient
    (top row negative), horizontal (left column negative), the diagonal with -2 at the top
    left, the diagonal with -2 at the bottom left. The fixed weights are a buffer, so 64
    trainable parameters at 32 channels (288 fixed)."""

    def __init__(self, out_ch: int = 32):
        super().__init__()
        vertical = torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
        diag = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
        patterns = [vertical, vertical.T, diag, diag.flip(0)]
        w = torch.stack([patterns[i % 4] for i in range(out_ch)])[:, None]
        self.register_buffer("sobel_weight", w)
        self.factor = nn.Parameter(torch.ones(out_ch, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.sobel_weight * self.factor, self.bias, padding=1)


@register("edcnn")
class EDCNN(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W). 80,961 trainable parameters at channels=32 (81,249 when
    the fixed Sobel weights are counted, as the reference does)."""

    def __init__(self, channels: int = 32, stages: int = 8):
        super().__init__()
        self.sobel = SobelConv2d(channels)
        edge = 1 + channels
        self.point = nn.ModuleList([nn.Conv2d(edge if i == 0 else edge + channels, channels, 1) for i in range(stages)])
        self.full = nn.ModuleList([nn.Conv2d(channels, 1 if i == stages - 1 else channels, 3, padding=1) for i in range(stages)])
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        edge = torch.cat([x, self.sobel(x)], dim=1)
        out = None
        for i, (p, f) in enumerate(zip(self.point, self.full)):
            inp = edge if out is None else torch.cat([edge, out], dim=1)
            out = f(self.act(p(inp)))
            if i < len(self.full) - 1:
                out = self.act(out)
        return self.act(out + x)

    @staticmethod
    def reference_key(name: str) -> str:
        """The reference implementation's name (EDCNN) of one of this module's parameters."""
        part, rest = name.split(".", 1)
        if part == "sobel":
            return "conv_sobel." + {"factor": "sobel_factor"}.get(rest, rest)
        i, tail = rest.split(".", 1)
        return f"conv_{'p' if part == 'point' else 'f'}{int(i) + 1}.{tail}"
