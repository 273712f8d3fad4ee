"""HU windows and the scaling between HU and network inputs: the single source of truth."""

from __future__ import annotations

# Named windows used by metrics, tables and figures: (low, high) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "full": (-1024.0, 3072.0),   # the whole CT range; PSNR peak 4096
    "brain": (-40.0, 120.0),     # the paper's narrow range; PSNR peak 160
    "head": (0.0, 80.0),         # head window (centre 40, width 80): checkpoint selection
}


def window_name_label(name: str) -> str:
    lo, hi = WINDOWS[name]
    return f"[{lo:g}, {hi:g}] HU"


def to_unit(hu, lo: float = -1024.0, hi: float = 3072.0):
    """Scale HU to network units: `lo` -> 0, `hi` -> 1 (no clipping; callers clip)."""
    return (hu - lo) / (hi - lo)


def from_unit(x, lo: float = -1024.0, hi: float = 3072.0):
    """Inverse of `to_unit`."""
    return x * (hi - lo) + lo
