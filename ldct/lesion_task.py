"""The low-contrast lesion task: hypodense discs (an early infarct's few HU) placed in the
noiseless anatomy before projection, so the noise around them is the scanner's, and the
regions of interest an observer (ldct.observer) reads.

A lesion-present and a lesion-absent scan of the same phantom differ only by the lesions and
by their independent noise; ROIs are cut at the same known centres in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ldct.errors import DataError

# Grey-matter classes of ldct.classes (caudate, lentiform nucleus, insular cortex, the four
# lobes, thalamus): where an early infarct shows as a loss of grey-white contrast.
GREY_MATTER = (6, 7, 8, 12, 13, 14, 15, 16)
# Brain parenchyma: grey matter, the remaining parenchyma (mostly white matter) and the internal
# capsule, where lacunar and deep infarcts lie too; it leaves several times more room for sites.
PARENCHYMA = GREY_MATTER + (1, 9)
TISSUES = {"grey_matter": GREY_MATTER, "parenchyma": PARENCHYMA}


@dataclass(frozen=True)
class LesionSite:
    """One lesion: slice index, centre (row, column) in pixels."""
    z: int
    y: int
    x: int


def place_lesions(labels: np.ndarray, roi_px: int, per_slice: int, rng: np.random.Generator,
                  classes: tuple[int, ...] = GREY_MATTER) -> list[LesionSite]:
    """Up to `per_slice` lesion centres per slice of (B, n, n) labels: on a grey-matter pixel,
    with the whole roi_px x roi_px ROI inside the head's brain (labels > 0) and no two ROIs of
    a slice overlapping. Raises DataError when no slice has room for one."""
    half = roi_px // 2
    sites = []
    for z, lab in enumerate(labels):
        inside = ndimage.distance_transform_edt(lab > 0) > half * np.sqrt(2)
        ys, xs = np.nonzero(inside & np.isin(lab, classes))
        taken = np.zeros(lab.shape, bool)
        placed = 0
        for i in rng.permutation(len(ys)):
            if placed == per_slice:
                break
            y, x = int(ys[i]), int(xs[i])
            box = (slice(y - half, y - half + roi_px), slice(x - half, x - half + roi_px))
            if taken[box].any():
                continue
            taken[box] = True
            sites.append(LesionSite(z, y, x))
            placed += 1
    if not sites:
        raise DataError(f"no slice has room for a {roi_px}x{roi_px} ROI inside the brain centred on label(s) "
                        f"{', '.join(map(str, classes))}: a smaller ROI (clinical.roi_px, nps_roi_px) may fit")
    return sites


def lesion_profile(shape: tuple[int, int], y: float, x: float, diameter_mm: float, pixel_mm: float) -> np.ndarray:
    """A disc of height 1 with a one-pixel linear edge (partial-volume), centred at (y, x)."""
    r = np.hypot(*np.meshgrid(np.arange(shape[0]) - y, np.arange(shape[1]) - x, indexing="ij")) * pixel_mm
    return np.clip((diameter_mm / 2 - r) / pixel_mm + 0.5, 0.0, 1.0)


def insert_lesions(hu: np.ndarray, sites: list[LesionSite], contrast_hu: float, diameter_mm: float,
                   pixel_mm: float) -> np.ndarray:
    """A copy of (B, n, n) noiseless HU with a disc of `contrast_hu` (negative: hypodense) at each site."""
    out = np.array(hu, dtype=np.float32, copy=True)
    for s in sites:
        out[s.z] += contrast_hu * lesion_profile(out.shape[1:], s.y, s.x, diameter_mm, pixel_mm)
    return out


def extract_rois(volume: np.ndarray, sites: list[LesionSite], roi_px: int) -> np.ndarray:
    """(len(sites), roi_px, roi_px) patches of (B, n, n) centred on the sites (float64)."""
    half = roi_px // 2
    rois = [volume[s.z, s.y - half:s.y - half + roi_px, s.x - half:s.x - half + roi_px] for s in sites]
    if any(r.shape != (roi_px, roi_px) for r in rois):
        raise DataError(f"a {roi_px}x{roi_px} ROI crosses the edge of the {volume.shape[1:]} image")
    return np.stack(rois).astype(np.float64)
