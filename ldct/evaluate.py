"""Denoise the test subjects with a trained experiment, and score every output per slice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ldct.classes import NUM_CLASSES
from ldct.data import LOW_NAME, from_slices, load_subject, to_slices
from ldct.errors import DataError
from ldct.inference import (
    checkpoint_amp,
    load_denoiser,
    load_segmenter,
    pick_device,
    predict_slices,
    segment,
)
from ldct.io import read_nifti, write_csv, write_niftis
from ldct.metrics import stack_metrics
from ldct.paths import LDCT


def denoise_subjects(model_path: str, nifti_dir: str, subjects: list[str], out_dir: str, device: str = "auto",
                     low_name: str = LOW_NAME) -> None:
    """Every subject's denoised volume, written together once all are made: a failure on one
    leaves the folder as it was (not some subjects from this model and some from an earlier one)."""
    dev = pick_device(device)
    net, ck = load_denoiser(model_path, dev)
    volumes = {}
    for subject in tqdm(subjects, desc="denoise", file=sys.stderr, disable=False):
        sv = load_subject(nifti_dir, subject, with_labels=False, low_name=low_name)
        pred = predict_slices(net, sv.low, tuple(ck["hu_range"]), dev, amp=checkpoint_amp(ck))
        if not np.isfinite(pred).all():
            raise DataError(f"{model_path}: produced non-finite values on {subject}")
        volumes[Path(out_dir) / f"{subject}.nii.gz"] = (from_slices(pred), sv.affine)
    # float32: the metrics score the output as the model made it (the reference scores its float
    # prediction; whole HU, int16, cost up to 0.02 dB of PSNR on the default run)
    write_niftis(volumes, dtype=np.float32)


def segment_ndct(nifti_dir: str, subjects: list[str], segmenter: str, out_dir: str, device: str = "auto") -> None:
    """The frozen segmenter's labels of each subject's NDCT, one uint8 NIfTI per subject (the
    NDCT's affine): the reference every experiment's Dice is taken against, made once instead
    of in each evaluation job."""
    dev = pick_device(device)
    seg = load_segmenter(segmenter, dev)
    volumes = {}
    for subject in tqdm(subjects, desc="segment NDCT", file=sys.stderr, disable=False):
        sv = load_subject(nifti_dir, subject, with_labels=False)
        volumes[Path(out_dir) / f"{subject}.nii.gz"] = (from_slices(segment(seg, sv.full, dev)), sv.affine)
    write_niftis(volumes, dtype=np.uint8)  # all together: a failure leaves the folder as it was


def read_like_subject(path: Path, sv, remedy: str) -> np.ndarray:
    """A volume made from a subject (its denoised output, its NDCT segmentation) as slices,
    checked against the subject's NDCT: 3-D, the same grid and affine (a flipped or shifted
    volume would be scored voxel by voxel against the wrong anatomy), finite values."""
    vol, affine = read_nifti(path)
    if vol.ndim != 3:
        raise DataError(f"{path}: a {vol.ndim}-D volume {vol.shape}; expected a 3-D volume like the NDCT; {remedy}")
    slices = to_slices(vol)
    if slices.shape != sv.full.shape:
        raise DataError(f"{path}: shape {slices.shape} (slices, rows, columns) differs from the NDCT's "
                        f"{sv.full.shape}; {remedy}")
    if not np.allclose(affine, sv.affine, atol=1e-3):
        raise DataError(f"{path}: its affine differs from the NDCT's (another orientation, spacing or "
                        f"position of the same grid); {remedy}")
    if not np.isfinite(slices).all():
        raise DataError(f"{path}: contains NaN or inf in {int((~np.isfinite(slices)).sum())} voxels; {remedy}")
    return slices


def _ndct_labels(seg, sv, subject: str, ndct_seg_dir: str | None, dev) -> np.ndarray:
    """The NDCT segmentation of a subject: read from `segment_ndct`'s folder, or made here."""
    if ndct_seg_dir is None:
        return segment(seg, sv.full, dev)
    path = Path(ndct_seg_dir) / f"{subject}.nii.gz"
    return read_like_subject(path, sv, "segment the NDCT again (ldct segment-ndct)").astype(np.uint8)


DICE_COLUMNS = ["experiment", "subject", "slice", "class", "out_px", "ndct_px", "truth_px", "inter_ndct",
                "inter_truth", "dice_vs_ndct", "dice_vs_truth"]


def dice_counts(experiment: str, subject: str, seg_out: np.ndarray, seg_ndct: np.ndarray,
                labels: np.ndarray | None) -> list[dict]:
    """Per slice and foreground class: pixel counts of the segmentation of the output, of NDCT
    and of the true labels, their overlaps, and the slice's Dice. The counts let the tables
    compute Dice over a whole volume (ldct.tables.dice_table), as segmentation is scored."""
    def dice(inter: int, a: int, b: int) -> float:
        return 2.0 * inter / (a + b) if a + b else np.nan

    rows = []
    for s in range(seg_out.shape[0]):
        for c in range(1, NUM_CLASSES):
            o, n = seg_out[s] == c, seg_ndct[s] == c
            row = {"experiment": experiment, "subject": subject, "slice": s, "class": c, "out_px": int(o.sum()),
                   "ndct_px": int(n.sum()), "truth_px": None, "inter_ndct": int((o & n).sum()), "inter_truth": None,
                   "dice_vs_truth": np.nan}
            row["dice_vs_ndct"] = dice(row["inter_ndct"], row["out_px"], row["ndct_px"])
            if labels is not None:
                t = labels[s] == c
                row.update(truth_px=int(t.sum()), inter_truth=int((o & t).sum()))
                row["dice_vs_truth"] = dice(row["inter_truth"], row["out_px"], row["truth_px"])
            rows.append(row)
    return rows


def evaluate_experiment(experiment: str, nifti_dir: str, subjects: list[str], denoised_dir: str | None,
                        segmenter: str | None, out_metrics: str, out_dice: str | None, device: str = "auto",
                        low_name: str = LOW_NAME, ndct_seg_dir: str | None = None) -> pd.DataFrame:
    """Per-slice metrics against NDCT (and the phantom truth where present), and per-slice,
    per-class Dice of the frozen segmenter on the output against its NDCT segmentation and
    against the true labels (when `segmenter` and `out_dice` are given). `low_name` picks
    the low-dose input of the LDCT row (another dose of the dose sweep); `ndct_seg_dir` holds
    the NDCT segmentations from `segment_ndct` (without it they are made here)."""
    dev = pick_device(device)
    seg = load_segmenter(segmenter, dev) if segmenter and out_dice else None
    rows, dice_rows = [], []
    for subject in tqdm(subjects, desc=f"evaluate {experiment}", file=sys.stderr, disable=False):
        sv = load_subject(nifti_dir, subject, low_name=low_name)
        if experiment == LDCT:
            out = sv.low
        else:
            out = read_like_subject(Path(denoised_dir) / f"{subject}.nii.gz", sv,
                                    f"denoise the test subjects with {experiment} again")
        vs_full = stack_metrics(out, sv.full)
        vs_truth = stack_metrics(out, sv.truth, prefix="truth_") if sv.truth is not None else [{}] * len(out)
        rows += [{"experiment": experiment, "subject": subject, "slice": s, **m, **t}
                 for s, (m, t) in enumerate(zip(vs_full, vs_truth))]
        if seg is not None:
            dice_rows += dice_counts(experiment, subject, segment(seg, out, dev),
                                     _ndct_labels(seg, sv, subject, ndct_seg_dir, dev), sv.labels)
    df = pd.DataFrame(rows)
    write_csv(out_metrics, df)
    if out_dice:
        write_csv(out_dice, pd.DataFrame(dice_rows, columns=DICE_COLUMNS))
    return df
