"""Calibration of the synthetic dataset against the paper's LDCT row, and the water-cylinder
noise checks, for a config (default: config.yaml).

    python benchmarks/calibration.py [--config config.yaml] [--subjects N] [--i0 6e4] [--fov 256]

Prints LDCT-vs-NDCT PSNR/SSIM (the metrics of the evaluation) over every slice of the config's
test subjects (its split, as the calibration test and the README's figures; `--subjects N`: the
first N subjects instead), next to the targets of the paper's Table 2 LDCT row
(PSNR 26.57 dB, SSIM 0.913 in [-40, 120] HU), and for a 200 mm water cylinder the low/full
noise ratio (expected 1/sqrt(k)), the mean HU of water and the centre/edge noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldct.config import load_config  # noqa: E402
from ldct.lowdose import make_geometry, simulate_doses  # noqa: E402
from ldct.splits import make_splits  # noqa: E402
from ldct.synthetic import ldct_vs_ndct, subject_ids  # noqa: E402
from benchmarks import header, positive_int, run  # noqa: E402

TARGET = {"brain": (26.57, 0.913), "full": (55.66, 0.9976)}


def water_cylinder(cfg: dict, k: float) -> dict[str, float]:
    """Noise of a 200 mm water cylinder at full dose and dose fraction k (8 slices)."""
    n, fov = cfg["matrix"], cfg["fov_mm"]
    px = fov / n
    c = (np.arange(n) + 0.5) * px - fov / 2
    r = np.hypot(*np.meshgrid(c, c))
    hu = np.where(r < 100.0, 0.0, -1000.0).astype(np.float32)
    geom = make_geometry(cfg)
    out = simulate_doses(np.repeat(hu[None], 8, 0), geom, cfg["i0"], [k], cfg["electronic_noise"], seed=1)
    centre, edge = r < 25.0, (r > 70.0) & (r < 90.0)
    full, low = out[1.0], out[k]
    return {"ratio": float(low[:, r < 90].std() / full[:, r < 90].std()), "mean_water": float(low[:, r < 90].mean()),
            "std_centre": float(low[:, centre].std()), "std_edge": float(low[:, edge].std())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--subjects", type=positive_int, default=None, help="the first N subjects (default: the test split's)")
    ap.add_argument("--i0", type=float, default=None)
    ap.add_argument("--fov", type=float, default=None)
    ap.add_argument("--sigma-e", type=float, default=None)
    a = ap.parse_args()
    print(header())
    full_cfg = load_config(a.config)
    cfg = dict(full_cfg["synthetic"])
    for key, val in (("i0", a.i0), ("fov_mm", a.fov), ("electronic_noise", a.sigma_e)):
        if val is not None:
            cfg[key] = val
    k = cfg["dose_fractions"][0]
    t0 = time.perf_counter()
    if a.subjects:
        subjects = subject_ids(a.subjects)
    else:
        subjects = make_splits(subject_ids(cfg["n_subjects"]), full_cfg["split"], full_cfg["seed"])["test"]
    rows = ldct_vs_ndct({**full_cfg, "synthetic": cfg}, subjects)
    print(f"{cfg['geometry']} beam, matrix {cfg['matrix']}, FOV {cfg['fov_mm']} mm, {cfg['n_views']} views, "
          f"I0 {cfg['i0']:g}, sigma_e {cfg['electronic_noise']:g}, dose {k:g}; "
          f"{len(rows)} slices of {', '.join(subjects)} in {time.perf_counter() - t0:.1f} s")
    for w, (t_psnr, t_ssim) in TARGET.items():
        psnr = np.mean([r[w]["psnr"] for r in rows])
        ssim = np.mean([r[w]["ssim"] for r in rows])
        rmse = np.mean([r[w]["rmse"] for r in rows])
        print(f"  LDCT vs NDCT {w:5s}: PSNR {psnr:6.2f} dB (paper {t_psnr})  SSIM {ssim:.4f} (paper {t_ssim})  "
              f"RMSE {rmse:.2f} HU")
    wc = water_cylinder(cfg, k)
    print(f"  water cylinder: low/full noise ratio {wc['ratio']:.3f} (expected {1 / np.sqrt(k):.3f}), "
          f"mean {wc['mean_water']:+.2f} HU, noise SD centre {wc['std_centre']:.1f} HU, edge {wc['std_edge']:.1f} HU "
          f"({'higher at the centre, as a filtered back-projection of a round object has it' if wc['std_centre'] > wc['std_edge'] else 'NOT higher at the centre: check the simulation'})")


if __name__ == "__main__":
    run(main)
