"""Restormer (Zamir et al., CVPR 2022): a 4-level transformer U-Net with channel-wise attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldct.errors import ConfigError
from models import register
from models._blocks import pad_to_multiple


class ChannelLayerNorm(nn.Module):
    """LayerNorm ("WithBias") over the channels of each pixel of an (N, C, H, W) map."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, eps=1e-5)
        return y.permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: 1x1 then 3x3 depthwise conv to q, k, v; per head,
    a C/heads x C/heads attention map from L2-normalised q and k (over the pixels) scaled by a
    learnable temperature, so the cost is linear in the number of pixels; 1x1 projection."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(n, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(n, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: 1x1 conv to 2 x hidden, 3x3 depthwise conv,
    GELU(x1) * x2, 1x1 conv back; hidden = int(dim * expansion)."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def downsample(dim: int) -> nn.Sequential:
    """(dim, H, W) -> (2 dim, H/2, W/2): 3x3 conv to dim/2 channels, then PixelUnshuffle(2)."""
    return nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def upsample(dim: int) -> nn.Sequential:
    """(dim, H, W) -> (dim/2, 2H, 2W): 3x3 conv to 2 dim channels, then PixelShuffle(2)."""
    return nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


@register("restormer")
class Restormer(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W), any H, W (replicate-padded to a multiple of 8, cropped
    back); output = input + predicted residual. Levels at dim, 2 dim, 4 dim, 8 dim channels;
    the level-1 decoder and the refinement blocks work at 2 dim. 26,124,052 parameters at the
    published size (dim=48, blocks 4/6/6/8, 4 refinement blocks, heads 1/2/4/8, bias-free); the
    paper's 3-channel model has 2,592 more (26.13 M)."""

    def __init__(self, dim: int = 48, num_blocks=(4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False):
        super().__init__()
        num_blocks, heads = tuple(int(b) for b in num_blocks), tuple(int(h) for h in heads)
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ConfigError(f"restormer num_blocks and heads need 4 entries, got {num_blocks} and {heads}")
        if dim % 2:
            raise ConfigError(f"restormer dim must be even, got {dim}")
        for width, h in zip((dim, dim * 2, dim * 4, dim * 8), heads):
            if width % h:
                raise ConfigError(f"restormer: {width} channels do not split into {h} heads")

        def stage(width: int, h: int, count: int) -> nn.Sequential:
            return nn.Sequential(*(TransformerBlock(width, h, ffn_expansion_factor, bias) for _ in range(count)))

        self.patch_embed = nn.Conv2d(1, dim, 3, padding=1, bias=bias)
        self.encoder1 = stage(dim, heads[0], num_blocks[0])
        self.down1_2 = downsample(dim)
        self.encoder2 = stage(dim * 2, heads[1], num_blocks[1])
        self.down2_3 = downsample(dim * 2)
        self.encoder3 = stage(dim * 4, heads[2], num_blocks[2])
        self.down3_4 = downsample(dim * 4)
        self.latent = stage(dim * 8, heads[3], num_blocks[3])
        self.up4_3 = upsample(dim * 8)
        self.reduce3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder3 = stage(dim * 4, heads[2], num_blocks[2])
        self.up3_2 = upsample(dim * 4)
        self.reduce2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder2 = stage(dim * 2, heads[1], num_blocks[1])
        self.up2_1 = upsample(dim * 2)
        self.decoder1 = stage(dim * 2, heads[0], num_blocks[0])
        self.refinement = stage(dim * 2, heads[0], num_refinement_blocks)
        self.output = nn.Conv2d(dim * 2, 1, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, (h, w) = pad_to_multiple(x, 8)  # three 2x downsamplings
        e1 = self.encoder1(self.patch_embed(inp))
        e2 = self.encoder2(self.down1_2(e1))
        e3 = self.encoder3(self.down2_3(e2))
        d = self.latent(self.down3_4(e3))
        d = self.decoder3(self.reduce3(torch.cat([self.up4_3(d), e3], dim=1)))
        d = self.decoder2(self.reduce2(torch.cat([self.up3_2(d), e2], dim=1)))
        d = self.decoder1(torch.cat([self.up2_1(d), e1], dim=1))
        out = self.output(self.refinement(d)) + inp
        return out[..., :h, :w]
