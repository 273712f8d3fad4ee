"""Can the anatomical loss move the segmenter's agreement at all? A paired fine-tuning check.

    python benchmarks/anatomical_finetune.py                      # results/synthetic, featkpn_l1
    python benchmarks/anatomical_finetune.py --root results/mayo_head --start featkpn_l1 \\
        --variants l1 l1_l1ana_1:0.01 l1_l1ana_1:1.0 --steps 300 --every 100

Table 3 compares models trained from scratch with and without the anatomical loss; a small
difference there may be training noise. This check isolates the loss: it takes one trained
model of a results tree (`--start`, usually the L1 one) and continues training it for
`--steps` steps with each loss variant (`name` or `name:ana_weight`; the first is the control,
`l1` by default). Every variant starts from the same weights and draws the same batches (the
sampler and torch are reseeded per variant) from the training subjects, with flips, 90-degree
turns and a shared +-20 HU offset (no rotation or crop); AdamW at a constant `--lr`, weight
decay 0.01 (the training default). On a GPU in mixed precision only where the start model was
trained so (ldct.inference.checkpoint_amp), as the workflow denoises it; else in float32.

Before training and after every `--every` steps it scores the test subjects as the workflow
does: the frozen segmenter's mean foreground Dice against its segmentation of NDCT (over each
volume, mean over classes, then over subjects), the anatomical term that the paper's loss
minimises (A of `l1_l1ana_1`: decoder stages and logits, NDCT as target; mean over slices)
and PSNR in [-40, 120] HU (mean over slices). The same scores of the LDCT input and, for
synthetic data, of the noiseless reconstruction (what a perfect denoiser would give) frame
them. For each anatomical variant it also prints how strong the anatomical term's gradient on
the output is against the L1 term's, at its weight, on the first batch.

If even weight 1 (the anatomical term alone) does not lower the term or raise the Dice on
the test subjects compared with the control, the loss cannot be expected to raise Dice in
Table 3 either. `--csv` writes every row.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ldct.anatomy import dice_per_class  # noqa: E402
from ldct.data import load_subject, stack_subjects  # noqa: E402
from ldct.metrics import mean_psnr  # noqa: E402
from ldct.paths import ResultPaths  # noqa: E402
from ldct.allocator import keep_large_allocations  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402
from ldct.engine import build_optimizer, prepare, train_step  # noqa: E402
from ldct.inference import checkpoint_amp, pick_device, predict_slices, segment, to_input  # noqa: E402
from ldct.spec import ExperimentSpec  # noqa: E402
from ldct.train import PatchSampler, build_experiment  # noqa: E402


def parse_variant(text: str) -> dict:
    name, _, weight = text.partition(":")
    return {"name": name, **({"ana_weight": float(weight)} if weight else {})}


class Scorer:
    """The test subjects' scores of a set of outputs (one HU volume per subject)."""

    def __init__(self, test: list, anatomical, hu_range, device, amp: bool):
        """`anatomical`: an l1_l1ana_1 loss, whose frozen segmenter also segments; `amp`: denoise
        in mixed precision (on CUDA), as the start model was trained."""
        self.test, self.anatomical, self.hu_range, self.device, self.amp = test, anatomical, hu_range, device, amp
        self.seg = anatomical.segmenter
        self.seg_ndct = [segment(self.seg, sv.full, device) for sv in test]

    def __call__(self, outputs: list[np.ndarray]) -> dict:
        dice, dist = [], []
        for out, sv, seg_ndct in zip(outputs, self.test, self.seg_ndct):
            dice.append(np.nanmean(dice_per_class(segment(self.seg, out, self.device), seg_ndct)[1:]))
            with torch.no_grad():
                for s in range(0, len(out), 4):
                    pred, ndct = (to_input(v[s:s + 4], self.hu_range).to(self.device) for v in (out, sv.full))
                    dist.append(float(self.anatomical.term(pred, ndct)) * len(pred))
        n = sum(len(o) for o in outputs)
        return {"dice_vs_ndct": float(np.mean(dice)), "anatomical_distance": sum(dist) / n,
                # slices identical to NDCT in the window left out, as the workflow's means do
                "psnr_brain": mean_psnr(np.concatenate(outputs), np.concatenate([sv.full for sv in self.test]), "brain")}

    def model(self, net) -> dict:
        net.eval()
        row = self([predict_slices(net, sv.low, self.hu_range, self.device, amp=self.amp) for sv in self.test])
        net.train()
        return row


def gradient_ratio(net, criterion, x: torch.Tensor, y: torch.Tensor) -> float:
    """|w grad A| / |(1 - w) grad L1| on the output for one batch (l1_l1ana_1's two terms), from a
    copy of `net`: its forward pass in train mode would move a BatchNorm's running statistics, and
    the variants would no longer start alike."""
    pred = copy.deepcopy(net)(x).detach().requires_grad_(True)
    g_ana, = torch.autograd.grad(criterion.w * criterion.term(pred, y), pred)
    g_l1, = torch.autograd.grad((1 - criterion.w) * (pred - y).abs().mean(), pred)
    return float(g_ana.norm() / g_l1.norm())


def parse_args() -> argparse.Namespace:
    """The command line; repeated variants are an error (their rows would mix)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join("results", "synthetic"), help="a results tree of the workflow")
    ap.add_argument("--start", default="featkpn_l1", help="the trained experiment to continue from")
    ap.add_argument("--variants", nargs="+", default=["l1", "l1_l1ana_1:0.01", "l1_l1ana_1:1.0"])
    ap.add_argument("--steps", type=positive_int, default=150)
    ap.add_argument("--every", type=positive_int, default=50)
    ap.add_argument("--patch", type=int, default=0, help="patch size; 0: whole slices (the segmenter's view)")
    ap.add_argument("--batch", type=positive_int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=positive_int, default=None)
    ap.add_argument("--csv", help="also write the rows to this file")
    a = ap.parse_args()
    if a.patch < 0:
        ap.error(f"--patch {a.patch}: a patch size, or 0 for whole slices")
    if len(set(a.variants)) != len(a.variants):
        ap.error(f"--variants repeats a variant: {' '.join(a.variants)}")
    return a


@dataclass
class Setup:
    """What every variant shares: the starting checkpoint, the data and the scorer."""

    splits: dict
    start: dict
    hu_range: tuple
    seg_ck: dict
    device: torch.device
    amp: bool
    train: dict
    test: list
    score: Scorer


def load_setup(a: argparse.Namespace) -> Setup:
    """Load the results tree's split, start model, segmenter and subjects; exit if one is missing."""
    rp = ResultPaths.at(a.root)
    for need in (rp.splits, rp.segmenter, rp.model(a.start)):
        if not need.exists():
            sys.exit(f"{need} not found: run the workflow on {a.root} first (snakemake --cores all)")
    device = pick_device(a.device, "--device")
    splits = json.loads(rp.splits.read_text())
    start = torch.load(rp.model(a.start), map_location="cpu", weights_only=True)
    hu_range = tuple(start["hu_range"])
    seg_ck = torch.load(rp.segmenter, map_location="cpu", weights_only=True)
    train = stack_subjects(rp.nifti(), splits["train"], with_labels=False)
    test = [load_subject(rp.nifti(), s, with_labels=False) for s in splits["test"]]
    spec = ExperimentSpec("anatomical", dict(start["model"]), {"name": "l1_l1ana_1"}, {}, hu_range=hu_range)
    anatomical = build_experiment(spec, seg_ck, device)[1]  # its term() is A, its segmenter the frozen one
    amp = device.type == "cuda" and checkpoint_amp(start)
    return Setup(splits, start, hu_range, seg_ck, device, amp, train, test, Scorer(test, anatomical, hu_range, device, amp))


def reference_rows(setup: Setup) -> list[dict]:
    """Score and print the LDCT input and, for synthetic data, the noiseless reconstruction."""
    score, test = setup.score, setup.test
    rows = [{"variant": "LDCT input", "step": 0, **score([sv.low for sv in test]), "seconds": 0.0}]
    if all(sv.truth is not None for sv in test):
        rows.append({"variant": "noiseless reconstruction", "step": 0, **score([sv.truth for sv in test]), "seconds": 0.0})
    for r in rows:
        print(f"  {r['variant']:<24}: Dice vs NDCT seg {r['dice_vs_ndct']:.4f}, anatomical term "
              f"{r['anatomical_distance']:.4f}, PSNR [-40,120] {r['psnr_brain']:.2f} dB", flush=True)
    return rows


def run_variant(text: str, a: argparse.Namespace, setup: Setup, first: dict | None) -> tuple[list[dict], dict]:
    """Continue the start model with one loss variant, scoring every `a.every` steps; return its rows
    and the start scores (`first`, scored once: every variant starts from the same weights)."""
    prepare(a.seed, setup.device)
    spec = ExperimentSpec(text, dict(setup.start["model"]), parse_variant(text), {"lr": a.lr, "weight_decay": 0.01},
                          seed=a.seed, hu_range=setup.hu_range)
    net, criterion, _ = build_experiment(spec, setup.seg_ck, setup.device)
    net.load_state_dict(setup.start["state_dict"])
    opt = build_optimizer([p for p in net.parameters() if p.requires_grad], spec.train)
    scaler = torch.amp.GradScaler("cuda", enabled=setup.amp)
    sampler = PatchSampler(setup.train["low"], setup.train["full"], a.patch or None, a.batch, True, 20.0,
                           setup.hu_range, torch.Generator().manual_seed(a.seed))
    first = first or setup.score.model(net)
    rows = [{"variant": text, "step": 0, **first, "seconds": 0.0}]
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        x, y = (t.to(setup.device) for t in sampler.sample())
        if step == 1 and spec.loss["name"] == "l1_l1ana_1" and criterion.w < 1:
            print(f"  {text:<24}  anatomical gradient {gradient_ratio(net, criterion, x, y):.2f}x the L1 "
                  "gradient on the output (first batch)", flush=True)
        train_step(net, criterion, opt, scaler, x, y, setup.amp)
        if step % a.every == 0 or step == a.steps:
            rows.append({"variant": text, "step": step, **setup.score.model(net),
                         "seconds": round(time.perf_counter() - t0, 1)})
            r = rows[-1]
            print(f"  {text:<24}  step {step:>5}: Dice vs NDCT seg {r['dice_vs_ndct']:.4f}, "
                  f"anatomical term {r['anatomical_distance']:.4f}, PSNR [-40,120] {r['psnr_brain']:.2f} dB "
                  f"({r['seconds']:.0f} s)", flush=True)
    return rows, first


def print_summary(df: pd.DataFrame, first: dict, steps: int) -> None:
    """Each variant's change from the start and against the control (the first variant)."""
    print(f"\nstart: Dice {first['dice_vs_ndct']:.4f}, anatomical term {first['anatomical_distance']:.4f}, "
          f"PSNR {first['psnr_brain']:.2f} dB; change after {steps} steps:")
    final = df.groupby("variant", sort=False).last()
    control = final.iloc[0]
    for name, r in final.iterrows():
        print(f"  {name:<24} Dice {r['dice_vs_ndct'] - first['dice_vs_ndct']:+.4f} "
              f"(vs {final.index[0]}: {r['dice_vs_ndct'] - control['dice_vs_ndct']:+.4f}), "
              f"anatomical term {r['anatomical_distance'] - first['anatomical_distance']:+.4f}, "
              f"PSNR {r['psnr_brain'] - first['psnr_brain']:+.2f} dB")


def main() -> None:
    """Fine-tune the start model with each variant and print (and optionally write) the scores."""
    a = parse_args()
    keep_large_allocations()  # as the workflow's jobs run (ldct.allocator)
    if a.threads:
        torch.set_num_threads(a.threads)
    setup = load_setup(a)
    print(f"continuing {a.start} (epoch {setup.start['epoch']}) for {a.steps} steps with each of "
          f"{', '.join(a.variants)}; {'whole slices' if not a.patch else f'{a.patch}x{a.patch} patches'}, "
          f"batch {a.batch}, lr {a.lr}, on {setup.device} ({'mixed precision' if setup.amp else 'float32'}); test subjects {', '.join(setup.splits['test'])}", flush=True)
    refs = reference_rows(setup)
    rows: list[dict] = []
    first = None
    for text in a.variants:
        variant_rows, first = run_variant(text, a, setup, first)
        rows += variant_rows
    df = pd.DataFrame(rows)
    print_summary(df, first, a.steps)
    print(header(str(setup.device)))
    if a.csv:
        pd.concat([pd.DataFrame(refs), df]).to_csv(a.csv, index=False)


if __name__ == "__main__":
    run(main)
