"""Synthetic head CT phantoms from the MNI152 2009 templates shipped in the nilearn wheel.

The templates (T1 brain, GM and WM probability maps, 1 mm) give real cortical folding,
white matter and ventricles. Around the brain we grow, by distance from the intracranial
surface, subarachnoid CSF, dura, a skull of cortical tables and diploe, and the scalp; a head
holder lies under the head. Deep nuclei and lobes are ellipsoids and coordinate partitions
in MNI space. Each subject is the template seen through its own affine (size, tilt,
position), a smooth elastic deformation and a radial ventricle enlargement (atrophy), with
optional lesions; every random choice comes from the subject seed and is written to JSON.

How each of the 17 labels (ldct.classes) is made, in MNI coordinates (mm, RAS):
  1 parenchyma      white matter (wm > gm, csf) and deep grey matter not labelled otherwise,
                    the brainstem (|x| < 12, -40 < y < -10, z < -10)
  2 CSF             intracranial voxels where csf dominates, outside the ventricle box,
                    plus the 0-2 mm layer outside the brain mask (subarachnoid space)
  3 dura / sinus    the 2-3 mm layer outside the brain mask; the superior sagittal sinus
  4 septum          |x| < 2 mm between the lateral ventricles (-5 < y < 25, 5 < z < 25)
  5 cerebellum      brain below the tentorium: z < -8 + 0.1 (y + 60) and y < -35
  6 caudate         ellipsoids centred (+-13, 12, 10), radii (6, 12, 9)
  7 lentiform       ellipsoids centred (+-24, 0, 0), radii (7, 14, 9)
  8 insular cortex  cortex with 30 < |x| < 42, -22 < y < 22, -10 < z < 20
  9 int. capsule    the white matter medial to the lentiform nucleus, within 6 mm of it (the
                    V between lentiform, caudate and thalamus)
 10 ventricles      csf-dominant voxels inside the box |x| < 32, -45 < y < 30, -5 < z < 32
 11 central sulcus  cortex within 3.5 mm of the surface y = -18 - 0.45 (z - 30), z > 25
 12-15 lobes        remaining cortex: occipital y < -72; temporal z < 8 and |x| > 30 and
                    -72 < y < 25; frontal anterior of the central sulcus; parietal the rest
 16 thalamus        ellipsoids centred (+-10, -20, 6), radii (8, 13, 9)
The deep nuclei take the deep grey matter attenuation whatever the template's tissue
probabilities there (the MNI maps class much of the putamen as white matter), so that they
show on NDCT as they do on real head CT; nucleus sizes are those of adult anatomy.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ldct.errors import MissingFileError

# Parenchymal texture: smooth random fields (~10 mm and ~6 mm grain; amplitude the subject's
# texture_hu times the gains) stand in for the unresolved heterogeneity of real brain (sulci,
# vessels, perivascular spaces). Without it the synthetic LDCT/NDCT SSIM sits ~0.03 below the
# real data's at the same PSNR; at gain 2 it is 0.008 lower than at 2.5 (see
# benchmarks/calibration.py). Kept out of CSF so that ventricles and sulci stay clean.
FINE_TEXTURE_MM = 6.0
COARSE_TEXTURE_GAIN = 2.5
FINE_TEXTURE_GAIN = 2.5
SOFT_TEXTURE_MIN_HU = 15.0
# Sulcal CSF weighs this much more than its template probability in the partial-volume mix:
# the averaged MNI template has shallow sulci; patients (the Mayo cohort is mostly elderly)
# show wider ones.
SULCAL_CSF_GAIN = 3.0
# Non-contrast head CT attenuation (HU), typical adult values.
HU = {
    "wm": 26.0, "gm": 39.0, "csf": 7.0, "deep_gm": 38.0, "capsule": 25.0, "dura": 50.0,
    "sinus": 48.0, "cortical_bone": 1500.0, "diploe": 650.0, "scalp": 35.0, "fat": -90.0,
    "air": -1000.0, "holder": 150.0, "cushion": -850.0, "haemorrhage": 68.0, "infarct": 14.0,
    "calcification": 250.0,
}


def _template_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


FIELD_DTYPES = {"gm": np.uint8, "wm": np.uint8, "csf": np.uint8, "deep": np.uint8, "capsule": np.uint8,
                "sinus": np.uint8, "labels": np.uint8, "dist": np.float16}


def _quantize(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store probabilities as uint8 (1/255 steps) and distances as float16: 80 MB on disk."""
    out = {}
    for k, v in fields.items():
        dt = FIELD_DTYPES.get(k)
        if dt is np.uint8 and k != "labels":
            out[k] = np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)
        elif dt is not None:
            out[k] = v.astype(dt)
        else:
            out[k] = np.asarray(v)
    return out


def _dequantize(q: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in q.items():
        if FIELD_DTYPES.get(k) is np.uint8 and k != "labels":
            out[k] = v.astype(np.float32) / 255.0
        elif k == "dist":
            out[k] = v.astype(np.float32)
        else:
            out[k] = v
    return out


def save_fields(path: str | Path) -> None:
    """Build the template fields once and store them (the workflow's `template_fields` rule)."""
    from ldct.io import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **_quantize(_build_fields()))


@functools.lru_cache(maxsize=2)
def mni_fields(cache: str | None = None) -> dict[str, np.ndarray]:
    """Static fields on the 1 mm MNI grid (tissue probabilities, labels, distances), read from
    `cache` (written by `save_fields`) or built (~6 s). Both paths give identical values."""
    if cache and Path(cache).is_file():
        with np.load(cache) as z:
            return _dequantize({k: z[k] for k in z.files})
    return _dequantize(_quantize(_build_fields()))


def _load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 T1, GM and WM templates: (affine, t1, gm, wm), the probabilities scaled to max 1."""
    d = _template_dir()
    name = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    try:
        imgs = {k: nib.load(str(d / name.format(k))) for k in ("t1", "gm", "wm")}
    except FileNotFoundError as err:
        raise MissingFileError(f"MNI152 template missing from the nilearn wheel: {err.filename}") from err
    affine = imgs["t1"].affine
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32)
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32)
    gm /= max(gm.max(), 1e-6)
    wm /= max(wm.max(), 1e-6)
    return affine, t1, gm, wm


def _ellipsoid(ax: np.ndarray, y: np.ndarray, z: np.ndarray, cx: float, cy: float, cz: float,
               rx: float, ry: float, rz: float) -> np.ndarray:
    """A pair of ellipsoids mirrored in x (`ax` = |x|), as a mask."""
    return ((ax - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0


def _label_tissues(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, ax: np.ndarray,
                   y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start the label map: parenchyma, CSF and ventricles by dominant tissue; return
    (labels, csf-dominant, grey-dominant, ventricle masks)."""
    lab = np.zeros(brain.shape, np.uint8)
    csf_dom = brain & (csf > np.maximum(gm, wm))
    wm_dom = brain & ~csf_dom & (wm >= gm)
    gm_dom = brain & ~csf_dom & ~wm_dom
    vent_box = (ax < 32) & (y > -45) & (y < 30) & (z > -5) & (z < 32)
    lab[brain] = 1
    lab[csf_dom] = 2
    vent = csf_dom & vent_box
    vent = ndimage.binary_opening(vent, iterations=1)
    lab[vent] = 10
    return lab, csf_dom, gm_dom, vent


def _label_cortex(lab: np.ndarray, gm_dom: np.ndarray, dist: np.ndarray, cerebellum_zone: np.ndarray,
                  ax: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Label the cortex in place: lobes, central sulcus and insula."""
    cs_y = -18.0 - 0.45 * (z - 30.0)
    cortex = gm_dom & (dist > -6)
    occ = y < -72
    temporal = (z < 8) & (ax > 30) & (y > -72) & (y < 25)
    frontal = (y > cs_y) & ~temporal
    lab[cortex & ~occ & ~temporal & ~frontal] = 13
    lab[cortex & frontal] = 12
    lab[cortex & temporal] = 15
    lab[cortex & occ] = 14
    lab[cortex & (np.abs(y - cs_y) < 3.5) & (z > 25)] = 11
    lab[gm_dom & ~cerebellum_zone & (ax > 28) & (ax < 42) & (y > -22) & (y < 22) & (z > -10) & (z < 20) & (dist < -4)] = 8


def _label_deep(lab: np.ndarray, brain: np.ndarray, csf_dom: np.ndarray, vent: np.ndarray,
                cerebellum_zone: np.ndarray, ax: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Label in place the cerebellum, brainstem, deep nuclei, internal capsule and septum."""
    cerebellum = brain & cerebellum_zone
    lab[cerebellum] = 5
    stem = brain & (ax < 12) & (y > -40) & (y < -10) & (z < -10)
    lab[stem] = 1
    lentiform = brain & _ellipsoid(ax, y, z, 24, 0, 0, 7, 14, 9)
    capsule = brain & ~csf_dom & ~lentiform & _ellipsoid(ax, y, z, 24, 0, 0, 13, 17, 10) & (ax < 24)
    lab[capsule] = 9
    lab[lentiform] = 7
    lab[brain & _ellipsoid(ax, y, z, 13, 12, 10, 6, 12, 9) & ~vent] = 6
    lab[brain & _ellipsoid(ax, y, z, 10, -20, 6, 8, 13, 9) & ~vent] = 16
    septum = brain & (ax < 2.0) & (y > -5) & (y < 25) & (z > 5) & (z < 25)
    lab[septum & ndimage.binary_dilation(vent, iterations=3)] = 4


def _label_surface(lab: np.ndarray, dist: np.ndarray, ax: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Label in place the subarachnoid CSF and dura layers and the superior sagittal sinus;
    return the sinus mask."""
    lab[(dist > 0) & (dist <= 2.0)] = 2
    lab[(dist > 2.0) & (dist <= 3.0)] = 3
    sinus = (ax < 4) & (dist > 0.5) & (dist < 5.0) & (z > 0) & (y < 60)
    lab[sinus & (dist < 5.0)] = 3
    return sinus


def _build_fields() -> dict[str, np.ndarray]:
    """Build the static MNI-grid fields from the templates (see the module docstring's labels)."""
    affine, t1, gm, wm = _load_templates()
    brain = ndimage.binary_closing(t1 > 5, iterations=2)
    brain = ndimage.binary_fill_holes(brain)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    # signed distance (mm) from the brain surface: > 0 outside, < 0 inside
    dist = ndimage.distance_transform_edt(~brain).astype(np.float32) - ndimage.distance_transform_edt(brain).astype(np.float32)

    ii, jj, kk = np.meshgrid(*(np.arange(s) for s in t1.shape), indexing="ij")
    x = affine[0, 0] * ii + affine[0, 3]
    y = affine[1, 1] * jj + affine[1, 3]
    z = affine[2, 2] * kk + affine[2, 3]
    ax = np.abs(x)

    lab, csf_dom, gm_dom, vent = _label_tissues(brain, gm, wm, csf, ax, y, z)
    cerebellum_zone = (z < -8 + 0.1 * (y + 60)) & (y < -35)  # below the tentorium
    _label_cortex(lab, gm_dom, dist, cerebellum_zone, ax, y, z)
    _label_deep(lab, brain, csf_dom, vent, cerebellum_zone, ax, y, z)
    sinus = _label_surface(lab, dist, ax, y, z)
    deep = np.isin(lab, (6, 7, 16)).astype(np.float32)
    caps = (lab == 9).astype(np.float32)
    return {
        "affine": affine, "gm": gm, "wm": wm, "csf": csf, "dist": dist, "labels": lab,
        "deep": deep, "capsule": caps, "sinus": sinus.astype(np.float32),
        "vent_center": np.array([0.0, -10.0, 15.0]),
        # centre of the head in MNI mm (the template's brain is not centred on y = 0)
        "head_center": np.array([0.0, float((y[brain].min() + y[brain].max()) / 2), 0.0]),
    }


@dataclass
class Lesion:
    kind: str                   # haemorrhage | infarct | calcification
    center_mm: list[float]      # MNI mm
    radii_mm: list[float]


@dataclass
class SubjectParams:
    """Every random choice behind one synthetic subject (written to its JSON)."""

    subject: str
    seed: int
    scale: list[float]
    rotation_deg: list[float]          # about x (tilt), y, z
    shift_mm: list[float]
    elastic_mm: float
    atrophy: float                     # radial ventricle enlargement factor (0 = none)
    skull_mm: float
    scalp_mm: float
    texture_hu: float
    lesions: list[Lesion] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def draw_subject(subject: str, seed: int, lesion_probability: float = 0.3) -> SubjectParams:
    rng = np.random.default_rng(seed)
    lesions = []
    for kind in ("haemorrhage", "infarct", "calcification"):
        if rng.random() < lesion_probability:
            c = [float(rng.uniform(-45, 45)), float(rng.uniform(-50, 40)), float(rng.uniform(0, 45))]
            r = float(rng.uniform(2, 4)) if kind == "calcification" else float(rng.uniform(5, 12))
            lesions.append(Lesion(kind, c, [r, r * float(rng.uniform(0.7, 1.3)), r * float(rng.uniform(0.7, 1.3))]))
    return SubjectParams(
        subject=subject, seed=int(seed),
        scale=[float(v) for v in rng.normal(1.0, 0.04, 3)],
        rotation_deg=[float(rng.normal(0, 5)), float(rng.normal(0, 2)), float(rng.normal(0, 3))],
        shift_mm=[float(rng.normal(0, 4)), float(rng.normal(0, 4)), 0.0],
        elastic_mm=float(rng.uniform(1.0, 3.0)),
        atrophy=float(rng.uniform(0.0, 0.35)),
        skull_mm=float(rng.uniform(5.5, 8.0)),
        scalp_mm=float(rng.uniform(4.0, 7.0)),
        texture_hu=float(rng.uniform(1.5, 3.0)),
        lesions=lesions,
    )


def _rotation(deg: list[float]) -> np.ndarray:
    a, b, c = (math.radians(v) for v in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], grid: int, amplitude: float) -> np.ndarray:
    """A smooth random field: coarse Gaussian noise upsampled with cubic splines."""
    coarse = rng.normal(0.0, amplitude, (grid,) * len(shape))
    return ndimage.zoom(coarse, [s / grid for s in shape], order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]


def _scanner_points(matrix: int, pixel_mm: float, slice_mm: float, z_range_mm: tuple[float, float]
                    ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Sampling points of the scanner grid, several sub-slices per slice (for the slice thickness):
    return (slice centres, sub-slices per slice, in-plane coordinates, (N, 3) points in
    (slice, sub, row, col) order), all in scanner mm."""
    z0, z1 = z_range_mm
    n_slices = max(1, int(round((z1 - z0) / slice_mm)))
    zc = z0 + (np.arange(n_slices) + 0.5) * slice_mm
    n_sub = max(1, int(round(slice_mm)))
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    coords = (np.arange(matrix) + 0.5) * pixel_mm - matrix * pixel_mm / 2
    # scanner points: (slice, sub, row, col); rows go anterior (+y MNI) to posterior
    zz = (zc[:, None] + sub[None, :] * slice_mm)[:, :, None, None]
    yy = -coords[None, None, :, None] + 0.0 * zz
    xx = -coords[None, None, None, :] + 0.0 * zz  # columns run to patient left (DICOM +x)
    pts = np.stack(np.broadcast_arrays(xx, yy, zz), axis=-1).reshape(-1, 3)
    return zc, n_sub, coords, pts


def _scanner_to_mni(pts: np.ndarray, params: SubjectParams, f: dict[str, np.ndarray],
                    rng: np.random.Generator) -> np.ndarray:
    """Map scanner points to MNI mm through the subject's pose, elastic deformation (three
    fields drawn from `rng`) and atrophy."""
    # scanner -> MNI: undo shift, rotation and scale
    rot = _rotation(params.rotation_deg)
    mni = ((pts - np.array(params.shift_mm)) @ rot) / np.array(params.scale) + f["head_center"]
    # elastic deformation: smooth displacement on a coarse lattice over the head box
    disp = [_smooth_field(rng, (9, 9, 9), 5, params.elastic_mm) for _ in range(3)]
    lat_idx = (mni + 100) / 25.0
    mni = mni + np.stack([ndimage.map_coordinates(dd, lat_idx.T, order=1, mode="nearest") for dd in disp], -1)
    # atrophy: push sampling points toward the ventricle centre -> ventricles appear larger
    rel = mni - f["vent_center"]
    r = np.linalg.norm(rel / np.array([25.0, 35.0, 25.0]), axis=-1, keepdims=True)
    return mni - params.atrophy * rel * np.exp(-(r**2))


def _layer_bounds(params: SubjectParams) -> tuple[float, float, float]:
    """Outer surfaces of dura, skull and scalp (template mm from the brain surface)."""
    skull_in, skull_out = 3.0, 3.0 + params.skull_mm
    return skull_in, skull_out, skull_out + params.scalp_mm


def _brain_hu(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, deep: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Partial-volume HU of intracranial tissue; deep nuclei and capsule override the template's
    grey/white split (their weights and the grey/white ones sum to gm + wm)."""
    parenchyma = gm + wm
    rest = (1 - deep) * (1 - caps)
    num = (HU["deep_gm"] * deep * parenchyma + HU["capsule"] * caps * (1 - deep) * parenchyma
           + HU["gm"] * gm * rest + HU["wm"] * wm * rest + HU["csf"] * SULCAL_CSF_GAIN * csf)
    return num / np.maximum(parenchyma + SULCAL_CSF_GAIN * csf, 1e-6)


def _tissue_hu(f: dict[str, np.ndarray], vox: np.ndarray, mni: np.ndarray,
               params: SubjectParams) -> tuple[np.ndarray, np.ndarray]:
    """HU at the sampling points (template voxel coordinates `vox`) before texture: brain, the
    layers outside it, the sinus and lesions; return (HU, distance from the brain surface)."""

    def sample(name: str, order: int = 1, cval: float = 0.0) -> np.ndarray:
        return ndimage.map_coordinates(f[name], vox, order=order, mode="constant", cval=cval)

    gm, wm, csf = sample("gm"), sample("wm"), sample("csf")
    dist = sample("dist", cval=200.0)
    deep, caps, sinus = sample("deep"), sample("capsule"), sample("sinus")
    tissue = gm + wm + csf
    brain_hu = _brain_hu(gm, wm, csf, deep, caps)
    # layers outside the brain surface (distance in template mm)
    skull_in, skull_out, scalp_out = _layer_bounds(params)
    layer = np.select(
        [dist <= 0, dist <= 2.0, dist <= skull_in, dist <= skull_in + 1.6, dist <= skull_out - 1.8,
         dist <= skull_out, dist <= skull_out + 1.5, dist <= scalp_out],
        [HU["csf"], HU["csf"], HU["dura"], HU["cortical_bone"], HU["diploe"], HU["cortical_bone"],
         HU["fat"], HU["scalp"]],
        default=HU["air"],
    )
    blend = np.clip(tissue, 0, 1)
    hu = np.where(dist <= 0.5, blend * brain_hu + (1 - blend) * HU["csf"], layer)
    hu = np.where((sinus > 0.5) & (dist > 0) & (dist <= skull_in), HU["sinus"], hu)
    # lesions (inside the brain only)
    for les in params.lesions:
        q = ((mni - np.array(les.center_mm)) / np.array(les.radii_mm)) ** 2
        m = (q.sum(-1) <= 1.0) & (dist < -1.0)
        hu = np.where(m, HU[les.kind], hu)
    return hu, dist


def _add_texture(hu: np.ndarray, rng: np.random.Generator, pixel_mm: float, texture_hu: float) -> np.ndarray:
    """Add smooth random fields (~10 mm and ~6 mm grain, two draws from `rng`) inside soft tissue
    (not CSF) of the (slice, sub, row, col) HU."""
    n_slices, _, matrix, _ = hu.shape
    tex = _smooth_field(rng, (n_slices, matrix, matrix), 24, texture_hu * COARSE_TEXTURE_GAIN)
    fine_grid = max(8, int(round(matrix * pixel_mm / FINE_TEXTURE_MM)))
    tex = tex + FINE_TEXTURE_GAIN * _smooth_field(rng, (n_slices, matrix, matrix), fine_grid, texture_hu * COARSE_TEXTURE_GAIN)
    soft = (hu > SOFT_TEXTURE_MIN_HU) & (hu < 100)
    return hu + soft * tex[:, None]


def _add_head_holder(truth: np.ndarray, back: np.ndarray, scalp_out: float, coords: np.ndarray,
                     pixel_mm: float) -> None:
    """Draw in place a head holder, a curved shell under the (posterior) head plus a foam
    cushion, on each slice the head reaches (`back`: distance from the brain surface)."""
    rows = np.arange(truth.shape[1])[:, None] * pixel_mm
    cols = coords[None, :]  # symmetric about the centre
    head = back < scalp_out
    for s in range(truth.shape[0]):
        if not head[s].any():
            continue
        r_back = rows[:, 0][head[s].any(axis=1)].max()
        y_c = r_back - 95.0
        rad = np.hypot(rows - y_c, cols * 0.85)
        shell = (rad > 101.0) & (rad < 107.0) & (rows > y_c + 40)
        cushion = (rad > 96.0) & (rad <= 101.0) & (rows > y_c + 40) & ~head[s]
        truth[s][cushion] = HU["cushion"]
        truth[s][shell] = HU["holder"]


def synthesize_subject(params: SubjectParams, matrix: int, pixel_mm: float, slice_mm: float,
                       z_range_mm: tuple[float, float], fields_cache: str | None = None) -> dict[str, np.ndarray]:
    """Sample one subject on the scanner grid.

    Returns HU truth (S, matrix, matrix) float32 averaged over the slice thickness, labels
    (S, matrix, matrix) uint8 at slice centres, and slice positions (mm).
    Scanner axes: x = patient left->right in columns, y = anterior (top row) -> posterior,
    z = slice position (inferior -> superior), matching the DICOM writer.
    """
    f = mni_fields(str(fields_cache) if fields_cache else None)
    rng = np.random.default_rng(params.seed + 1)
    inv_aff = np.linalg.inv(f["affine"])
    zc, n_sub, coords, pts = _scanner_points(matrix, pixel_mm, slice_mm, z_range_mm)
    n_slices = len(zc)
    mni = _scanner_to_mni(pts, params, f, rng)
    vox = (np.c_[mni, np.ones(len(mni))] @ inv_aff.T)[:, :3].T
    hu, dist = _tissue_hu(f, vox, mni, params)
    hu = _add_texture(hu.reshape(n_slices, n_sub, matrix, matrix), rng, pixel_mm, params.texture_hu)
    truth = hu.mean(axis=1)
    back = dist.reshape(n_slices, n_sub, matrix, matrix)[:, n_sub // 2]
    _add_head_holder(truth, back, _layer_bounds(params)[2], coords, pixel_mm)
    labels = ndimage.map_coordinates(
        f["labels"], vox.reshape(3, n_slices, n_sub, matrix, matrix)[:, :, n_sub // 2].reshape(3, -1),
        order=0, mode="constant", cval=0,
    ).reshape(n_slices, matrix, matrix).astype(np.uint8)
    return {"hu": truth.astype(np.float32), "labels": labels, "z_mm": zc.astype(np.float64)}
