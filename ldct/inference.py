"""Trained models in use: pick the device, load a denoiser or the segmenter from its file,
and run them on HU slices. Training and evaluation both use this module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import models
from ldct.errors import ConfigError, DataError, LdctError, MissingFileError
from ldct.hu import WINDOWS, from_unit, to_unit


def pick_device(name: str = "auto", key: str = "--device (in the workflow: train.device)") -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda'; 'cuda' where there is none is a
    ConfigError naming `key` (the setting that asked for it), not torch's assertion."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        why = "is a CPU build" if torch.version.cuda is None else "sees no GPU on this machine"
        raise ConfigError(f"config error at {key}: {name} asked for, but torch {torch.__version__} {why}; "
                          "use auto or cpu, or run this job where a GPU is (SLURM: the gpu rules' partition)")
    return torch.device(name)


def segmenter_from_checkpoint(ck: dict, device: torch.device) -> torch.nn.Module:
    """The frozen U-Net from a segmenter.pt dictionary (ldct.anatomy.save_segmenter)."""
    net = models.build("unet", num_classes=ck["num_classes"], base_width=ck["base_width"],
                       norm=ck.get("norm", "channel"), turns=ck.get("turns", 0))
    net.load_state_dict(ck["state_dict"])
    return net.to(device).eval()


def load_checkpoint(path: str | Path) -> dict:
    """A model file's dictionary, loaded on the CPU; a clear error when it is missing, cut short,
    or not a file of tensors (a pickled whole module, a saved web page)."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: model file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises OSError, RuntimeError or UnpicklingError by the damage
        text = str(err).strip()
        why = ("it holds more than tensors (a pickled module or another file: save the model's state_dict() "
               "instead)" if "Weights only load failed" in text else
               (text.splitlines()[0] if text else type(err).__name__))
        raise DataError(f"{path}: not a readable weights file (a state dict, or a dictionary with one, saved with "
                        f"torch.save): {why}") from None


def load_segmenter_checkpoint(path: str | Path) -> dict:
    """A segmenter.pt's dictionary (ldct.anatomy.save_segmenter), or a clear error for any other
    weights file (a denoiser's model.pt, a bare state dict such as the authors' model.pth)."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or not {"state_dict", "base_width", "num_classes"} <= set(ck):
        found = f"keys {sorted(map(str, ck))[:5]}" if isinstance(ck, dict) else type(ck).__name__
        raise DataError(f"{path}: not a segmenter.pt (ldct pretrain-segmenter writes one: the U-Net's state_dict, "
                        f"base_width, norm); found {found}. Other weights, such as the authors' model.pth, go in "
                        "segmenter.weights (or pretrain-segmenter --weights), which writes the segmenter.pt")
    return ck


def load_segmenter(path: str | Path, device: torch.device) -> torch.nn.Module:
    return segmenter_from_checkpoint(load_segmenter_checkpoint(path), device)


def load_denoiser(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A trained denoiser from model.pt and the file's dictionary (spec, hu_range, epoch...)."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or "state_dict" not in ck:
        keys = ", ".join(map(str, ck)) if isinstance(ck, dict) else type(ck).__name__
        raise DataError(f"{path}: not a denoiser written by `ldct train` (model.pt holds 'model', 'state_dict', "
                        f"'hu_range', ...; this file holds: {keys[:200]})")
    spec = dict(ck["model"])
    name = spec.pop("name", None)
    try:
        net = models.build(name, **spec)
        net.load_state_dict(ck["state_dict"])
    except (LdctError, TypeError, RuntimeError, KeyError) as err:  # another architecture, a renamed model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: its weights do not fit model {name!r} {spec} as the code builds it now: {first}") from None
    return net.to(device).eval(), ck


def to_input(hu: np.ndarray | torch.Tensor, hu_range: tuple[float, float]) -> torch.Tensor:
    """(S, H, W) HU slices -> the networks' (S, 1, H, W) input in [0, 1] units, clipped."""
    hu = torch.from_numpy(hu).float() if isinstance(hu, np.ndarray) else hu
    return torch.clamp(to_unit(hu[:, None], *hu_range), 0, 1)


def checkpoint_amp(ck: dict) -> bool:
    """Whether the model was trained (and validated) in mixed precision: its spec's train.amp,
    on a GPU (the engine uses mixed precision on CUDA only, so a model trained on a CPU ran in
    float32 whatever its spec says, and is denoised in float32 on a GPU too)."""
    machine = ck.get("machine")
    if isinstance(machine, dict) and "gpu" not in machine:  # trained on a CPU (provenance.machine)
        return False
    try:
        return bool(json.loads(ck["spec"])["train"].get("amp", True))
    except (KeyError, TypeError, ValueError):
        return True  # an older model.pt without its spec: the default


@torch.no_grad()
def predict_slices(net: torch.nn.Module, low_hu: np.ndarray, hu_range: tuple[float, float], device: torch.device,
                   batch: int = 4, amp: bool = True) -> np.ndarray:
    """(S, H, W) HU -> (S, H, W) HU through a denoiser, in batches of full slices; on CUDA in
    mixed precision when `amp` (as the model was trained: checkpoint_amp), else in float32."""
    out = np.empty_like(low_hu, dtype=np.float32)
    for s in range(0, len(low_hu), batch):
        x = to_input(low_hu[s:s + batch], hu_range).to(device)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            y = net(x)
        out[s:s + batch] = from_unit(y.float().clamp(0, 1), *hu_range)[:, 0].cpu().numpy()
    return out


@torch.no_grad()
def segment(net: torch.nn.Module, hu: np.ndarray, device: torch.device, batch: int = 4) -> np.ndarray:
    """(S, H, W) HU -> (S, H, W) class ids, of the HU clipped to the full window [-1024, 3072]:
    the range of the reference's inputs (its loader clips every slice) and of the denoisers'
    outputs under the default normalization, so an NDCT or LDCT with scanner padding (-2000,
    -3024 HU outside the reconstruction circle) is segmented on the same footing as a denoised
    output (the padding otherwise shifts the U-Net's normalisation and relabels tissue inside
    the circle)."""
    lo, hi = WINDOWS["full"]
    out = np.empty(hu.shape, np.uint8)
    for s in range(0, len(hu), batch):
        x = torch.from_numpy(hu[s:s + batch]).float().clamp(lo, hi)[:, None].to(device)
        out[s:s + batch] = net(x).argmax(1).cpu().numpy()
    return out
