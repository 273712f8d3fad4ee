"""Shared fixtures: one small synthetic subject written as DICOM, reused by many tests."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL_SYNTH = dict(n_subjects=3, matrix=64, fov_mm=240.0, slice_mm=10.0, z_range_mm=[0.0, 40.0],
                   geometry="parallel", n_views=120, filter="hann", i0=2.5e5, electronic_noise=5.0,
                   dose_fractions=[0.25], kvp=120.0, full_dose_mas=300.0, lesion_probability=0.3)


@pytest.fixture(scope="session")
def synthetic_subject(tmp_path_factory) -> dict:
    """DICOM folder, phantom folder and converted NIfTI folder of one small synthetic subject."""
    from ldct.dicom import convert_subject
    from ldct.synthetic import make_subject

    base = tmp_path_factory.mktemp("synth")
    make_subject("S001", SMALL_SYNTH, 3, base / "dicom" / "S001", base / "phantom" / "S001")
    row = convert_subject(base / "dicom" / "S001", base / "nifti" / "S001")
    return {"base": base, "dicom": base / "dicom" / "S001", "phantom": base / "phantom" / "S001",
            "nifti": base / "nifti" / "S001", "row": row}


def make_tcia_tree(root: Path, subjects, series_dir: Path) -> Path:
    """A stand-in DICOM tree in the TCIA layout: one copy of `series_dir` (a subject folder with
    its study and series folders) per subject name."""
    import shutil

    for name in subjects:
        shutil.copytree(series_dir, root / name)
    return root


@pytest.fixture(scope="session")
def standin_tcia(tmp_path_factory, synthetic_subject):
    """A stand-in DICOM tree in the TCIA layout (N-numbered subjects, copies of one series
    pair) and a segmenter weights file in the reference port's format beside it (model.pth)."""
    import torch

    import models

    base = tmp_path_factory.mktemp("tcia")
    root = make_tcia_tree(base / "LDCT-and-Projection-data", ("N005", "N012", "N024", "N030"), synthetic_subject["dicom"])
    torch.save(models.build("unet", base_width=4).state_dict(), base / "model.pth")
    return root


def weights_line(root):
    """Config line naming the stand-in segmenter weights beside a stand-in tree."""
    return f"segmenter: {{weights: '{root.parent / 'model.pth'}', base_width: 4}}\n"


def pytest_terminal_summary(terminalreporter):
    """Show what tests recorded with `record_property("summary", ...)` (e.g. the SLURM job ids
    and wall times of tests/test_slurm.py) in the normal `python -m pytest` output."""
    lines = [f"{rep.nodeid}: {value}" for key in ("passed", "failed") for rep in terminalreporter.stats.get(key, [])
             if rep.when == "call" for name, value in rep.user_properties if name == "summary"]
    if lines:
        terminalreporter.section("test summaries")
        for line in lines:
            terminalreporter.write_line(line)
