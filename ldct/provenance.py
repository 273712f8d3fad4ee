"""Versions recorded with every result (models, tables)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "numpy", "scipy", "scikit-image", "torchmetrics", "pydicom", "nibabel", "snakemake", "nilearn", "bm3d")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out
