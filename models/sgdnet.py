"""SGDNet: a structure-guided denoiser fed by the frozen segmentation U-Net (as in the reference
implementation's Model/SGDNET/sgdnet.py).

A 3x3 conv + ReLU encodes the slice; three semantic fusion modules each refine the features
with two 3x3 conv + ReLU, turn the U-Net's 17 class logits into a sigmoid gate (3x3 conv + ReLU,
3x3 conv + sigmoid), gate the features, fuse them (3x3 conv + ReLU) and add the result; after
the third module the encoder's output is added too; a 3x3 conv + ReLU gives the output (no
global residual). 126,369 own parameters at width 32; the U-Net (31.04 M at base width 64) is
a frozen submodule loaded from the workflow's segmenter.pt, so model.pt is self-contained.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ldct.classes import NUM_CLASSES
from ldct.hu import from_unit
from models import register
from models.unet import HeadCTUNet


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class SemanticFusion(nn.Module):
    """features (N, C, H, W), logits (N, 17, H, W) -> features + ReLU(fuse(refined * gate))."""

    def __init__(self, width: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.refine1, self.refine2 = _conv(width, width), _conv(width, width)
        self.gate1, self.gate2 = _conv(num_classes, width), _conv(width, width)
        self.fuse = _conv(width, width)

    def forward(self, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.refine2(torch.relu(self.refine1(f))))
        gate = torch.sigmoid(self.gate2(torch.relu(self.gate1(logits))))
        return f + torch.relu(self.fuse(f * gate))


@register("sgdnet")
class SGDNet(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W). Needs the segmenter: the training engine loads its
    weights into `self.segmenter` (`needs_segmenter = True`) and sets `seg_width`, `seg_norm`,
    `seg_turns` (its orientation) and `hu_range` (the U-Net reads the input converted back to HU)."""

    needs_segmenter = True

    def __init__(self, width: int = 32, seg_width: int = 64, seg_norm: str = "channel",
                 hu_range: tuple[float, float] = (-1024.0, 3072.0), seg_turns: int = 0):
        super().__init__()
        self.segmenter = HeadCTUNet(NUM_CLASSES, seg_width, seg_norm, seg_turns)
        for p in self.segmenter.parameters():
            p.requires_grad_(False)
        self.hu_range = tuple(hu_range)
        self.encoder = _conv(1, width)
        self.fusion = nn.ModuleList([SemanticFusion(width) for _ in range(3)])
        self.decoder = _conv(width, 1)

    def train(self, mode: bool = True):  # the segmenter stays frozen in eval mode
        super().train(mode)
        self.segmenter.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.segmenter(from_unit(x, *self.hu_range))
        encoded = torch.relu(self.encoder(x))
        f = encoded
        for module in self.fusion:
            f = module(f, logits)
        return torch.relu(self.decoder(f + encoded))

    @staticmethod
    def reference_key(name: str) -> str:
        """The reference implementation's name (SGDNet) of one of this module's parameters;
        the U-Net's own names are the reference's under `segmentation_model.`."""
        part, rest = name.split(".", 1)
        if part == "segmenter":
            return "segmentation_model." + rest
        if part != "fusion":
            return name
        i, layer, tail = rest.split(".", 2)
        m = int(i) + 1
        ref = {"refine1": f"ldct_encoder{m}_1", "refine2": f"ldct_encoder{m}_2", "gate1": f"mask_encoder{m}_1",
               "gate2": f"mask_encoder{m}_2", "fuse": f"fusion{m}"}[layer]
        return f"{ref}.{tail}"
