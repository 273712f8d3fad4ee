"""Image-quality metrics in named HU windows.

Images are clipped to the window before every metric; the window width is the data range
(the paper's convention: peak 4096 for [-1024, 3072], 160 for [-40, 120]).
- PSNR: scikit-image.
- SSIM (`ssim`): as the paper computes it (reference measure.py): 11x11 Gaussian window
  (sigma 1.5), population (co)variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2, the window applied
  with zero padding (in HU) so the map keeps the slice's size, mean over the whole map.
  No maintained library offers that border handling (scikit-image and torchmetrics crop or
  reflect), so it is written here with scipy's separable filters and tested against the
  reference's golden values.
- `ssim_skimage`: scikit-image's default SSIM (7x7 uniform window, sample covariance,
  borders cropped), the definition this project used before; kept for comparison.
- VIF: torchmetrics' pixel-domain VIF (Sheikh & Bovik 2006, sigma_n^2 = 2) on the window
  mapped to 0-255.

A slice identical to its reference in a window (both clipped alike: MSE 0) has PSNR inf in
metrics.csv; means leave it out, as the reference's measure does (`read_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.ndimage import correlate1d

from ldct.errors import DataError
from ldct.hu import WINDOWS

# torch, torchmetrics and scikit-image are imported where used: the table and figure jobs read
# metrics.csv (read_metrics) without them

_SSIM_SIZE, _SSIM_SIGMA = 11, 1.5
_SSIM_TAPS = np.exp(-((np.arange(_SSIM_SIZE) - _SSIM_SIZE // 2) ** 2) / (2 * _SSIM_SIGMA**2))
_SSIM_TAPS /= _SSIM_TAPS.sum()


def _gauss(img: np.ndarray) -> np.ndarray:
    """The 11x11 Gaussian window at every pixel, zero outside the image (same-size output)."""
    out = correlate1d(img, _SSIM_TAPS, axis=0, mode="constant", cval=0.0)
    return correlate1d(out, _SSIM_TAPS, axis=1, mode="constant", cval=0.0)


def paper_ssim(pred: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """SSIM of two 2-D images as the paper's measure.py computes it (see the module doc)."""
    x, y = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    mx, my = _gauss(x), _gauss(y)
    sxx, syy, sxy = _gauss(x * x) - mx * mx, _gauss(y * y) - my * my, _gauss(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def _clipped(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Both images clipped to the window; their MSE, the window width and the PSNR."""
    from skimage.metrics import peak_signal_noise_ratio

    lo, hi = WINDOWS[window]
    p = np.clip(pred_hu.astype(np.float64), lo, hi)
    r = np.clip(ref_hu.astype(np.float64), lo, hi)
    mse = float(np.mean((p - r) ** 2))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(r, p, data_range=hi - lo))
    return p, r, mse, hi - lo, psnr


def window_psnr(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> float:
    """PSNR alone of one 2-D slice in one named window (as in `window_metrics`)."""
    return _clipped(pred_hu, ref_hu, window)[4]


def mean_psnr(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> float:
    """Mean PSNR over the slices of a (S, H, W) stack, leaving out those identical to their
    reference in the window (PSNR inf), as the reference's validation does; NaN if none is left."""
    values = np.array([window_psnr(p, r, window) for p, r in zip(pred_hu, ref_hu)])
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def stack_window_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> list[dict[str, float]]:
    """Metrics of each 2-D slice of a (S, H, W) stack against its reference in one named
    window; VIF runs on the whole stack in one batched call (per-slice values)."""
    import torch
    from skimage.metrics import structural_similarity
    from torchmetrics.functional.image import visual_information_fidelity

    if np.shape(pred_hu) != np.shape(ref_hu):
        raise ValueError(f"prediction {np.shape(pred_hu)} and reference {np.shape(ref_hu)} differ in shape")
    lo, _ = WINDOWS[window]
    rows, ps, rs = [], [], []
    for pred, ref in zip(pred_hu, ref_hu):
        p, r, mse, width, psnr = _clipped(pred, ref, window)
        rows.append({"psnr": psnr, "ssim": paper_ssim(p, r, width),
                     "ssim_skimage": float(structural_similarity(r, p, data_range=width)), "vif": np.nan,
                     "rmse": float(np.sqrt(mse))})
        ps.append((p - lo) * (255.0 / width))
        rs.append((r - lo) * (255.0 / width))
    vif = visual_information_fidelity(torch.from_numpy(np.stack(ps))[:, None].float(),
                                      torch.from_numpy(np.stack(rs))[:, None].float(), sigma_n_sq=2.0, reduction="none")
    for row, v in zip(rows, vif.tolist()):
        row["vif"] = float(v)
    return rows


def window_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, window: str) -> dict[str, float]:
    """Metrics of one 2-D slice against its reference in one named window."""
    return stack_window_metrics(pred_hu[None], ref_hu[None], window)[0]


def stack_metrics(pred_hu: np.ndarray, ref_hu: np.ndarray, windows=("full", "brain", "head"),
                  prefix: str = "") -> list[dict[str, float]]:
    """Per slice of a (S, H, W) stack: every window's metrics, keyed '{prefix}{metric}_{window}'."""
    out = [{} for _ in range(len(pred_hu))]
    for w in windows:
        for row, m in zip(out, stack_window_metrics(pred_hu, ref_hu, w), strict=True):
            row.update({f"{prefix}{k}_{w}": v for k, v in m.items()})
    return out


def read_metrics(paths: Iterable) -> pd.DataFrame:
    """metrics.csv files, concatenated, ready to average: a PSNR of inf (slice identical to its
    reference in that window) becomes NaN, so means over slices and subjects leave it out, as
    the reference's mean PSNR does (`MSE[MSE > 0]`); `infinite_psnr_note` tells how many (the
    counts are kept in the frame's attrs). Files that do not have the same columns (one without
    the noiseless-truth columns, an evaluation by an older version) are a DataError naming them:
    concatenated, the missing values read as NaN, and NaN PSNRs as infinite ones."""
    frames = [(str(p), pd.read_csv(p)) for p in paths]
    columns = list(dict.fromkeys(c for _, f in frames for c in f.columns))
    for path, f in frames:
        missing = [c for c in columns if c not in f.columns]
        if missing:
            other = next(q for q, g in frames if missing[0] in g.columns)
            raise DataError(f"{path}: no column {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                            f"that {other} has; the two were made by different evaluations: rerun the older one")
    df = pd.concat([f for _, f in frames], ignore_index=True)
    psnr = [c for c in df if "psnr" in c]
    infinite = {c: int(np.isinf(df[c]).sum()) for c in psnr}
    df[psnr] = df[psnr].replace([np.inf, -np.inf], np.nan)
    df.attrs["infinite_psnr"] = infinite
    return df


def infinite_psnr_note(df: pd.DataFrame, cols: Iterable[str]) -> str:
    """A caption sentence when slices of `df` (as read_metrics returned it) were left out of a
    PSNR mean because their PSNR was infinite (a NaN for another reason is not counted)."""
    counts = df.attrs.get("infinite_psnr", {})
    n = sum(counts.get(c, 0) for c in cols if "psnr" in c)
    return (f"{n} slice-window PSNR value(s) were infinite (output identical to the reference in that window) and "
            "are left out of the means, as the reference's measure does." if n else "")
