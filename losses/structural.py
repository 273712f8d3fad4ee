"""MS-SSIM / L1 mix (`ssim_l1`), with MS-SSIM from torchmetrics.

loss = scale * (alpha * (1 - MS-SSIM) + (1 - alpha) * L1) on the [0, 1]-scaled images, with
the reference code's constants (alpha 0.025, scale 200). The reference computes its own
multi-sigma SSIM at full resolution; here MS-SSIM is the standard multi-scale one (Wang et al.
2003) from torchmetrics, with as many scales as the patch size allows (at least 2), so that
64x64 training patches work.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

from losses import register

# Standard MS-SSIM scale weights (Wang et al. 2003), finest first.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


@register("ssim_l1")
class MSSSIML1(nn.Module):
    def __init__(self, alpha: float = 0.025, scale: float = 200.0, kernel_size: int = 7, sigma: float = 1.5):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.scale, self.kernel_size, self.sigma = alpha, scale, kernel_size, sigma

    def _betas(self, size: int) -> tuple[float, ...]:
        n = len(MS_SSIM_BETAS)
        while n > 2 and size < (self.kernel_size - 1) * 2 ** (n - 1) + 1:
            n -= 1
        if size < (self.kernel_size - 1) * 2 ** (n - 1) + 1:
            raise ValueError(f"ssim_l1 needs images of at least {(self.kernel_size - 1) * 2 ** (n - 1) + 1} pixels "
                             f"(kernel_size {self.kernel_size}, 2 scales), got {size}")
        b = torch.tensor(MS_SSIM_BETAS[:n])
        return tuple((b / b.sum()).tolist())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = pred.float().clamp(0, 1), target.float()
        m = ms_ssim(p, t, kernel_size=self.kernel_size, sigma=self.sigma, data_range=1.0,
                    betas=self._betas(min(pred.shape[-2:])), normalize="relu")
        l1 = (pred - target).abs().mean()
        return self.scale * (self.alpha * (1 - m) + (1 - self.alpha) * l1)
