"""Noise texture: the 2-D noise power spectrum (NPS) of noise-only regions, radially averaged.

NPS(fx, fy) = dx dy / (Nx Ny) * < |DFT(n - mean(n))|^2 > over the ROIs (HU^2 mm^2), the
definition of ICRU Report 87 / AAPM TG-233. Its integral over frequency is the noise variance,
so the noise magnitude and the texture (where the power sits: mean frequency) are read from
one curve. Denoisers that blur move the power to low frequencies (the "plastic" look) and
lower the mean frequency against the LDCT input.
"""

from __future__ import annotations

import numpy as np

from ldct.errors import DataError


def nps_2d(noise_rois: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(NPS (h, w) in HU^2 mm^2 with zero frequency at the centre, frequencies (w,) in 1/mm of
    the columns; rows alike for a square ROI) from (n, h, w) noise-only ROIs (output minus the
    noiseless truth). Each ROI's own mean is removed."""
    if noise_rois.ndim != 3 or len(noise_rois) == 0:
        raise DataError(f"noise ROIs: expected (n, h, w), got {noise_rois.shape}")
    if not np.isfinite(noise_rois).all():
        raise DataError("noise ROIs contain NaN or infinite values")
    n, h, w = noise_rois.shape
    centred = noise_rois - noise_rois.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    nps = np.fft.fftshift(power.mean(0)) * pixel_mm ** 2 / (h * w)
    return nps, np.fft.fftshift(np.fft.fftfreq(w, d=pixel_mm))


def radial_nps(nps: np.ndarray, pixel_mm: float, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in 1/mm, radially averaged NPS) up to the Nyquist frequency 1 / (2 pixel)."""
    h, w = nps.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h, d=pixel_mm))
    fx = np.fft.fftshift(np.fft.fftfreq(w, d=pixel_mm))
    fr = np.hypot(*np.meshgrid(fx, fy))
    nyquist = 0.5 / pixel_mm
    n_bins = n_bins or min(h, w) // 2
    edges = np.linspace(0.0, nyquist, n_bins + 1)
    idx = np.digitize(fr.ravel(), edges) - 1
    keep = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[keep], weights=nps.ravel()[keep], minlength=n_bins)
    counts = np.bincount(idx[keep], minlength=n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), sums / np.maximum(counts, 1)


def nps_summary(noise_rois: np.ndarray, pixel_mm: float) -> dict[str, float]:
    """Noise SD (HU, from the NPS integral) and the NPS-weighted mean and peak frequencies (1/mm)."""
    nps, _ = nps_2d(noise_rois, pixel_mm)
    h, w = nps.shape
    variance = float(nps.sum() / (h * w * pixel_mm ** 2))
    f, curve = radial_nps(nps, pixel_mm)
    weights = curve * f  # the annulus at f has circumference 2 pi f: power per radial bin
    return {"noise_sd": float(np.sqrt(variance)),
            "mean_frequency": float((f * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan"),
            "peak_frequency": float(f[np.argmax(curve)])}
