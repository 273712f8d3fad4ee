"""The reference implementation's golden outputs (tests/data/golden/, see its README) and the
weight formula that makes them reproducible without a weights file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def load(name: str) -> dict:
    """Every array of golden/{name}.npz (no pickle)."""
    with np.load(GOLDEN / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def _parameters(golden: dict):
    """(i, reference name, shape, numel) of each trainable parameter, in named_parameters order."""
    shapes = json.loads(str(golden["shapes"]))
    for i, (name, shape) in enumerate(zip(golden["names"], shapes)):
        yield i, str(name), shape, int(np.prod(shape))


def formula_weights(golden: dict) -> dict[str, torch.Tensor]:
    """The reference's trainable parameters, by reference name, set by the golden formula:
    for the i-th parameter (named_parameters order), v = sin(0.37 * arange(n) + i)."""
    gain = float(golden["gain"]) if "gain" in golden else 1.0
    out = {}
    for i, name, shape, n in _parameters(golden):
        v = np.sin(0.37 * np.arange(n, dtype=np.float64) + i)
        if name.endswith("gamma") or name.endswith("sobel_factor"):
            w = 1 + 0.1 * v
        elif name.endswith("beta"):
            w = 0.1 * v
        elif n == 1:
            w = 0.2 + 0.05 * v
        elif len(shape) == 1:
            w = 0.02 * v
        else:
            w = gain * v * np.sqrt(1.0 / (n / shape[0]))
        out[name] = torch.from_numpy(w.reshape(shape).astype(np.float32))
    return out


def random_weights(golden: dict, seed0: int = 1000) -> dict[str, torch.Tensor]:
    """Well-conditioned weights for the U-Net cases (unet_random.npz, losses_random.npz): for
    the i-th parameter, r = numpy RandomState(seed0 + i).standard_normal(n) (a frozen stream);
    gamma 1 + 0.1 r, beta and biases 0.1 r, conv weights r * sqrt(2 / fan_in).

    The formula weights above give every conv output channel a combination of the same two
    vectors (sin(a + b) = sin a cos b + cos a sin b), so the U-Net's per-pixel channel norm
    divides near-cancelled values: float32 rounding alone (or float64 instead of float32)
    moves its decoder stages by 20-100 % of their range, and unet.npz cannot tell a right
    implementation from a wrong one. Random weights agree in float32 and float64 to 2e-6."""
    out = {}
    for i, name, shape, n in _parameters(golden):
        r = np.random.RandomState(seed0 + i).standard_normal(n)
        if name.endswith("gamma"):
            w = 1 + 0.1 * r
        elif name.endswith("beta") or len(shape) == 1:
            w = 0.1 * r
        else:
            w = r * np.sqrt(2.0 / (n / shape[0]))
        out[name] = torch.from_numpy(w.reshape(shape).astype(np.float32))
    return out


def max_rel_diff(ours: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| relative to the reference output's largest magnitude."""
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))
