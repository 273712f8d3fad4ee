"""The embedded default dataset: phantom -> projection-domain dose simulation -> DICOM.

One call makes one subject: its DICOM series in the TCIA layout (full dose and one
low-dose series per dose fraction) under the DICOM root, and its ground truth under the
phantom folder: phantom.nii.gz (the phantom HU), truth.nii.gz (the noiseless reconstruction,
the phantom at the scanner's resolution: the reference of the "vs truth" metrics),
repeat.nii.gz (a second, independent scan at the primary low dose, rounded to whole HU as
the DICOM series are: the target of self-supervised Noise2Noise training), labels.nii.gz and
params.json. The same conversion step then runs as on the real data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from ldct import dicom
from ldct.io import write_json, write_nifti
from ldct.lowdose import make_geometry, repeat_scan, simulate_doses
from ldct.phantom import draw_subject, synthesize_subject


def subject_ids(n: int) -> list[str]:
    return [f"S{i + 1:03d}" for i in range(n)]


def subject_seed(seed: int, subject: str) -> int:
    return int(hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()[:8], 16)


def volume_affine(matrix: int, pixel_mm: float, slice_mm: float, z0: float) -> np.ndarray:
    """RAS affine of data[col, row, slice] for the axial grid the writer uses."""
    x0 = -(matrix - 1) / 2 * pixel_mm
    lps = np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])
    lps[:3, 3] = [x0, x0, z0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def make_subject(subject: str, cfg: dict, seed: int, dicom_dir: str | Path, phantom_dir: str | Path,
                 fields_cache: str | Path | None = None) -> None:
    """Synthesize one subject. `cfg` is the `synthetic` section of the config; `fields_cache`
    the template fields written by `ldct.phantom.save_fields` (built on the fly without it)."""
    s_seed = subject_seed(seed, subject)
    params = draw_subject(subject, s_seed, cfg["lesion_probability"])
    pixel = cfg["fov_mm"] / cfg["matrix"]
    ph = synthesize_subject(params, cfg["matrix"], pixel, cfg["slice_mm"], tuple(cfg["z_range_mm"]), fields_cache)
    geom = make_geometry(cfg)
    doses = simulate_doses(ph["hu"], geom, cfg["i0"], cfg["dose_fractions"], cfg["electronic_noise"], s_seed)
    dicom_dir, phantom_dir = Path(dicom_dir), Path(phantom_dir)
    study_uid = dicom.generate_uid(entropy_srcs=[str(seed), subject, "study"])
    n = dicom._num(subject)
    study = dicom_dir / f"01-01-2020-NA-NA-{n}"
    primary = cfg["dose_fractions"][0]
    ctdi_per_mas = 0.2  # mGy per mAs for a 16 cm head phantom at 120 kV (order of magnitude)
    noiseless = doses.pop(0.0)
    repeat = repeat_scan(ph["hu"], geom, cfg["i0"], primary, cfg["electronic_noise"], subject_seed(seed + 1, subject))
    for k, hu in doses.items():
        desc = dicom.FULL_DESCRIPTION if k == 1.0 else dicom.low_description(k, primary)
        mas = cfg["full_dose_mas"] * k
        final = study / f"1.000000-{desc}-{dicom._num(subject + desc)}"
        tmp = final.with_name(f".{final.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        dicom.write_series(tmp, hu, pixel_mm=pixel, slice_mm=cfg["slice_mm"], z_mm=ph["z_mm"],
                           subject=subject, study_uid=study_uid, description=desc, kvp=cfg["kvp"],
                           mas=mas, ctdivol=mas * ctdi_per_mas, seed_text=f"{seed}:{subject}:{desc}")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    aff = volume_affine(cfg["matrix"], pixel, cfg["slice_mm"], float(ph["z_mm"][0]))
    write_nifti(phantom_dir / "phantom.nii.gz", ph["hu"].transpose(2, 1, 0), aff, dtype=np.float32)
    write_nifti(phantom_dir / "truth.nii.gz", noiseless.transpose(2, 1, 0), aff, dtype=np.float32)
    write_nifti(phantom_dir / "repeat.nii.gz", np.round(repeat).transpose(2, 1, 0), aff, dtype=np.float32)
    write_nifti(phantom_dir / "labels.nii.gz", ph["labels"].transpose(2, 1, 0), aff, dtype=np.uint8)
    write_json(phantom_dir / "params.json", {**json.loads(params.to_json()),
                                     "dose_fractions": cfg["dose_fractions"], "i0": cfg["i0"]})


def ldct_vs_ndct(config: dict, subjects: list[str], windows=("brain", "full")) -> list[dict[str, dict[str, float]]]:
    """Per-slice metrics of the primary low dose against full dose for synthetic `subjects` of a
    validated config, made in memory (no DICOM): the calibration against the paper's LDCT row."""
    from ldct.metrics import window_metrics  # torchmetrics: not needed by the synthesis jobs

    cfg = config["synthetic"]
    k = cfg["dose_fractions"][0]
    geom = make_geometry(cfg)
    rows = []
    for s in subjects:
        seed = subject_seed(config["seed"], s)
        ph = synthesize_subject(draw_subject(s, seed, cfg["lesion_probability"]), cfg["matrix"],
                                cfg["fov_mm"] / cfg["matrix"], cfg["slice_mm"], tuple(cfg["z_range_mm"]))
        doses = simulate_doses(ph["hu"], geom, cfg["i0"], [k], cfg["electronic_noise"], seed)
        rows += [{w: window_metrics(low, full, w) for w in windows} for full, low in zip(doses[1.0], doses[k])]
    return rows
