"""One epoch of the paper configuration's training at full resolution: time and memory.

    python benchmarks/paper_epoch.py                      # configs/paper.yaml, a full epoch on CUDA
    python benchmarks/paper_epoch.py --steps 3            # a few steps, extrapolated (CPU check)
    python benchmarks/paper_epoch.py --experiments featkpn_l1 redcnn_l1 --no-fp32

Runs the training engine's own optimiser step (`ldct.engine.train_step`: mixed precision and
gradient scaling as in training) with the experiments' models and losses as configured,
batch size and augmentation of the config, on full 512x512 slices of synthetic head phantoms
with quarter-dose noise inserted in the projection domain. The anatomical loss uses the
published segmenter architecture (base width 64, channel norm) with random weights: its cost,
not its weights, is measured. Mixed precision and float32 are measured side by side.

Prints, per experiment and precision: ms per step, seconds per epoch (`iters_per_epoch`
steps, measured when --steps is not given, extrapolated otherwise), the whole run's training
time (x epochs), validation slices per second, and peak GPU memory of the training steps and,
apart, of validation (whole slices in batches of 4); then AMP vs fp32 ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import models  # noqa: E402
from ldct.budget import resolve_pass  # noqa: E402
from ldct.classes import NUM_CLASSES  # noqa: E402
from ldct.config import load_config  # noqa: E402
from ldct.engine import Adversary, build_optimizer, train_step  # noqa: E402
from ldct.inference import pick_device, predict_slices  # noqa: E402
from ldct.lowdose import ParallelBeam, simulate_doses  # noqa: E402
from ldct.phantom import draw_subject, synthesize_subject  # noqa: E402
from ldct.allocator import keep_large_allocations  # noqa: E402
from ldct.provenance import machine, versions  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402
from ldct.spec import ExperimentSpec  # noqa: E402
from ldct.train import PatchSampler, build_experiment  # noqa: E402
from models.unet import ORIENTATION_TURNS  # noqa: E402


def phantom_pairs(matrix: int, n_slices: int, fov_mm: float = 256.0, seed: int = 0):
    """(low, full) HU slices (n, matrix, matrix) of one synthetic head: full dose and quarter
    dose of the same acquisition (ldct.lowdose.simulate_doses, 720 views)."""
    z = (-10.0, -10.0 + 5.0 * n_slices)  # through the basal ganglia and ventricles
    ph = synthesize_subject(draw_subject("B001", seed), matrix, fov_mm / matrix, 5.0, z)
    doses = simulate_doses(ph["hu"], ParallelBeam(matrix, fov_mm / matrix, 720), 6.5e4, [0.25], 5.0, seed)
    return doses[0.25].astype(np.float32), doses[1.0].astype(np.float32)


def gib(x: float) -> str:
    return "-" if x != x else f"{x:.2f} GiB"


def config_experiments(path: str) -> list[str]:
    return list(load_config(path)["experiments"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: ExperimentSpec, seg_ck: dict, low, full, device, amp: bool, steps: int | None):
    cfg, hu_range = spec.train, spec.hu_range
    torch.manual_seed(spec.seed)
    net, criterion, _ = build_experiment(spec, seg_ck, device)
    opt = build_optimizer([p for p in net.parameters() if p.requires_grad], cfg)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    adversary = Adversary.of(criterion, cfg, use_amp)  # a GAN's discriminator steps are part of its step
    sampler = PatchSampler.from_config(low, full, cfg, hu_range, torch.Generator().manual_seed(spec.seed))
    n = steps or cfg["iters_per_epoch"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    for _ in range(2):  # warm-up: kernels chosen, memory pools filled
        x, y = sampler.sample()
        train_step(net, criterion, opt, scaler, x.to(device), y.to(device), use_amp, adversary)
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        x, y = sampler.sample()
        train_step(net, criterion, opt, scaler, x.to(device), y.to(device), use_amp, adversary)
    sync(device)
    step_s = (time.perf_counter() - t) / n
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":  # validation's own peak: its batch of whole slices, not training's
        torch.cuda.reset_peak_memory_stats(device)
    net.eval()
    predict_slices(net, low[:2], tuple(hu_range), device, amp=use_amp)  # the row's precision
    sync(device)
    t = time.perf_counter()
    predict_slices(net, low, tuple(hu_range), device, amp=use_amp)
    sync(device)
    infer = len(low) / (time.perf_counter() - t)
    val_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_ms": 1000 * step_s, "steps_timed": n, "epoch_s": step_s * cfg["iters_per_epoch"],
            "run_h": step_s * cfg["iters_per_epoch"] * cfg["epochs"] / 3600, "val_slices_per_s": infer,
            "peak_gib": peak, "val_peak_gib": val_peak, "measured_epoch": steps is None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "paper.yaml"))
    ap.add_argument("--experiments", nargs="+", default=["featkpn_l1", "featkpn_ana"])
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="time this many steps and extrapolate (default: a whole epoch, iters_per_epoch steps)")
    ap.add_argument("--matrix", type=positive_int, default=512)
    ap.add_argument("--slices", type=positive_int, default=4, help="phantom slices to sample from and to validate on")
    ap.add_argument("--train-slices", type=positive_int, default=1400,
                    help="training slices an epoch of `iters_per_epoch: pass` passes over (default: the paper "
                         "split's 40 cases x about 35)")
    ap.add_argument("--no-fp32", action="store_true", help="measure mixed precision only")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    unknown = [e for e in a.experiments if e not in config_experiments(a.config)]
    if unknown:
        ap.error(f"{', '.join(unknown)}: not an experiment of {a.config} ({', '.join(config_experiments(a.config))})")
    keep_large_allocations()  # as the workflow's jobs run (ldct.allocator)
    config = load_config(a.config)
    device = pick_device(a.device, "--device")
    seg = config["segmenter"]
    torch.manual_seed(0)
    turns = ORIENTATION_TURNS[seg["orientation"]]  # the paper config's segmenter sees turned slices
    unet = models.build("unet", num_classes=NUM_CLASSES, base_width=seg["base_width"], norm=seg["norm"], turns=turns)
    seg_ck = {"state_dict": unet.state_dict(), "base_width": seg["base_width"], "norm": seg["norm"],
              "num_classes": NUM_CLASSES, "turns": turns}
    t = time.perf_counter()
    low, full = phantom_pairs(a.matrix, a.slices)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{header(str(device))}\n{a.config}; {a.slices} phantom slices at {a.matrix}^2 made in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    precisions = [True] if a.no_fp32 or device.type != "cuda" else [True, False]
    rows = []
    calibrated = [e for e in a.experiments
                  if getattr(models.REGISTRY.get(config["experiments"][e]["model"]["name"]), "calibrated", False)]
    if calibrated:
        print(f"  {', '.join(calibrated)}: calibrated, not trained (no training step to time)", flush=True)
    a.experiments = [e for e in a.experiments if e not in calibrated]
    if not a.experiments:
        sys.exit("no experiment with a training step to time")
    for exp in a.experiments:
        spec = resolve_pass(ExperimentSpec.from_config(config, exp), a.train_slices)  # an epoch's steps
        cfg = spec.train
        for amp in precisions:
            r = measure(spec, seg_ck, low, full, device, amp, a.steps)
            r.update(experiment=exp, amp=amp and device.type == "cuda", batch=cfg["batch_size"],
                     iters_per_epoch=cfg["iters_per_epoch"], epochs=cfg["epochs"])
            rows.append(r)
            print(f"  {exp:14s} {'AMP ' if r['amp'] else 'fp32'} {r['step_ms']:8.1f} ms/step  "
                  f"epoch {r['epoch_s']:8.1f} s ({'measured' if r['measured_epoch'] else 'extrapolated'}, "
                  f"{cfg['iters_per_epoch']} steps of batch {cfg['batch_size']})  "
                  f"{cfg['epochs']} epochs {r['run_h']:6.1f} h  val {r['val_slices_per_s']:6.1f} slices/s  "
                  f"peak GPU memory: training {gib(r['peak_gib'])}, validation {gib(r['val_peak_gib'])}", flush=True)
    if device.type != "cuda":
        print("\n(CPU: no mixed precision; the first column is fp32)")
    print("\nexperiment      ms/step AMP   ms/step fp32   AMP speed-up   peak GiB AMP   peak GiB fp32")
    for exp in a.experiments:
        amp = next(r for r in rows if r["experiment"] == exp and r["amp"] == (device.type == "cuda"))
        fp = next((r for r in rows if r["experiment"] == exp and not r["amp"]), None)
        if fp is None or fp is amp:
            print(f"{exp:14s} {amp['step_ms']:12.1f} {'-':>14s} {'-':>14s} {gib(amp['peak_gib']):>14s} {'-':>15s}")
        else:
            print(f"{exp:14s} {amp['step_ms']:12.1f} {fp['step_ms']:14.1f} {fp['step_ms'] / amp['step_ms']:13.2f}x "
                  f"{gib(amp['peak_gib']):>14s} {gib(fp['peak_gib']):>15s}")
    base = rows[0]["step_ms"]
    for r in rows[1:]:
        if r["amp"] == rows[0]["amp"]:
            print(f"{r['experiment']} costs {r['step_ms'] / base:.2f}x {rows[0]['experiment']} per step")
    if a.json:
        with open(a.json, "w") as fh:
            # null, not NaN, where a number is not measured (a CPU's GPU memory): NaN is not JSON
            rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
            json.dump({"device": name, "versions": versions(), "machine": machine(str(device)), "rows": rows}, fh,
                      indent=2, allow_nan=False)


if __name__ == "__main__":
    run(main)
