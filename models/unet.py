"""The HeadCTSegmentation 2D U-Net (Cai et al., Radiology: AI 2020) used as a frozen
anatomical prior (the perception loss and SGDNet).

Parameter names and shapes follow the reference PyTorch port (conv1A ... conv10,
layer_normalization ... layer_normalization_17 with gamma/beta [C, 1, 1]) so that its
converted weights load with strict=True at base_width=64 (31,043,409 parameters).

`norm="instance"` swaps the per-pixel channel normalisation for instance normalisation
(per channel over the slice), with the same gamma/beta parameters. The published network uses
"channel"; from scratch on a CPU budget it hardly trains (a width-8 U-Net could not overfit 8
slices in 300 Adam steps: mean foreground Dice 0.30, against 0.76 with "instance"), because
normalising each pixel over a handful of channels throws away its intensity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldct.classes import NUM_CLASSES
from ldct.errors import ConfigError
from models import register


class ChannelLayerNorm(nn.Module):
    """Per-pixel normalisation over channels: (x - mean) / (unbiased std + eps) * gamma + beta."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, unbiased=True)
        return (x - mean) / (std + self.eps) * self.gamma + self.beta


class ChannelInstanceNorm(nn.Module):
    """Instance normalisation (each channel over H, W) with ChannelLayerNorm's gamma/beta."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=self.eps) * self.gamma + self.beta


NORMS = {"channel": ChannelLayerNorm, "instance": ChannelInstanceNorm}

# segmenter.orientation -> quarter turns clockwise of a displayed slice (rows x columns as the
# DICOM shows them) before the U-Net: a dcm2niix NIfTI's raw slice is the display turned once
# (its first axis toward the patient's left, its second toward anterior: LAS), the layout the
# published network was trained on
ORIENTATION_TURNS = {"display": 0, "dcm2niix": 1}


@register("unet")
class HeadCTUNet(nn.Module):
    """(N, 1, H, W) raw HU -> (N, num_classes, H, W) logits. H, W padded to a multiple of 16.

    `forward(x, return_features=True)` also returns the four decoder stages (after norm + ReLU),
    the activations the anatomical perception loss compares.
    """

    is_denoiser = False  # a segmenter: excluded from the denoiser experiments and tests
    # the published network; `orientation` is the segmenter section's key (turns = ORIENTATION_TURNS of it)
    reference_settings = {"base_width": 64, "norm": "channel", "orientation": "dcm2niix"}

    def __init__(self, num_classes: int = NUM_CLASSES, base_width: int = 64, norm: str = "channel",
                 turns: int = 0):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown U-Net norm {norm!r}; choose one of {sorted(NORMS)}")
        self.norm = norm
        self.turns = int(turns) % 4  # quarter turns clockwise of each slice before the network (ORIENTATION_TURNS)
        w = [base_width * 2**i for i in range(5)]
        self._norm_index = 0
        enc_in = [1, w[0], w[1], w[2], w[3]]
        for i in range(5):
            setattr(self, f"conv{i + 1}A", nn.Conv2d(enc_in[i], w[i], 3, padding=1))
            setattr(self, f"conv{i + 1}B", nn.Conv2d(w[i], w[i], 3, padding=1))
        for lvl, i in enumerate(range(6, 10)):
            c_in, c_out = w[4 - lvl], w[3 - lvl]
            setattr(self, f"conv{i}A", nn.Conv2d(c_in, c_out, 2))
            setattr(self, f"conv{i}B", nn.Conv2d(2 * c_out, c_out, 3, padding=1))
            setattr(self, f"conv{i}C", nn.Conv2d(c_out, c_out, 3, padding=1))
        self.conv10 = nn.Conv2d(w[0], num_classes, 1)
        norm_channels = [c for c in w for _ in range(2)] + [c for c in reversed(w[:4]) for _ in range(2)]
        for k, c in enumerate(norm_channels):
            setattr(self, "layer_normalization" + ("" if k == 0 else f"_{k}"), NORMS[norm](c))

    def _norm(self, k: int) -> nn.Module:
        return getattr(self, "layer_normalization" + ("" if k == 0 else f"_{k}"))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if self.turns:  # the network sees the slice turned; what it returns is turned back
            logits, feats = self._forward(torch.rot90(x, -self.turns, (-2, -1)))
            logits = torch.rot90(logits, self.turns, (-2, -1))
            feats = [torch.rot90(f, self.turns, (-2, -1)) for f in feats] if return_features else feats
        else:
            logits, feats = self._forward(x)
        return (logits, feats) if return_features else logits

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 16, (-w) % 16
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        k = 0
        skips = []
        out = x
        for i in range(1, 6):
            if i > 1:
                out = F.max_pool2d(out, 2)
            for part in "AB":
                out = F.relu(self._norm(k)(getattr(self, f"conv{i}{part}")(out)))
                k += 1
            skips.append(out)
        feats = []
        for i in range(6, 10):
            out = F.interpolate(out, scale_factor=2, mode="nearest")
            out = getattr(self, f"conv{i}A")(F.pad(out, (0, 1, 0, 1)))  # no activation after the up-conv
            out = torch.cat([skips[9 - i], out], dim=1)
            for part in "BC":
                out = F.relu(self._norm(k)(getattr(self, f"conv{i}{part}")(out)))
                k += 1
            feats.append(out[..., :h * out.shape[-2] // x.shape[-2], :w * out.shape[-1] // x.shape[-1]])
        return self.conv10(out)[..., :h, :w], feats
