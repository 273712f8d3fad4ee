"""The project's one training loop, shared by the denoisers and the segmentation U-Net.

`fit` runs epochs of optimiser steps (mixed precision on CUDA), validates after each epoch,
keeps the best snapshot, logs one history row per epoch (each term of a `TermsLoss` in its own
`loss_<term>` column) and saves its whole state after every epoch, so that a killed job
resumes where it stopped. The optimiser and the learning-rate schedule are named in the
config (`optimizer`, `schedule`); `Schedule` is the only writer of the learning rate.

Resume: `<checkpoint_dir>/last.pt` carries a key (a hash of the settings and the inputs,
given by the caller); a run with another key starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ldct.errors import TrainingError
from ldct.io import save_torch

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("exponential", "cosine", "constant", "onecycle")


def prepare(seed: int, device: torch.device) -> None:
    """Seed torch's and numpy's global generators; deterministic kernels on the CPU."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)


def resume_key(device: torch.device, **parts) -> dict:
    """What a run's checkpoint must match to be resumed (_Checkpoint): its `parts` (settings,
    split, data and code) and, on the CPU, the thread count: other threads sum in another order,
    so a run resumed with them goes on another path and ends with other weights."""
    return {**parts, "threads": torch.get_num_threads() if device.type == "cpu" else None}


def settings_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(arrays: list[dict], files: list[str | Path] = (), packages: tuple = ()) -> str:
    """A digest of what a run trains from besides its settings: arrays (training and
    validation slices), files (a segmenter) and the source of code packages (models/,
    losses/), so that a resumed run whose inputs or code changed starts fresh."""
    h = hashlib.blake2b(digest_size=16)
    for group in arrays:
        for k in sorted(group):
            h.update(k.encode())
            h.update(np.ascontiguousarray(group[k]).data)
    for f in files:
        h.update(Path(f).read_bytes())
    for pkg in packages:
        for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


_FUSED_DEVICES = ("cpu", "cuda")  # devices with torch's fused Adam, AdamW and SGD


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    """`cfg['optimizer']` (adamw, the default; adam; sgd with momentum 0.9) at `cfg['lr']`.
    torch's fused implementation where every parameter's device has one (CPU and CUDA): the
    same update in one kernel over all parameters instead of a dozen ops per tensor (Feat-KPN's
    AdamW step on 2 CPU threads 4.0 -> 0.9 ms; the values differ from the loop's by rounding)."""
    name, lr, wd = cfg.get("optimizer", "adamw"), cfg["lr"], cfg.get("weight_decay", 0.0)
    params = list(params)
    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]  # groups or tensors
    fused = {"fused": True} if tensors and all(t.device.type in _FUSED_DEVICES for t in tensors) else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, **fused)
    raise TrainingError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class Schedule:
    """The learning rate of each step: a linear warm-up over `warmup_iters` steps times the
    named decay: exponential (times `lr_decay` after each epoch, the default), cosine (to 0
    at the last step), constant, or onecycle (torch's OneCycleLR, warm-up share 0.15, which
    also cycles the momentum; it ignores warmup_iters)."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int, total_steps: int):
        self.opt, self.name = opt, cfg.get("schedule", "exponential")
        if self.name not in SCHEDULES:
            raise TrainingError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        self.lr0, self.decay = cfg["lr"], cfg.get("lr_decay", 1.0)
        self.warmup, self.per_epoch, self.total = int(cfg.get("warmup_iters", 0)), steps_per_epoch, total_steps
        self.epoch_lr = [self.lr0]  # products in order, as torch's ExponentialLR forms them
        self.torch = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr0, total_steps=total_steps,
                                                          pct_start=0.15) if self.name == "onecycle" else None)

    def lr(self, step: int) -> float:
        epoch = step // self.per_epoch
        if self.name == "exponential":
            while len(self.epoch_lr) <= epoch:
                self.epoch_lr.append(self.epoch_lr[-1] * self.decay)
            base = self.epoch_lr[epoch]
        elif self.name == "cosine":
            base = self.lr0 * 0.5 * (1 + math.cos(math.pi * step / self.total))
        else:
            base = self.lr0
        return base * (step + 1) / self.warmup if step < self.warmup else base

    def before_step(self, step: int) -> None:
        if self.torch is None:
            for group in self.opt.param_groups:
                group["lr"] = self.lr(step)

    def after_step(self) -> None:
        if self.torch is not None:
            self.torch.step()

    def state_dict(self) -> dict:
        return self.torch.state_dict() if self.torch is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.torch is not None:
            self.torch.load_state_dict(state)


def forward_for_training(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The output the loss compares with `y`: `net(x)`, or `net.training_forward(x, y)` for a
    model trained on something other than its inference pass (a diffusion model: one random
    step of its chain)."""
    own = getattr(net, "training_forward", None)
    return own(x, y) if own is not None else net(x)


class Adversary:
    """The discriminator of an adversarial loss (a loss with a `discriminator` module and a
    `discriminator_loss(fake, real, source)` method: output, target, input) and its own
    optimiser: one discriminator step on each generator output, before the generator's step.
    Its learning rate is the loss's `d_lr`, or the generator's; the optimiser is the config's,
    without weight decay."""

    def __init__(self, criterion, cfg: dict, use_amp: bool):
        self.criterion = criterion
        lr = getattr(criterion, "d_lr", None) or cfg["lr"]
        self.opt = build_optimizer(criterion.discriminator.parameters(), {**cfg, "lr": lr, "weight_decay": 0.0})
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        self.use_amp = use_amp

    @staticmethod
    def of(criterion, cfg: dict, use_amp: bool) -> Adversary | None:
        return Adversary(criterion, cfg, use_amp) if hasattr(criterion, "discriminator_loss") else None

    def step(self, fake: torch.Tensor, real: torch.Tensor, source: torch.Tensor) -> dict[str, float]:
        with torch.autocast(fake.device.type, enabled=self.use_amp):
            loss = self.criterion.discriminator_loss(fake.detach(), real, source)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite discriminator loss ({loss.item()}); lower the loss's d_lr or train.lr")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"discriminator": loss.item()}

    def state_dict(self) -> dict:
        return {"discriminator": self.criterion.discriminator.state_dict(), "opt": self.opt.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.criterion.discriminator.load_state_dict(state["discriminator"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])


def train_step(net: torch.nn.Module, criterion: Callable, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, use_amp: bool, adversary: Adversary | None = None) -> dict[str, float]:
    """One optimiser step (mixed precision when `use_amp`), after the adversary's step where
    the loss has one: {'loss': total, term: value...}; stops on a non-finite loss."""
    with torch.autocast(x.device.type, enabled=use_amp):
        out = forward_for_training(net, x, y)
    extra = adversary.step(out, y, x) if adversary is not None else {}
    with torch.autocast(x.device.type, enabled=use_amp):
        loss = criterion(out, y)
    terms = getattr(criterion, "last_terms", {})
    if not torch.isfinite(loss):
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            cause = "the batch holds NaN or inf: check the input data"
        elif not torch.isfinite(out).all():
            cause = ("the model's output is not finite (after updates: diverged weights, lower train.lr; at the "
                     "first step: the model's forward)")
        else:
            cause = "the model's output is finite, the loss of it is not: check the loss"
        raise TrainingError(f"non-finite loss ({loss.item()}); {cause}")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, **extra}


@dataclass
class Task:
    """What `fit` trains: the network, its loss, a batch source, a validation and its score."""

    net: torch.nn.Module
    criterion: Callable  # (output, target) -> scalar; a TermsLoss also gives its terms
    sample: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # one (input, target) batch, on the CPU
    validate: Callable[[torch.nn.Module], dict]  # history columns of one validation (net in eval mode)
    score: str  # the validation column that picks the best epoch
    maximize: bool = False
    label: str = ""  # prefix of progress messages
    # called before each epoch's first batch (a sampler's new pass over its data); its randomness
    # must come from the checkpointed generator, so a resumed run draws what an unbroken one does
    start_epoch: Callable[[], None] | None = None


@dataclass
class Result:
    history: list[dict]
    best_state: dict
    best_row: dict
    complete: bool  # False when stopped early by stop_after_epochs


def fit(task: Task, cfg: dict, *, device: torch.device, generator: torch.Generator, key: str | dict,
        checkpoint_dir: str | Path | None = None, stop_after_epochs: int | None = None,
        patience: int | None = None, macs_per_step: float = 0.0) -> Result:
    """Train `task.net` for cfg['epochs'] x cfg['iters_per_epoch'] steps (see the module doc);
    with `patience`, stop once the score has not improved for that many epochs. History rows
    count the steps and the training compute (`macs_per_step`, in 10^12 MACs) so far. `key`:
    what a checkpoint must match to be resumed (_Checkpoint)."""
    epochs, iters = cfg["epochs"], cfg["iters_per_epoch"]
    opt = build_optimizer([p for p in task.net.parameters() if p.requires_grad], cfg)
    schedule = Schedule(opt, cfg, iters, epochs * iters)
    use_amp = bool(cfg.get("amp", False)) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    adversary = Adversary.of(task.criterion, cfg, use_amp)
    print(f"{task.label}{cfg.get('optimizer', 'adamw')} at lr {cfg['lr']:g}, {schedule.name} schedule, {epochs} x {iters} "
          f"steps on {device} (mixed precision: {'on' if use_amp else 'off'})", file=sys.stderr)
    checkpoint = _Checkpoint(checkpoint_dir, key, device)
    state = checkpoint.resume(task.net, opt, schedule, generator, scaler, adversary)
    history, best_state = state["history"], state["best_state"]
    better = (lambda a, b: a > b) if task.maximize else (lambda a, b: a < b)
    best = state["best"] if state["best"] is not None else (-math.inf if task.maximize else math.inf)
    first_epoch = started = None  # for the time left: this process's epochs (a resumed run's too)
    for epoch in range(state["epoch"], epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            break
        if patience and _stalled(history, patience):
            print(f"{task.label}no improvement for {patience} validations: stopping after epoch {epoch}",
                  file=sys.stderr)
            break
        t0 = time.perf_counter()
        if first_epoch is None:
            first_epoch, started = epoch, t0
        sums, lr_used = _train_epoch(task, opt, schedule, scaler, adversary, device, use_amp, epoch, epochs, iters)
        seconds = time.perf_counter() - t0
        task.net.eval()
        row = task.validate(task.net)
        improved = better(row[task.score], best)
        if improved:
            best = row[task.score]
            best_state = {k: v.detach().cpu().clone() for k, v in task.net.state_dict().items()}
        history.append(_history_row(epoch + 1, sums, iters, row, lr_used, seconds, improved, cfg["batch_size"]))
        history[-1].update(step=(epoch + 1) * iters, tera_macs=(epoch + 1) * iters * macs_per_step / 1e12)
        last = min(epochs, stop_after_epochs or epochs)  # patience may stop it sooner: "at most"
        left = (time.perf_counter() - started) / (epoch + 1 - first_epoch) * (last - epoch - 1)
        print(f"{task.label}epoch {epoch + 1}: loss {history[-1]['train_loss']:.5f} {task.score} "
              f"{row[task.score]:.4f}{' (best)' if improved else ''}"
              + (f"; {'at most' if patience else 'about'} {_duration(left)} left of {last} epochs"
                 if epoch + 1 < last else ""), file=sys.stderr)
        checkpoint.save(task.net, opt, schedule, generator, scaler, history, epoch + 1, best, best_state, adversary)
    done = len(history) == epochs or bool(patience and _stalled(history, patience))
    return Result(history, best_state, _kept_row(history, task), done)


def _train_epoch(task: Task, opt, schedule: Schedule, scaler, adversary, device: torch.device, use_amp: bool,
                 epoch: int, epochs: int, iters: int) -> tuple[dict[str, float], float]:
    """One epoch's `iters` steps: (the sums of the loss terms, the rate of its last step)."""
    task.net.train()
    if isinstance(task.criterion, torch.nn.Module):
        task.criterion.train()
    sums: dict[str, float] = {}
    if task.start_epoch is not None:
        task.start_epoch()
    for it in tqdm(range(iters), desc=f"{task.label}epoch {epoch + 1}/{epochs}", file=sys.stderr, mininterval=5):
        schedule.before_step(epoch * iters + it)
        lr_used = opt.param_groups[0]["lr"]  # this step's rate (after_step already sets the next one's)
        x, y = task.sample()
        try:
            losses = train_step(task.net, task.criterion, opt, scaler, x.to(device), y.to(device), use_amp, adversary)
        except TrainingError as err:
            raise _where(err, task, epoch, it, iters) from None
        schedule.after_step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
    return sums, lr_used


def _duration(seconds: float) -> str:
    """`seconds` as a person reads a time left: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _where(err: TrainingError, task: Task, epoch: int, it: int, iters: int) -> TrainingError:
    """A step's error with the epoch and step it happened at (at the very first step, before
    any update, not the learning rate's doing)."""
    first = " (the first step: no update yet, so not the learning rate)" if epoch * iters + it == 0 else ""
    return TrainingError(f"{task.label}epoch {epoch + 1}, step {it + 1}{first}: {err}")


def _kept_row(history: list[dict], task: Task) -> dict:
    """The history row of the weights kept: the last epoch that improved (a NaN score never
    does, so the row always matches the saved state); an error if none ever did."""
    kept = [r for r in history if r["best"]]
    if history and not kept:
        raise TrainingError(f"{task.label}validation {task.score} was never finite "
                            f"({', '.join(str(r[task.score]) for r in history)}): no epoch to keep")
    return kept[-1] if kept else {}


def _stalled(history: list[dict], patience: int) -> bool:
    """The last `patience` validations brought no new best."""
    return len(history) > patience and not any(r["best"] for r in history[-patience:])


def _history_row(epoch: int, sums: dict, iters: int, val: dict, lr: float, seconds: float, best: bool,
                 batch: int) -> dict:
    """One epoch of history.csv; `lr`: the rate of its last step."""
    terms = {f"loss_{k}": v / iters for k, v in sums.items() if k != "loss"}
    return {"epoch": epoch, "train_loss": sums["loss"] / iters, **terms, **val, "lr": lr,
            "seconds": round(seconds, 3), "best": best, "samples_per_s": round(iters * batch / seconds, 3)}


# What a resume key's parts are, in the message that says why a checkpoint is not resumed
KEY_PARTS = {"spec": "the experiment's settings", "cfg": "the settings", "seed": "the seed", "splits": "the split",
             "train": "the training subjects", "val": "the validation subjects", "inputs": "the data or code"}


class _Checkpoint:
    """`last.pt` in the checkpoint folder: everything needed to continue after an epoch. It is
    resumed only under the same `key`: a dict of what the run depends on (its settings, data,
    code, and on the CPU its thread count), or one string; the message when it is not names
    the parts that changed."""

    def __init__(self, folder: str | Path | None, key: str | dict, device: torch.device = torch.device("cpu")):
        self.path = Path(folder) / "last.pt" if folder else None
        self.key = key if isinstance(key, str) else settings_hash(key)
        self.parts = {} if isinstance(key, str) else {k: settings_hash(v) for k, v in key.items()}
        self.threads = None if isinstance(key, str) else key.get("threads")
        self.device = device

    def _changed(self, state: dict) -> str:
        """Why `state` (another run's last.pt) is not resumed: the parts of the key that differ."""
        parts = state.get("key_parts") if isinstance(state, dict) else None
        if not parts or not self.parts:  # written before the parts were recorded
            return "settings or inputs changed"
        changed = [k for k in self.parts if parts.get(k) != self.parts[k]]
        words = [KEY_PARTS.get(k, k) for k in changed if k != "threads"]
        old = state.get("threads")
        if "threads" in changed and None in (old, self.threads):  # None: on a GPU
            was, now = (f"the CPU with {n} threads" if n else "a GPU" for n in (old, self.threads))
            words.append(f"the device ({was} -> {now}: another device computes other weights; to resume, run it on "
                         f"{was} again)")
        elif "threads" in changed:
            words.append(f"the CPU thread count ({old} -> {self.threads}: other threads sum in another order, so "
                         f"the weights would differ; to resume, run it with {old} threads again: snakemake --cores "
                         f"{old}, or ldct train --threads {old})")
        return f"{' and '.join(words) or 'its settings'} changed"

    def clear_leftovers(self) -> None:
        """Remove what a killed write left (ldct.io.atomic_path's temporary `.last.pt.*` files:
        a SIGKILL cannot be caught). The folder is this run's alone (Snakemake locks its outputs)."""
        if self.path is not None and self.path.parent.is_dir():
            for tmp in self.path.parent.glob(f".{self.path.name}.*"):
                tmp.unlink(missing_ok=True)

    def _cuda_rng(self):
        """The random state of the training GPU only (not of every visible one: a run killed
        where two GPUs were visible resumes where one is, e.g. under SLURM --gpus=1)."""
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def _set_cuda_rng(self, saved) -> None:
        if saved is None or self.device.type != "cuda":
            return
        if isinstance(saved, (list, tuple)):  # older last.pt: one state per visible GPU
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            if index >= len(saved):
                return
            saved = saved[index]
        torch.cuda.set_rng_state(saved, self.device)

    def resume(self, net, opt, schedule: Schedule, gen: torch.Generator, scaler: torch.amp.GradScaler,
               adversary: Adversary | None = None) -> dict:
        fresh = {"history": [], "epoch": 0, "best": None, "best_state": None}
        self.clear_leftovers()
        if self.path is None or not self.path.exists():
            return fresh
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # damaged on disk (it is written by rename, so not by a killed job)
            why = str(err).strip().splitlines()[0] if str(err).strip() else "empty or cut short"
            print(f"{self.path}: unreadable checkpoint ({type(err).__name__}: {why}): starting fresh", file=sys.stderr)
            return fresh
        if not isinstance(state, dict) or state.get("key") != self.key:
            print(f"{self.path}: {self._changed(state)} since it was written: starting fresh", file=sys.stderr)
            return fresh
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        schedule.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self._set_cuda_rng(state.get("cuda_rng"))  # diffusion steps, GAN penalties on CUDA
        if state.get("scaler"):  # checkpoints written before the scaler was saved lack it
            scaler.load_state_dict(state["scaler"])
        if adversary is not None:
            adversary.load_state_dict(state["adversary"])
        print(f"resuming from {self.path} after epoch {state['epoch']}", file=sys.stderr)
        return state

    def save(self, net, opt, schedule: Schedule, gen: torch.Generator, scaler: torch.amp.GradScaler, history: list,
             epoch: int, best: float, best_state: dict, adversary: Adversary | None = None) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(self.path, {"key": self.key, "key_parts": self.parts, "threads": self.threads,
                               "model": net.state_dict(), "opt": opt.state_dict(),
                               "sched": schedule.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                               "cuda_rng": self._cuda_rng(),
                               "scaler": scaler.state_dict(), "history": history, "epoch": epoch, "best": best,
                               "best_state": best_state,
                               "adversary": adversary.state_dict() if adversary is not None else None})
