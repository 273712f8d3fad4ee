"""Model complexity (Table 1): trainable parameters, multiply-accumulates at a given slice
size (torch.utils.flop_counter counts conv/matmul FLOPs; MACs = FLOPs / 2), median latency
per slice, and peak memory of one forward pass.

Latency and memory are measured in a fresh child process per model, so one model's
allocations never inflate another's peak (resident set size, in MB, above the process's
size just before the forward pass, read from /proc on Linux).
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import models
from ldct.allocator import keep_large_allocations


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def dry_forward(net: torch.nn.Module, size: int, in_channels: int = 1, count: bool = False, eval_mode: bool = False,
                training: bool = False, batch: int = 1, meta_only: bool = False):
    """A copy of `net` run once without gradients on a (batch, in_channels, size, size) input, on the
    meta device (shapes only, no computation); a model whose forward reads a value out of a
    tensor (`.item()`, `float(t)`, numpy), which meta tensors do not hold, runs on the CPU with a
    random input instead (its error, if it fails there too, is the one raised; any other error
    on the meta device is raised as it is). The copy is in eval mode with `eval_mode`; with
    `training`, it runs as a training step does (train mode, gradients on,
    engine.forward_for_training with the input as target). `batch` inputs at once; with
    `meta_only`, a model the meta device cannot run gives (None, None) instead of a CPU run.
    Returns (the output, the FlopCounterMode that counted the run when `count`, else None)."""
    from ldct.engine import forward_for_training

    for device in ("meta", "cpu"):
        if device == "cpu" and meta_only:
            return None, None
        x = (torch.zeros(batch, in_channels, size, size, device="meta") if device == "meta"
             else torch.rand(batch, in_channels, size, size, generator=torch.Generator().manual_seed(0)))
        counter = FlopCounterMode(display=False) if count else None
        try:
            with torch.set_grad_enabled(training), counter if counter is not None else contextlib.nullcontext():
                copied = copy.deepcopy(net).to(device)
                if training:
                    return forward_for_training(copied.train(), x, x), counter
                return (copied.eval() if eval_mode else copied)(x), counter
        except Exception as err:  # only what the meta device cannot do goes on to the CPU
            if device == "cpu" or not (isinstance(err, NotImplementedError) or "meta" in str(err).lower()):
                raise


def count_macs(net: torch.nn.Module, size: int, in_channels: int = 1, frozen: bool = False):
    """Conv/matmul MACs of one forward pass, counted on the meta device (no computation; the
    CPU for a model the meta device cannot run, dry_forward); with `frozen`, (all, those of the
    frozen submodules): the outermost submodules whose parameters all have requires_grad off
    (SGDNet's segmentation U-Net), which training runs forward only."""
    # two inputs, halved: a model in train mode with BatchNorm on a 1x1 map (a squeeze-excitation
    # block) refuses a batch of one; the counts are linear in the batch
    fc = dry_forward(net, size, in_channels, count=True, batch=2)[1]
    total = fc.get_total_flops() / 4.0
    if not frozen:
        return total
    counts, done, frozen_macs = fc.get_flop_counts(), [], 0.0
    for name, module in net.named_modules():
        params = list(module.parameters())
        if not name or not params or any(p.requires_grad for p in params) or any(name.startswith(d + ".") for d in done):
            continue
        done.append(name)
        frozen_macs += sum(counts.get(f"{type(net).__name__}.{name}", {}).values()) / 4.0
    return total, frozen_macs


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss_mb() -> float:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5); return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def median_seconds(fn, repeats: int, device: str) -> float:
    """Median wall time of `repeats` calls of fn() after one warm-up call (CUDA synchronised)."""
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _probe(spec: dict, size: int, repeats: int, device: str) -> dict:
    """Run inside the child process: latency and peak memory of forward passes."""
    torch.manual_seed(0)
    spec = dict(spec)
    net = models.build(spec.pop("name"), **spec).eval().to(device)
    x = torch.rand(1, 1, size, size, device=device)
    base = _reset_peak_rss_mb()
    if device == "cuda":  # as on the CPU: the passes' own memory, above the weights and the input
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = {"latency_s": median_seconds(lambda: net(x), repeats, device)}
    if device == "cuda":
        out["peak_memory_mb"] = (torch.cuda.max_memory_allocated() - gpu_base) / 2**20
    else:
        out["peak_memory_mb"] = _peak_rss_mb() - base
    return out


def measure(spec: dict, size: int, repeats: int, device: str = "cpu", threads: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "ldct.complexity", json.dumps(spec), str(size), str(repeats), device]
    env = None
    if threads:
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"complexity probe of {spec} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def model_complexity(name: str, spec: dict, size: int, repeats: int) -> dict:
    """Table 1's row of one model: trainable parameters, GMACs of one forward pass at `size`
    (`frozen_gmacs`: those of its frozen parts, counted in `gmacs`), the CPU's median latency
    over `repeats` passes on this process's threads and their peak memory (and the GPU's)."""
    spec = dict(spec)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    net = models.build(spec["name"], **kwargs)
    countable = getattr(net, "countable", True)  # a numpy model (BM3D) has no MAC count: NaN, "n/a" in Table 1
    macs, frozen = count_macs(net, size, frozen=True) if countable else (float("nan"), float("nan"))
    row = {"model": name, "size": size, "params": count_params(net), "gmacs": macs / 1e9,
           "frozen_gmacs": frozen / 1e9, "device": "cpu", "threads": torch.get_num_threads(), "repeats": repeats}
    cpu = measure(spec, size, repeats, "cpu", threads=row["threads"])
    row.update(cpu_latency_s=cpu["latency_s"], peak_memory_mb=cpu["peak_memory_mb"])
    if torch.cuda.is_available() and countable:  # a numpy model has no GPU path: n/a
        gpu = measure(spec, size, max(repeats, 10), "cuda")
        row.update(gpu_latency_s=gpu["latency_s"], gpu_peak_memory_mb=gpu["peak_memory_mb"])
    return row


if __name__ == "__main__":
    keep_large_allocations()  # as in the workflow's jobs (ldct.cli)
    spec_arg, size_arg, rep_arg, dev_arg = sys.argv[1:5]
    print(json.dumps(_probe(json.loads(spec_arg), int(size_arg), int(rep_arg), dev_arg)))
