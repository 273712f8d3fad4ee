"""Low-contrast detectability: a channelized Hotelling observer (CHO) on lesion-present and
lesion-absent regions of interest.

The observer sees each ROI through a few Laguerre-Gauss channels (rotationally symmetric,
centred on the known lesion position), learns the Hotelling template from one half of the ROIs
and scores the other half, so the reported detectability is not inflated by fitting. Its
outputs are the separability d' and the area under the ROC curve (Mann-Whitney), each with a
bootstrap 95 % CI over the test ROIs.

For a signal that lies in the channels' span and white Gaussian noise of SD sigma, the CHO is
the ideal observer: d' = ||s|| / sigma (a test checks it).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ldct.errors import DataError


def laguerre_gauss_channels(size: int, n_channels: int = 6, width_px: float = 8.0) -> np.ndarray:
    """(n_channels, size, size) Laguerre-Gauss channels centred on the ROI's middle, each of unit
    norm: u_j(r) = exp(-pi r^2 / a^2) L_j(2 pi r^2 / a^2), a = width_px."""
    c = np.arange(size) - size // 2  # the centre pixel of ldct.lesion_task.extract_rois
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    g = 2.0 * np.pi * r2 / width_px ** 2
    chans = np.stack([np.exp(-g / 2.0) * special.eval_laguerre(j, g) for j in range(n_channels)])
    return chans / np.linalg.norm(chans.reshape(n_channels, -1), axis=1)[:, None, None]


def _check_rois(present: np.ndarray, absent: np.ndarray, channels: np.ndarray) -> None:
    for name, rois in (("lesion-present", present), ("lesion-absent", absent)):
        if rois.ndim != 3 or rois.shape[1:] != channels.shape[1:]:
            raise DataError(f"{name} ROIs: expected (n, {channels.shape[1]}, {channels.shape[2]}), got {rois.shape}")
        if len(rois) < 4:
            raise DataError(f"{name} ROIs: {len(rois)} given; the observer needs at least 4 (half to train, half to test)")
        if not np.isfinite(rois).all():
            raise DataError(f"{name} ROIs contain NaN or infinite values")


def dprime_rows(t1: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """d' of each row of (..., n1) present and (..., n0) absent decision variables."""
    return (t1.mean(-1) - t0.mean(-1)) / np.sqrt(0.5 * (t1.var(-1, ddof=1) + t0.var(-1, ddof=1)))


def auc_rows(t1: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """Area under the empirical ROC curve (the Mann-Whitney U / n1 n0, ties counting half) of each row."""
    greater = (t1[..., :, None] > t0[..., None, :]).mean((-1, -2))
    ties = (t1[..., :, None] == t0[..., None, :]).mean((-1, -2))
    return greater + 0.5 * ties


def cho(present: np.ndarray, absent: np.ndarray, channels: np.ndarray, seed: int = 0,
        n_resamples: int = 1000, n_train: int | None = None, scores: bool = False) -> dict:
    """d' and AUC of the channelized Hotelling observer, with bootstrap 95 % CIs.

    present, absent: (n, h, w) ROIs with and without the lesion at their centre. The first
    `n_train` of each (default half, in the given order) train the template, the rest are
    scored. `scores` adds the test ROIs' decision variables (t1: present, t0: absent), which
    paired comparisons of two observers on the same ROIs need (ldct.stats.paired_dprime)."""
    _check_rois(present, absent, channels)
    u = channels.reshape(len(channels), -1)
    v1 = present.reshape(len(present), -1) @ u.T
    v0 = absent.reshape(len(absent), -1) @ u.T
    h1, h0 = (len(v1) // 2, len(v0) // 2) if n_train is None else (n_train, n_train)
    if min(h1, h0, len(v1) - h1, len(v0) - h0) < 2:
        raise DataError(f"observer: {len(v1)} present and {len(v0)} absent ROIs, {h1} to train: "
                        "the training and the test half each need at least 2 of each")
    cov = 0.5 * (np.cov(v1[:h1], rowvar=False) + np.cov(v0[:h0], rowvar=False))
    template = np.linalg.lstsq(cov, v1[:h1].mean(0) - v0[:h0].mean(0), rcond=None)[0]
    t1, t0 = v1[h1:] @ template, v0[h0:] @ template
    out = {"dprime": float(dprime_rows(t1, t0)), "auc": float(auc_rows(t1, t0)), "n_train": h1 + h0, "n_test": len(t1) + len(t0)}
    if scores:
        out["t1"], out["t0"] = t1.tolist(), t0.tolist()
    # bootstrap over the test ROIs (each class resampled on its own), vectorised
    rng = np.random.default_rng(seed)
    r1 = t1[rng.integers(0, len(t1), (n_resamples, len(t1)))]
    r0 = t0[rng.integers(0, len(t0), (n_resamples, len(t0)))]
    for key, values in (("dprime", dprime_rows(r1, r0)), ("auc", auc_rows(r1, r0))):
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = (float(v) for v in np.nanpercentile(values, [2.5, 97.5]))
    return out
