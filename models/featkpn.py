"""Feat-KPN: feature-space kernel prediction network (the benchmarked method).

A feature branch and a kernel branch read the LDCT slice at three scales (1, 1/2, 1/4).
At scale s the feature branch yields nk*2^s channels and the kernel branch predicts one
k x k kernel per channel per pixel (nk*2^s*k*k values); each scale's features are filtered by
their own kernels (depthwise, unnormalised, replicate padding). A pixel-shuffle decoder adds
the filtered skips scale by scale; output = input + predicted residual. As in the reference,
LeakyReLU(0.2) follows each scale's feature projection, each pixel-shuffle upsampling and the
final conv (before the global residual); PReLU(0.2) follows the kernel heads' convs.
The kernels are never stored (models._kernel_ops.predicted_kernel_filter): same outputs and
gradients as the reference's composition, a fraction of its memory. The two branches have the
same shapes, so each pair of their convolutions runs as one grouped convolution (the weights
concatenated at each call; parameters, names and arithmetic unchanged): on a CPU the 16-64-channel
convolutions cost less per pair than one at a time. Activations save no more than backward
needs: the feature projection's and the upsamplings' LeakyReLU a one-byte sign mask, the kernel
heads' first PReLU its output (which the next conv keeps anyway), so the paired projection's
output is freed as soon as it is split (models._blocks; same values and gradients).
1,001,511 parameters at nf = nk = 16, k = 5.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models._blocks import ResidualBlock, leaky_relu_mask, pad_to_multiple, prelu_saving_output
from models._kernel_ops import predicted_kernel_filter


def _encoder_stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True),
                         ResidualBlock(c_out), ResidualBlock(c_out))


def _conv_lrelu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


def _kernel_head(c: int, kc: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.PReLU(init=0.2), ResidualBlock(c), ResidualBlock(c),
                         nn.Conv2d(c, kc * kernel_size**2, 1), nn.PReLU(init=0.2))


def _paired_conv(x: torch.Tensor, a: nn.Conv2d, b: nn.Conv2d, grouped: bool) -> torch.Tensor:
    """conv a and conv b as one convolution: on x's two halves (grouped) or both on all of x;
    the output is a's channels, then b's."""
    return F.conv2d(x, torch.cat([a.weight, b.weight]), torch.cat([a.bias, b.bias]), a.stride, a.padding,
                    groups=2 if grouped else 1)


def _paired_stage(x: torch.Tensor, fe: nn.Sequential, ke: nn.Sequential, grouped: bool) -> torch.Tensor:
    """Two `_encoder_stage`s (feature, kernel) side by side; x holds both inputs (grouped) or
    the one input they share."""
    x = fe[1](_paired_conv(x, fe[0], ke[0], grouped))  # the stages' activation (the same in both)
    for rf, rk in zip(fe[2:], ke[2:]):
        y = rf.act(_paired_conv(x, rf.conv1, rk.conv1, True))
        x = _paired_conv(y, rf.conv2, rk.conv2, True).add_(x)  # = x + conv(y), into the conv's fresh output
    return x


@register("featkpn")
class FeatKPN(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W); any H, W (padded to a multiple of 4, cropped back).

    `near_identity_init=True` (a project option; the reference's initialisation is the
    default) scales the last conv by 0.1 with a zero bias, so the network starts close to
    output = input, and starts the predicted kernels near a k x k box filter (last 1x1 conv of
    each kernel head scaled by 0.1, bias 1/k^2), so the filtered features mean something from
    the first step (on the default data: validation MSE in [0, 80] HU 53.5 instead of 60.8
    after 100 steps). It changes only the starting weights, not the architecture.
    """

    reference_settings = {"near_identity_init": False}

    def __init__(self, nf: int = 16, nk: int = 16, kernel_size: int = 5, near_identity_init: bool = False):
        super().__init__()
        self.k = kernel_size
        chans = [nf * 2**s for s in range(3)]
        kchans = [nk * 2**s for s in range(3)]
        ins = [1, chans[0], chans[1]]
        self.feat_enc = nn.ModuleList([_encoder_stage(ins[s], chans[s], 1 if s == 0 else 2) for s in range(3)])
        self.feat_proj = nn.ModuleList([_conv_lrelu(chans[s], kchans[s]) for s in range(3)])
        self.kern_enc = nn.ModuleList([_encoder_stage(ins[s], chans[s], 1 if s == 0 else 2) for s in range(3)])
        self.kern_head = nn.ModuleList([_kernel_head(chans[s], kchans[s], kernel_size) for s in range(3)])
        self.up = nn.ModuleList([
            nn.Sequential(nn.Conv2d(kchans[s + 1], 4 * kchans[s], 3, padding=1), nn.PixelShuffle(2),
                          nn.LeakyReLU(0.2, inplace=True))
            for s in range(2)
        ])
        self.dec = nn.ModuleList([nn.Sequential(ResidualBlock(kchans[s]), ResidualBlock(kchans[s])) for s in range(2)])
        self.tail = _conv_lrelu(kchans[0], 1)
        if near_identity_init:
            with torch.no_grad():
                self.tail[0].weight.mul_(0.1)
                self.tail[0].bias.zero_()
                for head in self.kern_head:
                    head[-2].weight.mul_(0.1)
                    head[-2].bias.fill_(1.0 / kernel_size**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, (h, w) = pad_to_multiple(x, 4)
        fg, filtered = xp, []  # fg: the feature branch's channels, then the kernel branch's
        for s in range(3):
            fg = _paired_stage(fg, self.feat_enc[s], self.kern_enc[s], grouped=s > 0)
            head = self.kern_head[s]  # its last 1x1 conv + PReLU run fused with the filtering
            c = fg.shape[1] // 2
            if self.feat_proj[s][0].out_channels == c:  # nk == nf: projection and head conv paired
                pg = _paired_conv(fg, self.feat_proj[s][0], head[0], grouped=True)  # freed once split:
                feats = leaky_relu_mask(pg[:, :c], self.feat_proj[s][1].negative_slope)
                g = prelu_saving_output(pg[:, c:], head[1].weight)  # its output is saved by head[2] anyway
            else:
                feats, g = self.feat_proj[s](fg[:, :c]), head[1](head[0](fg[:, c:]))
            filtered.append(predicted_kernel_filter(feats, head[3](head[2](g)), head[4], head[5], self.k))
        out = filtered[2]
        for s in (1, 0):
            conv, shuffle, act = self.up[s]
            up = leaky_relu_mask(shuffle(conv(out)), act.negative_slope, inplace=True)  # the shuffle's fresh output
            out = self.dec[s](up.add_(filtered[s]))
        return (xp + self.tail(out))[..., :h, :w]

    @staticmethod
    def reference_key(name: str) -> str:
        """The reference implementation's name (KPNfeat) of one of this module's parameters."""
        part, s, rest = name.split(".", 2)
        s = int(s)
        if part in ("feat_enc", "kern_enc"):
            idx, tail = rest.split(".", 1)
            prefix = "conv_" if part == "feat_enc" else "kconv_"
            return f"{prefix}{s + 1}{1 if idx == '0' else int(idx)}.{'0.' if idx == '0' else ''}{tail}"
        if part == "feat_proj":
            return f"conv_1ch_{s + 1}.{rest}"
        if part == "kern_head":
            idx, tail = rest.split(".", 1)
            head = f"dynamic_kernel{'' if s == 2 else s + 1}"
            where = {"0": "0.0", "1": "0.1", "2": "1", "3": "2", "4": "3.0", "5": "3.1"}[idx]
            return f"{head}.{where}.{tail}"
        if part == "up":
            return f"upconv_{s + 1}1.{rest}"
        if part == "tail":
            return f"final_conv.{s}.{rest}"
        if part == "dec":
            idx, tail = rest.split(".", 1)
            return f"upconv_{s + 1}{int(idx) + 2}.{tail}"
        raise KeyError(name)
