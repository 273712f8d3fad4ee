"""The frozen anatomical prior: pre-train the segmentation U-Net on NDCT slices with their
labels, or load the authors' converted weights, and save it as segmenter.pt."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import losses
import models
from ldct import engine
from ldct.classes import CLASS_NAMES, NUM_CLASSES
from ldct.data import stack_subjects
from ldct.errors import ConfigError, DataError
from ldct.inference import load_checkpoint, pick_device, segment
from ldct.io import save_torch, write_csv
from ldct.provenance import versions
from ldct.registry import library_files

# Pre-training shifts each batch by up to this many HU: robustness to scanner calibration
# (a few HU), small enough to keep the absolute 10-30 HU tissue contrasts meaningful.
HU_OFFSET = 5.0


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Dice of each class over all given pixels; NaN where the class is absent from both."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        p, r = pred == c, ref == c
        denom = p.sum() + r.sum()
        if denom:
            out[c] = 2.0 * np.logical_and(p, r).sum() / denom
    return out


def class_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Cube root of balanced class weights (as in HeadCTSegmentation's training)."""
    counts = np.bincount(labels.ravel(), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0) ** (1 / 3)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


def init_hu_thresholds(net: torch.nn.Module) -> None:
    """Start the first convolution as local-mean detectors with thresholds spread over soft
    tissue (-40 to 110 HU), alternating in sign.

    The U-Net takes raw HU and normalises every pixel over channels right after its first
    convolution, which makes a randomly initialised first layer nearly blind to the 10-30 HU
    contrasts between CSF, grey and white matter (only the tiny biases break the scale
    invariance, and Adam moves them by ~lr per step). Biases at tissue thresholds make those
    contrasts visible from the first step; the architecture is unchanged."""
    conv = net.conv1A
    c = conv.weight.shape[0]
    sign = torch.where(torch.arange(c) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        k = conv.weight.shape[-1] ** 2
        conv.weight.copy_((1.0 / k + 0.02 * torch.randn(conv.weight.shape, generator=gen)) * sign)
        conv.bias.copy_(-conv.weight.sum(dim=(1, 2, 3)) * torch.linspace(-40.0, 110.0, c))


def augment_pair(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, rotation_deg: float, scale_jitter: float):
    """Same random flip, rotation, scaling and HU offset for a batch of slices (N, 1, H, W)
    and their labels (N, H, W); labels are resampled nearest-neighbour, air fills the border."""
    n = x.shape[0]
    if torch.rand(1, generator=gen) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if rotation_deg > 0 or scale_jitter > 0:
        ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation_deg)
        zoom = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale_jitter
        cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
        zero = torch.zeros(n)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x + 1024.0, grid, align_corners=False) - 1024.0
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    return x + (torch.rand(1, generator=gen) * 2 - 1) * HU_OFFSET, y


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged over the foreground classes present in the batch."""
    prob = logits.softmax(1)
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3))[1:] > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return (1 - dice[1:][present]).mean() if present.any() else logits.sum() * 0


def save_segmenter(path: str | Path, net: torch.nn.Module, source: str, **meta) -> None:
    """segmenter.pt: the weights with what rebuilds the network (width, norm), their origin and
    the package versions that wrote it (not the project's commit nor the machine: the same
    weights give the same bytes, which the trainings using them resume by, ldct.io.save_torch)."""
    save_torch(path, {"state_dict": net.state_dict(), "base_width": net.conv1A.out_channels, "norm": net.norm,
                      "turns": net.turns, "num_classes": NUM_CLASSES, "source": source,
                      "versions": versions(commit=False), **meta})


# A U-Net's filters see structures at the pixel size they were trained on. The shipped preset (2 mm
# pixels) on one noise-free phantom head drawn at 256 mm over 128, 160, 256 and 512 pixels: mean
# foreground Dice 0.68 at 2 mm, 0.52 at 1.6 mm (1.25 x), 0.12 at 1 mm, 0.07 at 0.5 mm. Within
# GRID_TOLERANCE it is used (a real series' pixel sizes vary that much between patients), beyond refused.
GRID_TOLERANCE = 1.25
MIN_GIVEN_DICE = 0.2  # given weights scoring less on labelled validation data segment next to nothing
# The shipped preset was written before segmenter.pt recorded its pixel size: by its content, the
# grid of config.yaml it was trained on (256 mm over 128 pixels).
SHIPPED_PIXEL_MM = {"7ca7c6cd99f75d688c25481b1434e26b8bd61d97f668de9c1ea3c6178f86457c": 2.0}


def pixel_mm(nifti_dir: str | Path, subjects: list[str]) -> dict[str, float]:
    """In-plane pixel size (mm, the mean of the two) of each subject's full.nii.gz, from its header."""
    import nibabel as nib

    out = {}
    for s in subjects:
        path = Path(nifti_dir) / s / "full.nii.gz"
        if not path.is_file():
            raise DataError(f"{path}: NIfTI file not found")
        out[s] = float(np.mean(nib.load(path).header.get_zooms()[:2]))
    return out


def trained_pixel_mm(path: str | Path, obj=None) -> float | None:
    """The pixel size a weights file's U-Net was trained on: recorded in a segmenter.pt (since
    pretraining records it), the shipped preset's by its content, else unknown (None: a bare
    state dict such as the authors' model.pth says nothing). `obj`: the file as already loaded."""
    import hashlib

    obj = load_checkpoint(path) if obj is None else obj
    if isinstance(obj, dict) and obj.get("pixel_mm"):
        return float(obj["pixel_mm"])
    return SHIPPED_PIXEL_MM.get(hashlib.sha256(Path(path).read_bytes()).hexdigest())


def check_grid(path: str | Path, trained: float | None, data: dict[str, float]) -> None:
    """Refuse weights trained on pixels more than GRID_TOLERANCE x larger or smaller than a
    subject's: their Dice columns and the anatomical loss would be about nothing."""
    if trained is None or not data:
        return
    ratios = {s: max(mm / trained, trained / mm) for s, mm in data.items()}
    far = max(ratios, key=ratios.get)
    ratio = ratios[far]
    if ratio > GRID_TOLERANCE:
        raise DataError(f"{path}: a U-Net trained on {trained:g} mm pixels, but subject {far} has {data[far]:.3g} mm "
                        f"({ratio:.1f} x): its segmentations there are not anatomy (the shipped preset's mean "
                        "foreground Dice falls from 0.68 at 2 mm to 0.07 at 0.5 mm). Give weights trained at this pixel "
                        "size (the authors' model.pth for the Mayo data), or pretrain a U-Net on this grid "
                        "(segmenter.weights: null, synthetic data)")


def _turns(cfg: dict) -> int:
    from models.unet import ORIENTATION_TURNS

    return ORIENTATION_TURNS[cfg.get("orientation", "display")]


def load_weights(path: str | Path, cfg: dict, obj=None) -> torch.nn.Module:
    """The U-Net of a weights file: a segmenter.pt of this project (which says its width and
    norm; they must match the config) or a bare state dict such as the authors' converted
    model.pth (built as the config says). `obj`: the file as already loaded (read once)."""
    obj = load_checkpoint(path) if obj is None else obj
    width, norm = cfg["base_width"], cfg["norm"]
    state = obj
    for key in ("model_state_dict", "model"):  # common training-script wrappers of a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and "state_dict" not in obj:
            state = obj = obj[key]
    if isinstance(obj, dict) and "state_dict" in obj:
        state = obj["state_dict"]
        got = (obj.get("base_width", width), obj.get("norm", norm))
        if got != (width, norm):
            raise ConfigError(f"{path}: holds a U-Net with base_width {got[0]} and norm {got[1]!r}, but the config "
                             f"says segmenter.base_width={width}, segmenter.norm={norm!r}; make them agree")
        turns = obj.get("turns", 0 if "base_width" in obj else _turns(cfg))  # a project file before turns: 0
        if turns != _turns(cfg):
            raise ConfigError(f"{path}: holds a U-Net that sees slices turned {turns} time(s), but the config "
                             f"says segmenter.orientation={cfg.get('orientation', 'display')!r}; make them agree")
    net = models.build("unet", num_classes=NUM_CLASSES, base_width=width, norm=norm, turns=_turns(cfg))
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict (parameter name -> tensor) of the U-Net; found "
                          f"{type(state).__name__} with keys {list(state)[:5] if isinstance(state, dict) else '-'}")
    ours = net.state_dict()
    missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or extra:
        raise ConfigError(f"{path}: its parameter names are not the U-Net's (models/unet.py, the reference's "
                          f"names): {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected "
                          f"(e.g. {extra[:3]})")
    odd = [k for k, v in ours.items() if tuple(state[k].shape) != tuple(v.shape)]
    if odd:
        held = state["conv1A.weight"].shape[0] if "conv1A.weight" in state else None
        if held == width:  # the width fits: another network under the same names (other classes, say)
            raise ConfigError(f"{path}: holds {odd[0]} of shape {tuple(state[odd[0]].shape)}, not the "
                              f"{tuple(ours[odd[0]].shape)} of the U-Net at base_width {width} with {NUM_CLASSES} "
                              "classes (models/unet.py): not weights of this network")
        raise ConfigError(f"{path}: holds a U-Net of base_width {held} (its first convolution has {held} filters), "
                          f"but the config says segmenter.base_width={width} (the published network: 64, norm "
                          "'channel'); make them agree")
    net.load_state_dict(state, strict=True)
    return net


def validation_dice(net: torch.nn.Module, val: dict, device: torch.device) -> dict:
    """Mean foreground Dice and per-class Dice (dice_00 ... dice_16) on the validation slices."""
    net.eval()
    dice = dice_per_class(segment(net, val["full"], device), val["labels"])
    row = {"val_mean_dice": float(np.nanmean(dice[1:]))}
    row.update({f"dice_{c:02d}": (None if np.isnan(d) else float(d)) for c, d in enumerate(dice)})
    return row


def _report(row: dict, prefix: str) -> None:
    names = {f"dice_{c:02d}": n for c, n in enumerate(CLASS_NAMES)}
    print(f"{prefix}: mean foreground Dice {row['val_mean_dice']:.3f}; per class: " + ", ".join(
        f"{names[k]} {v:.2f}" for k, v in row.items() if k in names and v is not None), file=sys.stderr)


def pretrain_segmenter(*, nifti_dir: str, splits: dict, cfg: dict, seed: int, out: str, out_history: str,
                       checkpoint_dir: str | None = None) -> pd.DataFrame:
    """Train (or load) the U-Net; history.csv holds per-class validation Dice per epoch.

    Training (through the shared loop, ldct.engine): weighted cross-entropy plus soft Dice,
    the config's optimiser and schedule (Adam, one-cycle by default), flips, rotations,
    scaling and HU offsets; the epoch with the best mean foreground Dice on the validation
    subjects is kept."""
    device = pick_device(cfg.get("device", "auto"), "segmenter.device")
    if cfg.get("weights"):
        return _load_given_weights(nifti_dir, splits, cfg, device, out, out_history)
    engine.prepare(seed, device)
    tr = stack_subjects(nifti_dir, splits["train"])
    va = stack_subjects(nifti_dir, splits["val"])
    if "labels" not in tr or "labels" not in va:
        raise DataError(f"{nifti_dir}: no labels.nii.gz for the training/validation subjects; "
                        "set segmenter.weights to a pre-trained model instead")
    net = models.build("unet", num_classes=NUM_CLASSES, base_width=cfg["base_width"], norm=cfg["norm"],
                       turns=_turns(cfg))
    if cfg["norm"] == "channel":
        init_hu_thresholds(net)
    net = net.to(device)
    weight = class_weights(tr["labels"]).to(device)
    gen = torch.Generator().manual_seed(seed)
    keep = np.flatnonzero((tr["labels"] > 0).any(axis=(1, 2)))  # slices that show some anatomy
    x_all = torch.from_numpy(tr["full"][keep]).float()
    y_all = torch.from_numpy(tr["labels"][keep]).long()

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(x_all), (cfg["batch_size"],), generator=gen)
        return augment_pair(x_all[idx][:, None], y_all[idx], gen, cfg["rotation_deg"], cfg["scale_jitter"])

    task = engine.Task(net, SegmentationLoss(weight), sample, lambda m: validation_dice(m, va, device),
                       score="val_mean_dice", maximize=True, label="segmenter ")
    # as a denoiser's (ldct.train): resumed only under the same code and thread count
    code = library_files(Path(__file__).parents[1], "anatomy")
    key = engine.resume_key(device, cfg=cfg, seed=seed, splits=splits,
                            inputs=engine.fingerprint([tr, va], code, packages=(models,)))
    result = engine.fit(task, cfg, device=device, generator=gen, key=key, checkpoint_dir=checkpoint_dir)
    net.load_state_dict(result.best_state)
    best = result.best_row
    save_segmenter(out, net, f"pretrained on {nifti_dir}: " + ",".join(splits["train"]),
                   val_mean_dice=best["val_mean_dice"], epoch=best["epoch"], seed=seed, settings=dict(cfg),
                   pixel_mm=float(np.median(list(pixel_mm(nifti_dir, splits["train"]).values()))))
    df = pd.DataFrame(result.history)
    write_csv(out_history, df)
    _report(best, f"best epoch {best['epoch']}")
    return df


class SegmentationLoss(losses.TermsLoss):
    """Class-weighted cross-entropy plus soft Dice, as separate terms."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def terms(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cross_entropy": F.cross_entropy(logits, y, weight=self.weight),
                "soft_dice": soft_dice_loss(logits, y)}


def _load_given_weights(nifti_dir: str, splits: dict, cfg: dict, device: torch.device, out: str,
                        out_history: str) -> pd.DataFrame:
    """segmenter.pt from given weights, refused on another pixel size than they were trained on
    (check_grid) and, on labelled validation subjects (synthetic data), where they segment next
    to nothing (mean foreground Dice below MIN_GIVEN_DICE: a norm the file does not say, a
    network trained for other classes)."""
    obj = load_checkpoint(cfg["weights"])  # read once: the weights and what the file says of its pixel size
    net = load_weights(cfg["weights"], cfg, obj)
    trained = trained_pixel_mm(cfg["weights"], obj)
    if trained is not None:  # a bare state dict says nothing to check against
        check_grid(cfg["weights"], trained, pixel_mm(nifti_dir, splits.get("train", []) + splits.get("val", [])))
    row = {"epoch": 0, "source": str(cfg["weights"])}
    # scored where the validation subjects have labels (synthetic data); of real data only the headers are read
    labelled = bool(splits.get("val")) and all((Path(nifti_dir) / s / "labels.nii.gz").exists() for s in splits["val"])
    va = stack_subjects(nifti_dir, splits["val"]) if labelled else {}
    if "labels" in va:
        row.update(validation_dice(net.to(device), va, device))
        _report(row, f"loaded {cfg['weights']}, on the validation subjects")
        if row["val_mean_dice"] < MIN_GIVEN_DICE:
            raise DataError(f"{cfg['weights']}: mean foreground Dice {row['val_mean_dice']:.3f} on the validation "
                            f"subjects' labels (below {MIN_GIVEN_DICE}): these weights do not segment this data. "
                            "Check segmenter.norm and segmenter.orientation against how they were trained (a bare "
                            "state dict does not say), or pretrain a U-Net (segmenter.weights: null)")
    save_segmenter(out, net.cpu(), str(cfg["weights"]), pixel_mm=trained)
    df = pd.DataFrame([row])
    write_csv(out_history, df)
    return df
