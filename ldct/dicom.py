"""DICOM CT series: writing the synthetic data in the TCIA layout, discovering and reading
series, and conversion of full/low-dose pairs to NIfTI.

Geometry follows the DICOM standard: a voxel (column i, row j) of a slice sits at
IPP + i * dc * R + j * dr * C, with R, C the row and column direction cosines of
ImageOrientationPatient and (dr, dc) = PixelSpacing, in patient LPS millimetres. NIfTI is RAS,
so the affine flips the first two axes. Arrays are stored as data[column, row, slice], slices
ordered by position along the slice normal R x C.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ldct.errors import DataError
from ldct.io import write_niftis

log = logging.getLogger(__name__)

FULL_DESCRIPTION = "Full Dose Images"
LOW_DESCRIPTION = "Low Dose Images"


class DicomError(DataError):
    """A DICOM input problem; the message names the file or folder."""


def _num(seed_text: str, mod: int = 90000) -> int:
    return 10000 + int(hashlib.sha256(seed_text.encode()).hexdigest()[:8], 16) % mod


def low_description(fraction: float, primary: float) -> str:
    """SeriesDescription of a reduced-dose series; the primary fraction keeps the TCIA name."""
    if abs(fraction - primary) < 1e-9:
        return LOW_DESCRIPTION
    return f"{LOW_DESCRIPTION} {fraction * 100:g}%"


def write_series(folder: Path, hu: np.ndarray, *, pixel_mm: float, slice_mm: float, z_mm: np.ndarray,
                 subject: str, study_uid: str, description: str, kvp: float, mas: float,
                 ctdivol: float, seed_text: str) -> None:
    """Write (S, rows, cols) HU slices as one CT series, one file per slice, axial LPS."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[seed_text, "series"])
    frame_uid = generate_uid(entropy_srcs=[study_uid, "frame"])
    n_rows, n_cols = hu.shape[1:]
    x0 = -(n_cols - 1) / 2 * pixel_mm
    y0 = -(n_rows - 1) / 2 * pixel_mm
    date = (_dt.date(2016, 1, 1) + _dt.timedelta(days=_num(subject, 1500))).strftime("%Y%m%d")
    stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
    for s in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed_text, str(s)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = generate_uid(entropy_srcs=["ldct-benchmark"])
        ds = FileDataset(str(folder / f"1-{s + 1:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.Manufacturer = "ldct-benchmark synthetic"
        ds.PatientID = subject
        ds.PatientName = subject
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID = "1"
        ds.SeriesNumber = 2 if description == FULL_DESCRIPTION else 3
        ds.InstanceNumber = s + 1
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "HEAD"
        ds.KVP = f"{kvp:g}"
        ds.Exposure = str(int(round(mas)))
        ds.CTDIvol = round(float(ctdivol), 2)
        ds.SliceThickness = f"{slice_mm:g}"
        ds.SpacingBetweenSlices = f"{slice_mm:g}"
        ds.PixelSpacing = [f"{pixel_mm:.6g}", f"{pixel_mm:.6g}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{float(z_mm[s]):.4f}"]
        ds.SliceLocation = f"{float(z_mm[s]):.4f}"
        ds.PatientPosition = "HFS"
        ds.Rows, ds.Columns = n_rows, n_cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "80"
        ds.PixelData = stored[s].tobytes()
        ds.save_as(str(folder / f"1-{s + 1:03d}.dcm"), enforce_file_format=True)


# ---------------------------------------------------------------- discovery ----------------

@dataclass
class SubjectSeries:
    subject: str
    full: Path
    low: Path


# Files a download or a file browser leaves beside the slices (NBIA's license and manifest
# files, Windows' and macOS's thumbnails, notes): skipped with a warning, where anything else
# that does not read as DICOM is an error naming it. Hidden files (".DS_Store") are skipped too.
NOT_DICOM_NAMES = {"thumbs.db", "desktop.ini", "dicomdir"}
NOT_DICOM_SUFFIXES = {".txt", ".md", ".rtf", ".pdf", ".html", ".htm", ".xml", ".json", ".csv", ".tcia", ".ini",
                      ".db", ".log", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".zip", ".nii", ".gz"}


def _not_dicom(path: Path) -> bool:
    return path.name.lower() in NOT_DICOM_NAMES or path.suffix.lower() in NOT_DICOM_SUFFIXES


def series_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The files under `folder` that conversion reads as slices (what the workflow declares as
    a conversion's inputs, so that replaced DICOM data reconverts): not hidden, not a known
    non-DICOM file (NOT_DICOM_NAMES, NOT_DICOM_SUFFIXES)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not _not_dicom(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _series_description(folder: Path) -> str:
    """The first SeriesDescription a file of `folder` holds ("" if none does: a truncated
    first file, with no tags, does not hide the series' name in the next ones)."""
    for f in series_files(folder):
        try:
            text = str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesDescription"])
                       .get("SeriesDescription", "")).strip()
        except Exception:
            continue
        if text:
            return text
    return ""


def _classify(folder: Path, full_key: str, low_key: str) -> str | None:
    """'full', 'low' or None by SeriesDescription first, then by folder name."""
    for text in (_series_description(folder), re.sub(r"^[\d.]+-|-\d+$", "", folder.name)):
        t = text.strip().lower()
        if t == full_key.lower():
            return "full"
        if t == low_key.lower():
            return "low"
    return None


def find_series(subject_dir: Path, full_key: str = FULL_DESCRIPTION, low_key: str = LOW_DESCRIPTION) -> SubjectSeries:
    """Find the full- and low-dose series folders of one subject in the TCIA layout
    (<subject>/<date>-NA-NA-<n>/<n>-Full Dose Images-<n>/*.dcm); folder names may vary."""
    subject_dir = Path(subject_dir)
    if not subject_dir.is_dir():
        raise DicomError(f"{subject_dir}: subject folder not found")
    found: dict[str, list[Path]] = {"full": [], "low": []}
    for folder in sorted({p.parent for p in series_files(subject_dir, recursive=True)}):
        kind = _classify(folder, full_key, low_key)
        if kind:
            found[kind].append(folder)
    for kind, key in (("full", full_key), ("low", low_key)):
        if not found[kind]:
            raise DicomError(f"{subject_dir}: no series described as {key!r} (by SeriesDescription or folder name)")
        if len(found[kind]) > 1:
            raise DicomError(f"{subject_dir}: several series match {key!r}: " + ", ".join(map(str, found[kind])))
    return SubjectSeries(subject_dir.name, found["full"][0], found["low"][0])


def discover_subjects(root: str | Path) -> list[str]:
    """Subject folders directly under a TCIA-layout root (e.g. N005, N012, ...)."""
    root = Path(root)
    if not root.is_dir():
        raise DicomError(f"{root}: DICOM root folder not found (set dataset.dicom_root in the config)")
    subjects = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subjects:
        raise DicomError(f"{root}: no subject folders found")
    return subjects


# ---------------------------------------------------------------- reading ----------------

@dataclass
class Volume:
    data: np.ndarray          # (cols, rows, slices) float32 HU
    affine: np.ndarray        # NIfTI RAS affine
    positions: np.ndarray     # slice positions along the normal (mm)
    meta: dict


def _read_slices(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Read every file of a series folder, checking that each is a CT slice with geometry tags."""
    skipped = [p.name for p in folder.iterdir() if p.is_file() and _not_dicom(p)]
    if skipped:
        log.warning("%s: skipped files that are not DICOM slices: %s", folder, ", ".join(sorted(skipped)))
    files = series_files(folder)
    if not files:
        raise DicomError(f"{folder}: no DICOM files found")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as err:  # pydicom's advice to its callers ("Use force=True ...") is not the user's to take
            why = str(err).split(" Use force=True")[0]
            raise DicomError(f"{f}: not a readable DICOM file ({why})") from err
        frames = ds.get("NumberOfFrames", None)
        if frames not in (None, "") and str(frames).strip().isdigit() and int(frames) > 1:
            raise DicomError(f"{f}: a multi-frame file ({int(frames)} frames, e.g. Enhanced CT): this converter reads "
                             "one slice per file, as the Mayo data has; split it into single-frame slices first "
                             "(dcm2niix reads multi-frame series)")
        missing = [tag for tag in ("Modality", "PixelData") if tag not in ds]
        if missing:  # pydicom reads what a cut-off file holds without complaint
            raise DicomError(f"{f}: missing {' and '.join(missing)}: a truncated file, or not an image")
        modality = ds.get("Modality", None)
        if modality != "CT":
            raise DicomError(f"{f}: modality is {modality!r}, expected 'CT'")
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "SeriesInstanceUID"):
            if tag not in ds:
                raise DicomError(f"{f}: missing {tag}")
        _numbers(f, ds, "ImagePositionPatient", 3)
        _numbers(f, ds, "ImageOrientationPatient", 6)
        for tag, n in (("PixelSpacing", 2), ("Rows", 1), ("Columns", 1)):
            if (_numbers(f, ds, tag, n) <= 0).any():
                raise DicomError(f"{f}: {tag} must be positive, is {ds.get(tag)!r}")
        slices.append((f, ds))
    return slices


def _numbers(f: Path, ds: pydicom.Dataset, tag: str, n: int) -> np.ndarray:
    """A numeric tag's `n` values as float64; a DicomError naming the file and tag if they are
    not `n` finite numbers (a malformed header, not a traceback)."""
    want = "a number" if n == 1 else f"{n} numbers"
    try:
        value = ds.get(tag)  # pydicom converts a DS/IS value on access: a malformed one raises here
    except (TypeError, ValueError) as err:
        raise DicomError(f"{f}: {tag} cannot be read as {want} ({err})") from None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        arr = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomError(f"{f}: {tag} is {value!r}, not {want}") from None
    if len(arr) != n or not np.isfinite(arr).all():
        raise DicomError(f"{f}: {tag} is {value!r}, expected {n} finite number{'s' if n > 1 else ''}")
    return arr


def _optional_number(f: Path, ds: pydicom.Dataset, tag: str, default: float) -> float:
    """A single numeric tag that may be absent or empty (then `default`); an error naming the
    file if it holds something else than a finite number."""
    if tag not in ds or ds[tag].is_empty:
        return default
    return float(_numbers(f, ds, tag, 1)[0])


GEOMETRY_ATOL = 1e-4  # np.allclose's atol for a series' orientation cosines and pixel spacing (mm)


def _thickness_tolerance(reference):
    """How far a slice's thickness (mm) may be from the series' reference thickness."""
    return np.maximum(1e-3, 1e-2 * reference)


def _alike(slices: list[tuple[Path, pydicom.Dataset]]) -> np.ndarray:
    """How many of the series' slices each slice's orientation, matrix, pixel spacing and
    thickness agree with, by the tolerances of `_check_in_plane` (a thickness one slice states
    and another does not is not alike here: a slice without the tag must not become the
    reference). Distinct values are compared, not every pair of slices (a 3000-slice series)."""
    rows = np.array([[*np.array(ds.ImageOrientationPatient, dtype=float), *np.array(ds.PixelSpacing, dtype=float),
                      int(ds.Rows), int(ds.Columns), _optional_number(f, ds, "SliceThickness", 0.0)]
                     for f, ds in slices])
    groups, which, sizes = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    a, b = groups[:, None], groups[None]

    def close(cols: slice) -> np.ndarray:  # np.allclose(a, b, atol=GEOMETRY_ATOL) between every two groups
        return (np.abs(a[..., cols] - b[..., cols]) <= GEOMETRY_ATOL + 1e-5 * np.abs(b[..., cols])).all(-1)
    ta, tb = a[..., 10], b[..., 10]
    same_t = np.where((ta == 0) | (tb == 0), ta == tb, np.abs(ta - tb) <= _thickness_tolerance(tb))
    agree = close(slice(0, 6)) & close(slice(6, 8)) & (a[..., 8:10] == b[..., 8:10]).all(-1) & same_t
    return (agree * sizes[None]).sum(axis=1)[which.ravel()]


def _reference_slice(slices: list[tuple[Path, pydicom.Dataset]]) -> tuple[int, int]:
    """(index, count): the slice that most of the series' slices pass the checks against (the
    first such by name) and how many do. It is the reference the others are checked against,
    so one odd slice is the one named, even when it is the first file."""
    counts = _alike(slices)
    ref = int(np.argmax(counts))
    return ref, int(counts[ref])


def _check_in_plane(folder: Path, slices: list[tuple[Path, pydicom.Dataset]]
                    ) -> tuple[int, np.ndarray, np.ndarray, tuple[int, int]]:
    """One series, one orientation, matrix, pixel spacing and slice thickness (those most of its
    slices share): return (the reference slice's index, ImageOrientationPatient, PixelSpacing,
    (rows, columns))."""
    uids = {str(ds.SeriesInstanceUID) for _, ds in slices}
    if len(uids) > 1:
        raise DicomError(f"{folder}: mixed series in one folder ({len(uids)} SeriesInstanceUIDs)")
    ref, alike = _reference_slice(slices)
    f0, ds0 = slices[ref]
    like = f0.name if alike < 2 else f"{f0.name} and {alike - 1} other slice{'s' if alike > 2 else ''}"
    iop = np.array(ds0.ImageOrientationPatient, dtype=float)
    r, c = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(r) - 1) < 1e-3 and abs(np.linalg.norm(c) - 1) < 1e-3 and abs(r @ c) < 1e-3):
        raise DicomError(f"{f0}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    spacing = np.array(ds0.PixelSpacing, dtype=float)
    shape = (int(ds0.Rows), int(ds0.Columns))
    thickness = _optional_number(f0, ds0, "SliceThickness", 0.0)
    for f, ds in slices:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), iop, atol=GEOMETRY_ATOL):
            raise DicomError(f"{f}: ImageOrientationPatient differs from {like}")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DicomError(f"{f}: {ds.Rows}x{ds.Columns} pixels, {like} {'have' if alike > 1 else 'has'} "
                             f"{shape[0]}x{shape[1]}")
        if not np.allclose(np.array(ds.PixelSpacing, dtype=float), spacing, atol=GEOMETRY_ATOL):
            raise DicomError(f"{f}: PixelSpacing differs from {like}")
        t = _optional_number(f, ds, "SliceThickness", 0.0)
        if t and thickness and abs(t - thickness) > _thickness_tolerance(thickness):
            raise DicomError(f"{f}: SliceThickness {t:g} mm, {like} {'have' if alike > 1 else 'has'} {thickness:g} mm")
    return ref, iop, spacing, shape


def _order_slices(folder: Path, slices: list[tuple[Path, pydicom.Dataset]], normal: np.ndarray,
                  ds0: pydicom.Dataset) -> tuple[list[tuple[Path, pydicom.Dataset]], np.ndarray, float]:
    """Sort slices along the normal and check their spacing is uniform (no duplicate or missing
    slice); return (sorted slices, positions, step). A single slice's step is ds0's thickness."""
    ipp = np.array([np.array(ds.ImagePositionPatient, dtype=float) for _, ds in slices])
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    slices, pos, ipp = [slices[i] for i in order], pos[order], ipp[order]
    if len(pos) > 1:  # the slices' origins must follow the normal: a sideways drift is a tilted gantry
        drift = ipp - ipp[0] - np.outer(pos - pos[0], normal)
        i = int(np.argmax(np.linalg.norm(drift, axis=1)))
        if np.linalg.norm(drift[i]) > 1e-2 * max(1.0, abs(pos[i] - pos[0])) + 1e-3:
            tilt = np.degrees(np.arctan2(np.linalg.norm(drift[i]), abs(pos[i] - pos[0])))
            tag = f"; GantryDetectorTilt {ds0.get('GantryDetectorTilt')}" if "GantryDetectorTilt" in ds0 else ""
            raise DicomError(f"{folder}: slice origins drift sideways from the slice normal ({tilt:.1f} degrees "
                             f"by {slices[i][0].name}{tag}): a tilted-gantry series, whose volume a NIfTI affine "
                             "cannot describe; resample it first (dcm2niix writes a tilt-corrected _Tilt_1 file)")
    dup = np.where(np.diff(pos) < 1e-3)[0]
    if len(dup):
        raise DicomError(f"{slices[dup[0] + 1][0]}: duplicate slice position {pos[dup[0]]:.3f} mm (also {slices[dup[0]][0].name})")
    if len(pos) <= 1:
        return slices, pos, _optional_number(slices[0][0], ds0, "SliceThickness", 1.0) or 1.0
    steps = np.diff(pos)
    step = float(np.median(steps))
    bad = np.where(np.abs(steps - step) > max(0.01 * step, 1e-3))[0]
    if len(bad):
        # the message expects the most common step (the smaller on a tie): the median of a
        # 10-mm series missing one of its four slices (steps 20, 10) said "expected 15 mm"
        values, counts = np.unique(np.round(steps, 3), return_counts=True)
        usual = float(values[np.flatnonzero(counts == counts.max())[0]])
        i = next((j for j in bad if abs(steps[j] - usual) > max(0.01 * usual, 1e-3)), bad[0])
        raise DicomError(
            f"{folder}: non-uniform slice spacing: {steps[i]:.3f} mm between {slices[i][0].name} and "
            f"{slices[i + 1][0].name} (expected {usual:.3f} mm; a slice is missing?)"
        )
    return slices, pos, step


def _slice_hu(f: Path, ds: pydicom.Dataset, shape: tuple[int, int]) -> np.ndarray:
    """One slice's pixels in HU as (columns, rows) float32; a clear error if they cannot be decoded."""
    try:
        px = ds.pixel_array.astype(np.float32)
    except Exception as err:
        ts = ds.file_meta.get("TransferSyntaxUID", None)
        name = ts.name if ts is not None else "unknown transfer syntax"
        hint = ""
        if ts is not None and ts.is_compressed:
            hint = (" - compressed pixel data: RLE decodes as is; for JPEG, JPEG-LS and JPEG 2000 install the "
                    "decoder plugins (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
        raise DicomError(f"{f}: cannot decode pixel data ({name}): {err}{hint}") from err
    if not np.isfinite(px).all():
        raise DicomError(f"{f}: pixel data contains NaN or inf")
    if px.shape != shape:
        raise DicomError(f"{f}: pixel array shape {px.shape} does not match Rows x Columns {shape}")
    missing = [t for t in ("RescaleSlope", "RescaleIntercept") if t not in ds or ds[t].is_empty]
    if missing:  # type 1 in the CT Image module: without them the stored values are not HU
        raise DicomError(f"{f}: no {' or '.join(missing)}: the stored pixel values cannot be mapped to HU")
    slope = float(_numbers(f, ds, "RescaleSlope", 1)[0])
    intercept = float(_numbers(f, ds, "RescaleIntercept", 1)[0])
    if slope == 0:
        raise DicomError(f"{f}: RescaleSlope is 0")
    with np.errstate(over="ignore", invalid="ignore"):
        hu = px * slope + intercept
    if not np.isfinite(hu).all():
        raise DicomError(f"{f}: RescaleSlope {slope:g} and RescaleIntercept {intercept:g} map the stored values "
                         "beyond the range of float32 HU")
    return hu.T


def _series_affine(iop: np.ndarray, spacing: np.ndarray, step: float, first: np.ndarray) -> np.ndarray:
    """NIfTI RAS affine of data[column, row, slice] from the LPS geometry of the first slice."""
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _series_meta(f0: Path, ds0: pydicom.Dataset, slices: list[tuple[Path, pydicom.Dataset]], shape: tuple[int, int],
                 spacing: np.ndarray, step: float) -> dict:
    """The series facts the manifest reports (and pairing checks), from its reference file `f0`;
    the exposure is the mean over the slices that state one (tube current modulation varies it
    along the scan, so one slice's value compared two series at different positions)."""
    exposures = [e for e in (_optional_number(f, ds, "Exposure", 0.0) for f, ds in slices) if e]
    return {
        "series_uid": str(ds0.SeriesInstanceUID),
        "patient_id": str(ds0.get("PatientID", "") or ""),
        "frame_of_reference_uid": str(ds0.get("FrameOfReferenceUID", "") or ""),
        "description": str(ds0.get("SeriesDescription", "")),
        "slices": len(slices),
        "rows": shape[0], "columns": shape[1],
        "pixel_spacing_mm": float(spacing[0]),
        "slice_spacing_mm": round(step, 4),
        "slice_thickness_mm": _optional_number(f0, ds0, "SliceThickness", 0.0) or step,
        "kvp": _optional_number(f0, ds0, "KVP", 0.0) or None,
        "exposure_mas": float(np.mean(exposures)) if exposures else None,
        "ctdivol": _optional_number(f0, ds0, "CTDIvol", 0.0) or None,
    }


def read_series(folder: str | Path) -> Volume:
    """Read one CT series folder into a HU volume with a RAS affine, checking its geometry."""
    folder = Path(folder)
    slices = _read_slices(folder)
    ref, iop, spacing, shape = _check_in_plane(folder, slices)
    f0, ds0 = slices[ref]  # the series' reference for metadata
    slices, pos, step = _order_slices(folder, slices, np.cross(iop[:3], iop[3:]), ds0)
    data = np.empty((shape[1], shape[0], len(slices)), np.float32)
    for k, (f, ds) in enumerate(slices):
        data[:, :, k] = _slice_hu(f, ds, shape)
    affine = _series_affine(iop, spacing, step, np.array(slices[0][1].ImagePositionPatient, dtype=float))
    return Volume(data, affine, pos, _series_meta(f0, ds0, slices, shape, spacing, step))


def _in_plane_steps(v: Volume) -> str:
    """The affine's in-plane columns (direction times pixel spacing, mm), for messages."""
    return ", ".join(f"({' '.join(f'{x:.3g}' for x in v.affine[:3, j])})" for j in range(2))


def hu_storage_dtype(*volumes: np.ndarray) -> type:
    """int16 when every HU value is whole and fits (the usual slope 1: compact, and what dcm2niix
    stores); float32 otherwise, so a fractional RescaleSlope (0.5 -> 40.5 HU) or an extended-range
    series (above 32767 HU) is kept as the DICOM says instead of rounded or clipped."""
    info = np.iinfo(np.int16)
    for v in volumes:
        if v.size and (v.min() < info.min or v.max() > info.max or not np.array_equal(v, np.rint(v))):
            return np.float32
    return np.int16


UNPAIRED = ("error", "drop")  # dataset.unpaired_slices


def _unpaired_message(where: str, series: tuple) -> str:
    """The error for slice positions found in one series only ((name, volume, positions) each)."""
    def listed(name: str, v: Volume, only: list[float]) -> str:
        shown = ", ".join(f"{p:g}" for p in only[:6]) + (", ..." if len(only) > 6 else "")
        return f"{len(only)} of the {name}-dose series' {len(v.positions)} slices ({shown} mm)"
    which = " and ".join(listed(*s) for s in series if s[2])
    return (f"{where}: {which} have no partner in the other series (files missing from a series, e.g. an "
            "interrupted download?). If the series really cover different ranges, set dataset.unpaired_slices: "
            "drop (ldct convert --unpaired-slices drop) to keep the shared slices")


SWAPPED_DOSE_RATIO = 1.25  # low over full dose above which the pair is taken as given the wrong way round


def _check_dose_order(fm: dict, lm: dict, where: str) -> None:
    """The low-dose series must not state the clearly higher dose: by CTDIvol where both state
    one (a low-kV protocol lowers the dose while raising the mAs), else by the mean Exposure (mAs)
    at one kVp. The margin leaves copied or modulated tags alone (a simulated low dose may carry
    the full dose's; means over slice ranges that differ under tube current modulation)."""
    if fm.get("ctdivol") and lm.get("ctdivol"):
        key, what = "ctdivol", "CTDIvol (mGy)"
    elif fm.get("exposure_mas") and lm.get("exposure_mas") and fm.get("kvp") == lm.get("kvp"):
        key, what = "exposure_mas", "Exposure (mAs, the mean over its slices)"
    else:
        return
    if lm[key] > SWAPPED_DOSE_RATIO * fm[key]:
        raise DicomError(f"{where}: the low-dose series states the higher dose, {what} {lm[key]:g} against the full "
                         f"dose's {fm[key]:g}: are full and low given the wrong way round?")


def _check_pair_headers(full: Volume, low: Volume, where: str) -> None:
    """Two different series of one patient, reconstructed at one slice thickness."""
    fm, lm = full.meta, low.meta
    if fm.get("series_uid") and fm.get("series_uid") == lm.get("series_uid"):
        raise DicomError(f"{where}: full- and low-dose are the same series ({fm['series_uid']}): two different scans are needed")
    if fm.get("patient_id") and lm.get("patient_id") and fm["patient_id"] != lm["patient_id"]:
        raise DicomError(f"{where}: full- and low-dose series are of different patients "
                         f"(PatientID {fm['patient_id']!r} and {lm['patient_id']!r})")
    _check_dose_order(fm, lm, where)
    if abs(fm["slice_thickness_mm"] - lm["slice_thickness_mm"]) > 1e-3:
        raise DicomError(f"{where}: full dose has {fm['slice_thickness_mm']:g} mm slices, low dose "
                         f"{lm['slice_thickness_mm']:g} mm: the pair must be reconstructed alike")
    if fm.get("frame_of_reference_uid") and lm.get("frame_of_reference_uid") \
            and fm["frame_of_reference_uid"] != lm["frame_of_reference_uid"]:
        # simulated low-dose series may carry their own frame UID: pair_volumes' geometry checks decide
        log.warning("%s: full- and low-dose series have different FrameOfReferenceUIDs; pairing them by "
                    "patient coordinates", where)


def pair_volumes(full: Volume, low: Volume, where: str, unpaired: str = "error") -> tuple[Volume, Volume, list[float]]:
    """Keep the slice positions both series share; error if they are one series, of two
    patients, of different slice thickness, or their geometry differs. Positions in only one
    series are an error (a series with missing files, e.g. an interrupted download, would
    otherwise convert to a shorter volume) unless `unpaired` is "drop": then they are dropped
    and returned."""
    if unpaired not in UNPAIRED:
        raise ValueError(f"unpaired must be one of {UNPAIRED}, got {unpaired!r}")
    _check_pair_headers(full, low, where)
    fm, lm = full.meta, low.meta
    if full.data.shape[:2] != low.data.shape[:2]:
        raise DicomError(f"{where}: full dose is {full.data.shape[:2]} pixels, low dose {low.data.shape[:2]}")
    if not np.allclose(full.affine[:3, :2], low.affine[:3, :2], atol=1e-3):
        raise DicomError(f"{where}: full- and low-dose series differ in orientation or pixel spacing: in-plane "
                         f"steps (mm, RAS) full dose {_in_plane_steps(full)}, low dose {_in_plane_steps(low)}")
    if abs(fm["slice_spacing_mm"] - lm["slice_spacing_mm"]) > 1e-3 and min(len(full.positions), len(low.positions)) > 1:
        raise DicomError(f"{where}: slice spacing differs: full dose {fm['slice_spacing_mm']:g} mm, low dose "
                         f"{lm['slice_spacing_mm']:g} mm: the pair must be reconstructed alike")
    # a slice pairs with the other series' nearest one within a twentieth of the slice step
    # (positions are floats: rounding both to 0.01 mm split pairs at .xx5 and left gaps)
    tol = max(1e-3, 0.05 * min(fm["slice_spacing_mm"], lm["slice_spacing_mm"]))
    near = np.abs(full.positions[:, None] - low.positions[None, :])
    fi = np.flatnonzero(near.min(axis=1) <= tol)
    li = near[fi].argmin(axis=1)
    if len(fi) == 0:
        raise DicomError(f"{where}: full- and low-dose series share no slice position (full dose "
                         f"{full.positions.min():.2f} to {full.positions.max():.2f} mm, low dose "
                         f"{low.positions.min():.2f} to {low.positions.max():.2f} mm)")
    for name, idx in (("full", fi), ("low", li)):
        if np.any(np.diff(idx) != 1):
            gap = int(np.flatnonzero(np.diff(idx) != 1)[0])
            raise DicomError(f"{where}: the slices both series share are not contiguous in the {name}-dose series "
                             f"(between {full.positions[fi[gap]]:.3f} and {full.positions[fi[gap + 1]]:.3f} mm); "
                             "the volume would have a gap its affine does not show")
    only_full = [round(float(p), 3) for p in np.delete(full.positions, fi)]
    only_low = [round(float(p), 3) for p in np.delete(low.positions, li)]
    if (only_full or only_low) and unpaired == "error":
        raise DicomError(_unpaired_message(where, (("full", full, only_full), ("low", low, only_low))))
    dropped = sorted(only_full + only_low)

    def keep(v: Volume, idx: np.ndarray) -> Volume:
        aff = v.affine.copy()
        aff[:3, 3] = v.affine[:3, :3] @ np.array([0, 0, idx[0]]) + v.affine[:3, 3]
        return Volume(v.data[:, :, idx], aff, v.positions[idx], {**v.meta, "slices": len(idx)})

    f2, l2 = keep(full, fi), keep(low, li)
    step_f, step_l = np.linalg.norm(f2.affine[:3, 2]), np.linalg.norm(l2.affine[:3, 2])
    if abs(step_f - step_l) > 1e-3:
        raise DicomError(f"{where}: slice spacing differs: full dose {step_f:.3f} mm, low dose {step_l:.3f} mm")
    shift = np.abs(f2.affine[:3, 3] - l2.affine[:3, 3]).max()
    if shift > max(1e-3, tol):
        raise DicomError(f"{where}: full- and low-dose series differ in position by {shift:.3f} mm (first paired "
                         f"slice origin {np.round(f2.affine[:3, 3], 3).tolist()} vs {np.round(l2.affine[:3, 3], 3).tolist()}, "
                         "RAS mm)")
    l2 = Volume(l2.data, f2.affine.copy(), l2.positions, l2.meta)  # within tolerance: one geometry for the pair
    return f2, l2, [float(d) for d in dropped]


def convert_subject(subject_dir: str | Path | None, out_dir: str | Path, full_key: str = FULL_DESCRIPTION,
                    low_key: str = LOW_DESCRIPTION, series: SubjectSeries | None = None,
                    companions: tuple[Path, ...] = (), unpaired: str = "error") -> dict:
    """Convert one subject's full/low pair to full.nii.gz / low.nii.gz with its manifest.json
    (and copies of `companions`, e.g. a synthetic subject's labels and truth); return the
    manifest row.

    The series are found in `subject_dir` (TCIA layout) unless given explicitly (`series`,
    the generic layout). Both series are read and checked before anything is written, and
    every output is renamed into place together: an error leaves the folder as it was."""
    if series is None:
        series = find_series(Path(subject_dir), full_key, low_key)
    where = str(subject_dir or series.full.parent)
    for kind, folder in (("full", series.full), ("low", series.low)):
        if not Path(folder).is_dir():
            raise DicomError(f"{folder}: {kind}-dose series folder of {series.subject} not found")
    full, low = read_series(series.full), read_series(series.low)
    full, low, dropped = pair_volumes(full, low, where, unpaired)
    if dropped:
        log.warning("%s: dropped slice positions present in only one series: %s", where, dropped)
    ratio = None
    if full.meta["exposure_mas"] and low.meta["exposure_mas"]:
        ratio = low.meta["exposure_mas"] / full.meta["exposure_mas"]
    row = {
        "subject": series.subject,
        "full_series_uid": full.meta["series_uid"], "low_series_uid": low.meta["series_uid"],
        "slices": full.meta["slices"], "rows": full.meta["rows"], "columns": full.meta["columns"],
        "pixel_spacing_mm": full.meta["pixel_spacing_mm"], "slice_spacing_mm": full.meta["slice_spacing_mm"],
        "slice_thickness_mm": full.meta["slice_thickness_mm"], "kvp": full.meta["kvp"],
        "full_exposure_mas": full.meta["exposure_mas"], "low_exposure_mas": low.meta["exposure_mas"],
        "full_ctdivol": full.meta["ctdivol"], "low_ctdivol": low.meta["ctdivol"],
        "dose_ratio": ratio, "dropped_positions": len(dropped),
    }
    out_dir = Path(out_dir)
    also = {out_dir / "manifest.json": lambda tmp: tmp.write_text(json.dumps(row, indent=1) + "\n")}
    for src in companions:
        also[out_dir / Path(src).name] = lambda tmp, src=src: shutil.copyfile(src, tmp)
    write_niftis({out_dir / "full.nii.gz": (full.data, full.affine), out_dir / "low.nii.gz": (low.data, low.affine)},
                 dtype=hu_storage_dtype(full.data, low.data), also=also)
    return row
