"""Image-quality metrics in named HU windows, from maintained libraries.

PSNR and SSIM: scikit-image, with the window width as data range (the paper's convention:
peak 4096 for [-1024, 3072], 160 for [-40, 120]). VIF: torchmetrics' pixel-domain VIF
(Sheikh & Bovik 2006, sigma_n^2 = 2) on the window mapped to 0-255. Images are clipped to
the window before every metric.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import visual_information_fidelity

from ldct.hu import WINDOWS

METRICS = ("psnr", "ssim", "vif", "rmse")


def _clipped(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Both images clipped to the window; their MSE, the window width and the PSNR."""
    lo, hi = WINDOWS[window]
    p = np.clip(pred_hu.astype(np.float64), lo, hi)
    r = np.clip(ref_hu.astype(np.float64), lo, hi)
    mse = float(np.mean((p - r) ** 2))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(r, p, data_range=hi - lo))
    return p, r, mse, hi - lo, psnr


def window_psnr(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> float:
    """PSNR alone of one 2-D slice in one named window (as in `window_metrics`)."""
    return _clipped(pred_hu, ref_hu, window)[4]


def window_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> dict[str, float]:
    """Metrics of one 2-D slice against its reference in one named window."""
    lo, _ = WINDOWS[window]
    p, r, mse, width, psnr = _clipped(pred_hu, ref_hu, window)
    ssim = float(structural_similarity(r, p, data_range=width))
    scale = 255.0 / width
    vif = float(visual_information_fidelity(torch.from_numpy((p - lo) * scale)[None, None].float(),
                                            torch.from_numpy((r - lo) * scale)[None, None].float(), sigma_n_sq=2.0))
    return {"psnr": psnr, "ssim": ssim, "vif": vif, "rmse": float(np.sqrt(mse))}


def slice_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, windows=("full", "brain", "head"), prefix: str = "") -> dict[str, float]:
    out = {}
    for w in windows:
        for k, v in window_metrics(pred_hu, ref_hu, w).items():
            out[f"{prefix}{k}_{w}"] = v
    return out
