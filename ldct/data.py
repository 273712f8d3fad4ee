"""Loading paired slices from the converted NIfTI volumes for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldct.classes import NUM_CLASSES
from ldct.errors import DataError
from ldct.io import read_nifti


@dataclass
class SubjectVolumes:
    subject: str
    low: np.ndarray                  # (S, H, W) HU, slices first, rows x columns as displayed
    full: np.ndarray
    labels: np.ndarray | None = None  # (S, H, W) class ids, where labels exist
    truth: np.ndarray | None = None   # noiseless phantom HU (synthetic data)
    repeat: np.ndarray | None = None  # a second, independent low-dose scan (synthetic data: Noise2Noise)
    affine: np.ndarray | None = None


def to_slices(vol: np.ndarray) -> np.ndarray:
    """NIfTI data[col, row, slice] -> (slice, row, col)."""
    return np.ascontiguousarray(np.transpose(vol, (2, 1, 0)))


def from_slices(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))


LOW_NAME = "low.nii.gz"
REPEAT_NAME = "repeat.nii.gz"


def load_subject(nifti_dir: str | Path, subject: str, with_labels: bool = True, low_name: str = LOW_NAME,
                 with_repeat: bool = False) -> SubjectVolumes:
    """A subject's volumes; the low-dose input is read from `low_name` (another dose of the
    same scan, e.g. low_10pct.nii.gz of the dose sweep, instead of low.nii.gz) and must share
    the full-dose geometry, as conversion pairs them."""
    d = Path(nifti_dir) / subject
    low, aff = read_nifti(d / low_name)
    full, full_aff = read_nifti(d / "full.nii.gz")
    if full.ndim != 3:
        raise DataError(f"{d / 'full.nii.gz'}: a {full.ndim}-D volume {full.shape}; a CT volume is 3-D (columns, rows, slices)")

    def like_full(name: str, arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """A volume of the subject checked against full.nii.gz (same grid, finite), as slices."""
        if arr.shape != full.shape or not np.allclose(affine, full_aff, atol=1e-3):
            raise DataError(f"{d / name}: geometry {arr.shape} differs from full.nii.gz {full.shape}")
        if not np.isfinite(arr).all():
            raise DataError(f"{d / name}: contains NaN or inf")
        return to_slices(arr)

    def companion(name: str) -> np.ndarray:
        return like_full(name, *read_nifti(d / name))

    low = like_full(low_name, low, aff)
    if not np.isfinite(full).all():
        raise DataError(f"{d / 'full.nii.gz'}: contains NaN or inf")
    sv = SubjectVolumes(subject, low, to_slices(full), affine=aff)

    if with_labels and (d / "labels.nii.gz").exists():
        labels = companion("labels.nii.gz")
        if (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DataError(f"{d / 'labels.nii.gz'}: labels must be integers 0..{NUM_CLASSES - 1} "
                            f"(found {labels.min():g}..{labels.max():g})")
        sv.labels = labels.astype(np.int64)
    if (d / "truth.nii.gz").exists():
        sv.truth = companion("truth.nii.gz")
    if with_repeat and (d / REPEAT_NAME).exists():
        sv.repeat = companion(REPEAT_NAME)
    return sv


def stack_subjects(nifti_dir: str | Path, subjects: list[str], with_labels: bool = True,
                   with_repeat: bool = False) -> dict[str, np.ndarray]:
    """All slices of the given subjects stacked: {'low', 'full', 'labels'?, 'repeat'?} each
    (N, H, W); labels (and the repeat scan, when asked for) where every subject has them."""
    if not subjects:
        raise DataError("no subjects given")
    vols = [load_subject(nifti_dir, s, with_labels, with_repeat=with_repeat) for s in subjects]
    sizes = {v.subject: v.full.shape[1:] for v in vols}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{s} {h}x{w}" for s, (h, w) in sizes.items())
        raise DataError(f"{nifti_dir}: the subjects' slices differ in size ({listed}); training and validation "
                        "stack them, so every subject needs the same matrix (resample the odd ones first)")
    out = {"low": np.concatenate([v.low for v in vols]), "full": np.concatenate([v.full for v in vols])}
    if with_labels and all(v.labels is not None for v in vols):
        out["labels"] = np.concatenate([v.labels for v in vols])
    if all(v.repeat is not None for v in vols):
        out["repeat"] = np.concatenate([v.repeat for v in vols])
    return out
