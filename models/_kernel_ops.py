"""Per-pixel kernel filtering ops for the kernel-prediction models (not a model; registers nothing).

`kernel_filter` applies given per-pixel kernels (image-space KPN). `predicted_kernel_filter`
is Feat-KPN's kernel-head tail (1x1 conv -> PReLU) fused with the filtering: the predicted
kernels, nk*2^s*k*k channels at every pixel (about 0.73 GB per 512x512 slice in fp32, and as
much again for the PReLU's saved input), are never stored. Forward and backward make them a
block of output rows at a time from the head's 1x1-conv input and drop them after use; backward makes
them again (one more 1x1 conv, the cheapest layer of the head) instead of keeping them. The
1x1 conv is done as a batched matrix product on the flattened head input, and the PReLU's
backward as leaky-ReLU backward plus one dot product for the slope (aten's PReLU backward was
4x slower on CPU).

Both pad by replication (k // 2) inside the op, so that the padding's autograd node does not
keep the unpadded features alive for backward (the op keeps the padded copy, which it needs),
and order a pixel's kernel channels channel-major, then kernel
row, then column: out[n, c, y, x] = sum_ij K[n, c*k*k + i*k + j, y, x] * pad[n, c, y + i, x + j].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Kernel values made at once in `predicted_kernel_filter` (elements; 4M = 16 MB in fp32: about 20
# rows of a 512-wide slice at 16 channels x 25 taps): big enough for one matrix product per
# block to be efficient and for the per-op overhead to vanish (below 1M it shows), small against
# the activations. On CUDA 16x more: fewer, larger kernel launches; still small against a GPU's memory.
CHUNK_ELEMENTS = 1 << 22
CUDA_CHUNK_FACTOR = 16


def _replicate_pad(feat: torch.Tensor, k: int) -> torch.Tensor:
    r = k // 2
    return F.pad(feat, (r, r, r, r), mode="replicate")


def _unpad_grad(grad_pad: torch.Tensor, pad: torch.Tensor, k: int) -> torch.Tensor:
    """dL/dfeat from dL/dpad: aten's own replication-pad backward (the border rows and columns
    summed onto the edge pixels); pad's interior view stands in for feat, whose values it never reads."""
    r = k // 2
    h, w = pad.shape[2] - 2 * r, pad.shape[3] - 2 * r
    return torch.ops.aten.replication_pad2d_backward(grad_pad, pad[:, :, r:r + h, r:r + w], [r, r, r, r])


class _KernelFilter(torch.autograd.Function):
    """Filtering of a feature map by given kernels; forward and backward loop over the k*k
    taps and touch only views, so nothing of unfolded size is ever allocated (the gradient of
    the kernels, the size of the kernels themselves, excepted)."""

    @staticmethod
    def forward(ctx, feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
        pad = _replicate_pad(feat, k)
        n, c, h, w = feat.shape
        out = torch.empty(n, c, h, w, dtype=torch.result_type(pad, kernels), device=pad.device)
        _filter_rows(out, kernels.view(n, c, k * k, h, w), pad, 0, h, k)
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
        if grad_ker is not None:
            _tap_grads(grad_ker, grad, pad, 0, h, k)
        if grad_pad is not None:
            _scatter_taps(grad_pad, grad, ker, 0, h, k)
        return (_unpad_grad(grad_pad, pad, k) if grad_pad is not None else None), (grad_ker.view_as(kernels) if grad_ker is not None else None), None


def kernel_filter(feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-pixel, per-channel k x k filtering of feat (N, C, H, W) by kernels (N, C*k*k, H, W),
    without materialising unfolded patches."""
    return _KernelFilter.apply(feat, kernels.contiguous(), k)


def _row_tiles(n: int, c: int, h: int, w: int, taps: int, cuda: bool) -> list[tuple[int, int]]:
    """Row blocks of the output whose kernels (all taps) fit the chunk budget, at least one row."""
    budget = CHUNK_ELEMENTS * (CUDA_CHUNK_FACTOR if cuda else 1)
    rows = max(1, min(h, budget // max(1, n * c * taps * w)))
    return [(r, min(r + rows, h)) for r in range(0, h, rows)]


def _scratch(buf: torch.Tensor, *shape: int) -> torch.Tensor:
    """A contiguous view of the front of a flat buffer: one allocation reused by every tile (a
    fresh CPU tensor is paid again in page faults, and a reused one stays in cache)."""
    size = 1
    for d in shape:
        size *= d
    return buf[:size].view(shape)


def _tile_preactivation(hflat, waug, r0: int, r1: int, w: int, out: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv's output for output rows r0..r1, all taps, as one batched matrix product,
    (N, C*k*k, (r1-r0)*W), from hflat (N, Cin+1, H*W): the head's input with a row of ones, so
    the bias is waug's last column (C*k*k, Cin+1) and costs no pass of its own. (A matrix
    product, not a 1x1 convolution: on the CPU oneDNN reorders such skinny convolutions' inputs
    and outputs at every call, 2-3x slower.)"""
    cols = hflat[:, :, r0 * w:r1 * w]
    n, m = hflat.shape[0], waug.shape[0]
    return torch.bmm(waug.expand(n, -1, -1), cols, out=_scratch(out, n, m, cols.shape[2]))


def _tap_view(pad: torch.Tensor, r0: int, r1: int, k: int, w: int) -> torch.Tensor:
    """Every tap's shifted window of pad under output rows r0..r1 as one (N, C, k, k, rows, W)
    view of pad's memory (no copy; read-only: the windows overlap), for one broadcast product
    instead of k*k small ones."""
    n, c = pad.shape[:2]
    s_n, s_c, s_h, s_w = pad.stride()
    return pad.as_strided((n, c, k, k, r1 - r0, w), (s_n, s_c, s_h, s_w, s_h, s_w),
                          pad.storage_offset() + r0 * s_h)


def _filter_rows(out: torch.Tensor, ker: torch.Tensor, pad: torch.Tensor, r0: int, r1: int, k: int) -> None:
    """out (N, C, r1-r0, W) = sum_t ker[:, :, t] * tap t's window of pad, taps summed in order."""
    w = out.shape[-1]
    torch.mul(ker[:, :, 0], pad[:, :, r0:r1, :w], out=out)
    for t in range(1, k * k):
        i, j = divmod(t, k)
        out.addcmul_(ker[:, :, t], pad[:, :, r0 + i:r1 + i, j:j + w])


def _tap_grads(out: torch.Tensor, grad: torch.Tensor, pad: torch.Tensor, r0: int, r1: int, k: int) -> None:
    """out (N, C, k*k, r1-r0, W) = dL/dkernels: grad (N, C, r1-r0, W) times every tap's window."""
    n, c, rows, w = grad.shape
    torch.mul(grad[:, :, None, None], _tap_view(pad, r0, r1, k, w), out=out.view(n, c, k, k, rows, w))


def _scatter_taps(grad_pad: torch.Tensor, grad: torch.Tensor, ker: torch.Tensor, r0: int, r1: int, k: int) -> None:
    """grad_pad += grad * ker[:, :, t] at every tap t's window (dL/dpad of output rows r0..r1)."""
    w = grad.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        grad_pad[:, :, r0 + i:r1 + i, j:j + w].addcmul_(grad, ker[:, :, t])


def _prelu_backward(g_ker, z, alpha, acc):
    """The PReLU's backward for one chunk, general slope: dL/dz, and dL/d(slope) summed. Written
    as a leaky-ReLU backward and a dot product: aten's PReLU backward, which also writes the
    slope's elementwise gradient, runs 4x slower on the CPU. Clobbers z."""
    g_z = torch.ops.aten.leaky_relu_backward(g_ker, z, alpha, False)
    z.clamp_(max=0)
    return g_z, _dot(g_ker, z, acc)


def _dot(a, b, acc):
    if a.dtype == acc:
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a.to(acc) * b.to(acc)).sum()


class _PredictedKernelFilter(torch.autograd.Function):
    """Forward: out = sum_t PReLU(W_t hidden + b_t) * shift_t(pad), a block of output rows at a
    time with all k*k taps: the block's kernels, its outputs and the rows of pad under it stay
    in cache through the passes over them. Saves only pad, the head's input (with a row of
    ones) and the parameters; backward makes each block's kernels again.

    With a positive slope (the PReLU's initial 0.2, and where it stays in training) backward
    works in place: the kernels overwrite their pre-activation, dL/dz overwrites dL/dkernels
    (leaky-ReLU backward from the kernels' signs), and dL/dslope = sum(dL/dz * min(kernels, 0))
    / slope^2 (on the negative side both carry one factor of the slope). Any other slope takes
    the general path, which keeps the pre-activation."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, feat, hidden, weight, bias, alpha, c: int, k: int):
        pad = _replicate_pad(feat, k)
        n, cin, h, w = feat.shape[0], hidden.shape[1], feat.shape[2], feat.shape[3]
        kk = k * k
        if pad.is_meta:  # complexity counting (ldct.complexity): the shape, and the 1x1 conv's MACs
            torch.bmm(weight.reshape(1, -1, cin).expand(n, -1, -1), hidden.reshape(n, cin, h * w))
            return pad.new_empty(n, c, h, w)
        slope = alpha.item()
        hflat = torch.cat([hidden.reshape(n, cin, h * w), hidden.new_ones(n, 1, h * w)], 1)
        if torch.is_autocast_enabled(pad.device.type):  # the matrix products' dtype, for their out= buffer
            hflat = hflat.to(torch.get_autocast_dtype(pad.device.type))
        waug = torch.cat([weight.reshape(-1, cin), bias.reshape(-1, 1)], 1).to(hflat.dtype)
        tiles = _row_tiles(n, c, h, w, kk, pad.is_cuda)
        zbuf = hflat.new_empty(n * c * kk * (tiles[0][1] - tiles[0][0]) * w)
        out = torch.empty(n, c, h, w, dtype=torch.result_type(pad, zbuf), device=pad.device)
        for r0, r1 in tiles:
            z = _tile_preactivation(hflat, waug, r0, r1, w, zbuf)
            ker = F.leaky_relu_(z, slope).view(n, c, kk, r1 - r0, w)  # = PReLU with the one slope
            _filter_rows(out[:, :, r0:r1], ker, pad, r0, r1, k)
        ctx.save_for_backward(pad, hflat, weight, bias, alpha)
        ctx.c, ctx.k = c, k
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        pad, hflat, weight, bias, alpha = ctx.saved_tensors
        c, k = ctx.c, ctx.k
        n, cin1, hw = hflat.shape
        cin, h, w = cin1 - 1, grad.shape[2], grad.shape[3]
        kk = k * k
        need_pad, need_hidden, need_w, need_b, need_a = ctx.needs_input_grad[:5]
        acc = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else grad.dtype
        slope = alpha.item()
        in_place = slope > 0
        grad_pad = torch.zeros(pad.shape, dtype=acc, device=pad.device) if need_pad else None
        grad_hidden = torch.empty(n, cin, hw, dtype=acc, device=pad.device) if need_hidden else None
        grad_wb = torch.zeros(c * kk, cin1, dtype=acc, device=pad.device)  # weight's, then bias's column
        grad_a = torch.zeros((), dtype=acc, device=pad.device)
        waug = torch.cat([weight.reshape(-1, cin), bias.reshape(-1, 1)], 1).to(hflat.dtype)
        w_t = waug[:, :cin].t().to(acc).expand(n, -1, -1)
        tiles = _row_tiles(n, c, h, w, kk, pad.is_cuda)
        zbuf, gbuf = (hflat.new_empty(n * c * kk * (tiles[0][1] - tiles[0][0]) * w) for _ in range(2))
        for r0, r1 in tiles:
            rows = r1 - r0
            z = _tile_preactivation(hflat, waug, r0, r1, w, zbuf)
            g_ker = _scratch(gbuf, n, c, kk, rows, w)  # dL/d kernels of the block
            if in_place:
                ker = F.leaky_relu_(z, slope).view_as(g_ker)
            else:
                ker = F.leaky_relu(z, slope).view_as(g_ker) if need_pad else None
            g = grad[:, :, r0:r1]
            _tap_grads(g_ker, g, pad, r0, r1, k)
            if need_pad:
                _scatter_taps(grad_pad, g, ker, r0, r1, k)
            g_ker = g_ker.view_as(z)
            if in_place:  # z holds the kernels
                g_z = torch.ops.aten.leaky_relu_backward.grad_input(g_ker, z, slope, True, grad_input=g_ker)
                if need_a:
                    grad_a += _dot(g_z, z.clamp_(max=0), acc) / (slope * slope)
            else:
                del ker
                g_z, g_a = _prelu_backward(g_ker, z, slope, acc)
                if need_a:
                    grad_a += g_a
            del z
            cols = hflat[:, :, r0 * w:r1 * w]
            if need_w or need_b:
                grad_wb += torch.bmm(g_z, cols.transpose(1, 2).to(g_z.dtype)).sum(0)
            if need_hidden:
                grad_hidden[:, :, r0 * w:r1 * w] = torch.bmm(w_t, g_z.to(acc))
        return ((_unpad_grad(grad_pad.to(pad.dtype), pad, k) if need_pad else None),
                (grad_hidden.view(n, cin, h, w).to(hflat.dtype) if need_hidden else None),
                (grad_wb[:, :cin].reshape(weight.shape).to(weight.dtype) if need_w else None),
                (grad_wb[:, cin].reshape(bias.shape).to(bias.dtype) if need_b else None),
                (grad_a.view_as(alpha).to(alpha.dtype) if need_a else None), None, None)


def predicted_kernel_filter(feat: torch.Tensor, hidden: torch.Tensor, conv: torch.nn.Conv2d,
                            prelu: torch.nn.PReLU, k: int) -> torch.Tensor:
    """kernel_filter(feat, prelu(conv(hidden)), k) without storing the kernels: feat (N, C, H, W),
    hidden (N, Cin, H, W) the input of the kernel head's last 1x1 conv (C*k*k outputs), prelu
    with one shared slope. Outputs and gradients equal the unfused composition's."""
    c = feat.shape[1]
    if conv.kernel_size != (1, 1) or conv.out_channels != c * k * k or prelu.weight.numel() != 1:
        raise ValueError(f"predicted_kernel_filter needs a 1x1 conv with {c * k * k} outputs and a one-slope PReLU")
    return _PredictedKernelFilter.apply(feat, hidden.contiguous(), conv.weight, conv.bias, prelu.weight, c, k)
