"""DICOM reading and conversion: agreement with dcm2niix, and clear errors on bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ldct.dicom import DicomError, convert_subject, find_series, read_series


def dcm2niix_bin():
    exe = Path(sys.executable).parent / "dcm2niix"
    return str(exe) if exe.exists() else shutil.which("dcm2niix")


def copy_subject(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def series_dir(subject_dir: Path, kind: str) -> Path:
    return next(p for p in subject_dir.rglob("*") if p.is_dir() and kind in p.name)


@pytest.mark.skipif(dcm2niix_bin() is None, reason="dcm2niix not installed (pip install dcm2niix)")
def test_conversion_matches_dcm2niix(synthetic_subject, tmp_path):
    for kind, ours in (("Full Dose", "full.nii.gz"), ("Low Dose", "low.nii.gz")):
        out = tmp_path / kind.replace(" ", "")
        out.mkdir()
        subprocess.run([dcm2niix_bin(), "-z", "y", "-f", "x", "-o", str(out), str(series_dir(synthetic_subject["dicom"], kind))],
                       check=True, capture_output=True)
        ref = nib.as_closest_canonical(nib.load(str(out / "x.nii.gz")))
        mine = nib.as_closest_canonical(nib.load(str(synthetic_subject["nifti"] / ours)))
        assert mine.shape == ref.shape
        assert np.abs(mine.affine - ref.affine).max() < 1e-3
        assert np.array_equal(np.asarray(mine.dataobj, dtype=np.int32), np.asarray(ref.dataobj, dtype=np.int32))


def test_manifest_row_and_labels_share_geometry(synthetic_subject):
    row = synthetic_subject["row"]
    assert row["slices"] == 4 and row["rows"] == 64 and row["dose_ratio"] == pytest.approx(0.25)
    assert row["kvp"] == 120.0 and row["pixel_spacing_mm"] == pytest.approx(240 / 64)
    full = nib.load(str(synthetic_subject["nifti"] / "full.nii.gz"))
    labels = nib.load(str(synthetic_subject["phantom"] / "labels.nii.gz"))
    assert full.get_data_dtype() == np.int16
    assert np.allclose(full.affine, labels.affine, atol=1e-4) and full.shape == labels.shape
    lab = np.asarray(labels.dataobj)
    hu = np.asarray(full.dataobj)
    assert np.median(hu[lab == 0]) < -500         # background is air
    assert 10 < np.median(hu[lab == 1]) < 50      # parenchyma is soft tissue


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    from ldct.synthetic import make_subject
    from tests.conftest import SMALL_SYNTH

    for tag, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_subject("S001", SMALL_SYNTH, seed, tmp_path / tag / "dicom", tmp_path / tag / "phantom")

    def digest(tag):
        files = sorted((tmp_path / tag).rglob("*.dcm"))
        return [f.read_bytes() for f in files]

    assert digest("a") == digest("b")
    assert digest("a") != digest("c")
    pa = json.loads((tmp_path / "a" / "phantom" / "params.json").read_text())
    pc = json.loads((tmp_path / "c" / "phantom" / "params.json").read_text())
    assert pa["scale"] != pc["scale"]


def _expect_error(subject_dir: Path, out: Path, match: str):
    with pytest.raises(DicomError, match=match):
        convert_subject(subject_dir, out)
    assert not out.exists() or not any(out.glob("*.nii.gz")), "a partial NIfTI was left behind"


def test_truncated_file_is_named(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = sorted(series_dir(subj, "Low Dose").glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:300])
    _expect_error(subj, tmp_path / "out", f"{victim.name}: (not a readable DICOM file|missing .*: a truncated file)")


def test_a_file_that_is_not_dicom_is_named_without_pydicoms_advice(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = sorted(series_dir(subj, "Low Dose").glob("*.dcm"))[1]
    victim.write_text("<html>an error page saved as a slice</html>")
    with pytest.raises(DicomError, match=f"{victim.name}: not a readable DICOM file") as err:
        convert_subject(subj, tmp_path / "out")
    assert "force=True" not in str(err.value)  # pydicom's advice to its callers, not the user's to take


def test_non_ct_modality_is_named(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = sorted(series_dir(subj, "Full Dose").glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    ds.Modality = "MR"
    ds.save_as(victim)
    _expect_error(subj, tmp_path / "out", f"{victim.name}: modality is 'MR'")


def test_slice_positions_jittered_within_a_percent_convert(synthetic_subject, tmp_path):
    """Checked against the most common rounded step, every step of a jittered series differed
    and the smallest was 'expected': a series the median accepted was refused."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    step = synthetic_subject["row"]["slice_spacing_mm"]
    for name in ("Full Dose", "Low Dose"):
        for k, f in enumerate(sorted(series_dir(subj, name).glob("*.dcm"))):
            ds = pydicom.dcmread(f)
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ipp[2] += (0.0, 0.006, 0.003, -0.003)[k] * step  # steps 1.006, 0.997, 0.994 x the spacing
            ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
            ds.save_as(f)
    assert convert_subject(subj, tmp_path / "out")["slices"] == 4


def _extra_dose_series(subj: Path, **tags) -> Path:
    """A copy of the subject's low-dose series as a 10 % series of its own (description, UID),
    with `tags` set on every file: the input of `ldct convert-doses`."""
    from pydicom.uid import generate_uid

    low = series_dir(subj, "Low Dose")
    extra = low.with_name(low.name.replace("Low Dose Images", "Low Dose Images 10%"))
    shutil.copytree(low, extra)
    uid = generate_uid()
    for f in sorted(extra.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription, ds.SeriesInstanceUID = "Low Dose Images 10%", uid
        for tag, value in tags.items():
            setattr(ds, tag, value)
        ds.save_as(f)
    return extra


def test_a_short_extra_dose_series_is_named_by_convert_doses(synthetic_subject, tmp_path, capsys):
    """convert-doses' own message names the short series (the conversion's advice to set
    dataset.unpaired_slices does not apply to it)."""
    from ldct.cli import main

    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    extra = _extra_dose_series(subj)
    sorted(extra.glob("*.dcm"))[-1].unlink()
    out = tmp_path / "out"
    assert main(["convert-doses", "--subject-dir", str(subj), "--fractions", "0.1", "--primary", "0.25",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{extra}: slice positions differ from the full-dose series" in err and "unpaired_slices" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_an_extra_dose_with_fractional_hu_is_stored_as_float32_by_convert_doses(synthetic_subject, tmp_path):
    """convert-doses stores its volumes as the conversion does: x.5 HU (RescaleSlope 0.5) as float32."""
    from ldct.cli import main

    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    extra = _extra_dose_series(subj, RescaleSlope=0.5)
    out = tmp_path / "out"
    assert main(["convert-doses", "--subject-dir", str(subj), "--fractions", "0.1", "--primary", "0.25",
                 "--out", str(out)]) == 0
    img = nib.load(str(next(out.glob("low_*.nii.gz"))))
    assert img.get_data_dtype() == np.float32
    assert np.array_equal(np.asarray(img.dataobj), read_series(extra).data)


def test_extra_doses_go_on_the_slices_convert_kept(synthetic_subject, tmp_path):
    """Where `convert` dropped a slice the primary low dose lacks (unpaired_slices: drop), the
    extra dose was paired with the whole full-dose series: one slice longer than full.nii.gz,
    refused later by every job that loads the subject. Now it has full.nii.gz's slices."""
    from ldct.cli import main

    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    extra = _extra_dose_series(subj)
    primary = [p for p in subj.rglob("*") if p.is_dir() and "Low Dose Images-" in p.name][0]
    sorted(primary.glob("*.dcm"))[-1].unlink()
    out, drop = tmp_path / "out", ["--unpaired-slices", "drop"]
    assert main(["convert", "--subject-dir", str(subj), "--out", str(out), *drop]) == 0
    doses = ["convert-doses", "--subject-dir", str(subj), "--fractions", "0.1", "--primary", "0.25", "--out", str(out)]
    assert main(doses) == 1  # the default (error), as `convert`'s
    assert main([*doses, *drop]) == 0
    full, low = nib.load(str(out / "full.nii.gz")), nib.load(str(next(out.glob("low_*.nii.gz"))))
    assert full.shape == low.shape and full.shape[2] == 3 and np.array_equal(full.affine, low.affine)
    assert np.array_equal(np.asarray(low.dataobj), read_series(extra).data[:, :, :3])


def test_missing_slice_is_reported(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    sorted(series_dir(subj, "Full Dose").glob("*.dcm"))[1].unlink()
    step = synthetic_subject["row"]["slice_spacing_mm"]  # steps 2 x step, step: the usual one is expected
    _expect_error(subj, tmp_path / "out", f"non-uniform slice spacing: {2 * step:.3f} mm .*expected {step:.3f} mm")


def test_mixed_series_in_one_folder(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    low = series_dir(subj, "Low Dose")
    victim = sorted(low.glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(victim)
    _expect_error(subj, tmp_path / "out", "mixed series")


def test_duplicate_positions(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    files = sorted(series_dir(subj, "Full Dose").glob("*.dcm"))
    a, b = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    b.ImagePositionPatient = a.ImagePositionPatient
    b.save_as(files[1])
    _expect_error(subj, tmp_path / "out", "duplicate slice position")


def test_mismatched_full_low_geometry(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    for f in series_dir(subj, "Low Dose").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [1.0, 1.0]
        ds.save_as(f)
    _expect_error(subj, tmp_path / "out", "orientation or pixel spacing")


def test_slices_in_only_one_series_stop_the_conversion(synthetic_subject, tmp_path):
    """A series missing its last files (an interrupted download) converted to a shorter
    volume with a warning: now an error naming the counts and the setting that allows it."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    for f in sorted(series_dir(subj, "Full Dose").glob("*.dcm"))[-2:]:
        f.unlink()
    with pytest.raises(DicomError, match=r"S001: 2 of the low-dose series' 4 slices \(\S+, \S+ mm\) have no partner") as err:
        convert_subject(subj, tmp_path / "out")
    assert "full-dose series'" not in str(err.value) and "unpaired_slices: drop" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_extra_slices_are_dropped_and_logged_when_asked(synthetic_subject, tmp_path, caplog):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    files = sorted(series_dir(subj, "Low Dose").glob("*.dcm"))
    files[-1].unlink()
    from ldct.cli import main

    assert main(["convert", "--subject-dir", str(subj), "--out", str(tmp_path / "cli")]) == 1  # the default: error
    assert main(["convert", "--subject-dir", str(subj), "--out", str(tmp_path / "cli"), "--unpaired-slices", "drop"]) == 0
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["dropped_positions"] == 1
    row = convert_subject(subj, tmp_path / "out", unpaired="drop")
    assert row["slices"] == 3 and row["dropped_positions"] == 1
    assert "dropped slice positions" in caplog.text
    full = nib.load(str(tmp_path / "out" / "full.nii.gz"))
    low = nib.load(str(tmp_path / "out" / "low.nii.gz"))
    assert full.shape == low.shape and np.allclose(full.affine, low.affine)


def test_no_series_found(tmp_path):
    (tmp_path / "S009" / "study").mkdir(parents=True)
    (tmp_path / "S009" / "study" / "notes.txt").write_text("hello")
    _expect_error(tmp_path / "S009", tmp_path / "out", "no series described as 'Full Dose Images'")
    with pytest.raises(DicomError, match="subject folder not found"):
        find_series(tmp_path / "missing")


def test_read_series_orders_slices_and_applies_rescale(synthetic_subject):
    vol = read_series(series_dir(synthetic_subject["dicom"], "Full Dose"))
    assert np.all(np.diff(vol.positions) > 0)
    assert vol.data.min() >= -1024 and vol.data.dtype == np.float32
    assert vol.affine[2, 2] == pytest.approx(10.0)


@pytest.mark.parametrize("slope, intercept, dtype", [(1.0, -1024.0, np.int16), (0.5, -1024.0, np.float32),
                                                      (20.0, -1024.0, np.float32)])
def test_hu_is_stored_as_the_dicom_says_not_rounded_or_clipped(synthetic_subject, tmp_path, slope, intercept, dtype):
    """Whole HU within int16 is stored as int16 (as dcm2niix does); a fractional RescaleSlope
    (x.5 HU) or values beyond 32767 HU (slope 20 on the phantom's bone) as float32, unrounded, unclipped."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    expected = {}
    for kind in ("Full Dose", "Low Dose"):
        for f in sorted(series_dir(subj, kind).glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.save_as(f)
            expected.setdefault(kind, []).append(ds.pixel_array.astype(np.float64) * slope + intercept)
    convert_subject(subj, tmp_path / "out")
    for kind, name in (("Full Dose", "full.nii.gz"), ("Low Dose", "low.nii.gz")):
        img = nib.load(str(tmp_path / "out" / name))
        assert img.get_data_dtype() == dtype
        want = read_series(series_dir(subj, kind)).data
        assert np.array_equal(np.asarray(img.dataobj, dtype=np.float64), want.astype(np.float64))
        assert sorted(np.unique(want))[-1] == max(e.max() for e in expected[kind])
    if slope == 0.5:
        assert not np.array_equal(want, np.rint(want)), "the case must hold fractional HU"
    if slope == 20.0:
        assert want.max() > 32767, "the case must exceed the int16 range"


def test_rle_compressed_series_decodes_identically(synthetic_subject, tmp_path):
    from pydicom.uid import RLELossless

    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    for f in series_dir(subj, "Full Dose").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    row = convert_subject(subj, tmp_path / "out")
    a = np.asarray(nib.load(str(tmp_path / "out" / "full.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(synthetic_subject["nifti"] / "full.nii.gz")).dataobj)
    assert row["slices"] == 4 and np.array_equal(a, b)


def test_undecodable_compressed_pixel_data_fails_clearly(synthetic_subject, tmp_path):
    from pydicom.uid import JPEG2000Lossless

    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = sorted(series_dir(subj, "Low Dose").glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # the bytes are not a J2K codestream
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(victim, enforce_file_format=True)
    _expect_error(subj, tmp_path / "out", f"{victim.name}: cannot decode pixel data .*JPEG 2000")


def test_generic_layout_from_the_command_line(synthetic_subject, tmp_path, capfd):
    """Series folders anywhere, named explicitly (the config's generic layout)."""
    from ldct.cli import main

    full = series_dir(synthetic_subject["dicom"], "Full Dose")
    low = series_dir(synthetic_subject["dicom"], "Low Dose")
    scans = tmp_path / "scans"
    shutil.copytree(full, scans / "patient7" / "fd")
    shutil.copytree(low, scans / "patient7" / "qd")
    out = tmp_path / "nifti" / "patient7"
    rc = main(["convert", "--full", str(scans / "patient7" / "fd"), "--low", str(scans / "patient7" / "qd"),
               "--out", str(out), "--full-series", "x", "--low-series", "y"])
    assert rc == 0
    row = json.loads((out / "manifest.json").read_text())
    assert row["subject"] == "patient7" and row["slices"] == 4
    rc = main(["convert", "--full", str(scans / "nope"), "--low", str(scans / "patient7" / "qd"),
               "--out", str(tmp_path / "x")])
    assert rc == 1 and not (tmp_path / "x").exists()
    assert f"{scans / 'nope'}: full-dose series folder of x not found" in capfd.readouterr().err


def test_convert_by_hand_with_defaults(synthetic_subject, tmp_path, capfd):
    """`ldct convert --subject-dir X --out Y`: the TCIA series names are the defaults; a wrong
    option is a one-line error naming it, a misused pair of options too."""
    from ldct.cli import main

    out = tmp_path / "S001"
    assert main(["convert", "--subject-dir", str(synthetic_subject["dicom"]), "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["slices"] == 4
    named = tmp_path / "named"
    assert main(["convert", "--subject-dir", str(synthetic_subject["dicom"]), "--subject", "MYNAME", "--out", str(named)]) == 0
    assert json.loads((named / "manifest.json").read_text())["subject"] == "MYNAME"  # --subject is not ignored
    assert main(["convert", "--subject-dir", str(synthetic_subject["dicom"]), "--out", str(tmp_path / "z"),
                 "--low-series", "Quarter"]) == 1
    assert "Quarter" in capfd.readouterr().err and not (tmp_path / "z").exists()
    assert main(["convert", "--full", str(synthetic_subject["dicom"]), "--out", str(tmp_path / "w")]) == 1
    assert "error: give both --full and --low" in capfd.readouterr().err


def test_non_finite_volume_is_not_written(tmp_path):
    from ldct.io import write_nifti

    with pytest.raises(ValueError, match="x.nii.gz: refusing to write non-finite values"):
        write_nifti(tmp_path / "x.nii.gz", np.full((2, 2, 2), np.nan), np.eye(4))
    assert not list(tmp_path.iterdir())


def test_volumes_that_belong_together_are_written_all_or_none(tmp_path):
    """A bad second volume leaves the first file as it was (the full/low pair of a subject,
    a subject's dose series), and no temporary file behind."""
    from ldct.io import write_niftis

    for name in ("full.nii.gz", "low.nii.gz"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    good, bad = np.zeros((2, 2, 2)), np.full((2, 2, 2), np.inf)
    with pytest.raises(ValueError, match="low.nii.gz: refusing to write non-finite values"):
        write_niftis({tmp_path / "full.nii.gz": (good, np.eye(4)), tmp_path / "low.nii.gz": (bad, np.eye(4))})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "full.nii.gz": b"old full.nii.gz", "low.nii.gz": b"old low.nii.gz"}
    write_niftis({tmp_path / "full.nii.gz": (good, np.eye(4)), tmp_path / "low.nii.gz": (good + 1, np.eye(4))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.nii.gz", "low.nii.gz"]
    assert np.asarray(nib.load(str(tmp_path / "low.nii.gz")).dataobj).max() == 1


def test_a_conversion_writes_its_volumes_manifest_and_companions_all_or_none(synthetic_subject, tmp_path):
    """A companion that cannot be copied (it vanished after the checks) leaves an earlier
    conversion's NIfTI pair and manifest exactly as they were, with no temporary file."""
    out = tmp_path / "S001"
    phantom = synthetic_subject["phantom"]
    row = convert_subject(synthetic_subject["dicom"], out, companions=(phantom / "labels.nii.gz",))
    assert sorted(p.name for p in out.iterdir()) == ["full.nii.gz", "labels.nii.gz", "low.nii.gz", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == row
    (out / "manifest.json").write_text("{}\n")  # marks the earlier state
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileNotFoundError):
        convert_subject(synthetic_subject["dicom"], out, companions=(phantom / "labels.nii.gz", tmp_path / "gone.nii.gz"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_incomplete_phantom_folder_is_refused_before_anything_is_written(synthetic_subject, tmp_path, capfd):
    """`ldct convert --phantom` checks the synthetic truth files first: a subject folder that
    already holds a conversion keeps it untouched."""
    from ldct.cli import main

    out = tmp_path / "S001"
    shutil.copytree(synthetic_subject["nifti"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    phantom = shutil.copytree(synthetic_subject["phantom"], tmp_path / "phantom")
    (phantom / "repeat.nii.gz").unlink()
    assert main(["convert", "--subject-dir", str(synthetic_subject["dicom"]), "--out", str(out),
                 "--phantom", str(phantom)]) == 1
    assert "repeat.nii.gz: synthetic truth file not found (--phantom)" in capfd.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _edit_series(subj: Path, kind: str, which: int, **tags):
    """Set DICOM tags of the `which`-th file (by name) of a series; a tag set to None is deleted."""
    f = sorted(series_dir(subj, kind).glob("*.dcm"))[which]
    ds = pydicom.dcmread(f)
    for tag, value in tags.items():
        if value is None:
            delattr(ds, tag)
        else:
            setattr(ds, tag, value)
    ds.save_as(f)
    return f


@pytest.mark.parametrize("which", [2, 0], ids=["middle", "first"])
@pytest.mark.parametrize("tags, message", [
    ({"PixelSpacing": None}, "{name}: missing PixelSpacing"),
    ({"ImageOrientationPatient": [0, 1, 0, 1, 0, 0]}, "{name}: ImageOrientationPatient differs from {ref} and"),
    ({"PixelSpacing": [0.5, 0.5]}, "{name}: PixelSpacing differs from {ref} and"),
    ({"Rows": 32}, "{name}: 32x64 pixels, {ref} and .* have 64x64"),
    ({"SliceThickness": "5"}, "{name}: SliceThickness 5 mm, {ref} and .* have 10 mm"),
])
def test_a_slice_unlike_the_rest_of_its_series_is_named(synthetic_subject, tmp_path, tags, message, which):
    """The slice unlike the others is named, the first file too: the series' reference is the
    geometry most of its slices share (the first file was, so a bad first file blamed every good
    one); SliceThickness is checked on every slice (it was read from the first file only)."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = _edit_series(subj, "Low Dose", which, **tags)
    files = sorted(series_dir(subj, "Low Dose").glob("*.dcm"))
    ref = files[1 if which == 0 else 0].name
    _expect_error(subj, tmp_path / "out", message.format(name=victim.name, ref=ref))


def test_a_first_slice_just_outside_the_tolerance_is_the_one_named(synthetic_subject, tmp_path):
    """The reference was chosen by values rounded to 1e-3 while the checks allow 1e-4: a first
    file 2e-4 off joined the majority, stayed the reference and blamed a good slice."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    files = sorted(series_dir(subj, "Low Dose").glob("*.dcm"))
    spacing = [float(v) for v in pydicom.dcmread(files[0]).PixelSpacing]
    victim = _edit_series(subj, "Low Dose", 0, PixelSpacing=[f"{spacing[0] + 2e-4:.6f}", f"{spacing[1]:.6f}"])
    _expect_error(subj, tmp_path / "out", f"{victim.name}: PixelSpacing differs from {files[1].name} and")


def test_a_first_slice_without_slice_thickness_is_not_the_reference(synthetic_subject, tmp_path):
    """A missing thickness matched every slice, so such a first file became the reference and the
    thickness check then compared nothing (a 5 mm slice in a 10 mm series converted)."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    _edit_series(subj, "Low Dose", 0, SliceThickness=None)
    victim = _edit_series(subj, "Low Dose", 2, SliceThickness="5")
    _expect_error(subj, tmp_path / "out", f"{victim.name}: SliceThickness 5 mm, .* have 10 mm")


def test_rescale_tags_that_overflow_float32_are_named_not_written_as_inf(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = _edit_series(subj, "Low Dose", 1, RescaleSlope="1e38")
    _expect_error(subj, tmp_path / "out", f"{victim.name}: RescaleSlope 1e\\+38 and RescaleIntercept -1024 map the "
                  "stored values beyond the range of float32 HU")


def test_files_a_download_leaves_beside_the_slices_are_skipped_and_named(synthetic_subject, tmp_path, caplog):
    """Notes, thumbnails and hidden files in a series folder are not slices: skipped with a
    warning naming them (the conversion is the same); an unreadable file of any other name is
    still an error."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    convert_subject(subj, tmp_path / "clean")
    full = series_dir(subj, "Full Dose")
    for name in ("README.txt", "Thumbs.db", ".DS_Store", "LICENSE.pdf"):
        (full / name).write_text("not a slice\n")
    with caplog.at_level("WARNING"):
        convert_subject(subj, tmp_path / "out")
    assert "skipped files that are not DICOM slices: LICENSE.pdf, README.txt, Thumbs.db" in caplog.text
    for name in ("full.nii.gz", "low.nii.gz"):
        assert np.array_equal(nib.load(tmp_path / "out" / name).get_fdata(), nib.load(tmp_path / "clean" / name).get_fdata())
    (full / "notes").write_text("not a slice either\n")
    _expect_error(subj, tmp_path / "bad", "notes: not a readable DICOM file")


def test_a_truncated_first_file_in_uid_named_folders_is_named(synthetic_subject, tmp_path):
    """NBIA's classic layout names folders by UID, so the series is found by the files'
    SeriesDescription: a truncated first file (no tags) does not hide it, and is named."""
    subj = tmp_path / "N005"
    for kind, uid in (("Full Dose", "1.3.6.1.4.1.9328.50.4.111"), ("Low Dose", "1.3.6.1.4.1.9328.50.4.222")):
        shutil.copytree(series_dir(synthetic_subject["dicom"], kind), subj / "1.3.6.1.4.1.9328.50.4.1" / uid)
    victim = sorted((subj / "1.3.6.1.4.1.9328.50.4.1" / "1.3.6.1.4.1.9328.50.4.111").glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    _expect_error(subj, tmp_path / "out", f"{victim.name}: (not a readable DICOM file|missing .*: a truncated file)")


def test_empty_series_folder_is_named(synthetic_subject, tmp_path):
    """Found by name in the TCIA layout it is no series; named explicitly (generic layout), an
    empty folder."""
    from ldct.dicom import SubjectSeries

    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    low = series_dir(subj, "Low Dose")
    for f in low.glob("*.dcm"):
        f.unlink()
    _expect_error(subj, tmp_path / "out", "no series described as 'Low Dose Images'")
    with pytest.raises(DicomError, match=f"{low.name}: no DICOM files found"):
        convert_subject(None, tmp_path / "out", series=SubjectSeries("S001", series_dir(subj, "Full Dose"), low))
    assert not (tmp_path / "out").exists()


def test_full_and_low_with_different_matrices_or_no_shared_slice(synthetic_subject, tmp_path):
    from ldct.dicom import pair_volumes

    full = read_series(series_dir(synthetic_subject["dicom"], "Full Dose"))
    low = read_series(series_dir(synthetic_subject["dicom"], "Low Dose"))
    half = type(low)(low.data[:32], low.affine, low.positions, low.meta)
    with pytest.raises(DicomError, match=r"S001: full dose is \(64, 64\) pixels, low dose \(32, 64\)"):
        pair_volumes(full, half, "S001")
    moved = type(low)(low.data, low.affine, low.positions + 100.0, low.meta)
    with pytest.raises(DicomError, match="S001: full- and low-dose series share no slice position"):
        pair_volumes(full, moved, "S001")


def test_ambiguous_series_is_an_error(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    full = series_dir(subj, "Full Dose")
    shutil.copytree(full, full.parent / "2.000000-Full Dose Images-999")
    _expect_error(subj, tmp_path / "out", "several series match 'Full Dose Images'")


def _patch_bytes(f: Path, old: bytes, new: bytes):
    """Replace a tag's stored text byte for byte (a malformed header pydicom would not write)."""
    raw = f.read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    f.write_bytes(raw.replace(old, new))


@pytest.mark.parametrize("tags, patch, message", [
    ({"KVP": "987.6"}, (b"987.6 ", b"abcde "), r"{name}: KVP (is .abcde., not|cannot be read as) a number"),
    ({"PixelSpacing": [0.5]}, None, r"{name}: PixelSpacing is .*0.5.*, expected 2 finite numbers"),
    ({"ImagePositionPatient": [1.0, 2.0]}, None, r"{name}: ImagePositionPatient is .*, expected 3 finite numbers"),
    ({"ImageOrientationPatient": [1, 0, 0, 0, 1]}, None, r"{name}: ImageOrientationPatient is .*, expected 6"),
    ({"PixelSpacing": [0.0, 0.0]}, None, r"{name}: PixelSpacing must be positive"),
    ({"RescaleIntercept": "987.6"}, (b"987.6 ", b"nan   "), r"{name}: RescaleIntercept is .*nan.*, expected 1 finite"),
    ({"SliceThickness": "987.6"}, (b"987.6 ", b"5 mm  "), r"{name}: SliceThickness (is .5 mm., not|cannot be read as) a number"),
])
def test_a_malformed_tag_value_is_named_with_its_file(synthetic_subject, tmp_path, tags, patch, message):
    """A value that is not the numbers DICOM prescribes: an error naming the file and the tag, nothing written."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = _edit_series(subj, "Full Dose", 0, **tags)  # the first file: also the series' metadata source
    if patch:
        _patch_bytes(victim, *patch)
    _expect_error(subj, tmp_path / "out", message.format(name=victim.name))


def test_a_pair_must_be_two_scans_of_one_patient_reconstructed_alike(synthetic_subject, tmp_path, caplog):
    from ldct.dicom import SubjectSeries, pair_volumes

    full_dir, low_dir = series_dir(synthetic_subject["dicom"], "Full Dose"), series_dir(synthetic_subject["dicom"], "Low Dose")
    with pytest.raises(DicomError, match="NA-NA-[0-9]*: full- and low-dose are the same series"):
        convert_subject(None, tmp_path / "out", series=SubjectSeries("S001", full_dir, full_dir))
    assert not (tmp_path / "out").exists()
    full, low = read_series(full_dir), read_series(low_dir)
    other = type(low)(low.data, low.affine, low.positions, {**low.meta, "patient_id": "S999"})
    with pytest.raises(DicomError, match="S001: full- and low-dose series are of different patients .*'S001' and 'S999'"):
        pair_volumes(full, other, "S001")
    thick = type(low)(low.data, low.affine, low.positions, {**low.meta, "slice_thickness_mm": 1.0})
    with pytest.raises(DicomError, match=f"S001: full dose has {full.meta['slice_thickness_mm']:g} mm slices, low dose 1 mm"):
        pair_volumes(full, thick, "S001")
    moved_frame = type(low)(low.data, low.affine, low.positions, {**low.meta, "frame_of_reference_uid": "1.2.3"})
    with caplog.at_level("WARNING"):
        f2, l2, dropped = pair_volumes(full, moved_frame, "S001")  # a simulated low dose may carry its own frame
    assert "different FrameOfReferenceUIDs" in caplog.text and f2.data.shape == l2.data.shape and not dropped


def test_hidden_folders_are_not_searched_for_series(synthetic_subject, tmp_path):
    """A copy left in a hidden folder (.trash, .snapshot) is not a second matching series."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    full = series_dir(subj, "Full Dose")
    shutil.copytree(full, subj / ".snapshot" / full.name)
    assert find_series(subj).full == full


def test_slices_without_rescale_tags_are_refused_not_read_as_hu(synthetic_subject, tmp_path):
    """Without RescaleSlope/Intercept the stored values (0-4095 here) were taken as HU: a volume
    1024 HU too bright, silently, or a pair 1024 HU apart when only one series lacked them."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = _edit_series(subj, "Low Dose", 1, RescaleSlope=None, RescaleIntercept=None)
    _expect_error(subj, tmp_path / "out", f"{victim.name}: no RescaleSlope or RescaleIntercept")


def _move_slices(subj: Path, kind: str, shift) -> None:
    """Shift every slice's ImagePositionPatient by shift(k, position) for the k-th slice by z."""
    files = sorted(series_dir(subj, kind).glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + shift(k, ds)]
        ds.save_as(f)


def test_a_tilted_gantry_series_is_refused(synthetic_subject, tmp_path):
    """Slice origins that drift in y with z (a tilted gantry) were stacked as if axial: the
    affine put the 4th slice 11 mm off. dcm2niix resamples such a series; the error says so."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    _move_slices(subj, "Full Dose", lambda k, ds: np.array([0.0, k * 10.0 * np.tan(np.radians(20)), 0.0]))
    _expect_error(subj, tmp_path / "out", r"slice origins drift sideways from the slice normal \(20.0 degrees")


def test_orientation_vectors_must_be_orthogonal_unit_vectors(synthetic_subject, tmp_path):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    for k in range(4):
        victim = _edit_series(subj, "Full Dose", k, ImageOrientationPatient=[1, 0, 0, 0, 2, 0])
    _expect_error(subj, tmp_path / "out", "is not two orthogonal unit vectors")
    assert victim.exists()


def test_slice_positions_pair_within_a_tolerance_and_without_gaps(synthetic_subject, tmp_path):
    """Positions 0.625 mm apart, the low dose's 1e-6 mm off: rounding both to 0.01 mm split the
    .xx5 pairs and left a volume with a hole its affine did not show. Pairs now match within a
    twentieth of the step; shared slices that are not contiguous are refused."""
    from ldct.dicom import pair_volumes

    full = read_series(series_dir(synthetic_subject["dicom"], "Full Dose"))
    low = read_series(series_dir(synthetic_subject["dicom"], "Low Dose"))
    step = 0.625
    pos = np.arange(4) * step
    aff = full.affine.copy()
    aff[:3, 2] = aff[:3, 2] / np.linalg.norm(aff[:3, 2]) * step
    meta = {**full.meta, "slice_spacing_mm": step}
    f = type(full)(full.data, aff, pos, meta)
    aff_l = aff.copy()
    aff_l[:3, 3] += aff[:3, 2] / step * 1e-6
    lo = type(low)(low.data, aff_l, pos + 1e-6, {**low.meta, "slice_spacing_mm": step})
    f2, l2, dropped = pair_volumes(f, lo, "S001")
    assert f2.data.shape[2] == l2.data.shape[2] == 4 and not dropped
    gap = type(low)(low.data[:, :, [0, 1, 3]], aff_l, (pos + 1e-6)[[0, 1, 3]], {**low.meta, "slice_spacing_mm": step})
    with pytest.raises(DicomError, match="S001: the slices both series share are not contiguous in the full-dose"):
        pair_volumes(f, gap, "S001")
    coarse = type(low)(low.data[:, :, :2], aff_l, (pos + 1e-6)[:2] * 8, {**low.meta, "slice_spacing_mm": 5.0})
    with pytest.raises(DicomError, match="S001: slice spacing differs: full dose 0.625 mm, low dose 5 mm"):
        pair_volumes(f, coarse, "S001")
    aff_s = aff_l.copy()
    aff_s[0, 3] += 1.0  # the low-dose field of view 1 mm to the side
    shifted = type(low)(low.data, aff_s, pos + 1e-6, lo.meta)
    with pytest.raises(DicomError, match=r"S001: full- and low-dose series differ in position by 1.000 mm"):
        pair_volumes(f, shifted, "S001")


@pytest.mark.skipif(dcm2niix_bin() is None, reason="dcm2niix not installed (pip install dcm2niix)")
def test_the_dcm2niix_orientation_is_the_layout_dcm2niix_stores(synthetic_subject, tmp_path):
    """segmenter.orientation dcm2niix turns the project's displayed slice as a raw slice of a
    dcm2niix NIfTI lies (get_fdata()[:, :, k], what the reference's loader feeds the U-Net)."""
    import torch

    from ldct.data import to_slices
    from models.unet import ORIENTATION_TURNS

    subprocess.run([dcm2niix_bin(), "-z", "y", "-f", "x", "-o", str(tmp_path), str(series_dir(synthetic_subject["dicom"], "Full Dose"))],
                   check=True, capture_output=True)
    raw = np.asarray(nib.load(str(tmp_path / "x.nii.gz")).dataobj, dtype=np.float32)
    assert nib.aff2axcodes(nib.load(str(tmp_path / "x.nii.gz")).affine) == ("L", "A", "S")  # HeadCTSegmentation's layout
    shown = to_slices(np.asarray(nib.load(str(synthetic_subject["nifti"] / "full.nii.gz")).dataobj, dtype=np.float32))
    turned = torch.rot90(torch.from_numpy(shown), -ORIENTATION_TURNS["dcm2niix"], (-2, -1)).numpy()
    assert np.array_equal(turned, np.moveaxis(raw, 2, 0))


def test_full_and_low_given_the_wrong_way_round_are_refused(synthetic_subject, tmp_path, capfd):
    """The series' dose tags say which is the low dose: a swapped pair (generic layout, or
    `ldct convert --full/--low`) converted silently and trained the models from full to low dose."""
    from ldct.cli import main

    full = series_dir(synthetic_subject["dicom"], "Full Dose")
    low = series_dir(synthetic_subject["dicom"], "Low Dose")
    rc = main(["convert", "--full", str(low), "--low", str(full), "--subject", "p7", "--out", str(tmp_path / "p7")])
    assert rc == 1 and not (tmp_path / "p7").exists()
    err = capfd.readouterr().err
    assert "the low-dose series states the higher dose, CTDIvol (mGy)" in err and "the wrong way round?" in err


@pytest.mark.parametrize("full_tags, low_tags, refused", [
    # a low-kV protocol: more mAs, less dose (CTDIvol decides where both state one)
    ({"KVP": "120", "Exposure": "200", "CTDIvol": 15.0}, {"KVP": "80", "Exposure": "260", "CTDIvol": 6.5}, None),
    # a simulated low dose carrying the full dose's tags
    ({"Exposure": "300", "CTDIvol": 15.0}, {"Exposure": "300", "CTDIvol": 15.0}, None),
    # no CTDIvol: the mean Exposure at one kVp decides
    ({"CTDIvol": None, "Exposure": "75"}, {"CTDIvol": None, "Exposure": "300"}, "Exposure \\(mAs, the mean over its slices\\) 300"),
    # no CTDIvol and two kVp: mAs says nothing about the dose
    ({"CTDIvol": None, "KVP": "120", "Exposure": "75"}, {"CTDIvol": None, "KVP": "80", "Exposure": "300"}, None),
])
def test_the_dose_order_is_read_from_ctdivol_else_from_mas_at_one_kvp(synthetic_subject, tmp_path, full_tags, low_tags,
                                                                     refused):
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    for kind, tags in (("Full Dose", full_tags), ("Low Dose", low_tags)):
        for k in range(len(list(series_dir(subj, kind).glob("*.dcm")))):
            _edit_series(subj, kind, k, **tags)
    if refused:
        _expect_error(subj, tmp_path / "out", f"the low-dose series states the higher dose, {refused}")
    else:
        convert_subject(subj, tmp_path / "out")


def test_exposure_is_the_series_mean_under_tube_current_modulation(synthetic_subject, tmp_path):
    """Exposure varies slice by slice under tube current modulation: the manifest's (and the
    swap check's) is the mean over the series, not the first file's."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    for k, f in enumerate(sorted(series_dir(subj, "Low Dose").glob("*.dcm"))):
        _edit_series(subj, "Low Dose", k, Exposure=str([150, 50, 50, 50][k]))
    row = convert_subject(subj, tmp_path / "out")
    assert row["low_exposure_mas"] == pytest.approx(75.0) and row["dose_ratio"] == pytest.approx(0.25)


def test_a_multi_frame_file_is_named_as_such(synthetic_subject, tmp_path):
    """An Enhanced CT file (all slices as frames of one file) was refused as 'missing
    ImagePositionPatient' (its positions are per frame)."""
    subj = copy_subject(synthetic_subject["dicom"], tmp_path / "S001")
    victim = _edit_series(subj, "Low Dose", 0, NumberOfFrames="4")
    _expect_error(subj, tmp_path / "out", f"{victim.name}: a multi-frame file \\(4 frames, e.g. Enhanced CT\\)")
