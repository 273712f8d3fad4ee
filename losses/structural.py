"""MS-SSIM / L1 mix (`ssim_l1`) as the reference code computes it (its MS_SSIM_L1_LOSS).

Not the multi-scale SSIM of Wang et al. (2003): every scale is a Gaussian mask of its own
sigma (0.5, 1, 2, 4, 8) applied at full resolution (33x33 masks, 4 * max sigma + 1, zero
padding of 2 * max sigma), on the [0, 1]-scaled images (data range 1):
  l_s  = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1),
  cs_s = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2),
  loss = scale * mean(alpha * (1 - l_8^3 * prod_s cs_s^3) + (1 - alpha) * G_8 * |x - y|),
with alpha 0.025, scale 200 and G_8 the sigma-8 mask. The cubes are the reference's: it
builds its masks for three-channel images, and a grey slice passes through all three copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldct.errors import ConfigError
from losses import TermsLoss, register


def gaussian_masks(sigmas: tuple[float, ...]) -> torch.Tensor:
    """(len(sigmas), 1, size, size) normalised 2-D Gaussians, size = 4 * max(sigmas) + 1."""
    size = int(4 * sigmas[-1] + 1)
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    masks = []
    for sigma in sigmas:
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        g = g / g.sum()
        masks.append(torch.outer(g, g))
    return torch.stack(masks)[:, None]


@register("ssim_l1")
class MSSSIML1(TermsLoss):
    def __init__(self, alpha: float = 0.025, scale: float = 200.0,
                 sigmas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0), repeats: int = 3):
        super().__init__()
        self.check_config({"alpha": alpha, "scale": scale})
        self.alpha, self.scale, self.repeats = alpha, scale, repeats
        self.pad = int(2 * sigmas[-1])
        self.register_buffer("masks", gaussian_masks(tuple(sigmas)), persistent=False)
        self.c1, self.c2 = 0.01**2, 0.03**2

    @staticmethod
    def check_config(kwargs: dict) -> None:
        """The mix of the two terms and their scale (config validation)."""
        if not 0.0 <= kwargs.get("alpha", 0.025) <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {kwargs['alpha']}")
        if kwargs.get("scale", 200.0) <= 0:
            raise ConfigError(f"scale must be > 0, got {kwargs['scale']}")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reference's arithmetic (one mean of the mixed map); the terms are logged apart."""
        ms_ssim, l1 = self._maps(pred, target)
        self.last_terms = {"ms_ssim": (self.scale * self.alpha * (1 - ms_ssim).mean()).detach(),
                           "l1": (self.scale * (1 - self.alpha) * l1.mean()).detach()}
        return self.scale * (self.alpha * (1 - ms_ssim) + (1 - self.alpha) * l1).mean()

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        ms_ssim, l1 = self._maps(pred, target)
        return {"ms_ssim": self.scale * self.alpha * (1 - ms_ssim).mean(), "l1": self.scale * (1 - self.alpha) * l1.mean()}

    def _maps(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel MS-SSIM and Gaussian-weighted L1."""
        x, y = pred.float(), target.float()
        g = self.masks.to(x.device)

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, g, padding=self.pad)

        mux, muy = blur(x), blur(y)
        mux2, muy2, muxy = mux * mux, muy * muy, mux * muy
        sx, sy, sxy = blur(x * x) - mux2, blur(y * y) - muy2, blur(x * y) - muxy
        lum = (2 * muxy + self.c1) / (mux2 + muy2 + self.c1)
        cs = (2 * sxy + self.c2) / (sx + sy + self.c2)
        ms_ssim = lum[:, -1] ** self.repeats * cs.prod(dim=1) ** self.repeats
        l1 = F.conv2d((x - y).abs(), g[-1:], padding=self.pad)[:, 0]
        return ms_ssim, l1
