"""Resolution: the task-transfer function (TTF) of a circular insert in a uniform phantom, as
AAPM TG-233 measures it for nonlinear (e.g. deep-learning) reconstructions and denoisers.

The insert's edge spread function (ESF) is read from every pixel's distance to the known
centre, binned finer than a pixel (a circular edge off the pixel grid's symmetries samples all
sub-pixel phases), averaged over slices or repeated scans so noise averages out; its
derivative is the line spread function, whose normalised Fourier magnitude is the TTF. f50 is
where it falls to 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from ldct.errors import ConfigError, DataError

TAPER = 0.2  # Tukey window share tapered (half at each end of the LSF window)
ZERO_PAD = 8  # FFT length / LSF samples
MIN_REALISATIONS = 4  # noise realisations f50_interval needs
RESAMPLES = 500  # bootstrap resamples of f50_interval


def edge_spreads(images: np.ndarray, centre: tuple[float, float], radius_mm: float, pixel_mm: float,
                 bin_mm: float | None = None, reach_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(radial distance from the edge in mm, (n, bins) mean HU of each image) over an annulus of
    +-reach_mm (default radius/2; it must cover the widest edge blur measured) around the
    insert's edge of (n, h, w) images; bins of `bin_mm` (default a fifth of a pixel). The ESF is
    linear in the image: the mean of these is the ESF of the mean image."""
    if images.ndim != 3 or not np.isfinite(images).all():
        raise DataError(f"TTF images: expected finite (n, h, w), got shape {images.shape}")
    bin_mm = bin_mm or pixel_mm / 5
    yy, xx = np.mgrid[:images.shape[1], :images.shape[2]]
    dist = np.hypot(yy - centre[0], xx - centre[1]) * pixel_mm - radius_mm
    reach = reach_mm or radius_mm / 2
    if reach >= radius_mm:
        raise DataError(f"TTF: the edge window (+-{reach:g} mm) reaches past the insert's centre (radius {radius_mm:g} mm)")
    sel = np.abs(dist) < reach
    n_bins = int(round(2 * reach / bin_mm))
    edges = np.linspace(-reach, reach, n_bins + 1)
    idx = np.clip(np.digitize(dist[sel], edges) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    full = counts > 0
    if full.mean() < 0.9:
        raise DataError(f"TTF: bins of {bin_mm:g} mm too fine for a {radius_mm:g} mm insert at {pixel_mm:g} mm pixels")
    n = len(images)
    sums = np.bincount((idx + n_bins * np.arange(n)[:, None]).ravel(), weights=images[:, sel].ravel(),
                       minlength=n * n_bins).reshape(n, n_bins)
    means = sums[:, full] / counts[full]
    return centres, np.stack([np.interp(centres, centres[full], m) for m in means])  # the few empty bins filled


def ttf(images: np.ndarray, centre: tuple[float, float], radius_mm: float, pixel_mm: float,
        bin_mm: float | None = None, reach_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in 1/mm up to the image's Nyquist, TTF normalised to 1 at zero frequency)
    of the (n, h, w) images' mean edge."""
    r, esfs = edge_spreads(images, centre, radius_mm, pixel_mm, bin_mm, reach_mm)
    return _ttf_of_esf(r, esfs.mean(0), pixel_mm)


def f50_interval(images: np.ndarray, centre: tuple[float, float], radius_mm: float, pixel_mm: float,
                 reach_mm: float | None = None, n_resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of f50 over the (n, h, w) images' noise realisations: the
    realisations resampled with replacement, the TTF of each resample's mean edge. NaN below
    MIN_REALISATIONS: a bootstrap over fewer says nothing about the noise."""
    r, esfs = edge_spreads(images, centre, radius_mm, pixel_mm, reach_mm=reach_mm)
    return _f50_bootstrap(r, esfs, pixel_mm, n_resamples, seed)


def ttf_record(images: np.ndarray, centre: tuple[float, float], radius_mm: float, pixel_mm: float,
               reach_mm: float | None = None, seed: int = 0) -> dict:
    """One insert's TTF of the images' mean edge, its f50 and f50's bootstrap interval (as
    `ttf` and `f50_interval`, each realisation's edge read once): a JSON-ready dict."""
    r, esfs = edge_spreads(images, centre, radius_mm, pixel_mm, reach_mm=reach_mm)
    freqs, curve = _ttf_of_esf(r, esfs.mean(0), pixel_mm)
    lo, hi = _f50_bootstrap(r, esfs, pixel_mm, RESAMPLES, seed)
    return {"f50": f50(freqs, curve), "f50_ci_low": lo, "f50_ci_high": hi,
            "frequency": freqs.tolist(), "curve": curve.tolist()}


def _f50_bootstrap(r: np.ndarray, esfs: np.ndarray, pixel_mm: float, n_resamples: int, seed: int) -> tuple[float, float]:
    if len(esfs) < MIN_REALISATIONS:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, len(esfs), size=(n_resamples, len(esfs)))
    values = np.array([f50(*_ttf_of_esf(r, esfs[p].mean(0), pixel_mm)) for p in picks])
    values = values[~np.isnan(values)]  # a resample whose TTF never falls to 0.5 is kept: f50 above Nyquist (inf)
    if not len(values):
        return float("nan"), float("nan")
    nyquist = 0.5 / pixel_mm
    lo, hi = np.percentile(np.minimum(values, 2 * nyquist), [2.5, 97.5])  # censored at 2 x Nyquist ...
    return tuple(float(v) if v <= nyquist else float("inf") for v in (lo, hi))  # ... and told as inf


def _ttf_of_esf(r: np.ndarray, esf: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    step = r[1] - r[0]
    # a taper on the outer tenth at each end tames the noisy tails without cutting a wide LSF's
    # (a Tukey(0.5) flat only over the middle half biased f50 of blurred edges up by ~10 %)
    lsf = np.gradient(esf, step) * signal.windows.tukey(len(esf), TAPER)
    n_fft = ZERO_PAD * len(lsf)  # zero-padded: a fine frequency grid for f50's interpolation
    spectrum = np.abs(np.fft.rfft(lsf, n=n_fft))
    freqs = np.fft.rfftfreq(n_fft, d=step)
    keep = freqs <= 0.5 / pixel_mm
    if not spectrum[0] > 0:  # no step at all (a constant output): no TTF, not a perfect one
        return freqs[keep], np.full(keep.sum(), np.nan)
    return freqs[keep], spectrum[keep] / spectrum[0]


def f50(freqs: np.ndarray, curve: np.ndarray) -> float:
    """The first frequency where the TTF falls to 0.5 (linear interpolation); inf where it stays
    above 0.5 up to the last frequency (Nyquist: f50 beyond it), NaN where it starts below 0.5
    or is not finite (an image with no edge has no TTF: it was read as f50 beyond Nyquist)."""
    if not np.isfinite(curve).all():
        return float("nan")
    below = np.nonzero(curve < 0.5)[0]
    if not len(below):
        return float("inf")
    if below[0] == 0:
        return float("nan")
    i = below[0]
    return float(np.interp(0.5, [curve[i], curve[i - 1]], [freqs[i], freqs[i - 1]]))


def insert_phantom(matrix: int, pixel_mm: float, contrasts_hu: list[float], insert_mm: float = 15.0,
                   body_mm: float = 180.0, supersample: int = 4,
                   reach_mm: float = 0.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A water cylinder (0 HU, diameter `body_mm`, air outside) with one circular insert per
    contrast (HU above water) on a ring of radius body_mm / 4, with partial-volume edges (each
    pixel the mean of supersample^2 points); returns (HU image, insert centres in pixels).
    Refused (ConfigError) where an insert's edge window (+-`reach_mm`, edge_spreads) would
    take in another insert or the cylinder's edge, which would bias its TTF without a sign."""
    r, ring_mm, n = insert_mm / 2, body_mm / 4, len(contrasts_hu)
    gap = 2 * ring_mm * np.sin(np.pi / n) if n > 1 else np.inf  # between neighbouring centres
    if gap < 2 * r + reach_mm or ring_mm + r + reach_mm > body_mm / 2:
        raise ConfigError(f"clinical.qa: {n} inserts of {insert_mm:g} mm on a {ring_mm:g} mm ring in a {body_mm:g} mm "
                          f"water cylinder do not fit with their {reach_mm:g} mm edge windows (centres {gap:.1f} mm "
                          f"apart, {2 * r + reach_mm:.1f} needed); use fewer or smaller inserts")
    c = (matrix - 1) / 2
    ring = ring_mm / pixel_mm
    angles = [0.37 + 2 * np.pi * i / len(contrasts_hu) for i in range(len(contrasts_hu))]  # off the pixel grid's
    centres = [(c + ring * np.sin(a), c + ring * np.cos(a)) for a in angles]  # symmetries: every sub-pixel phase
    fine = (np.arange(matrix * supersample) + 0.5) / supersample - 0.5  # sub-pixel positions, in pixels
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    hu = np.where(np.hypot(yy - c, xx - c) * pixel_mm < body_mm / 2, 0.0, -1000.0)
    for (cy, cx), contrast in zip(centres, contrasts_hu):
        hu[np.hypot(yy - cy, xx - cx) * pixel_mm < insert_mm / 2] = contrast
    hu = hu.reshape(matrix, supersample, matrix, supersample).mean(axis=(1, 3))
    return hu.astype(np.float32), [(float(y), float(x)) for y, x in centres]
