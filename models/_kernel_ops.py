"""Per-pixel kernel filtering ops for the kernel-prediction models (not a model; registers nothing).

`kernel_filter` applies given per-pixel kernels (image-space KPN). `predicted_kernel_filter`
is Feat-KPN's kernel-head tail (1x1 conv -> PReLU) fused with the filtering: the predicted
kernels, nk*2^s*k*k channels at every pixel (about 0.73 GB per 512x512 slice in fp32, and as
much again for the PReLU's saved input), are never stored. Forward and backward make them a
few taps at a time from the head's 1x1-conv input and drop them after use; backward makes
them again (one more 1x1 conv, the cheapest layer of the head) instead of keeping them. The
1x1 conv is done as a batched matrix product on the flattened head input, and the PReLU's
backward as leaky-ReLU backward plus one dot product for the slope (aten's PReLU backward was
4x slower on CPU).

Both pad by replication (k // 2) and order a pixel's kernel channels channel-major, then kernel
row, then column: out[n, c, y, x] = sum_ij K[n, c*k*k + i*k + j, y, x] * pad[n, c, y + i, x + j].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Kernel values made at once in `predicted_kernel_filter` (elements; 4M = 16 MB in fp32): big
# enough for one matrix product per chunk to be efficient, small against the activations. On
# CUDA 16x more: fewer, larger kernel launches; still small against a GPU's memory.
CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_FACTOR = 16


class _KernelFilter(torch.autograd.Function):
    """Filtering of an already padded feature map by given kernels; forward and backward loop
    over the k*k taps and touch only views, so nothing of unfolded size is ever allocated
    (the gradient of the kernels, the size of the kernels themselves, excepted)."""

    @staticmethod
    def forward(ctx, pad: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
        n, c, hp, wp = pad.shape
        h, w = hp - k + 1, wp - k + 1
        ker = kernels.view(n, c, k * k, h, w)
        out = torch.zeros(n, c, h, w, dtype=torch.result_type(pad, kernels), device=pad.device)
        for i in range(k):
            for j in range(k):
                out.addcmul_(ker[:, :, i * k + j], pad[:, :, i:i + h, j:j + w])
        ctx.save_for_backward(pad, kernels)
        ctx.k = k
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pad, kernels = ctx.saved_tensors
        k = ctx.k
        n, c, h, w = grad.shape
        ker = kernels.view(n, c, k * k, h, w)
        grad_pad = torch.zeros_like(pad) if ctx.needs_input_grad[0] else None
        grad_ker = torch.empty_like(ker) if ctx.needs_input_grad[1] else None
        for i in range(k):
            for j in range(k):
                t = i * k + j
                if grad_ker is not None:
                    torch.mul(grad, pad[:, :, i:i + h, j:j + w], out=grad_ker[:, :, t])
                if grad_pad is not None:
                    grad_pad[:, :, i:i + h, j:j + w].addcmul_(grad, ker[:, :, t])
        return grad_pad, (grad_ker.view_as(kernels) if grad_ker is not None else None), None


def kernel_filter(feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-pixel, per-channel k x k filtering of feat (N, C, H, W) by kernels (N, C*k*k, H, W),
    without materialising unfolded patches."""
    r = k // 2
    pad = F.pad(feat, (r, r, r, r), mode="replicate")
    return _KernelFilter.apply(pad, kernels.contiguous(), k)


def _tap_chunks(n: int, c: int, h: int, w: int, taps: int, cuda: bool) -> list[tuple[int, int]]:
    budget = CHUNK_ELEMENTS * (CUDA_CHUNK_FACTOR if cuda else 1)
    per = max(1, min(taps, budget // max(1, n * c * h * w)))
    return [(t, min(t + per, taps)) for t in range(0, taps, per)]


def _chunk_preactivation(hflat, weight, bias, c: int, t0: int, t1: int):
    """The 1x1 conv's output for taps t0..t1 as one batched matrix product, (N, C*(t1-t0), H*W)
    from hflat (N, Cin, H*W), and the chunk's rows of the conv's weight (C*(t1-t0), Cin). (A
    matrix product, not a 1x1 convolution: on the CPU oneDNN reorders such skinny convolutions'
    inputs and outputs at every call, 2-3x slower.)"""
    cin = hflat.shape[1]
    kk = weight.shape[0] // c
    wt = weight.view(c, kk, cin)[:, t0:t1].reshape(-1, cin)
    bt = bias.view(c, kk)[:, t0:t1].reshape(1, -1, 1)
    return torch.baddbmm(bt.to(hflat.dtype), wt.to(hflat.dtype).expand(hflat.shape[0], -1, -1), hflat), wt


def _prelu_backward(g_ker, z, alpha, acc):
    """The PReLU's backward for one chunk: dL/dz, and dL/d(slope) summed (in `acc`). Written as a
    leaky-ReLU backward and a dot product: aten's PReLU backward, which also writes the slope's
    elementwise gradient, runs 4x slower on the CPU. Clobbers z."""
    g_z = torch.ops.aten.leaky_relu_backward(g_ker, z, alpha.item(), False)
    z.clamp_(max=0)
    if z.dtype == acc:
        g_a = torch.dot(g_ker.reshape(-1), z.reshape(-1))
    else:
        g_a = (g_ker.to(acc) * z.to(acc)).sum()
    return g_z, g_a


class _PredictedKernelFilter(torch.autograd.Function):
    """Forward: out = sum_t PReLU(W_t hidden + b_t) * shift_t(pad), chunks of taps at a time.
    Saves only pad, hidden and the parameters; backward makes each chunk's kernels again."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, pad, hidden, weight, bias, alpha, c: int, k: int):
        n, _, hp, wp = pad.shape
        h, w = hp - k + 1, wp - k + 1
        out = None
        hflat = hidden.view(n, -1, h * w)
        for t0, t1 in _tap_chunks(n, c, h, w, k * k, pad.is_cuda):
            z, _ = _chunk_preactivation(hflat, weight, bias, c, t0, t1)
            ker = F.prelu(z, alpha).view(n, c, t1 - t0, h, w)
            if out is None:
                out = torch.zeros(n, c, h, w, dtype=torch.result_type(pad, ker), device=pad.device)
            for t in range(t0, t1):
                i, j = divmod(t, k)
                out.addcmul_(ker[:, :, t - t0], pad[:, :, i:i + h, j:j + w])
        ctx.save_for_backward(pad, hidden, weight, bias, alpha)
        ctx.c, ctx.k = c, k
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        pad, hidden, weight, bias, alpha = ctx.saved_tensors
        c, k = ctx.c, ctx.k
        n, cin, h, w = hidden.shape
        kk = k * k
        need_pad, need_hidden, need_w, need_b, need_a = ctx.needs_input_grad[:5]
        acc = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else grad.dtype
        grad_pad = torch.zeros(pad.shape, dtype=acc, device=pad.device) if need_pad else None
        grad_hidden = torch.zeros(n, cin, h * w, dtype=acc, device=pad.device) if need_hidden else None
        grad_w = torch.zeros(c, kk, cin, dtype=acc, device=pad.device)
        grad_b = torch.zeros(c, kk, dtype=acc, device=pad.device)
        grad_a = torch.zeros((), dtype=acc, device=pad.device)
        hflat = hidden.view(n, cin, h * w)
        for t0, t1 in _tap_chunks(n, c, h, w, kk, pad.is_cuda):
            z, wt = _chunk_preactivation(hflat, weight, bias, c, t0, t1)
            g_ker = torch.empty(n, c, t1 - t0, h, w, dtype=z.dtype, device=z.device)  # dL/d kernels of the chunk
            ker = F.prelu(z, alpha).view_as(g_ker) if need_pad else None
            for t in range(t0, t1):
                i, j = divmod(t, k)
                torch.mul(grad, pad[:, :, i:i + h, j:j + w], out=g_ker[:, :, t - t0])
                if need_pad:
                    grad_pad[:, :, i:i + h, j:j + w].addcmul_(grad, ker[:, :, t - t0])
            del ker
            g_z, g_a = _prelu_backward(g_ker.view_as(z), z, alpha, acc)
            del z, g_ker
            if need_a:
                grad_a += g_a
            if need_w:
                grad_w[:, t0:t1] += torch.bmm(g_z, hflat.transpose(1, 2).to(g_z.dtype)).sum(0).view(c, t1 - t0, cin)
            if need_b:
                grad_b[:, t0:t1] += g_z.sum((0, 2), dtype=acc).view(c, t1 - t0)
            if need_hidden:
                grad_hidden.baddbmm_(wt.t().to(acc).expand(n, -1, -1), g_z.to(acc))
        return ((grad_pad.to(pad.dtype) if need_pad else None),
                (grad_hidden.view(n, cin, h, w).to(hidden.dtype) if need_hidden else None),
                (grad_w.view_as(weight).to(weight.dtype) if need_w else None),
                (grad_b.view_as(bias).to(bias.dtype) if need_b else None),
                (grad_a.view_as(alpha).to(alpha.dtype) if need_a else None), None, None)


def predicted_kernel_filter(feat: torch.Tensor, hidden: torch.Tensor, conv: torch.nn.Conv2d,
                            prelu: torch.nn.PReLU, k: int) -> torch.Tensor:
    """kernel_filter(feat, prelu(conv(hidden)), k) without storing the kernels: feat (N, C, H, W),
    hidden (N, Cin, H, W) the input of the kernel head's last 1x1 conv (C*k*k outputs), prelu
    with one shared slope. Outputs and gradients equal the unfused composition's."""
    c = feat.shape[1]
    if conv.kernel_size != (1, 1) or conv.out_channels != c * k * k or prelu.weight.numel() != 1:
        raise ValueError(f"predicted_kernel_filter needs a 1x1 conv with {c * k * k} outputs and a one-slope PReLU")
    r = k // 2
    pad = F.pad(feat, (r, r, r, r), mode="replicate")
    return _PredictedKernelFilter.apply(pad, hidden.contiguous(), conv.weight, conv.bias, prelu.weight, c, k)
