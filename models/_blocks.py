"""Building blocks shared by several models (not a model; registers nothing)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right up to a multiple; return the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class ResidualBlock(nn.Module):
    """x + res_scale * conv(LeakyReLU(conv(x))), convs Kaiming-normal initialised times 0.1."""

    def __init__(self, channels: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.res_scale = res_scale
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))  # a fresh tensor nothing saves: the sum goes into it
        y = y if self.res_scale == 1.0 else y.mul_(self.res_scale)
        # = x + y, one tensor fewer; out of place where autocast gave x a wider dtype (kept, as x + y does)
        return y.add_(x) if y.dtype == x.dtype else x + y


class _LeakyReLUMask(torch.autograd.Function):
    """LeakyReLU that keeps a one-byte sign mask for backward instead of a float tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float, inplace: bool) -> torch.Tensor:
        mask = x > 0
        ctx.save_for_backward(mask)
        ctx.slope = slope
        if inplace:
            ctx.mark_dirty(x)
            return F.leaky_relu_(x, slope)
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, grad * ctx.slope), None, None


def leaky_relu_mask(x: torch.Tensor, slope: float, inplace: bool = False) -> torch.Tensor:
    """F.leaky_relu(x, slope), same values and gradients, saving a bool mask (a quarter of an
    fp32 tensor) for backward: for an activation whose output nothing else saves. `inplace`
    overwrites x (not a view), for an input that nothing saves either (a fresh op's output)."""
    return _LeakyReLUMask.apply(x, slope, inplace)


class _PReLUSavingOutput(torch.autograd.Function):
    """One-slope PReLU that saves its output for backward (positive slope) or its input (other)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if x.is_meta:  # complexity counting: the shape only
            return torch.empty_like(x)
        slope = alpha.item()
        out = F.leaky_relu(x, slope)  # PReLU with one slope, the same values
        ctx.slope, ctx.from_output = slope, slope > 0
        ctx.save_for_backward(out if ctx.from_output else x, alpha)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved, alpha = ctx.saved_tensors
        slope = ctx.slope
        grad_x = torch.ops.aten.leaky_relu_backward(grad, saved, slope, ctx.from_output)
        grad_a = None
        if ctx.needs_input_grad[1]:
            neg = saved.clamp(max=0)  # min(x, 0), or min(out, 0) = slope * min(x, 0)
            grad_a = torch.dot(grad.reshape(-1), neg.reshape(-1).to(grad.dtype)) if grad.dtype == neg.dtype \
                else (grad.float() * neg.float()).sum()
            if ctx.from_output:
                grad_a = grad_a / slope
            grad_a = grad_a.reshape(alpha.shape).to(alpha.dtype)
        return grad_x, grad_a


def prelu_saving_output(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """F.prelu(x, alpha) with one slope, same values and gradients; while the slope is positive
    backward reads the output (sign, and min(out, 0) / slope for the slope's gradient), so where
    the next layer saves that output anyway the input need not be kept."""
    return _PReLUSavingOutput.apply(x, alpha)
