"""What is recorded with every result: the package versions and the project's commit (models,
tables), and the machine a model was trained on (its CPU, threads, GPU), since the same code
and seed give other numbers on another CPU or GPU (README "Architecture", its last paragraph)."""

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
    to tracked files or untracked code files) and every result-changing package's version."""
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
    differ from it or code files are untracked (_changes_results); the package version where it
    is not a git checkout (an installed wheel)."""
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
        dirty = any(_changes_results(line) for line in git("status", "--porcelain", "--untracked-files=all").splitlines())
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__} ({commit}{'+dirty' if dirty else ''})"


CODE_PATHS = ("ldct/", "models/", "losses/", "workflow/")  # where an untracked .py or .smk file is code that runs


def _changes_results(status_line: str) -> bool:
    """A `git status --porcelain` line that makes the checkout differ from its commit: any
    tracked change, or an untracked code file (.py, .smk) in the code folders, or a Snakefile
    (models/ and losses/ import every file in them: a new model never committed would otherwise
    be recorded as the clean commit)."""
    if not status_line.startswith("??"):
        return True
    path = status_line[3:].strip('"')
    return path == "Snakefile" or (path.startswith(CODE_PATHS) and path.endswith((".py", ".smk")))


def machine(device: str | None = None) -> dict[str, str | int]:
    """The machine a job ran on: OS, CPU model and the instruction set torch's kernels use,
    torch's thread count and, on CUDA, the GPU and the CUDA and cuDNN versions."""
    import torch

    out: dict[str, str | int] = {"platform": platform.platform(), "cpu": _cpu_model(),
                                 # AVX2 or AVX512: the kernels torch picks, which change the numbers
                                 "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
