"""Result paths (DESIGN.md contract), used by the Snakefile and the library alike."""

from __future__ import annotations

from pathlib import Path


class ResultPaths:
    def __init__(self, results: str | Path, dataset: str):
        self.root = Path(results) / dataset

    @classmethod
    def at(cls, root: str | Path) -> "ResultPaths":
        """Paths under an existing results/{dataset} folder."""
        root = Path(root)
        return cls(root.parent, root.name)

    # data
    def dicom(self, subject: str = "") -> Path:
        return self.root / "dicom" / subject

    def phantom(self, subject: str = "") -> Path:
        return self.root / "phantom" / subject

    def nifti(self, subject: str = "") -> Path:
        return self.root / "nifti" / subject

    def manifest_row(self, subject: str) -> Path:
        return self.root / "nifti" / subject / "manifest.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    # anatomy
    @property
    def segmenter(self) -> Path:
        return self.root / "anatomy" / "segmenter.pt"

    @property
    def segmenter_history(self) -> Path:
        return self.root / "anatomy" / "history.csv"

    # training
    def model(self, exp: str) -> Path:
        return self.root / "train" / exp / "model.pt"

    def history(self, exp: str) -> Path:
        return self.root / "train" / exp / "history.csv"

    def checkpoints(self, exp: str) -> Path:
        return self.root / "checkpoints" / exp

    # evaluation
    def denoised(self, exp: str, subject: str = "") -> Path:
        return self.root / "denoised" / exp / (f"{subject}.nii.gz" if subject else "")

    def metrics(self, exp: str) -> Path:
        return self.root / "eval" / exp / "metrics.csv"

    def dice(self, exp: str) -> Path:
        return self.root / "eval" / exp / "dice.csv"

    def table(self, name: str, ext: str = "csv") -> Path:
        return self.root / "tables" / f"{name}.{ext}"

    def table_prefix(self, name: str) -> str:
        """Path without extension: the .csv, .md and .tex versions share it."""
        return str(self.root / "tables" / name)

    def figure(self, name: str, ext: str = "png") -> Path:
        return self.root / "figures" / f"{name}.{ext}"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"
