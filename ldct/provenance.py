"""What is recorded with every result: the package versions and the project's commit (models,
tables), and the machine a model was trained on (its CPU, threads, GPU), since the same code
and seed give other numbers on another CPU or GPU (README "Reproducibility")."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-image", "torchmetrics", "pydicom", "nibabel", "snakemake",
            "nilearn", "bm3d", "bm4d", "PyWavelets")


def versions(commit: bool = True) -> dict[str, str]:
    """Python's, the project's (with `commit`, its git commit, `+dirty` with uncommitted changes
    to tracked files) and every result-changing package's version."""
    from ldct import __version__

    out = {"python": platform.python_version(), "ldct": project_commit() if commit else __version__}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def made_with() -> str:
    """The sentence every table ends with: the versions and the commit it was made with."""
    return "Made with " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "."


@functools.lru_cache(maxsize=1)
def project_commit() -> str:
    """The git commit of the checkout this ldct was imported from, `+dirty` where tracked files
    differ from it; the package version where it is not a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    from ldct import __version__

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:  # the checkout must be ldct's own, with this file tracked (not a repository that holds a copy)
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return __version__
        git("ls-files", "--error-unmatch", "ldct/provenance.py")
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__} ({commit}{'+dirty' if dirty else ''})"


def machine(device: str | None = None) -> dict[str, str | int]:
    """The machine a job ran on: OS, CPU model, torch's thread count and, on CUDA, the GPU and
    the CUDA and cuDNN versions."""
    import torch

    out: dict[str, str | int] = {"platform": platform.platform(), "cpu": _cpu_model(),
                                 "torch_threads": torch.get_num_threads()}
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(torch.device(device)), cuda=str(torch.version.cuda),
                   cudnn=str(torch.backends.cudnn.version()))
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
