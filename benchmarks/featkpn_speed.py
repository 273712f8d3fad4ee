"""Feat-KPN: this project's implementation against the reference implementation's arithmetic,
side by side in one run, on the same weights and inputs.

    python benchmarks/featkpn_speed.py [--threads 2] [--repeats 3] [--device cpu|cuda] [--amp]

The reference (jiwoosong/FeatKPN-LDCT-enhancement, KPNfeat + kernel2d_conv) is re-stated here
as a forward pass over this project's parameters, in plain torch ops and the reference's
order: the kernel branch first, each kernel head whole (its 1x1 conv and PReLU stored as full
tensors), then the feature branch, residual blocks summed out of place (identity + out *
res_scale), and the filtering by unfolding every k x k neighbourhood, permuting it pixel-major
and summing the products, as the reference does. The project's model (models/featkpn.py) fuses the kernel
heads' tail into a filtering op that never stores the kernels.

Three workloads, each variant in its own process (a fresh peak-memory mark):
  step512   forward + backward of one 512x512 slice (what bounds training at full slices)
  train64   one optimiser step on 8 patches of 64x64 (L1 loss, AdamW: the default training;
            the reference's torch.optim.AdamW as its training loop makes it, the project's from
            ldct.engine.build_optimizer, as its training runs: torch's fused implementation)
  infer512  forward of one 512x512 slice without gradients (denoising the test set)
Before timing, outputs and every parameter's gradient are compared between the two (float64,
one 64x64 and one odd-sized input); a difference above rounding (FLOAT64_TOLERANCE) stops the
script before anything is timed. Prints the median time, the peak memory (CPU: the
process's peak resident set and the peak above the resident set before the first pass;
CUDA: torch's peak allocation) and the ratios reference / project. On the CPU also the time
inside convolutions (the reference's include its kernel heads' 1x1 convs; the project's are the
3x3 ones only, the same arithmetic, run as grouped pairs of the two branches' layers where the
reference runs them one by one): the reference's time over the project's is the ceiling on the
time ratio (what it would be if everything else in the project took no time).

On the CPU each is run three times, under three allocator settings: glibc's defaults (how the
reference runs), large allocations kept in the heap (ldct.allocator, how this project's jobs
run: faster, but freed blocks split for other sizes leave the peak well above what is held),
and every allocation mapped on its own and returned on free (slow; the resident set then
follows the memory the computation itself holds, the allocator aside). The headline ratio is
the reference as it runs against the project as it runs; the like-for-like ratios show how
much of it is the allocator setting and how much the model code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import models  # noqa: E402
from ldct.allocator import keep_large_allocations, map_every_allocation  # noqa: E402
from ldct.complexity import _peak_rss_mb, _reset_peak_rss_mb, median_seconds  # noqa: E402
from ldct.engine import build_optimizer  # noqa: E402
from ldct.inference import pick_device  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402

WORKLOADS = ("step512", "train64", "infer512")
FLOAT64_TOLERANCE = 1e-10  # outputs and relative gradients, reference vs project: rounding only
# CPU allocator settings: name -> what it means in the printed table
ALLOCATORS = {"glibc": "glibc's defaults", "heap": "large allocations kept in the heap",
              "mapped": "every allocation mapped and returned on free"}


def reference_filter(feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's filtering: every k x k neighbourhood unfolded and laid out pixel-major,
    the kernels likewise (column index first, as the reference transposes both), products
    summed over the taps."""
    n, c, h, w = feat.shape
    r = (k - 1) // 2
    patches = F.pad(feat, (r, r, r, r), mode="replicate").unfold(2, k, 1).unfold(3, k, 1)  # n c h w ki kj
    patches = patches.permute(0, 2, 3, 1, 5, 4).contiguous().reshape(n, h, w, c, k * k)
    ker = kernels.permute(0, 2, 3, 1).reshape(n, h, w, c, k, k).permute(0, 1, 2, 3, 5, 4).reshape(n, h, w, c, k * k)
    return (patches * ker).sum(-1).permute(0, 3, 1, 2).contiguous()


def reference_block(block, x: torch.Tensor) -> torch.Tensor:
    """The reference's ResBlock: identity + conv2(LeakyReLU(conv1(x))) * res_scale, out of place
    (a new product and a new sum per block, where the project adds into the conv's output)."""
    return x + block.conv2(F.leaky_relu(block.conv1(x), 0.2, inplace=True)) * block.res_scale


def reference_stage(stage, x: torch.Tensor) -> torch.Tensor:
    """conv_block (conv, LeakyReLU in place) and two ResBlocks: an encoder stage."""
    return reference_block(stage[3], reference_block(stage[2], F.leaky_relu(stage[0](x), 0.2, inplace=True)))


def reference_head(head, x: torch.Tensor) -> torch.Tensor:
    """A dynamic_kernel head whole: conv_block (3x3 conv, PReLU), two ResBlocks, conv_block
    (1x1 conv, PReLU), its kernels stored as a full tensor."""
    x = reference_block(head[3], reference_block(head[2], head[1](head[0](x))))
    return head[5](head[4](x))


def reference_forward(net, x: torch.Tensor) -> torch.Tensor:
    """KPNfeat.forward re-stated in its order over this project's FeatKPN parameters (the same
    weights; none of the project's fused or memory-saving ops): the kernel branch's three
    stages, then its three heads, the feature branch's stages and projections, then the
    filtering and decoding from the coarsest scale."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="replicate")
    kfeat, feats, g, f = [], [], xp, xp
    for s in range(3):
        g = reference_stage(net.kern_enc[s], g)
        kfeat.append(g)
    kernels = [reference_head(net.kern_head[s], kfeat[s]) for s in range(3)]
    for s in range(3):
        f = reference_stage(net.feat_enc[s], f)
        feats.append(f)
    del f
    # each stage's features replaced by their projection, then by their filtering: the reference
    # reassigns its names so, which frees the earlier tensors when no gradient keeps them
    for s in range(3):
        feats[s] = F.leaky_relu(net.feat_proj[s][0](feats[s]), 0.2, inplace=True)
    out = feats[2] = reference_filter(feats[2], kernels[2], net.k)
    for s in (1, 0):
        feats[s] = reference_filter(feats[s], kernels[s], net.k)
        out = net.up[s](out) + feats[s]  # conv, pixel shuffle, LeakyReLU in place (the reference's upconv)
        out = reference_block(net.dec[s][1], reference_block(net.dec[s][0], out))
    return (F.leaky_relu(net.tail[0](out), 0.2, inplace=True) + xp)[..., :h, :w]  # the reference keeps the padding


def forward_fn(variant: str, net):
    return (lambda x: reference_forward(net, x)) if variant == "reference" else net


def check_identical(device: str = "cpu", dtype: torch.dtype = torch.float64, amp: bool = False) -> dict:
    """Max |difference| of outputs and parameter gradients (relative to the largest), reference
    vs project, on `device` in `dtype` (float64 on the CPU: identical up to rounding)."""
    worst = {"output": 0.0, "gradient": 0.0}
    for shape in ((2, 1, 64, 64), (1, 1, 37, 50)):
        torch.manual_seed(0)
        net = models.build("featkpn").to(device, dtype)
        x = torch.rand(*shape, dtype=dtype, device=device)
        outs, grads = [], []
        for variant in ("reference", "project"):
            net.zero_grad(set_to_none=True)
            with torch.autocast(device, enabled=amp):
                y = forward_fn(variant, net)(x)
            y = y.float() if amp else y  # float64 compared as float64
            y.square().mean().backward()
            outs.append(y.detach())
            grads.append([p.grad.clone() for p in net.parameters()])
        worst["output"] = max(worst["output"], (outs[0] - outs[1]).abs().max().item())
        scale = max(g.abs().max().item() for g in grads[0])
        worst["gradient"] = max(worst["gradient"], max((a - b).abs().max().item() for a, b in zip(*grads)) / scale)
    return worst


def child(variant: str, workload: str, repeats: int, device: str, amp: bool) -> dict:
    """In this process: build, warm up once, time `repeats` runs, read the peak memory."""
    torch.manual_seed(0)
    net = models.build("featkpn").to(device)
    fwd = forward_fn(variant, net)
    size, batch = (64, 8) if workload == "train64" else (512, 1)
    x = torch.rand(batch, 1, size, size, device=device) * 0.3 + 0.2
    y = x + 0.01 * torch.randn_like(x)
    cfg = {"lr": 1e-4, "weight_decay": 0.01}  # torch's AdamW default decay, on both sides
    opt = (build_optimizer(net.parameters(), cfg) if variant == "project"
           else torch.optim.AdamW(net.parameters(), **cfg))
    scaler = torch.amp.GradScaler(device, enabled=amp)

    def run():
        with torch.autocast(device, enabled=amp):
            if workload == "infer512":
                with torch.no_grad():
                    return fwd(x)
            loss = F.l1_loss(fwd(x).float(), y)
        scaler.scale(loss).backward()
        if workload == "train64":
            scaler.step(opt)
            scaler.update()
        net.zero_grad(set_to_none=True)

    base = _reset_peak_rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = {"seconds": median_seconds(run, repeats, device)}
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mb"], out["above_start_mb"] = _peak_rss_mb(), _peak_rss_mb() - base
        out["conv_seconds"] = out["seconds"] * convolution_share(run)
    return out


def convolution_share(run) -> float:
    """The share of one more call of run(), profiled, spent inside convolutions (forward and
    backward): applied to the median time, since the profiler's own overhead lengthens the call
    it watches (its absolute convolution time exceeded a project's median time, and the ceiling
    came out below the ratio it bounds)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    conv_ops = ("aten::mkldnn_convolution", "aten::convolution_backward")
    return min(1.0, sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in conv_ops) / 1e6 / wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--allocator", choices=list(ALLOCATORS), default="heap", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    amp = a.amp and a.device == "cuda"
    if a.child:
        if a.allocator == "heap":
            keep_large_allocations()
        elif a.allocator == "mapped":
            map_every_allocation()
        print(json.dumps(child(*a.child, a.repeats, a.device, amp)))
        return
    pick_device(a.device, "--device")  # a GPU asked for where there is none: one line
    where = (torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {a.threads} threads")
    print(f"Feat-KPN nf = nk = 16, k = 5; {where}; mixed precision {'on' if amp else 'off'}\n{header(a.device)}")
    diff = check_identical()
    print(f"reference vs project (CPU, float64): max |output difference| {diff['output']:.1e}, "
          f"max gradient difference {diff['gradient']:.1e} of the largest gradient")
    if max(diff.values()) > FLOAT64_TOLERANCE:  # timing two different computations would mean nothing
        sys.exit(f"the reference's re-statement and the project's model differ by more than {FLOAT64_TOLERANCE:g} "
                 "in float64: not timed")
    if a.device == "cuda":
        for label, kw in (("float32", {"dtype": torch.float32}), ("mixed precision", {"dtype": torch.float32, "amp": True})):
            diff = check_identical("cuda", **kw)
            print(f"reference vs project (CUDA, {label}): max |output difference| {diff['output']:.1e}, "
                  f"max gradient difference {diff['gradient']:.1e} of the largest gradient")
    mem = "peak GPU MB" if a.device == "cuda" else "peak RSS MB (above start)"
    allocators = ("heap",) if a.device == "cuda" else tuple(ALLOCATORS)  # the allocator setting is the CPU's
    conv = "" if a.device == "cuda" else f" {'s in convs':>13s}"
    print(f"\n{'workload':10s} {'variant':10s} {'allocator':>9s} {'seconds':>9s} {mem:>26s}{conv}")
    rows = {}
    for w in a.workloads:
        for v in ("reference", "project"):
            for alloc in allocators:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", v, w, "--threads", str(a.threads),
                       "--repeats", str(a.repeats), "--device", a.device, "--allocator", alloc] + (["--amp"] if amp else [])
                env = {**os.environ, "LDCT_KEEP_HEAP": "1"}  # the "heap" rows keep the heap whatever the shell says
                res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
                if res.returncode:
                    sys.exit(f"{v} {w} failed:\n{res.stderr[-3000:]}")
                r = rows[w, v, alloc] = json.loads(res.stdout.strip().splitlines()[-1])
                extra = f" ({r['above_start_mb']:.0f})" if "above_start_mb" in r else ""
                extra += f" {r['conv_seconds']:13.3f}" if "conv_seconds" in r else ""
                print(f"{w:10s} {v:10s} {alloc:>9s} {r['seconds']:9.3f} {r['peak_mb']:19.0f}{extra}", flush=True)

    def ratio(ref: dict, own: dict) -> str:
        line = f"time {ref['seconds'] / own['seconds']:5.2f}x   peak memory {ref['peak_mb'] / own['peak_mb']:5.2f}x"
        if "above_start_mb" in own:
            line += f"   above start {ref['above_start_mb'] / max(own['above_start_mb'], 1.0):5.2f}x"
        return line

    print("\nratios reference / project (higher is better for the project):")
    for w in a.workloads:
        if a.device == "cuda":
            print(f"  {w:10s} {ratio(rows[w, 'reference', 'heap'], rows[w, 'project', 'heap'])}")
            continue
        print(f"  {w:10s} {ratio(rows[w, 'reference', 'glibc'], rows[w, 'project', 'heap'])}"
              "   (reference as it runs, project as it runs)")
        for alloc, label in ALLOCATORS.items():
            print(f"  {'':10s} {ratio(rows[w, 'reference', alloc], rows[w, 'project', alloc])}   (both: {label})")
    if a.device == "cpu":
        print("\nceiling on the time ratio: the reference's time over the project's time in 3x3 convolutions"
              "\n(the same arithmetic, run as grouped pairs of the two branches' layers): what the ratio would be"
              "\nif everything else in the project took no time:")
        for w in a.workloads:
            ref, own = rows[w, "reference", "glibc"], rows[w, "project", "heap"]
            print(f"  {w:10s} {ref['seconds'] / own['conv_seconds']:5.2f}x   (convolutions: {own['conv_seconds']:.3f} s "
                  f"of the project's {own['seconds']:.3f} s)")


if __name__ == "__main__":
    run(main)
