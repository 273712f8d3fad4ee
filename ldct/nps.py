"""Noise texture: the 2-D noise power spectrum (NPS) of noise-only regions, radially averaged.

NPS(fx, fy) = dx dy / (Nx Ny) * < |DFT(n - mean(n))|^2 > over the ROIs (HU^2 mm^2), the
definition of ICRU Report 87 / AAPM TG-233. Its integral over frequency is the noise variance,
so the noise magnitude and the texture (where the power sits: TG-233's mean frequency f_av)
are read from one curve. Noise-only ROIs come from the difference of two scans
(ldct.clinical.noise_rois), so a denoiser's error on the anatomy does not count as noise. Denoisers that blur move the power to low frequencies (the "plastic" look) and
lower the mean frequency against the LDCT input.
"""

from __future__ import annotations

import numpy as np

from ldct.errors import DataError


def nps_2d(noise_rois: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(NPS (h, w) in HU^2 mm^2 with zero frequency at the centre, frequencies (w,) in 1/mm of
    the columns; rows alike for a square ROI) from (n, h, w) noise-only ROIs (ldct.clinical's
    difference method: a row's error in scan A less its error in scan B, over sqrt 2). Each ROI's
    own mean is removed."""
    if noise_rois.ndim != 3 or len(noise_rois) == 0:
        raise DataError(f"noise ROIs: expected (n, h, w), got {noise_rois.shape}")
    if not np.isfinite(noise_rois).all():
        raise DataError("noise ROIs contain NaN or infinite values")
    n, h, w = noise_rois.shape
    centred = noise_rois - noise_rois.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    nps = np.fft.fftshift(power.mean(0)) * pixel_mm ** 2 / (h * w)
    return nps, np.fft.fftshift(np.fft.fftfreq(w, d=pixel_mm))


def radial_nps(nps: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in 1/mm, radially averaged NPS): annuli of width step = the DFT's frequency
    spacing 1 / (N pixel) of the ROI's shorter side N, centred on k step, k = 1 .. N // 2, up to
    the Nyquist frequency 1 / (2 pixel) (for an odd N the last centre sits half a step below it).
    The zero-frequency point, empty once each ROI's mean is removed, is left out."""
    h, w = nps.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h, d=pixel_mm))
    fx = np.fft.fftshift(np.fft.fftfreq(w, d=pixel_mm))
    fr = np.hypot(*np.meshgrid(fx, fy))
    n_bins = min(h, w) // 2
    step = 1.0 / (min(h, w) * pixel_mm)
    centres = step * np.arange(1, n_bins + 1)
    idx = np.rint(fr.ravel() / step).astype(int) - 1  # annulus k covers [(k - 1/2) step, (k + 1/2) step)
    keep = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[keep], weights=nps.ravel()[keep], minlength=n_bins)
    counts = np.bincount(idx[keep], minlength=n_bins)
    return centres, sums / np.maximum(counts, 1)


def nps_summary(nps: np.ndarray, pixel_mm: float) -> dict:
    """From the 2-D NPS (nps_2d): noise SD (HU, from the NPS integral), the mean frequency
    f_av = sum f NPS(f) / sum NPS(f) over the radial NPS (AAPM TG-233, Solomon et al. 2012), the
    peak frequency (1/mm), and the radial NPS itself ("frequency", "curve": lists)."""
    h, w = nps.shape
    variance = float(nps.sum() / (h * w * pixel_mm ** 2))
    f, curve = radial_nps(nps, pixel_mm)
    return {"noise_sd": float(np.sqrt(variance)),
            "mean_frequency": float((f * curve).sum() / curve.sum()) if curve.sum() > 0 else float("nan"),
            "peak_frequency": float(f[np.argmax(curve)]), "frequency": f.tolist(), "curve": curve.tolist()}
