"""Clinical image quality of every row on the synthetic data: low-contrast lesion
detectability, noise texture and resolution (what a radiologist judges; PSNR does not).

`make_scans` makes, once, the test scans this needs. For every test subject: two scans A and
B of its noiseless phantom, each with hypodense lesions (ldct.lesion_task) at half of a set of
known sites, so that every site is lesion-present in one scan and lesion-absent in the other;
both projected and reconstructed like the test data (ldct.lowdose: full and low dose,
independent noise, and the noiseless reconstruction). Plus a uniform water QA phantom with
circular inserts (ldct.ttf), one slice per noise realisation, for the task-transfer function.

`measure` reads one row's images (the low-dose scans for LDCT, the full-dose ones for NDCT,
the noiseless reconstructions, or an experiment's model applied to the low-dose scans) and
gives: the channelized Hotelling observer's d' and AUC per lesion contrast and size, with the
ROIs' channel outputs for paired comparisons (ldct.observer), on a background-known-exactly task
(each ROI less the site's noiseless lesion-absent anatomy: noise and the row's own errors limit
it, not anatomical clutter; the noiseless row's d' is therefore unbounded); the noise power spectrum in
brain ROIs by the difference method (`noise_rois`: scan A's error less scan B's, so the row's
deterministic error on the anatomy cancels) and the noise SD from it (ldct.nps); the TTF and
f50 of each insert (ldct.ttf); and, in the lesion ROIs, the HU bias, the measured lesion
contrast and the CNR (against that noise SD).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from ldct.data import to_slices
from ldct.errors import DataError
from ldct.io import read_nifti
from ldct.lesion_task import TISSUES, LesionSite, extract_rois, insert_lesions, lesion_profile, place_lesions
from ldct.lowdose import make_geometry, simulate_doses
from ldct.nps import nps_2d, nps_summary
from ldct.observer import cho, laguerre_gauss_channels
from ldct.paths import LDCT, NDCT, NOISELESS
from ldct.synthetic import subject_seed
from ldct.ttf import insert_phantom, ttf_record

MIN_SITES = 6  # lesion sites per condition: 3 to train the observer, 3 to score (ldct.stats.paired_dprime)
TTF_REACH = 0.8  # the TTF's edge window, +- this fraction of the QA insert's radius (ldct.ttf.edge_spreads)


def conditions(cfg: dict) -> list[tuple[float, float]]:
    """(contrast HU, diameter mm) of every lesion condition of a `clinical` config section,
    hardest (smallest |contrast|, then smallest size) first."""
    pairs = itertools.product(cfg["contrasts_hu"], cfg["diameters_mm"])
    return sorted(pairs, key=lambda cd: (abs(cd[0]), cd[1]))


def qa_body_mm(synth: dict) -> float:
    """The QA phantom's water cylinder: 180 mm (a head), or less where the field of view is smaller."""
    return min(180.0, 0.75 * synth["fov_mm"])


def _scan_pair(hu: np.ndarray, labels: np.ndarray, cfg: dict, pixel: float, rng: np.random.Generator):
    """Scans A and B (noiseless HU) of one subject and its lesion and noise-ROI sites."""
    sites = place_lesions(labels, cfg["roi_px"], cfg["lesions_per_slice"], rng, classes=TISSUES[cfg["tissue"]])
    conds = conditions(cfg)
    order = rng.permutation(len(sites))  # conditions and scans assigned in a random, balanced order
    groups: dict[tuple[int, int], list] = {}  # (scan, condition) -> its sites: one insertion each
    rows = []
    for k, site in zip(order, sites):
        cond, scan = k % len(conds), (k // len(conds)) % 2
        groups.setdefault((scan, cond), []).append(site)
        rows.append({"kind": "lesion", "slice": site.z, "row": site.y, "col": site.x, "contrast_hu": conds[cond][0],
                     "diameter_mm": conds[cond][1], "present_scan": scan})
    scans = [hu, hu]
    for (scan, cond), group in sorted(groups.items()):
        scans[scan] = insert_lesions(scans[scan], group, *conds[cond], pixel)
    brain = tuple(int(c) for c in np.unique(labels) if c > 0)
    for site in place_lesions(labels, cfg["nps_roi_px"], cfg["nps_rois_per_slice"], rng, classes=brain):
        rows.append({"kind": "nps", "slice": site.z, "row": site.y, "col": site.x})
    return np.stack(scans), rows


def make_scans(phantom_root: str | Path, subjects: list[str], synth: dict, cfg: dict, seed: int,
               out_npz: str | Path, out_sites: str | Path) -> None:
    """Write the lesion-task scans of `subjects` (images stacked as subject, scan A/B, slice)
    and the QA phantom's to `out_npz`, and every site (lesion and noise ROI) to `out_sites`.
    `synth` is the `synthetic` config section, `cfg` the `clinical` one."""
    from ldct.io import atomic_path, write_csv

    pixel = synth["fov_mm"] / synth["matrix"]
    geom = make_geometry(synth)
    dose = synth["dose_fractions"][0]
    stacks = {"noiseless": [], "full": [], "low": []}
    rows, base = [], 0
    for subject in subjects:
        folder = Path(phantom_root) / subject
        hu = to_slices(read_nifti(folder / "phantom.nii.gz")[0]).astype(np.float32)
        labels = to_slices(read_nifti(folder / "labels.nii.gz")[0]).astype(np.int64)
        if hu.shape != labels.shape:
            raise DataError(f"{folder}: phantom {hu.shape} and labels {labels.shape} differ in shape")
        s_seed = subject_seed(seed, subject + ":clinical")
        pair, sub_rows = _scan_pair(hu, labels, cfg, pixel, np.random.default_rng(s_seed))
        n = len(hu)
        for scan in (0, 1):  # independent noise in each scan
            doses = simulate_doses(pair[scan], geom, synth["i0"], [dose], synth["electronic_noise"], s_seed + scan)
            for key, k in (("noiseless", 0.0), ("full", 1.0), ("low", dose)):
                stacks[key].append(doses[k].astype(np.float32))
        for r in sub_rows:
            r["subject"] = subject
            if r["kind"] == "lesion":
                r["present_image"] = base + r["present_scan"] * n + r["slice"]
                r["absent_image"] = base + (1 - r["present_scan"]) * n + r["slice"]
                rows.append(r)
            else:  # a noise ROI is read in both scans
                rows += [{**r, "present_image": base + scan * n + r["slice"]} for scan in (0, 1)]
        base += 2 * n
    sites = pd.DataFrame(rows)
    lesions = sites["kind"] == "lesion"
    counts = sites[lesions].groupby(["contrast_hu", "diameter_mm"]).size()
    for contrast, diameter in conditions(cfg):
        if counts.get((contrast, diameter), 0) < MIN_SITES:
            raise DataError(f"clinical: the {contrast:g} HU, {diameter:g} mm lesions got "
                            f"{counts.get((contrast, diameter), 0)} sites on {len(subjects)} test subject(s); the "
                            f"observer needs at least {MIN_SITES} ({MIN_SITES // 2} to train, {MIN_SITES // 2} to test, "
                            "as Table 5's paired comparison does): lower clinical.roi_px, raise "
                            "clinical.lesions_per_slice, or configure fewer contrasts and diameters")
    # Observer halves: within each condition, alternate sites (in subject, slice order) train the
    # template and are scored, so both halves span every subject; a site's ROIs stay together.
    sites["half"] = ""
    for _, grp in sites[lesions].sort_values(["subject", "slice", "row", "col"]).groupby(
            ["contrast_hu", "diameter_mm"], sort=False):
        sites.loc[grp.index, "half"] = ["train" if i % 2 == 0 else "test" for i in range(len(grp))]
    sites["absent_image"] = sites["absent_image"].astype("Int64")  # none for a noise ROI
    qa = _qa_scans(synth, cfg, geom, dose, seed)
    with atomic_path(out_npz, ".npz") as tmp:
        np.savez(tmp, **{k: np.concatenate(v) for k, v in stacks.items()},
                 **{f"qa_{k}": v for k, v in qa.items()})
    write_csv(out_sites, sites[["subject", "kind", "slice", "row", "col", "contrast_hu", "diameter_mm",
                                "present_image", "absent_image", "half"]])


def _qa_scans(synth: dict, cfg: dict, geom, dose: float, seed: int) -> dict[str, np.ndarray]:
    qa = cfg["qa"]
    pixel = synth["fov_mm"] / synth["matrix"]
    hu, centres = insert_phantom(synth["matrix"], pixel, qa["contrasts_hu"], qa["insert_mm"], qa_body_mm(synth),
                                 reach_mm=TTF_REACH * qa["insert_mm"] / 2)
    stack = np.repeat(hu[None], qa["slices"], axis=0)
    doses = simulate_doses(stack, geom, synth["i0"], [dose], synth["electronic_noise"], subject_seed(seed, "qa"))
    return {"noiseless": doses[0.0], "full": doses[1.0], "low": doses[dose],
            "centres": np.asarray(centres, dtype=np.float64)}


def row_images(row: str, scans: dict[str, np.ndarray], model: str | Path | None = None,
               device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(lesion-task images, QA images) of a row: LDCT, NDCT, noiseless, or a trained model
    (model.pt) applied to the low-dose scans."""
    source = {LDCT: "low", NDCT: "full", NOISELESS: "noiseless"}.get(row)
    if source:
        return scans[source], scans[f"qa_{source}"]
    if model is None:
        raise DataError(f"clinical row {row!r}: an experiment needs its trained model")
    from ldct.inference import checkpoint_amp, load_denoiser, pick_device, predict_slices

    dev = pick_device(device)
    net, ck = load_denoiser(model, dev)
    return tuple(predict_slices(net, scans[key], ck["hu_range"], dev, amp=checkpoint_amp(ck)) for key in ("low", "qa_low"))


def _sites(frame: pd.DataFrame, column: str) -> list[LesionSite]:
    return [LesionSite(int(i), int(y), int(x)) for i, y, x in frame[[column, "row", "col"]].to_numpy()]


def noise_rois(errors: np.ndarray, nps_sites: pd.DataFrame, roi_px: int) -> np.ndarray:
    """Noise-only ROIs by the difference method (AAPM TG-233): at every noise site, the row's
    error (output minus noiseless) in scan A less its error in scan B, over sqrt(2). What the
    row does to the anatomy the two scans share (blur, bias) cancels; the noise, independent in
    A and B, stays at one scan's variance. (Output minus truth alone would count a denoiser's
    smoothing of the anatomy as noise.) The lesions, in one scan only, do not cancel where a noise
    ROI overlaps one: a noise-free 1.5-pixel blur of the default scans leaves 0.4 HU there, against
    ~7 HU of noise (0.2 % of the SD in quadrature); it grows with the lesions' contrast."""
    ordered = nps_sites.sort_values(["subject", "slice", "row", "col", "present_image"])
    counts = ordered.groupby(["subject", "slice", "row", "col"]).size()
    if len(counts) == 0 or (counts != 2).any():
        raise DataError("clinical sites: every noise ROI needs exactly its two scans (A and B)")
    a, b = ordered.iloc[0::2], ordered.iloc[1::2]
    return (extract_rois(errors, _sites(a, "present_image"), roi_px)
            - extract_rois(errors, _sites(b, "present_image"), roi_px)) / np.sqrt(2.0)


def lesion_contrast(present: np.ndarray, absent: np.ndarray, diameter_mm: float, pixel_mm: float) -> np.ndarray:
    """Per site, the lesion's measured contrast (HU): disc minus surrounding background in the
    lesion-present ROI, less the same in the lesion-absent ROI at the site (removes the anatomy)."""
    size = present.shape[1]
    c = size // 2  # the ROI's centre pixel is the lesion centre (ldct.lesion_task.extract_rois)
    prof = lesion_profile((size, size), c, c, diameter_mm, pixel_mm)
    r = np.hypot(*np.meshgrid(np.arange(size) - c, np.arange(size) - c, indexing="ij"))
    disc = prof > 0.5
    ring = (prof == 0) & (r < size / 2)
    if not disc.any() or not ring.any():
        raise DataError(f"a {diameter_mm:g} mm lesion does not fit a {size}-pixel ROI at {pixel_mm:g} mm pixels")

    def contrast(rois):
        return rois[:, disc].mean(1) - rois[:, ring].mean(1)

    return contrast(present) - contrast(absent)


def _noiseless_condition(contrast_hu: float, diameter: float, present: np.ndarray, absent: np.ndarray,
                         pixel: float) -> dict:
    measured = lesion_contrast(present, absent, diameter, pixel)
    return {"contrast_hu": contrast_hu, "diameter_mm": diameter, "dprime": float("inf"), "auc": 1.0,
            "n_train": 0, "n_test": len(present) + len(absent), "measured_contrast_hu": float(measured.mean()),
            "measured_contrast_se_hu": _standard_error(measured), "cnr": float("inf"), "cnr_se": float("nan")}


def _standard_error(values: np.ndarray) -> float:
    """The standard error of a mean over sites (scipy.stats.sem; NaN for fewer than two)."""
    from scipy import stats

    return float(stats.sem(values)) if len(values) > 1 else float("nan")


def measure(row: str, images: np.ndarray, qa_images: np.ndarray, scans: dict[str, np.ndarray],
            sites: pd.DataFrame, synth: dict, cfg: dict, seed: int = 0) -> dict:
    """Every clinical measurement of one row (a JSON-ready dict); see the module docstring."""
    if images.shape != scans["noiseless"].shape or qa_images.shape != scans["qa_noiseless"].shape:
        raise DataError(f"clinical row {row!r}: images {images.shape} / {qa_images.shape} do not match the scans")
    if not (np.isfinite(images).all() and np.isfinite(qa_images).all()):
        raise DataError(f"clinical row {row!r}: the images contain NaN or infinite values")
    pixel = synth["fov_mm"] / synth["matrix"]
    errors = images.astype(np.float64) - scans["noiseless"]
    roi = cfg["roi_px"]
    channels = laguerre_gauss_channels(roi, cfg["observer"]["channels"], cfg["observer"]["channel_width_mm"] / pixel)
    lesions = sites[sites["kind"] == "lesion"]
    nps_rois = noise_rois(errors, sites[sites["kind"] == "nps"], cfg["nps_roi_px"])
    out_nps = {**nps_summary(nps_2d(nps_rois, pixel)[0], pixel), "n_rois": len(nps_rois)}
    noise_sd = out_nps["noise_sd"]  # the CNR's noise: the noise SD of the table (the NPS's integral)
    lesion_errors = np.concatenate([extract_rois(errors, _sites(lesions, column), roi)
                                    for column in ("absent_image", "present_image")])
    out = {"row": row, "subjects": sorted(sites["subject"].unique()), "pixel_mm": pixel, "roi_px": roi,
           "channels": cfg["observer"]["channels"],
           "channel_width_mm": cfg["observer"]["channel_width_mm"],
           "roi": {"bias": float(lesion_errors.mean())},
           "conditions": []}
    for contrast_hu, diameter in conditions(cfg):
        grp = lesions[(lesions["contrast_hu"] == contrast_hu) & (lesions["diameter_mm"] == diameter)]
        grp = pd.concat([grp[grp["half"] == "train"], grp[grp["half"] == "test"]])
        # Background known exactly: the observer reads each ROI minus the site's noiseless
        # lesion-absent anatomy, so what limits it is the noise and what the row did to the
        # lesion and its surroundings, not the anatomical clutter of the site.
        background = extract_rois(scans["noiseless"], _sites(grp, "absent_image"), roi)
        present = extract_rois(images, _sites(grp, "present_image"), roi) - background
        absent = extract_rois(images, _sites(grp, "absent_image"), roi) - background
        if not absent.any():  # the noiseless row: nothing to hide the lesion, d' unbounded
            out["conditions"].append(_noiseless_condition(contrast_hu, diameter, present, absent, pixel))
            continue
        res = cho(present, absent, channels, seed, cfg["observer"]["bootstrap"],
                  n_train=int((grp["half"] == "train").sum()), scores=True, paired=True)
        measured = lesion_contrast(present, absent, diameter, pixel)
        # the contrast is measured through the row's noise: its standard error over the sites
        # (about a quarter of LDCT's -5 HU, 8 mm contrast) goes with the CNR
        se = _standard_error(measured)
        out["conditions"].append({"contrast_hu": contrast_hu, "diameter_mm": diameter, **res,
                                  "measured_contrast_hu": float(measured.mean()), "measured_contrast_se_hu": se,
                                  "cnr": float(abs(measured.mean()) / noise_sd) if noise_sd > 0 else float("inf"),
                                  "cnr_se": se / noise_sd if noise_sd > 0 else float("nan")})
    out["nps"] = out_nps
    qa = cfg["qa"]
    qa_hu, radius = qa_images.astype(np.float64), qa["insert_mm"] / 2
    out["ttf"] = []
    for contrast_hu, centre in zip(qa["contrasts_hu"], scans["qa_centres"]):
        out["ttf"].append({"contrast_hu": contrast_hu,
                           **ttf_record(qa_hu, tuple(centre), radius, pixel, reach_mm=TTF_REACH * radius, seed=seed)})
    return out


def load_scans(path: str | Path) -> dict[str, np.ndarray]:
    from ldct.errors import DataError, MissingFileError

    if not Path(path).is_file():
        raise MissingFileError(f"{path}: clinical scans not found (made by `ldct clinical-scans`)")
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # numpy raises several types for truncated or foreign files
        raise DataError(f"{path}: cannot read clinical scans ({type(err).__name__}: {err}); "
                        "remake them with `ldct clinical-scans`") from err
