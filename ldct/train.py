"""Training engine for denoisers: sampling, augmentation, AdamW with exponential decay,
validation in the head window every epoch, best-checkpoint selection, resumable state.

Resume: after every epoch the full state (model, optimiser, scheduler, RNG, history) goes to
`<checkpoint_dir>/last.pt` together with a hash of the experiment's settings and of its inputs
(data, segmenter, model and loss code). A run started again with the same settings and inputs
continues from there; anything changed starts fresh. The
checkpoint folder is not a Snakemake output, so a failed job does not delete it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

import losses
import models
from ldct.data import stack_subjects
from ldct.hu import WINDOWS, from_unit, to_unit
from ldct.io import atomic_path, write_csv
from ldct.provenance import versions


class TrainingError(RuntimeError):
    pass


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def settings_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inputs_fingerprint(data: dict, val: dict, segmenter: str | None) -> str:
    """A digest of what a checkpoint was trained from besides its settings: the training and
    validation slices, the segmenter file, and the source of models/ and losses/. A resumed
    run whose data were remade (another dose, for instance), whose segmenter was retrained or
    whose model code was edited starts fresh instead of finishing from stale weights."""
    h = hashlib.blake2b(digest_size=16)
    for arrays in (data, val):
        for k in sorted(arrays):
            h.update(k.encode())
            h.update(np.ascontiguousarray(arrays[k]).data)
    if segmenter:
        h.update(Path(segmenter).read_bytes())
    for pkg in (models, losses):
        for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def segmenter_from_checkpoint(ck: dict, device: torch.device) -> torch.nn.Module:
    """The frozen U-Net from a segmenter.pt dictionary (ldct.anatomy.save_segmenter)."""
    net = models.build("unet", num_classes=ck["num_classes"], base_width=ck["base_width"],
                       norm=ck.get("norm", "channel"))
    net.load_state_dict(ck["state_dict"])
    return net.to(device).eval()


def load_segmenter(path: str | Path, device: torch.device) -> torch.nn.Module:
    return segmenter_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True), device)


def load_denoiser(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    spec = dict(ck["model"])
    net = models.build(spec.pop("name"), **spec)
    net.load_state_dict(ck["state_dict"])
    return net.to(device).eval(), ck


class PatchSampler:
    """Random patches (or full slices when patch_size is null) with paired augmentation:
    flips, 90-degree rotations and one HU offset shared by input and target; optionally the
    reference's rotation by any angle up to `rotation_deg` (nearest-neighbour, as torchvision's
    default, so the noise texture is not smoothed; fill -1024 HU) and random resized crop
    (a region of `crop_scale` of the area, bilinear, with probability `crop_prob`).

    Three patches in four are centred on head pixels (NDCT above -500 HU), so that training
    does not spend most steps on the air around the head; the rest anywhere in the slice."""

    def __init__(self, low: np.ndarray, full: np.ndarray, patch: int | None, batch: int, augment: bool,
                 hu_offset: float, hu_range: tuple[float, float], generator: torch.Generator,
                 rotation_deg: float = 0.0, crop_prob: float = 0.0, crop_scale: tuple[float, float] = (0.5, 1.0)):
        self.low = torch.from_numpy(low)
        self.full = torch.from_numpy(full)
        h, w = low.shape[1:]
        self.patch = min(patch, h, w) if patch else None
        self.batch, self.augment, self.hu_offset, self.hu_range = batch, augment, hu_offset, hu_range
        self.rotation_deg, self.crop_prob, self.crop_scale = rotation_deg, crop_prob, tuple(crop_scale)
        self.g = generator
        head = full > -500.0
        self.slices = np.flatnonzero(head.any(axis=(1, 2))) if head.any() else np.arange(len(full))
        self.centres = [torch.from_numpy(np.flatnonzero(head[i]) if head[i].any() else np.arange(h * w))
                        for i in range(len(full))]

    def _rand(self, n: int = 1) -> torch.Tensor:
        return torch.rand(n, generator=self.g)

    def _warp(self, lo: torch.Tensor, fu: torch.Tensor, cy: int, cx: int, size: tuple[int, int]):
        """Rotate (and maybe zoom into) the pair about pixel (cy, cx); output `size`."""
        h, w = lo.shape
        theta = math.radians(float((self._rand() * 2 - 1) * self.rotation_deg))
        zoom = 1.0
        if self.crop_prob > 0 and self._rand() < self.crop_prob:
            lo_s, hi_s = self.crop_scale
            zoom = math.sqrt(float(lo_s + (hi_s - lo_s) * self._rand()))  # side ratio of the cropped region
        oh, ow = size
        ys = (torch.arange(oh, dtype=torch.float32) - oh / 2 + 0.5) * zoom
        xs = (torch.arange(ow, dtype=torch.float32) - ow / 2 + 0.5) * zoom
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        c, s = math.cos(theta), math.sin(theta)
        px = cx + 0.5 + c * xx - s * yy  # source position in pixel units (pixel centres at +0.5)
        py = cy + 0.5 + s * xx + c * yy
        grid = torch.stack([px / w * 2 - 1, py / h * 2 - 1], dim=-1)[None]
        pair = torch.stack([lo, fu])[:, None].float() + 1024.0  # zero padding = -1024 HU
        mode = "bilinear" if zoom != 1.0 else "nearest"
        out = F.grid_sample(pair, grid.expand(2, -1, -1, -1), mode=mode, padding_mode="zeros", align_corners=False)
        return out[0, 0] - 1024.0, out[1, 0] - 1024.0

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w = self.low.shape
        pick = torch.randint(len(self.slices), (self.batch,), generator=self.g)
        xs, ys = [], []
        warp = self.augment and (self.rotation_deg > 0 or self.crop_prob > 0)
        for i in self.slices[pick.numpy()].tolist():
            lo, fu = self.low[i], self.full[i]
            if self.patch or warp:
                if self.patch:
                    uniform = self._rand() < 0.25  # a quarter of the patches anywhere: air and edges too
                    centres = self.centres[i]
                    c = (int(torch.randint(h * w, (1,), generator=self.g)) if uniform
                         else int(centres[int(torch.randint(len(centres), (1,), generator=self.g))]))
                    size = (self.patch, self.patch)
                else:
                    c, size = (h // 2) * w + w // 2, (h, w)
                if warp:
                    lo, fu = self._warp(lo, fu, c // w, c % w, size)
                else:
                    top = min(max(c // w - self.patch // 2, 0), h - self.patch)
                    left = min(max(c % w - self.patch // 2, 0), w - self.patch)
                    lo = lo[top:top + self.patch, left:left + self.patch]
                    fu = fu[top:top + self.patch, left:left + self.patch]
            if self.augment:
                if self._rand() < 0.5:
                    lo, fu = lo.flip(-1), fu.flip(-1)
                if self._rand() < 0.5:
                    lo, fu = lo.flip(-2), fu.flip(-2)
                k = int(torch.randint(4, (1,), generator=self.g))
                lo, fu = torch.rot90(lo, k, (-2, -1)), torch.rot90(fu, k, (-2, -1))
                if self.hu_offset:
                    off = float((self._rand() * 2 - 1) * self.hu_offset)
                    lo, fu = lo + off, fu + off
            xs.append(lo)
            ys.append(fu)
        return to_input(torch.stack(xs), self.hu_range).float(), to_input(torch.stack(ys), self.hu_range).float()


def to_input(hu: np.ndarray | torch.Tensor, hu_range: tuple[float, float]) -> torch.Tensor:
    """(S, H, W) HU slices -> the networks' (S, 1, H, W) input in [0, 1] units, clipped."""
    hu = torch.from_numpy(hu).float() if isinstance(hu, np.ndarray) else hu
    return torch.clamp(to_unit(hu[:, None], *hu_range), 0, 1)


@torch.no_grad()
def predict_slices(net: torch.nn.Module, low_hu: np.ndarray, hu_range: tuple[float, float], device: torch.device,
                   batch: int = 4) -> np.ndarray:
    """(S, H, W) HU -> (S, H, W) HU through a denoiser, in batches of full slices."""
    out = np.empty_like(low_hu, dtype=np.float32)
    for s in range(0, len(low_hu), batch):
        x = to_input(low_hu[s:s + batch], hu_range).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            y = net(x)
        out[s:s + batch] = from_unit(y.float().clamp(0, 1), *hu_range)[:, 0].cpu().numpy()
    return out


def head_window_mse(pred_hu: np.ndarray, full_hu: np.ndarray) -> float:
    lo, hi = WINDOWS["head"]
    return float(np.mean((np.clip(pred_hu, lo, hi) - np.clip(full_hu, lo, hi)) ** 2))


def build_experiment(experiment: dict, hu_range: tuple[float, float], seg_ck: dict | None,
                     device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """The model and loss of an experiment on `device`, the frozen segmenter (a segmenter.pt
    dictionary) wired into whichever needs it and the HU scaling passed to any that takes it.
    Returns (model, loss, model spec as saved in model.pt)."""
    model_spec = dict(experiment["model"])
    if models.needs_segmenter(model_spec["name"]):
        model_spec["seg_width"] = seg_ck["base_width"]
        model_spec["seg_norm"] = seg_ck.get("norm", "channel")
    mspec = dict(model_spec)
    name = mspec.pop("name")
    if "hu_range" in (models.REGISTRY.arguments(name) or []):  # the engine passes the HU scaling
        model_spec["hu_range"] = mspec["hu_range"] = list(hu_range)
    net = models.build(name, **mspec)
    if models.needs_segmenter(name):
        net.segmenter.load_state_dict(seg_ck["state_dict"])
    net = net.to(device)
    lspec = dict(experiment["loss"])
    lname = lspec.pop("name")
    if losses.needs_segmenter(lname):
        lspec["segmenter"] = segmenter_from_checkpoint(seg_ck, device)
    if "hu_range" in (losses.REGISTRY.arguments(lname) or []):
        lspec.setdefault("hu_range", tuple(hu_range))
    return net, losses.build(lname, **lspec).to(device), model_spec


def train_step(net: torch.nn.Module, criterion: torch.nn.Module, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, use_amp: bool) -> float:
    """One optimiser step (mixed precision when `use_amp`); stops on a non-finite loss."""
    with torch.autocast(x.device.type, enabled=use_amp):
        loss = criterion(net(x), y)
    if not torch.isfinite(loss):
        raise TrainingError(f"non-finite loss ({loss.item()}); lower train.lr or check the input data for NaN")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.item()


def train_denoiser(*, nifti_dir: str, splits: dict, experiment: dict, hu_range: tuple[float, float], seed: int,
                   out_model: str, out_history: str, checkpoint_dir: str, segmenter: str | None = None,
                   stop_after_epochs: int | None = None) -> pd.DataFrame:
    """Train one experiment ({'model': {...}, 'loss': {...}, 'train': {...}}) and write
    model.pt (best validation checkpoint) and history.csv."""
    cfg = experiment["train"]
    device = pick_device(cfg.get("device", "auto"))
    seed_everything(seed)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    data = stack_subjects(nifti_dir, splits["train"], with_labels=False)
    val = stack_subjects(nifti_dir, splits["val"], with_labels=False)
    if cfg.get("val_max_slices"):
        pick = np.linspace(0, len(val["low"]) - 1, min(cfg["val_max_slices"], len(val["low"]))).round().astype(int)
        val = {k: v[pick] for k, v in val.items()}
    needs_seg = models.needs_segmenter(experiment["model"]["name"]) or losses.needs_segmenter(experiment["loss"]["name"])
    if needs_seg and not segmenter:
        raise TrainingError(f"experiment {experiment['model']['name']} + {experiment['loss']['name']} "
                            "needs the segmenter checkpoint")
    seg_ck = torch.load(segmenter, map_location="cpu", weights_only=True) if needs_seg else None
    net, criterion, model_spec = build_experiment(experiment, hu_range, seg_ck, device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg["lr_decay"])
    warmup = int(cfg.get("warmup_iters", 0))
    gen = torch.Generator().manual_seed(seed)
    sampler = PatchSampler(data["low"], data["full"], cfg["patch_size"], cfg["batch_size"], cfg["augment"],
                           cfg["hu_offset"], tuple(hu_range), gen, rotation_deg=cfg.get("rotation_deg", 0.0),
                           crop_prob=cfg.get("crop_prob", 0.0), crop_scale=cfg.get("crop_scale", (0.5, 1.0)))
    use_amp = bool(cfg.get("amp", True)) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    print(f"training {experiment['model']['name']} with loss {experiment['loss']['name']} on {device} "
          f"(threads: {torch.get_num_threads()}, mixed precision: {'on' if use_amp else 'off'}): "
          f"{len(data['low'])} training and {len(val['low'])} validation slices", file=sys.stderr)

    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    key = settings_hash({"experiment": experiment, "hu_range": list(hu_range), "seed": seed,
                         "train": splits["train"], "val": splits["val"],
                         "inputs": inputs_fingerprint(data, val, segmenter if needs_seg else None)})
    history: list[dict] = []
    start_epoch, best, best_state = 0, math.inf, None
    last = ckdir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            history, start_epoch, best = state["history"], state["epoch"], state["best"]
            best_state = state["best_state"]
            print(f"resuming from {last} after epoch {start_epoch}", file=sys.stderr)
        else:
            print(f"settings changed since {last} was written: starting fresh", file=sys.stderr)

    epochs = cfg["epochs"]
    for epoch in range(start_epoch, epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            return pd.DataFrame(history)
        net.train()
        criterion.train()
        t0 = time.perf_counter()
        total = 0.0
        bar = tqdm(range(cfg["iters_per_epoch"]), desc=f"epoch {epoch + 1}/{epochs}", file=sys.stderr,
                   mininterval=5, disable=False)
        for it in bar:
            step = epoch * cfg["iters_per_epoch"] + it
            if step < warmup:  # linear warm-up protects ReLU-ended models (RED-CNN) from dying early
                for group in opt.param_groups:
                    group["lr"] = sched.get_last_lr()[0] * (step + 1) / warmup
            elif step == warmup and warmup:
                for group in opt.param_groups:
                    group["lr"] = sched.get_last_lr()[0]
            x, y = sampler.sample()
            try:
                total += train_step(net, criterion, opt, scaler, x.to(device), y.to(device), use_amp)
            except TrainingError as err:
                raise TrainingError(f"epoch {epoch + 1}, step {it + 1}: {err}") from None
        train_time = time.perf_counter() - t0
        net.eval()
        pred = predict_slices(net, val["low"], tuple(hu_range), device)
        vmse = head_window_mse(pred, val["full"])
        lr = opt.param_groups[0]["lr"]
        for group in opt.param_groups:
            group["lr"] = sched.get_last_lr()[0]
        sched.step()
        improved = vmse < best
        if improved:
            best = vmse
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        history.append({"epoch": epoch + 1, "train_loss": total / cfg["iters_per_epoch"], "val_mse_head": vmse,
                        "lr": lr, "seconds": round(train_time, 3), "best": improved,
                        "samples_per_s": round(cfg["iters_per_epoch"] * cfg["batch_size"] / train_time, 3)})
        print(f"epoch {epoch + 1}: loss {history[-1]['train_loss']:.5f} val MSE[0,80] {vmse:.3f}"
              f"{' (best)' if improved else ''}", file=sys.stderr)
        with atomic_path(last) as tmp:
            torch.save({"key": key, "model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                        "epoch": epoch + 1, "best": best, "best_state": best_state}, tmp)
    best_epoch = min(history, key=lambda r: r["val_mse_head"])["epoch"]
    with atomic_path(out_model) as tmp:
        torch.save({"state_dict": best_state, "model": model_spec, "hu_range": list(hu_range),
                    "epoch": best_epoch, "val_mse_head": best, "versions": versions()}, tmp)
    df = pd.DataFrame(history)
    write_csv(out_history, df)
    return df
