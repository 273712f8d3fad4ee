"""Feature-space kernel filtering: shift-and-accumulate (models.featkpn.kernel_filter) vs the
naive unfold-based version, forward + backward at the three Feat-KPN scales of a 512x512
slice (nf = nk = 16, k = 5: 16 channels at 512, 32 at 256, 64 at 128).

    python benchmarks/kernel_filter.py [--size 512] [--repeats 3]

Each variant runs in its own process, with its inputs made before the measurement; prints the
median time of forward + backward, the peak memory above the inputs and their gradients (held
from the warm-up pass, as in training)
and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models._kernel_ops import kernel_filter  # noqa: E402


def unfold_filter(feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = feat.shape
    pad = F.pad(feat, (k // 2,) * 4, mode="replicate")
    patches = F.unfold(pad, k).view(n, c, k * k, h, w)
    return (patches * kernels.view(n, c, k * k, h, w)).sum(2)


def run(variant: str, size: int, repeats: int) -> dict:
    """In this (child) process: inputs are made first, then forward + backward is timed and
    the peak resident memory above the size with the inputs in place is read."""
    from ldct.complexity import _peak_rss_mb, _reset_peak_rss_mb

    torch.manual_seed(0)
    fn = kernel_filter if variant == "fast" else unfold_filter
    inputs = [(torch.randn(1, c, s, s, requires_grad=True), torch.randn(1, c * 25, s, s, requires_grad=True))
              for c, s in [(16, size), (32, size // 2), (64, size // 4)]]

    def step():
        for feat, ker in inputs:
            feat.grad = ker.grad = None
            fn(feat, ker, 5).square().mean().backward()

    step()  # warm-up
    base = _reset_peak_rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "peak_mb": _peak_rss_mb() - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run(a.child, a.size, a.repeats)))
        return
    res = {}
    for v in ("naive", "fast"):
        out = subprocess.run([sys.executable, __file__, "--child", v, "--size", str(a.size), "--repeats", str(a.repeats)],
                             capture_output=True, text=True, check=True)
        res[v] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{v:6s} forward+backward (median of {a.repeats}): {res[v]['seconds']:.3f} s, "
              f"peak {res[v]['peak_mb']:.0f} MB above the inputs and their gradients")
    print(f"speed-up {res['naive']['seconds'] / res['fast']['seconds']:.2f}x, "
          f"memory reduction {res['naive']['peak_mb'] / max(res['fast']['peak_mb'], 1e-6):.2f}x "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {a.size}x{a.size}, nf = nk = 16, k = 5)")


if __name__ == "__main__":
    main()
