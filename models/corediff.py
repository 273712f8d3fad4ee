"""CoreDiff-style few-step cold diffusion (after Gao et al., IEEE TMI 2023): a time-conditioned
U-Net walks a deterministic chain from the low-dose slice (t = T) to the normal-dose one (t = 0),
conditioned on the low-dose slice at every step.

Written from the paper's description (no code taken from a public repository), simplified to be
trainable on a CPU; see the class docstring for what differs from the published model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ldct.errors import ConfigError
from models import register
from models._blocks import pad_to_multiple


def timestep_embedding(t: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Sinusoidal embedding (N,) -> (N, dim) of t * scale (the transformer/DDPM encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))  # an odd dim gets one zero column


class TimeBlock(nn.Module):
    """Two 3x3 convs with SiLU; the time embedding, projected to the block's channels, is added
    after the first conv; a residual (1x1 conv where the channels change) around both."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.time = nn.Linear(emb_dim, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x) + self.time(emb)[:, :, None, None])
        return self.skip(x) + self.conv2(h)


class ConditionalUNet(nn.Module):
    """(x_t, t, x) -> x0_hat: a U-Net with `levels` stride-2 downsamplings (channels width,
    2 width, ... at each scale, one TimeBlock per scale on each side, skip concatenation) on the
    2-channel input [x_t, x]; the output is x_t plus the predicted correction. H and W must be
    multiples of 2**levels (the caller pads)."""

    def __init__(self, width: int, levels: int, steps: int):
        super().__init__()
        chans = [width * 2**i for i in range(levels + 1)]
        emb_dim = 4 * width
        self.width, self.time_scale = width, 1000.0 / steps  # t / T in [0, 1] encoded like DDPM's 0..1000
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.inp = nn.Conv2d(2, width, 3, padding=1)
        self.enc = nn.ModuleList([TimeBlock(c, c, emb_dim) for c in chans[:-1]])
        self.down = nn.ModuleList([nn.Conv2d(c, 2 * c, 3, stride=2, padding=1) for c in chans[:-1]])
        self.mid = TimeBlock(chans[-1], chans[-1], emb_dim)
        self.up = nn.ModuleList([nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in chans[:-1]])
        self.dec = nn.ModuleList([TimeBlock(2 * c, c, emb_dim) for c in chans[:-1]])
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width, self.time_scale))
        h = self.inp(torch.cat([x_t, x], dim=1))
        skips = []
        for block, down in zip(self.enc, self.down):
            h = block(h, emb)
            skips.append(h)
            h = down(F.silu(h))
        h = self.mid(h, emb)
        for block, up, skip in zip(reversed(self.dec), reversed(self.up), reversed(skips)):
            h = block(torch.cat([up(F.silu(h)), skip], dim=1), emb)
        return x_t + self.out(F.silu(h))


@register("corediff")
class CoreDiff(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W). CoreDiff-style conditional cold diffusion, after
    Gao Q., Li Z., Zhang J., Zhang Y., Shan H., "CoreDiff: Contextual Error-Modulated Generalized
    Diffusion Model for Low-Dose CT Denoising and Generalization", IEEE TMI 43(2), 2024
    (early access 2023), arXiv:2304.01814.

    As in CoreDiff: the degradation mixes the normal-dose image y into the low-dose image x,
    x_t = a_t y + (1 - a_t) x + b_t eps, so the chain starts at the LDCT itself (x_T = x) rather
    than at Gaussian noise and needs few steps (T = `steps`, 10 as published); the network sees the
    LDCT as contextual condition next to x_t (CLEAR-Net's input) and predicts the clean image
    x0_hat; it is trained on one random step per image; inference is the deterministic
    generalized (improved) cold-diffusion sampler of Bansal et al. 2022,
    x_{t-1} = x_t - D(x0_hat, t) + D(x0_hat, t - 1), D(z, s) = a_s z + (1 - a_s) x, T network
    passes per slice (`inference_passes`).

    Simplified versus CoreDiff (so read results as "a CoreDiff-like model", not the published one):
    - no one-shot learning framework / error-modulation module (OLEM) and no generalisation
      to new doses: one model per dose, trained from scratch;
    - a linear schedule a_t = 1 - t / T and a small noise bump b_t = 2 noise sqrt(a_t (1 - a_t))
      (zero at t = 0 and t = T, peak `noise` at t = T / 2) instead of the paper's schedules;
    - CLEAR-Net is replaced by a plain small time-conditioned U-Net (sinusoidal embedding ->
      MLP -> additive bias per block, `levels` downsamplings, base channels `width`): the
      contextual condition is the LDCT slice alone (no adjacent slices), with no contextual
      error-modulated attention;
    - the loss is whatever the experiment configures, applied to x0_hat;
    - with the linear schedule each step moves by (x0_hat - x) / T, so the returned x_0 is the
      mean of the T predictions x0_hat (Bansal's algorithm returns x_0, as here).
    """

    def __init__(self, width: int = 32, steps: int = 10, noise: float = 0.01, levels: int = 2):
        super().__init__()
        if steps < 1 or levels < 1 or width < 1:
            raise ConfigError(f"corediff needs steps, levels, width >= 1, got {steps}, {levels}, {width}")
        self.steps, self.noise, self.levels = int(steps), float(noise), int(levels)
        self.inference_passes = self.steps  # the training budget counts one of the T passes per step
        self.net = ConditionalUNet(width, self.levels, self.steps)

    def schedule(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, b_t) for integer steps t (N,), each (N, 1, 1, 1): a_t = 1 - t / T; b_t the noise bump."""
        a = 1.0 - t.float() / self.steps
        b = 2.0 * self.noise * torch.sqrt((a * (1.0 - a)).clamp_min(0.0))
        return a.view(-1, 1, 1, 1), b.view(-1, 1, 1, 1)

    def degrade(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int,
                eps: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = a_t y + (1 - a_t) x (+ b_t eps when eps is given): y at t = 0, the LDCT x at t = T.
        t: an int or an (N,) tensor of steps in 0..T."""
        t = self._steps_tensor(t, x)
        a, b = self.schedule(t)
        x_t = a * y + (1.0 - a) * x
        return x_t if eps is None else x_t + b * eps

    def _steps_tensor(self, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            return t.to(x.device).expand(x.shape[0]) if t.dim() == 0 else t.to(x.device)
        return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """x0_hat = net(x_t, t, x) for any H, W (replicate-padded to a multiple of 2**levels, cropped)."""
        both, (h, w) = pad_to_multiple(torch.cat([x_t, x], dim=1), 2**self.levels)
        x0 = self.net(both[:, :1], self._steps_tensor(t, x), both[:, 1:])
        return x0[..., :h, :w]

    def training_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One random step per image (t ~ U{1..T}, eps ~ N(0, 1), torch's global RNG): x0_hat at x_t."""
        t = torch.randint(1, self.steps + 1, (x.shape[0],), device=x.device)
        x_t = self.degrade(x, y, t, torch.randn_like(x))
        return self.predict(x_t, t, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic cold-diffusion sampler from x_T = x: T network passes; returns x_0."""
        x_t = x
        for t in range(self.steps, 0, -1):
            x0 = self.predict(x_t, t, x)
            x_t = x_t - self.degrade(x, x0, t) + self.degrade(x, x0, t - 1)
        return x_t
