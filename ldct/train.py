"""Denoiser training: paired patch sampling with augmentation, validation MSE in the head
window, and `train_denoiser`, which runs an `ExperimentSpec` through the shared loop
(ldct.engine) and writes model.pt (the best validation epoch) and history.csv.

Resume: a run started again with the same spec and inputs (training and validation slices,
segmenter, source of models/ and losses/) continues from its checkpoint folder; anything
changed starts fresh. The checkpoint folder is not a Snakemake output, so a failed job does
not delete it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import losses
import models
from ldct import engine
from ldct.budget import resolve_pass
from ldct.data import REPEAT_NAME, stack_subjects
from ldct.errors import DataError, TrainingError
from ldct.hu import WINDOWS
from ldct.inference import (
    load_segmenter_checkpoint,
    pick_device,
    predict_slices,
    segmenter_from_checkpoint,
    to_input,
)
from ldct.io import save_torch, write_csv
from ldct.metrics import mean_psnr
from ldct.provenance import machine, versions
from ldct.registry import library_files
from ldct.spec import ExperimentSpec


RRC_RATIO = (3 / 4, 4 / 3)  # the aspect ratios of the reference's RandomResizedCrop


class PatchSampler:
    """Random patches (or full slices when patch_size is null) with paired augmentation, one of
    two styles (`train.augment_style`):

    - "project": flips, 90-degree rotations and one HU offset shared by input and target;
      optionally a rotation by any angle up to `rotation_deg` about the patch centre
      (nearest-neighbour, so the noise texture is not smoothed; fill -1024 HU) and a zoom into
      a centred square of `crop_scale` of the area with probability `crop_prob`. Three patches
      in four are centred on head pixels (NDCT above -500 HU), so that training does not spend
      most steps on the air around the head; the rest anywhere in the slice.
    - "reference": the reference's albumentations 1.2.1 pipeline (loader.py) on the whole slice,
      in its order: Rotate (probability 0.5, angle uniform in +-rotation_deg about the image
      centre, bilinear, border reflected about the edge pixels, cv2's BORDER_REFLECT_101),
      RandomResizedCrop (probability crop_prob, area crop_scale, aspect ratio 3/4-4/3 log-uniform,
      anywhere in the slice, resized back bilinearly), horizontal and vertical flips (0.5 each),
      then one HU offset, then a patch anywhere (when patch_size is set). No 90-degree turns, no
      head-centred patches. Slices come in shuffled passes, a new one at each epoch's start
      (`start_epoch`), as the reference's DataLoader(shuffle=True) gives them; an epoch longer
      than a pass starts another, so a batch may straddle two passes. `iters_per_epoch: pass`
      makes an epoch exactly one pass, its short last batch dropped, as the reference's is
      (ldct.budget.resolve_pass).
    The project style draws each slice at random (with replacement)."""

    def __init__(self, low: np.ndarray, full: np.ndarray, patch: int | None, batch: int, augment: bool,
                 hu_offset: float, hu_range: tuple[float, float], generator: torch.Generator,
                 rotation_deg: float = 0.0, crop_prob: float = 0.0, crop_scale: tuple[float, float] = (0.5, 1.0),
                 style: str = "project"):
        if style not in ("project", "reference"):
            raise ValueError(f"augmentation style {style!r}: 'project' or 'reference'")
        self.low = torch.from_numpy(low)
        self.full = torch.from_numpy(full)
        h, w = low.shape[1:]
        self.patch = min(patch, h, w) if patch else None
        self.batch, self.augment, self.hu_offset, self.hu_range = batch, augment, hu_offset, hu_range
        self.rotation_deg, self.crop_prob, self.crop_scale = rotation_deg, crop_prob, tuple(crop_scale)
        self.style = style
        self.g = generator
        head = full > -500.0
        self.slices = (np.arange(len(full)) if style == "reference" or not head.any()
                       else np.flatnonzero(head.any(axis=(1, 2))))
        self.centres = [] if style == "reference" else [  # head pixels per slice: the project's patch centres
            torch.from_numpy(np.flatnonzero(head[i]) if head[i].any() else np.arange(h * w)) for i in range(len(full))]
        self._pass: list[int] = []  # reference style: the rest of the current shuffled pass

    def start_epoch(self) -> None:
        """Reference style: a new shuffled pass over every slice (from the generator, so a resumed
        run continues as an unbroken one). The project style draws nothing here."""
        if self.style == "reference":
            self._pass = torch.randperm(len(self.slices), generator=self.g).tolist()

    def _next_slices(self) -> list[int]:
        """Reference style: the batch's slices, the next ones of the pass (a new pass when it ends)."""
        out = []
        for _ in range(self.batch):
            if not self._pass:
                self.start_epoch()
            out.append(int(self.slices[self._pass.pop(0)]))
        return out

    @classmethod
    def from_config(cls, low: np.ndarray, full: np.ndarray, train: dict, hu_range: tuple[float, float],
                    generator: torch.Generator) -> PatchSampler:
        """The sampler a `train` section asks for (a key it lacks: no rotation, no crop, project style)."""
        return cls(low, full, train["patch_size"], train["batch_size"], train["augment"], train["hu_offset"],
                   tuple(hu_range), generator, rotation_deg=train.get("rotation_deg", 0.0),
                   crop_prob=train.get("crop_prob", 0.0), crop_scale=train.get("crop_scale", (0.5, 1.0)),
                   style=train.get("augment_style", "project"))

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
        # whole-pixel offsets from the centre pixel: unrotated and unzoomed, every output pixel is a
        # source pixel's centre (a half-pixel offset here made nearest sampling repeat every other one)
        ys = (torch.arange(oh, dtype=torch.float32) - oh // 2) * zoom
        xs = (torch.arange(ow, dtype=torch.float32) - ow // 2) * zoom
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        c, s = math.cos(theta), math.sin(theta)
        px = cx + 0.5 + c * xx - s * yy  # source position in pixel units (pixel centres at +0.5)
        py = cy + 0.5 + s * xx + c * yy
        grid = torch.stack([px / w * 2 - 1, py / h * 2 - 1], dim=-1)[None]
        pair = torch.stack([lo, fu])[:, None].float() + 1024.0  # zero padding = -1024 HU
        mode = "bilinear" if zoom != 1.0 else "nearest"
        out = F.grid_sample(pair, grid.expand(2, -1, -1, -1), mode=mode, padding_mode="zeros", align_corners=False)
        return out[0, 0] - 1024.0, out[1, 0] - 1024.0

    def _uniform(self, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * self._rand())

    def _randint(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], both included (Python's random.randint)."""
        return lo + int(torch.randint(hi - lo + 1, (1,), generator=self.g))

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of albumentations 1.2.1's RandomResizedCrop: ten tries at a
        random area and aspect ratio, else the central crop (the whole of a square slice)."""
        for _ in range(10):
            area = self._uniform(*self.crop_scale) * h * w
            ratio = math.exp(self._uniform(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])))
            cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                return self._randint(0, h - ch), self._randint(0, w - cw), ch, cw
        ch, cw = h, w
        if w / h < RRC_RATIO[0]:
            ch = int(round(w / RRC_RATIO[0]))
        elif w / h > RRC_RATIO[1]:
            cw = int(round(h * RRC_RATIO[1]))
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    @staticmethod
    def rotate_reflect(pair: torch.Tensor, angle_deg: float) -> torch.Tensor:
        """(N, 1, H, W) rotated by `angle_deg` about the image centre ((W-1)/2, (H-1)/2), bilinear,
        the border reflected about the edge pixels: cv2.warpAffine with getRotationMatrix2D and
        BORDER_REFLECT_101, as albumentations' Rotate does (up to cv2's 1/32-pixel fixed point)."""
        n, _, h, w = pair.shape
        a = math.radians(angle_deg)
        c, s = math.cos(a), math.sin(a)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
        sx = c * (xx - cx) - s * (yy - cy) + cx  # the source of each output pixel (the inverse map)
        sy = s * (xx - cx) + c * (yy - cy) + cy
        grid = torch.stack([sx / max(w - 1, 1) * 2 - 1, sy / max(h - 1, 1) * 2 - 1], dim=-1).float()[None]
        # align_corners=True puts -1 and 1 on the edge pixels' centres: reflection about them is reflect-101
        return F.grid_sample(pair, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="reflection",
                             align_corners=True)

    def _reference_pair(self, lo: torch.Tensor, fu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One slice pair through the reference's augmentation (the class doc), then its patch."""
        h, w = lo.shape
        pair = torch.stack([lo, fu])[:, None].float()
        if self.augment:
            if self.rotation_deg > 0 and self._rand() < 0.5:
                pair = self.rotate_reflect(pair, self._uniform(-self.rotation_deg, self.rotation_deg))
            if self.crop_prob > 0 and self._rand() < self.crop_prob:
                top, left, ch, cw = self._crop_box(h, w)
                pair = F.interpolate(pair[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                     align_corners=False)
            if self._rand() < 0.5:
                pair = pair.flip(-1)
            if self._rand() < 0.5:
                pair = pair.flip(-2)
            if self.hu_offset:
                pair = pair + self._uniform(-self.hu_offset, self.hu_offset)
        if self.patch:  # numpy's randint(0, h - patch): the last position is never drawn
            top = self._randint(0, max(h - self.patch - 1, 0))
            left = self._randint(0, max(w - self.patch - 1, 0))
            pair = pair[..., top:top + self.patch, left:left + self.patch]
        return pair[0, 0], pair[1, 0]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch (input, target) in the networks' [0, 1] units."""
        if self.style == "reference":
            pairs = [self._reference_pair(self.low[i], self.full[i]) for i in self._next_slices()]
        else:
            pick = torch.randint(len(self.slices), (self.batch,), generator=self.g)
            pairs = [self._project_pair(i) for i in self.slices[pick.numpy()].tolist()]
        xs, ys = zip(*pairs)
        return to_input(torch.stack(xs), self.hu_range).float(), to_input(torch.stack(ys), self.hu_range).float()

    def _project_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice i's pair through the project's augmentation (the class doc)."""
        _, h, w = self.low.shape
        lo, fu = self.low[i], self.full[i]
        warp = self.augment and (self.rotation_deg > 0 or self.crop_prob > 0)
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
        return lo, fu


def head_window_mse(pred_hu: np.ndarray, full_hu: np.ndarray) -> float:
    lo, hi = WINDOWS["head"]
    return float(np.mean((np.clip(pred_hu, lo, hi) - np.clip(full_hu, lo, hi)) ** 2))


def build_experiment(spec: ExperimentSpec, seg_ck: dict | None,
                     device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """The model and loss of `spec` on `device`, the frozen segmenter (a segmenter.pt
    dictionary) wired into whichever needs it. Returns (model, loss, model spec for model.pt)."""
    net, saved = spec.build_model(seg_ck)
    net = net.to(device)
    seg = segmenter_from_checkpoint(seg_ck, device) if losses.needs_segmenter(spec.loss["name"]) else None
    return net, spec.build_loss(seg).to(device), saved


def load_training_data(nifti_dir: str, splits: dict, val_max_slices: int | None,
                       target: str = "ndct") -> tuple[dict, dict]:
    """Training slices, and validation slices (at most `val_max_slices`, evenly spaced), as
    {'low': input, 'full': target}. With `target: repeat` (self-supervised, Noise2Noise) the
    target is a second, independent low-dose scan of the same anatomy, for training and for
    choosing the checkpoint alike; the validation NDCT is kept aside as 'ndct', only to report
    validation PSNR on the same scale as the other rows (history, learning curves)."""
    data = stack_subjects(nifti_dir, splits["train"], with_labels=False, with_repeat=target == "repeat")
    val = stack_subjects(nifti_dir, splits["val"], with_labels=False, with_repeat=target == "repeat")
    if target == "repeat":
        for part, subjects in ((data, splits["train"]), (val, splits["val"])):
            if "repeat" not in part:
                missing = [s for s in subjects if not (Path(nifti_dir) / s / REPEAT_NAME).exists()]
                raise DataError(f"train.target: repeat needs a second, independent low-dose scan of every training "
                                f"and validation subject ({REPEAT_NAME}); missing for {', '.join(missing)} under "
                                f"{nifti_dir}. The synthetic dataset draws one; the Mayo data has none.")
            part["ndct"], part["full"] = part["full"], part.pop("repeat")
        del data["ndct"]
    if val_max_slices:
        pick = np.linspace(0, len(val["low"]) - 1, min(val_max_slices, len(val["low"]))).round().astype(int)
        val = {k: v[pick] for k, v in val.items()}
    return data, val


def train_denoiser(spec: ExperimentSpec, *, nifti_dir: str, splits: dict, out_model: str, out_history: str,
                   checkpoint_dir: str, segmenter: str | None = None,
                   stop_after_epochs: int | None = None) -> pd.DataFrame:
    """Train one experiment; write model.pt (best validation epoch), history.csv and, beside
    them, lr_sweep.csv (the learning-rate sweep of `lr: auto`, or the one rate given)."""
    device = pick_device(spec.train.get("device", "auto"), f"experiments.{spec.name}.train.device")
    data, val = load_training_data(nifti_dir, splits, spec.train.get("val_max_slices"), spec.train.get("target", "ndct"))
    spec = resolve_pass(spec, len(data["low"]))  # iters_per_epoch: pass -> the steps of one pass
    if spec.needs_segmenter and not segmenter:
        raise TrainingError(f"experiment {spec.name} ({spec.model['name']} + {spec.loss['name']}) "
                            "needs the segmenter checkpoint (--segmenter)")
    seg_ck = load_segmenter_checkpoint(segmenter) if spec.needs_segmenter else None
    print(f"training {spec.name}: {spec.model['name']} with loss {spec.loss['name']} on {device} "
          f"(threads: {torch.get_num_threads()}): {len(data['low'])} training and {len(val['low'])} "
          f"validation slices; {spec.budget.get('protocol', 'given')} budget: {spec.budget.get('steps', '?')} steps, "
          f"{spec.budget.get('tera_macs', float('nan')):.3g} x 10^12 MACs", file=sys.stderr)
    run = _Run(spec, data, val, seg_ck, device, [segmenter] if seg_ck else [], splits)
    if getattr(models.REGISTRY.get(spec.model["name"]), "calibrated", False):
        return _calibrate(spec, run, out_model, out_history)
    sweep = run.sweep(checkpoint_dir) if spec.train["lr"] == "auto" else pd.DataFrame(
        [{"lr": spec.train["lr"], "steps": spec.budget.get("steps"), "chosen": True, "source": "given"}])
    spec = replace(spec, train={**spec.train, "lr": float(sweep.loc[sweep["chosen"], "lr"].iloc[0])})
    result, model_spec = run.fit(spec, checkpoint_dir, stop_after_epochs,
                                 patience=spec.train["budget"]["patience"] if _converged(spec) else None,
                                 label=f"{spec.name}: ")
    df = pd.DataFrame(result.history).assign(target=spec.train.get("target", "ndct"))
    if not result.complete:
        print(f"{spec.name}: stopped after epoch {len(result.history)} as asked (--stop-after-epochs): no model.pt "
              f"written; the same command without it resumes from {checkpoint_dir}", file=sys.stderr)
        return df
    print(summary(spec, result, run.ldct_psnr), file=sys.stderr)
    # written together at the end (the sweep's runs are kept in checkpoint_dir meanwhile): a run
    # that fails leaves no new lr_sweep.csv beside an older model.pt
    write_csv(Path(out_model).with_name("lr_sweep.csv"), sweep)
    write_csv(out_history, df)
    _save_model(out_model, result.best_state, model_spec, spec, result.best_row, run)
    return df


def summary(spec: ExperimentSpec, result: engine.Result, ldct_psnr: float) -> str:
    """The training's last log line: the steps and compute it spent, the epoch kept and its
    validation PSNR against the LDCT input's (Table 2's convergence marks come from the same
    history: training.csv)."""
    last, kept = result.history[-1], result.best_row
    planned = spec.train["epochs"] * spec.train["iters_per_epoch"]
    patience = spec.train.get("budget", {}).get("patience")
    stopped = (f" (stopped early: no better validation in the last {patience} validations)"
               if last["step"] < planned else "")
    return (f"{spec.name}: done: {last['step']} of {planned} steps{stopped}, {last['tera_macs']:.3g} x 10^12 MACs, "
            f"lr {spec.train['lr']:g}; kept epoch {kept['epoch']} of {len(result.history)} (step {kept['step']}): "
            f"validation PSNR [-40, 120] HU {kept['val_psnr_brain']:.2f} dB, the LDCT input's {ldct_psnr:.2f} dB")


def _save_model(out_model: str, state: dict, model_spec: dict, spec: ExperimentSpec, best: dict, run: _Run) -> None:
    save_torch(out_model, {"state_dict": state, "model": model_spec, "hu_range": list(spec.hu_range),
                           "epoch": best["epoch"], "val_mse_head": best["val_mse_head"],
                           "val_psnr_brain": best["val_psnr_brain"], "val_psnr_brain_ldct": run.ldct_psnr,
                           "lr": spec.train["lr"], "budget": spec.budget, "target": spec.train.get("target", "ndct"),
                           "spec": spec.to_json(), "versions": versions(),
                           "machine": machine(str(run.device))})


def _calibrate(spec: ExperimentSpec, run: _Run, out_model: str, out_history: str) -> pd.DataFrame:
    """A classical denoiser (a model class with `calibrated = True`, e.g. BM3D): its noise
    model estimated from the training pairs inside the head (`calibrate`), then the noise scale
    among its `noise_scales` with the lowest validation MSE [0, 80] HU, as the learning rate is
    chosen for the trained rows. lr_sweep.csv holds the scales tried; history.csv one row."""
    t0 = time.perf_counter()
    net, model_spec = spec.build_model(None)
    low, target = (to_input(run.data[k], spec.hu_range)[:, 0].numpy() for k in ("low", "full"))
    net.calibrate(low, target, run.data["full"] > -500.0)
    rows = []
    for scale in net.noise_scales:
        net.set_scale(scale)
        rows.append({"noise_scale": scale, **run.validate(net)})
        print(f"calibrating {spec.name}: noise scale {scale:g}: validation MSE [0, 80] HU "
              f"{rows[-1]['val_mse_head']:.4f}", file=sys.stderr)
    sweep = pd.DataFrame(rows)
    best = int(sweep["val_mse_head"].idxmin())
    sweep = sweep.assign(lr=math.nan, steps=0, chosen=sweep.index == best, source="noise scale chosen on validation")
    write_csv(Path(out_model).with_name("lr_sweep.csv"), sweep)
    net.set_scale(float(sweep.loc[best, "noise_scale"]))
    row = {"epoch": 1, "train_loss": math.nan, **{k: v for k, v in rows[best].items() if k != "noise_scale"},
           "lr": math.nan, "seconds": round(time.perf_counter() - t0, 3), "best": True, "samples_per_s": math.nan,
           "step": 0, "tera_macs": 0.0}
    _save_model(out_model, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, model_spec,
                replace(spec, train={**spec.train, "lr": math.nan}), row, run)
    df = pd.DataFrame([row])
    write_csv(out_history, df)
    return df


def sweep_epochs(train: dict) -> int:
    """Validation rounds each learning rate of the sweep trains: `lr_sweep.fraction` of the
    run's, rounded, at least one, raised to cover `lr_sweep.min_steps`, at most the run's."""
    sweep, epochs = train["lr_sweep"], int(train["epochs"])
    share = max(1, round(epochs * sweep["fraction"]))
    floor = -(-int(sweep.get("min_steps", 0)) // int(train["iters_per_epoch"]))
    return min(epochs, max(share, floor))


def _converged(spec: ExperimentSpec) -> bool:
    return spec.train.get("budget", {}).get("protocol") == "converged"


class _Run:
    """One experiment's training data and validation, trained by `fit` at a given spec."""

    def __init__(self, spec: ExperimentSpec, data: dict, val: dict, seg_ck: dict | None, device: torch.device,
                 files: list, splits: dict):
        self.spec, self.data, self.val, self.seg_ck, self.device = spec, data, val, seg_ck, device
        # the training code too (ldct's modules train.py imports, models/, losses/): a killed run
        # resumes only under the code that began it (the workflow does not rerun a training
        # when ldct/ changes, so a finished model is kept; a half-trained one starts fresh)
        self.inputs = engine.fingerprint([data, val], [*files, *library_files(Path(__file__).parents[1], "train")],
                                         (models, losses))
        self.splits = {k: splits[k] for k in ("train", "val")}
        self.reported = val.get("ndct", val["full"])  # validation PSNR's reference: NDCT for every row
        self.ldct_psnr = mean_psnr(val["low"], self.reported, "brain")

    def validate(self, model: torch.nn.Module) -> dict:
        """The score that picks the checkpoint (MSE [0, 80] HU against the training target) and
        the validation PSNR [-40, 120] HU against NDCT that the history and figures report."""
        pred = predict_slices(model, self.val["low"], tuple(self.spec.hu_range), self.device,
                              amp=bool(self.spec.train.get("amp", True)))
        return {"val_mse_head": head_window_mse(pred, self.val["full"]),
                "val_psnr_brain": mean_psnr(pred, self.reported, "brain"),
                "val_psnr_brain_ldct": self.ldct_psnr}

    def fit(self, spec: ExperimentSpec, checkpoint_dir: str | None, stop_after_epochs: int | None = None,
            patience: int | None = None, label: str = "") -> tuple[engine.Result, dict]:
        """Train from the seed's initialisation (the same for every call with one seed); `label`
        prefixes its progress lines and errors."""
        cfg = spec.train
        engine.prepare(spec.seed, self.device)
        net, criterion, model_spec = build_experiment(spec, self.seg_ck, self.device)
        gen = torch.Generator().manual_seed(spec.seed)
        sampler = PatchSampler.from_config(self.data["low"], self.data["full"], cfg, spec.hu_range, gen)
        key = engine.resume_key(self.device, spec=spec.to_json(), **self.splits, inputs=self.inputs)
        task = engine.Task(net, criterion, sampler.sample, self.validate, score="val_mse_head",
                           start_epoch=sampler.start_epoch, label=label)
        result = engine.fit(task, cfg, device=self.device, generator=gen, key=key, checkpoint_dir=checkpoint_dir,
                            stop_after_epochs=stop_after_epochs, patience=patience,
                            macs_per_step=spec.budget.get("macs_per_step", 0.0))
        return result, model_spec

    def sweep(self, checkpoint_dir: str) -> pd.DataFrame:
        """`lr: auto`: each candidate trains `lr_sweep.fraction` of the run's epochs (and at
        least `lr_sweep.min_steps` steps) from the same initialisation; the lowest best
        validation MSE [0, 80] HU is chosen."""
        cfg = self.spec.train
        epochs = sweep_epochs(cfg)
        rows, rates = [], cfg["lr_sweep"]["candidates"]
        for i, lr in enumerate(rates, 1):
            trial = replace(self.spec, train={**cfg, "lr": lr, "epochs": epochs})
            print(f"lr sweep: {lr:g} ({i} of {len(rates)}) for {epochs} x {cfg['iters_per_epoch']} steps", file=sys.stderr)
            label = f"{self.spec.name} lr sweep {lr:g}: "
            try:
                best = self.fit(trial, str(Path(checkpoint_dir) / f"lr_{lr:g}"), label=label)[0].best_row
                rows.append({"lr": lr, "steps": epochs * cfg["iters_per_epoch"], "val_mse_head": best["val_mse_head"],
                             "val_psnr_brain": best["val_psnr_brain"], "source": "sweep"})
            except TrainingError as err:  # a rate that diverges is out, not fatal
                why = str(err).removeprefix(label)
                print(f"lr sweep: {lr:g} dropped: {why}", file=sys.stderr)
                rows.append({"lr": lr, "steps": epochs * cfg["iters_per_epoch"], "val_mse_head": math.inf,
                             "val_psnr_brain": math.nan, "source": f"sweep: {why}"})
        df = pd.DataFrame(rows)
        if not np.isfinite(df["val_mse_head"]).any():
            raise TrainingError(f"{self.spec.name}: every learning rate of the sweep diverged: {cfg['lr_sweep']['candidates']}; "
                                + "; ".join(f"{r['lr']:g}: {r['source'].removeprefix('sweep: ')}" for r in rows))
        df["chosen"] = df.index == df["val_mse_head"].idxmin()
        scores = ", ".join(f"{r.lr:g}: {r.val_mse_head:.4g}" for r in df.itertuples())
        print(f"lr sweep: chose {df.loc[df['chosen'], 'lr'].iloc[0]:g} (validation MSE [0, 80] HU by rate: {scores})",
              file=sys.stderr)
        return df
