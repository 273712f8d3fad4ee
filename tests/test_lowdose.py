import numpy as np
import pytest

from ldct.lowdose import ParallelBeam, insert_noise, simulate_doses


def water_cylinder(n=128, fov=240.0, radius=90.0):
    px = fov / n
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(xx - n / 2 + 0.5, yy - n / 2 + 0.5) * px
    return np.where(r < radius, 0.0, -1000.0).astype(np.float32), r, px


def test_water_cylinder_noise_physics():
    hu, r, px = water_cylinder()
    geom = ParallelBeam(hu.shape[0], px, 360)
    out = simulate_doses(np.repeat(hu[None], 6, 0), geom, 2.5e5, [0.25], 5.0, seed=1)
    full, low = out[1.0], out[0.25]
    centre = np.broadcast_to(r < 30, full.shape)
    edge = np.broadcast_to((r > 70) & (r < 85), full.shape)
    ratio = low[centre].std() / full[centre].std()
    assert ratio == pytest.approx(2.0, rel=0.10)        # quarter dose doubles the noise std
    assert abs(full[centre].mean()) < 3.0 and abs(low[centre].mean()) < 3.0  # water stays 0 HU
    assert low[centre].std() > low[edge].std()           # non-stationary: noisier at the centre
    assert abs(full[np.broadcast_to(r > 110, full.shape)].mean() + 1000) < 5  # air stays air


def test_same_seed_same_noise_and_different_seed_differs():
    hu, _, px = water_cylinder(64)
    geom = ParallelBeam(64, px, 90)
    a = simulate_doses(hu[None], geom, 1e5, [0.25], 5.0, seed=3)[0.25]
    b = simulate_doses(hu[None], geom, 1e5, [0.25], 5.0, seed=3)[0.25]
    c = simulate_doses(hu[None], geom, 1e5, [0.25], 5.0, seed=4)[0.25]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_noiseless_fbp_reconstructs_the_phantom():
    hu, r, px = water_cylinder(128)
    hu[(r > 20) & (r < 30)] = 60.0
    geom = ParallelBeam(128, px, 360)
    import torch

    from ldct.lowdose import hu_to_mu, mu_to_hu

    rec = mu_to_hu(geom.fbp(geom.project(hu_to_mu(torch.from_numpy(hu)[None])))).numpy()[0]
    inner = r < 80
    assert np.abs(rec[inner & ~((r > 17) & (r < 33))] - hu[inner & ~((r > 17) & (r < 33))]).mean() < 3.0
    assert rec[(r > 23) & (r < 27)].mean() == pytest.approx(60.0, abs=6.0)


def test_insert_noise_on_a_full_dose_image():
    hu, r, px = water_cylinder(96)
    low = insert_noise(hu, px, 0.25, i0=2.5e5, seed=0)
    added = low - hu
    assert low.shape == hu.shape
    assert abs(added[r < 30].mean()) < 2.0 and added[r < 30].std() > 3.0
    with pytest.raises(ValueError, match="dose_fraction"):
        insert_noise(hu, px, 1.5)
