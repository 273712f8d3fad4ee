"""DICOM -> NIfTI conversion speed (slices per second), ours vs dcm2niix on the same files.

    python benchmarks/conversion.py [--subjects 3] [--matrix 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldct.config import validate_config  # noqa: E402
from ldct.dicom import convert_subject  # noqa: E402
from ldct.synthetic import make_subject, subject_ids  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=positive_int, default=3)
    ap.add_argument("--matrix", type=positive_int, default=512)
    a = ap.parse_args()
    exe = Path(sys.executable).parent / "dcm2niix"
    exe = str(exe) if exe.exists() else shutil.which("dcm2niix")
    d2n = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip().splitlines() if exe else []
    print(f"{header()}; dcm2niix {d2n[-1] if d2n else 'not installed: only ours is timed'}")
    cfg = validate_config({"synthetic": {"matrix": a.matrix, "n_views": 180, "slice_mm": 2.5}})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for s in subject_ids(a.subjects):
            make_subject(s, cfg["synthetic"], 1, tmp / "dicom" / s, tmp / "phantom" / s)
        n_slices = len(list((tmp / "dicom").rglob("*.dcm")))
        t = time.perf_counter()
        for s in subject_ids(a.subjects):
            convert_subject(tmp / "dicom" / s, tmp / "nifti" / s)
        ours = time.perf_counter() - t
        print(f"ldct convert: {n_slices} slices ({a.matrix}x{a.matrix}) in {ours:.2f} s = {n_slices / ours:.0f} slices/s")
        if exe:
            (tmp / "d2n").mkdir()
            t = time.perf_counter()
            for series in sorted(p for p in (tmp / "dicom").rglob("*") if p.is_dir() and "Dose Images" in p.name):
                subprocess.run([exe, "-z", "y", "-o", str(tmp / "d2n"), str(series)], check=True, capture_output=True)
            ref = time.perf_counter() - t
            print(f"dcm2niix:     {n_slices} slices in {ref:.2f} s = {n_slices / ref:.0f} slices/s; "
                  f"ratio ours/dcm2niix speed {ref / ours:.2f}")


if __name__ == "__main__":
    run(main)
