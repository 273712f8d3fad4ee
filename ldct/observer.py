"""Low-contrast detectability: a channelized Hotelling observer (CHO) on lesion-present and
lesion-absent regions of interest.

The observer sees each ROI through a few Laguerre-Gauss channels (rotationally symmetric,
centred on the known lesion position), learns the Hotelling template from one half of the ROIs
and scores the other half, so the reported detectability is not inflated by fitting. Its
outputs are the separability d' and the area under the ROC curve (Mann-Whitney), each with a
bootstrap 95 % CI over the test ROIs (scipy).

For a signal that lies in the channels' span and white Gaussian noise of SD sigma, the CHO is
the ideal observer: d' = ||s|| / sigma (a test checks it).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from ldct.errors import DataError


def laguerre_gauss_channels(size: int, n_channels: int = 6, width_px: float = 8.0) -> np.ndarray:
    """(n_channels, size, size) Laguerre-Gauss channels centred on the ROI's middle, each of unit
    norm: u_j(r) = exp(-pi r^2 / a^2) L_j(2 pi r^2 / a^2), a = width_px."""
    c = (np.arange(size) - (size - 1) / 2.0)
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


def _dprime(t1: np.ndarray, t0: np.ndarray) -> float:
    return float((t1.mean() - t0.mean()) / np.sqrt(0.5 * (t1.var(ddof=1) + t0.var(ddof=1))))


def _auc(t1: np.ndarray, t0: np.ndarray) -> float:
    return float(stats.mannwhitneyu(t1, t0).statistic / (len(t1) * len(t0)))


def cho(present: np.ndarray, absent: np.ndarray, channels: np.ndarray, seed: int = 0,
        n_resamples: int = 1000) -> dict[str, float]:
    """d' and AUC of the channelized Hotelling observer, with bootstrap 95 % CIs.

    present, absent: (n, h, w) ROIs with and without the lesion at their centre. The first half
    of each (in the given order) trains the template, the second half is scored."""
    _check_rois(present, absent, channels)
    u = channels.reshape(len(channels), -1)
    v1 = present.reshape(len(present), -1) @ u.T
    v0 = absent.reshape(len(absent), -1) @ u.T
    h1, h0 = len(v1) // 2, len(v0) // 2
    cov = 0.5 * (np.cov(v1[:h1], rowvar=False) + np.cov(v0[:h0], rowvar=False))
    template = np.linalg.lstsq(cov, v1[:h1].mean(0) - v0[:h0].mean(0), rcond=None)[0]
    t1, t0 = v1[h1:] @ template, v0[h0:] @ template
    out = {"dprime": _dprime(t1, t0), "auc": _auc(t1, t0), "n_train": h1 + h0, "n_test": len(t1) + len(t0)}
    rng = np.random.default_rng(seed)
    for key, fn in (("dprime", _dprime), ("auc", _auc)):
        ci = stats.bootstrap((t1, t0), fn, n_resamples=n_resamples, vectorized=False, random_state=rng,
                             method="percentile").confidence_interval
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(ci.low), float(ci.high)
    return out
