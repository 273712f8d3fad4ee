"""RED-CNN (Chen et al., IEEE TMI 2017): residual encoder-decoder CNN, 96 channels, 5x5."""

from __future__ import annotations

import torch
import torch.nn as nn

from models import register


@register("redcnn")
class REDCNN(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W). Five valid 5x5 convs, five transposed convs, three
    shortcuts (input, after conv2, after conv4). 1,848,865 parameters at channels=96."""

    def __init__(self, channels: int = 96):
        super().__init__()
        c = channels
        self.enc = nn.ModuleList([nn.Conv2d(1 if i == 0 else c, c, 5) for i in range(5)])
        self.dec = nn.ModuleList([nn.ConvTranspose2d(c, 1 if i == 4 else c, 5) for i in range(5)])
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = max(0, 21 - min(h, w))  # five valid 5x5 convs need at least 21 pixels
        if pad:
            x = nn.functional.pad(x, (0, pad, 0, pad), mode="replicate")
        res1 = x
        out = self.relu(self.enc[0](x))
        out = self.relu(self.enc[1](out))
        res2 = out
        out = self.relu(self.enc[2](out))
        out = self.relu(self.enc[3](out))
        res3 = out
        out = self.relu(self.enc[4](out))
        out = self.dec[0](out) + res3
        out = self.dec[1](self.relu(out))
        out = self.dec[2](self.relu(out)) + res2
        out = self.dec[3](self.relu(out))
        out = self.dec[4](self.relu(out)) + res1
        return self.relu(out)[..., :h, :w]

    @staticmethod
    def reference_key(name: str) -> str:
        """The reference implementation's name (RED_CNN) of one of this module's parameters."""
        part, i, tail = name.split(".")
        return f"{'conv' if part == 'enc' else 'tconv'}{int(i) + 1}.{tail}"
