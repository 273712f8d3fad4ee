"""Adversarial losses: DU-GAN's (`dugan`) and WGAN-VGG's (`wgan_vgg`).

DU-GAN (Huang et al., "DU-GAN: Generative adversarial networks with dual-domain U-Net-based
discriminators for low-dose CT denoising", IEEE TIM 71, 2022).

Two U-Net discriminators (Schonfeld et al., CVPR 2020: an encoder that scores the whole image
and a decoder that scores every pixel), one on the image and one on its Sobel gradient
magnitude, trained with least-squares GAN targets: NDCT real (1), the generator's output and
the LDCT input fake (0). With a probability warmed up over the first `cutmix_warmup` steps, a
CutMix of real and generated images teaches the decoder where each is, with a consistency
term. The generator's loss: MSE + L1 of the Sobel gradients + the two discriminators'
adversarial terms. The defaults are the weights of the authors' published training run
(pix 5.03, grad 35.3, image adversarial 0.142, gradient adversarial 0.120, d_lr 7.12e-5,
cutmix 0.76, consistency 5.09).

The engine (ldct.engine.Adversary) steps the discriminators with their own optimiser before
each generator step, and checkpoints them. Not reproduced: the authors' exponential moving
average of the generator weights, their residual discriminator blocks, their Adam (the config's
optimiser is used, without weight decay), and their 10-layer 32-channel 3x3 variant of RED-CNN
(the generator here is whatever model the experiment names, RED-CNN in the configs).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from losses import TermsLoss, register
from losses.perceptual import IMAGENET_MEAN, IMAGENET_STD, VGG19Features, check_weights_file, load_frozen


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """The gradient image DU-GAN's losses see: sqrt(Gx^2 + Gy^2 + 1e-4) of 3x3 Sobel filters
    divided by 4, zero padding (as the authors' operator), (N, 1, H, W) -> same."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device) / 4
    g = F.conv2d(x, torch.stack([k, k.t()])[:, None], padding=1)
    return torch.sqrt((g**2).sum(1, keepdim=True) + 1e-4)


def _ls(pred: torch.Tensor, target) -> torch.Tensor:
    """Least-squares GAN term: mean (pred - target)^2."""
    target = target if torch.is_tensor(target) else torch.full_like(pred, float(target))
    return F.mse_loss(pred, target)


class UNetDiscriminator(nn.Module):
    """U-Net discriminator: `depth` stride-2 conv stages from `width` channels (doubling, at
    most 8x) to a global score per image (average-pooled bottleneck -> linear) and a decoder
    with skip connections back to a score per pixel. Spectral norm on every conv and the
    linear. Any H, W: the input is padded to a multiple of 2**depth and the pixel scores
    cropped back. Simpler than the authors' (one conv per level, not residual double-conv
    blocks; PyTorch's default initialisation)."""

    def __init__(self, width: int = 64, depth: int = 6, use_spectral_norm: bool = True):
        super().__init__()
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        chans = [1] + [width * min(2**i, 8) for i in range(depth)]
        self.depth = depth
        self.down = nn.ModuleList([sn(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1)) for i in range(depth)])
        self.score = sn(nn.Linear(chans[-1], 1))
        self.up = nn.ModuleList([sn(nn.Conv2d(chans[i + 1] * (1 if i == depth - 1 else 2), chans[i] if i else width,
                                              3, 1, 1)) for i in reversed(range(depth))])
        self.out_conv = sn(nn.Conv2d(width, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, H, W) -> (per-image score (N, 1), per-pixel score (N, 1, H, W))."""
        h, w = x.shape[-2:]
        m = 2**self.depth
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        skips = []
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
            skips.append(x)
        enc = self.score(x.mean(dim=(2, 3)))
        for i, conv in enumerate(self.up):
            if i:
                x = torch.cat([x, skips[-1 - i]], 1)
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        return enc, self.out_conv(x)[..., :h, :w]


class DualDiscriminator(nn.Module):
    """The image-domain and gradient-domain discriminators, and the count of their steps (the
    CutMix warm-up clock), saved together in checkpoints."""

    def __init__(self, width: int, depth: int, use_spectral_norm: bool):
        super().__init__()
        self.image = UNetDiscriminator(width, depth, use_spectral_norm)
        self.gradient = UNetDiscriminator(width, depth, use_spectral_norm)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def _cutmix_mask(like: torch.Tensor) -> torch.Tensor:
    """1 outside, 0 inside one random box covering a Uniform(0, 1) fraction of the image
    (torch's global RNG, which the engine seeds and checkpoints)."""
    n, _, h, w = like.shape
    side = torch.sqrt(torch.rand(())).item()
    cy, cx = (torch.rand(2) * torch.tensor([h, w])).tolist()
    y0, y1 = round(max(cy - h * side / 2, 0)), round(min(cy + h * side / 2, h))
    x0, x1 = round(max(cx - w * side / 2, 0)), round(min(cx + w * side / 2, w))
    mask = torch.ones(n, 1, h, w, dtype=like.dtype, device=like.device)
    mask[..., y0:y1, x0:x1] = 0
    return mask


@register("dugan")
class DUGANLoss(TermsLoss):
    def __init__(self, pixel_weight: float = 5.034, grad_weight: float = 35.31, image_adv_weight: float = 0.1418,
                 grad_adv_weight: float = 0.1196, d_lr: float = 7.123e-5, d_width: int = 64, d_depth: int = 6,
                 spectral: bool = True, cutmix_prob: float = 0.7616, cutmix_warmup: int = 1000,
                 consistency_weight: float = 5.087):
        super().__init__()
        self.pixel_weight, self.grad_weight = pixel_weight, grad_weight
        self.image_adv_weight, self.grad_adv_weight = image_adv_weight, grad_adv_weight
        self.d_lr = d_lr
        self.cutmix_prob, self.cutmix_warmup, self.consistency_weight = cutmix_prob, cutmix_warmup, consistency_weight
        self.discriminator = DualDiscriminator(d_width, d_depth, spectral)

    def _domains(self, x: torch.Tensor):
        return ((self.discriminator.image, x), (self.discriminator.gradient, sobel_magnitude(x)))

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        (d_img, p_img), (d_grad, p_grad) = self._domains(pred)
        enc_i, dec_i = d_img(p_img)
        enc_g, dec_g = d_grad(p_grad)
        return {"pixel": self.pixel_weight * F.mse_loss(pred, target),
                "gradient": self.grad_weight * F.l1_loss(p_grad, sobel_magnitude(target)),
                "adv_image": self.image_adv_weight * (_ls(enc_i, 1) + _ls(dec_i, 1)),
                "adv_gradient": self.grad_adv_weight * (_ls(enc_g, 1) + _ls(dec_g, 1))}

    def discriminator_loss(self, fake: torch.Tensor, real: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Both discriminators' loss on one batch: NDCT real, output and LDCT fake, and the
        CutMix terms when this step draws them."""
        self.discriminator.steps += 1
        step = int(self.discriminator.steps)
        p_cutmix = min(step * self.cutmix_prob / max(self.cutmix_warmup, 1), self.cutmix_prob)
        cutmix = bool(torch.rand(()) < p_cutmix)
        total = fake.new_zeros(())
        for (disc, f), (_, r), (_, s) in zip(self._domains(fake), self._domains(real), self._domains(source)):
            (r_enc, r_dec), (f_enc, f_dec), (s_enc, s_dec) = disc(r), disc(f), disc(s)
            total = total + _ls(r_enc, 1) + _ls(r_dec, 1) + _ls(f_enc, 0) + _ls(f_dec, 0) + _ls(s_enc, 0) + _ls(s_dec, 0)
            if cutmix:
                mask = _cutmix_mask(r_dec)
                m_enc, m_dec = disc(r * mask + f * (1 - mask))
                total = total + _ls(m_enc, 0) + _ls(m_dec, mask)
                total = total + self.consistency_weight * F.mse_loss(m_dec, r_dec * mask + f_dec * (1 - mask))
        return total


class WGANCritic(nn.Module):
    """WGAN-VGG's critic: six 3x3 convs (64, 64, 128, 128, 256, 256 channels, strides 1, 2, 1,
    2, 1, 2, leaky ReLU 0.2), then fully connected 1024 -> 1. The paper's first FC layer sees
    the whole 64x64 patch's feature map; here the map is average-pooled to 4x4 first, so any
    patch size works."""

    def __init__(self, width: int = 64):
        super().__init__()
        chans = [1, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        self.convs = nn.ModuleList([nn.Conv2d(chans[i], chans[i + 1], 3, 1 + i % 2, 1) for i in range(6)])
        self.fc1, self.fc2 = nn.Linear(4 * width * 16, 1024), nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(x), 0.2))


@register("wgan_vgg")
class WGANVGGLoss(TermsLoss):
    """WGAN-VGG (Yang et al., "Low-dose CT image denoising using a generative adversarial network
    with Wasserstein distance and perceptual loss", IEEE TMI 37(6), 2018): the generator
    minimises -critic(output) + `perceptual_weight` x the MSE of ImageNet VGG-19 conv5_4
    features (the paper's lambda_1 = 0.1); the critic minimises critic(output) - critic(NDCT) +
    `gp_weight` x the gradient penalty (WGAN-GP, lambda = 10). The VGG-19 weights are a local
    file (`vgg_weights`: torchvision's vgg19-dcbb9e9d.pth), refused at config validation when
    missing. Not reproduced: the paper's Adam betas (0.5, 0.9) and several critic steps per
    generator step (the engine takes one, with the config's optimiser at `d_lr`)."""

    def __init__(self, vgg_weights: str | None = None, perceptual_weight: float = 0.1, gp_weight: float = 10.0,
                 d_lr: float = 1e-5, d_width: int = 64):
        super().__init__()
        self.check_config({"vgg_weights": vgg_weights})
        self.vgg = load_frozen(VGG19Features(), vgg_weights, lambda k: k.startswith("features.")
                               and int(k.split(".")[1]) < 35, "VGG-19")
        self.perceptual_weight, self.gp_weight, self.d_lr = perceptual_weight, gp_weight, d_lr
        self.discriminator = WGANCritic(d_width)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @staticmethod
    def check_config(kwargs: dict) -> None:
        check_weights_file(kwargs.get("vgg_weights"), "vgg_weights",
                           "WGAN-VGG needs torchvision's ImageNet VGG-19 weights (vgg19-*.pth)")

    def train(self, mode: bool = True):  # the VGG network stays frozen in eval mode
        super().train(mode)
        self.vgg.eval()
        return self

    def _vgg(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg((x.expand(-1, 3, -1, -1) - self.mean) / self.std)

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t_feat = self._vgg(target)
        return {"adversarial": -self.discriminator(pred).mean(),
                "vgg": self.perceptual_weight * F.mse_loss(self._vgg(pred), t_feat)}

    def discriminator_loss(self, fake: torch.Tensor, real: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Critic loss with the gradient penalty at random points between real and fake
        (torch's global RNG, which the engine seeds and checkpoints). `source` is not used."""
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        with torch.autocast(real.device.type, enabled=False):  # the penalty's input gradients in fp32 (AMP underflow)
            mix = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
            grad, = torch.autograd.grad(self.discriminator(mix).sum(), mix, create_graph=True)
            penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return self.discriminator(fake).mean() - self.discriminator(real).mean() + self.gp_weight * penalty
