"""Result paths (the layout README.md "Architecture" describes), used by the Snakefile and the library alike."""

from __future__ import annotations

from pathlib import Path

# The rows every table shows beside the experiments: the low-dose input, and the clinical
# table's references (full dose, the noiseless reconstruction). No experiment may take these names.
LDCT, NDCT, NOISELESS = "LDCT", "NDCT", "noiseless"
RESERVED_ROWS = (LDCT, NDCT, NOISELESS)


def dose_tag(fraction: float) -> str:
    """A dose fraction as the percentage the synthetic DICOM series are named by (0.1 -> "10"),
    formatted as in ldct.dicom.low_description."""
    return f"{fraction * 100:g}"


def low_dose_name(fraction: float) -> str:
    """File name of an extra reduced-dose volume beside low.nii.gz (dose sweep)."""
    return f"low_{dose_tag(fraction)}pct.nii.gz"


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

    @property
    def segmenter_checkpoints(self) -> Path:
        """The segmenter pre-training's resumable state (not a Snakemake output)."""
        return self.root / "anatomy" / "checkpoints"

    def ndct_segmentation(self, subject: str = "") -> Path:
        """The frozen segmenter's labels of a test subject's NDCT: made once, read by every evaluation."""
        return self.root / "anatomy" / "ndct_segmentation" / (f"{subject}.nii.gz" if subject else "")

    # training
    def model(self, exp: str) -> Path:
        return self.root / "train" / exp / "model.pt"

    def history(self, exp: str) -> Path:
        return self.root / "train" / exp / "history.csv"

    def lr_sweep(self, exp: str) -> Path:
        """The learning-rate sweep of `lr: auto` (or the one rate given)."""
        return self.root / "train" / exp / "lr_sweep.csv"

    def checkpoints(self, exp: str) -> Path:
        return self.root / "checkpoints" / exp

    # evaluation
    def denoised(self, exp: str, subject: str = "") -> Path:
        return self.root / "denoised" / exp / (f"{subject}.nii.gz" if subject else "")

    def metrics(self, exp: str) -> Path:
        return self.root / "eval" / exp / "metrics.csv"

    def dice(self, exp: str) -> Path:
        return self.root / "eval" / exp / "dice.csv"

    # dose sweep (synthetic data with several dose fractions; the first is the training dose,
    # whose results are the main ones under denoised/ and eval/)
    def low_dose(self, subject: str, fraction: float) -> Path:
        return self.root / "nifti" / subject / low_dose_name(fraction)

    def dose_root(self, tag: str) -> Path:
        """Results at one extra dose; `tag` is dose_tag(fraction)."""
        return self.root / "dose_sweep" / f"{tag}pct"

    def dose_denoised(self, tag: str, exp: str, subject: str = "") -> Path:
        return self.dose_root(tag) / "denoised" / exp / (f"{subject}.nii.gz" if subject else "")

    def dose_metrics(self, tag: str, exp: str) -> Path:
        return self.dose_root(tag) / "eval" / exp / "metrics.csv"

    def sweep_metrics(self, exp: str, fraction: float, primary: float) -> Path:
        """Per-slice metrics of `exp` at `fraction`: the main evaluation at the training dose."""
        return self.metrics(exp) if abs(fraction - primary) < 1e-9 else self.dose_metrics(dose_tag(fraction), exp)

    # clinical image quality (synthetic data)
    @property
    def clinical_scans(self) -> Path:
        """The lesion-task and QA-phantom scans (ldct.clinical.make_scans)."""
        return self.root / "clinical" / "scans.npz"

    @property
    def clinical_sites(self) -> Path:
        return self.root / "clinical" / "sites.csv"

    def clinical(self, row: str) -> Path:
        """One row's clinical measurements (ldct.clinical.measure)."""
        return self.root / "clinical" / f"{row}.json"

    def table(self, name: str, ext: str = "csv") -> Path:
        return self.root / "tables" / f"{name}.{ext}"

    def table_prefix(self, name: str) -> str:
        """Path without extension: the .csv, .md and .tex versions share it."""
        return str(self.root / "tables" / name)

    def figure(self, name: str, ext: str = "png") -> Path:
        return self.root / "figures" / f"{name}.{ext}"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"
