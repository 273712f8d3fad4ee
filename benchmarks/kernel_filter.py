"""Feature-space kernel filtering: shift-and-accumulate (models.featkpn.kernel_filter) vs the
naive unfold-based version, forward + backward at the three Feat-KPN scales of a 512x512
slice (nf = nk = 16, k = 5: 16 channels at 512, 32 at 256, 64 at 128).

    python benchmarks/kernel_filter.py [--size 512] [--repeats 3]

Each variant runs in its own process; prints time, peak memory and the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.featkpn import kernel_filter  # noqa: E402


def unfold_filter(feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = feat.shape
    pad = F.pad(feat, (k // 2,) * 4, mode="replicate")
    patches = F.unfold(pad, k).view(n, c, k * k, h, w)
    return (patches * kernels.view(n, c, k * k, h, w)).sum(2)


def run(variant: str, size: int, repeats: int, warmup: bool = False) -> None:
    torch.manual_seed(0)
    fn = kernel_filter if variant == "fast" else unfold_filter
    scales = [(16, size), (32, size // 2), (64, size // 4)]
    for _ in range(1 if warmup else repeats):
        for c, s in scales:
            feat = torch.randn(1, c, s, s, requires_grad=True)
            ker = torch.randn(1, c * 25, s, s, requires_grad=True)
            fn(feat, ker, 5).square().mean().backward()


def main() -> None:
    from benchmarks._measure import in_child

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    res = {v: in_child("benchmarks.kernel_filter", "run", v, a.size, a.repeats) for v in ("naive", "fast")}
    for v, r in res.items():
        print(f"{v:6s} forward+backward x{a.repeats}: {r['seconds']:.3f} s, peak {r['peak_mb']:.0f} MB")
    print(f"speed-up {res['naive']['seconds'] / res['fast']['seconds']:.2f}x, "
          f"memory reduction {res['naive']['peak_mb'] / max(res['fast']['peak_mb'], 1e-6):.2f}x "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
