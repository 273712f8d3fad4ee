"""Training and inference throughput of the paper's CNNs (Feat-KPN with and without the
anatomical loss, RED-CNN, EDCNN, SGDNet, DnCNN, KPN) and the Gaussian filter on this machine,
side by side. The other families (Restormer, CoreDiff, BM3D) are timed where they run: their
rows of `configs/families.yaml` (README "Baseline families").

    python benchmarks/throughput.py [--patch 64] [--batch 8] [--slice 128] [--steps 5] [--threads N]

Training: patches per second of a full optimiser step (forward, loss, backward, AdamW) with
the L1 loss, and for Feat-KPN also with the anatomical loss through a segmentation U-Net of
`--seg-width` (the default pre-trained width). Inference: full slices per second. The last
column is each model's training throughput relative to Feat-KPN with L1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import losses  # noqa: E402
import models  # noqa: E402
from ldct.engine import build_optimizer  # noqa: E402
from ldct.allocator import keep_large_allocations  # noqa: E402
from ldct.errors import LdctError  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402

CASES = [  # (label, model kwargs, loss name)
    ("featkpn l1", {"name": "featkpn"}, "l1"),
    ("featkpn l1_l1ana_1", {"name": "featkpn"}, "l1_l1ana_1"),
    ("redcnn l1", {"name": "redcnn"}, "l1"),
    ("edcnn l1", {"name": "edcnn"}, "l1"),
    ("sgdnet l1", {"name": "sgdnet"}, "l1"),
    ("dncnn l1", {"name": "dncnn"}, "l1"),
    ("kpn l1", {"name": "kpn"}, "l1"),
    ("gaussian l1", {"name": "gaussian"}, "l1"),
]


def build(spec: dict, loss: str, seg_width: int, seg_norm: str):
    kw = {k: v for k, v in spec.items() if k != "name"}
    if models.needs_segmenter(spec["name"]):
        kw["seg_width"], kw["seg_norm"] = seg_width, seg_norm
    net = models.build(spec["name"], **kw)
    lkw = {}
    if losses.needs_segmenter(loss):
        lkw = {"segmenter": models.build("unet", base_width=seg_width, norm=seg_norm), "hu_range": (-1024.0, 3072.0)}
    return net, losses.build(loss, **lkw)


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=positive_int, default=64)
    ap.add_argument("--batch", type=positive_int, default=8)
    ap.add_argument("--slice", type=positive_int, default=128)
    ap.add_argument("--steps", type=positive_int, default=5)
    ap.add_argument("--seg-width", type=positive_int, default=12)
    ap.add_argument("--seg-norm", default="instance", choices=["channel", "instance"])
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count())
    a = ap.parse_args()
    keep_large_allocations()  # as the workflow's jobs run (ldct.allocator)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"training {a.batch} x {a.patch}^2 patches per step; inference {a.slice}^2 slices\n{header()}")
    x = torch.rand(a.batch, 1, a.patch, a.patch) * 0.3 + 0.2
    y = x + 0.01 * torch.randn_like(x)
    s = torch.rand(4, 1, a.slice, a.slice) * 0.3 + 0.2
    rows = []
    for label, spec, loss_name in CASES:
        net, loss = build(spec, loss_name, a.seg_width, a.seg_norm)
        opt = build_optimizer([p for p in net.parameters() if p.requires_grad], {"lr": 1e-4, "weight_decay": 0.01})

        def step():
            opt.zero_grad(set_to_none=True)
            loss(net(x), y).backward()
            opt.step()

        try:
            t_train = timed(step, a.steps)
            net.eval()
            with torch.no_grad():
                t_inf = timed(lambda: net(s), max(1, a.steps // 2))
        except (RuntimeError, ValueError) as err:  # a size too small for a model's downsampling
            raise LdctError(f"{label}: cannot run on {a.patch}x{a.patch} patches and {a.slice}x{a.slice} slices "
                            f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        rows.append((label, a.batch / t_train, t_train, 4 / t_inf))
        print(f"  {label:20s} {a.batch / t_train:8.1f} patches/s ({t_train:.3f} s/step)   {4 / t_inf:7.1f} slices/s",
              flush=True)
    ref = rows[0][1]
    print("\nmodel                 train patches/s   step s   infer slices/s   train vs featkpn l1")
    for label, pps, st, sps in rows:
        print(f"{label:20s} {pps:16.1f} {st:8.3f} {sps:16.1f} {pps / ref:20.2f}x")


if __name__ == "__main__":
    run(main)
