"""The clinical image-quality measures against cases with a known answer: the channelized
Hotelling observer against the analytic d' of a known signal in white Gaussian noise, the
noise power spectrum against white and blurred noise."""

import numpy as np
import pytest
from scipy import ndimage, stats

from ldct.errors import DataError
from ldct.nps import nps_2d, nps_summary, radial_nps
from ldct.observer import cho, laguerre_gauss_channels

SIZE, WIDTH, SIGMA = 32, 8.0, 10.0


def gaussian_signal(amplitude: float) -> np.ndarray:
    c = np.arange(SIZE) - (SIZE - 1) / 2.0
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    return amplitude * np.exp(-np.pi * r2 / WIDTH ** 2)


def test_cho_reaches_the_analytic_dprime_of_a_known_signal_in_white_noise():
    """A Gaussian lesion in the span of the first channel, white noise: the CHO is the ideal
    observer, d' = ||s|| / sigma and AUC = Phi(d' / sqrt 2)."""
    rng = np.random.default_rng(0)
    signal = gaussian_signal(4.0)
    expected = np.linalg.norm(signal) / SIGMA
    n = 1500
    present = signal + SIGMA * rng.standard_normal((n, SIZE, SIZE))
    absent = SIGMA * rng.standard_normal((n, SIZE, SIZE))
    out = cho(present, absent, laguerre_gauss_channels(SIZE, 6, WIDTH), n_resamples=300)
    assert 1.5 < expected < 2.5  # a task neither trivial nor impossible
    assert out["dprime"] == pytest.approx(expected, rel=0.1)
    assert out["dprime_ci_low"] < expected < out["dprime_ci_high"]
    assert out["auc"] == pytest.approx(stats.norm.cdf(expected / np.sqrt(2)), abs=0.03)
    assert out["n_train"] == out["n_test"] == n


def test_cho_without_a_signal_is_at_chance_and_loses_a_weaker_signal():
    rng = np.random.default_rng(1)
    chans = laguerre_gauss_channels(SIZE, 6, WIDTH)
    noise = lambda: SIGMA * rng.standard_normal((600, SIZE, SIZE))  # noqa: E731
    null = cho(noise(), noise(), chans, n_resamples=200)
    assert abs(null["dprime"]) < 0.25 and null["dprime_ci_low"] < 0 < null["dprime_ci_high"]
    assert null["auc"] == pytest.approx(0.5, abs=0.07)
    strong = cho(gaussian_signal(4.0) + noise(), noise(), chans, n_resamples=200)
    weak = cho(gaussian_signal(2.0) + noise(), noise(), chans, n_resamples=200)
    assert weak["dprime"] < strong["dprime"] and weak["auc"] < strong["auc"]


def test_laguerre_gauss_channels_are_unit_norm_and_symmetric():
    chans = laguerre_gauss_channels(SIZE, 5, WIDTH)
    assert chans.shape == (5, SIZE, SIZE)
    np.testing.assert_allclose(np.linalg.norm(chans.reshape(5, -1), axis=1), 1.0)
    np.testing.assert_allclose(chans, np.transpose(chans, (0, 2, 1)), atol=1e-12)


def test_cho_refuses_bad_rois():
    chans = laguerre_gauss_channels(SIZE)
    ok = np.zeros((8, SIZE, SIZE))
    with pytest.raises(DataError, match="lesion-present ROIs: expected"):
        cho(np.zeros((8, 16, 16)), ok, chans)
    with pytest.raises(DataError, match="at least 4"):
        cho(ok, ok[:3], chans)
    bad = ok.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        cho(bad, ok, chans)


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance():
    rng = np.random.default_rng(2)
    pixel = 0.5
    rois = SIGMA * rng.standard_normal((400, 64, 64))
    nps, freqs = nps_2d(rois, pixel)
    assert nps.shape == (64, 64) and freqs[0] == pytest.approx(-1.0)  # -Nyquist at 0.5 mm pixels
    f, curve = radial_nps(nps, pixel)
    np.testing.assert_allclose(curve[2:], SIGMA ** 2 * pixel ** 2, rtol=0.1)  # flat, HU^2 mm^2
    s = nps_summary(rois, pixel)
    assert s["noise_sd"] == pytest.approx(SIGMA, rel=0.02)
    assert s["mean_frequency"] == pytest.approx(2 / 3 * 1.0, rel=0.05)  # flat power over a disc


def test_blurred_noise_moves_its_power_to_low_frequencies():
    """Smoothing, as a denoiser does: lower noise SD and a lower mean frequency."""
    rng = np.random.default_rng(3)
    white = SIGMA * rng.standard_normal((200, 64, 64))
    blurred = ndimage.gaussian_filter(white, sigma=(0, 1.5, 1.5), mode="wrap")
    w, b = nps_summary(white, 0.5), nps_summary(blurred, 0.5)
    assert b["noise_sd"] < 0.5 * w["noise_sd"]
    assert b["mean_frequency"] < 0.6 * w["mean_frequency"]
    assert b["peak_frequency"] < w["mean_frequency"]
    with pytest.raises(DataError, match="NaN"):
        nps_2d(np.full((2, 8, 8), np.nan), 0.5)


def test_lesions_sit_on_grey_matter_with_their_rois_inside_the_brain():
    from ldct.lesion_task import extract_rois, insert_lesions, place_lesions

    labels = np.zeros((3, 96, 96), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    labels[:, np.hypot(yy - 48, xx - 48) < 40] = 1  # parenchyma
    labels[:, np.hypot(yy - 48, xx - 48) < 25] = 12  # frontal lobe (grey matter)
    labels[2] = 0  # a slice without brain
    sites = place_lesions(labels, roi_px=16, per_slice=4, rng=np.random.default_rng(0))
    assert {s.z for s in sites} == {0, 1} and all(sum(s.z == z for s in sites) <= 4 for z in (0, 1))
    for s in sites:
        assert labels[s.z, s.y, s.x] == 12 and (labels[s.z, s.y - 8:s.y + 8, s.x - 8:s.x + 8] > 0).all()
    for a in sites:  # ROIs of a slice do not overlap
        assert not any(b != a and b.z == a.z and abs(b.y - a.y) < 16 and abs(b.x - a.x) < 16 for b in sites)
    hu = np.full(labels.shape, 35.0, np.float32)
    out = insert_lesions(hu, sites, contrast_hu=-6.0, diameter_mm=8.0, pixel_mm=1.0)
    rois = extract_rois(out - hu, sites, 16)
    assert rois.shape == (len(sites), 16, 16)
    np.testing.assert_allclose(rois[:, 8, 8], -6.0)  # full contrast at the centre
    assert rois[:, 0, 0].max() == 0 and np.all(rois <= 0)  # nothing outside the disc
    assert rois[0].sum() == pytest.approx(-6.0 * np.pi * 4.0 ** 2, rel=0.05)  # the disc's area
    with pytest.raises(DataError, match="no slice has room"):
        place_lesions(labels[2:], 16, 4, np.random.default_rng(0))


def test_ndct_shows_a_low_contrast_lesion_better_than_ldct():
    """The whole chain on a uniform brain disc: lesions inserted before projection, the
    scanner's noise at full and quarter dose, the observer on both."""
    from ldct.lesion_task import extract_rois, insert_lesions, place_lesions
    from ldct.lowdose import make_geometry, simulate_doses

    cfg = {"geometry": "parallel", "matrix": 96, "fov_mm": 192.0, "n_views": 180, "filter": "hann",
           "filter_cutoff": 1.0}
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 47.5, xx - 47.5)
    labels = np.where(r < 38, 12, 0).astype(np.uint8)[None].repeat(4, 0)
    head = np.where(r < 40, np.where(r < 38, 35.0, 800.0), -1000.0).astype(np.float32)[None].repeat(4, 0)
    sites = place_lesions(labels, roi_px=16, per_slice=6, rng=np.random.default_rng(1))
    present = insert_lesions(head, sites, contrast_hu=-8.0, diameter_mm=10.0, pixel_mm=2.0)
    geom = make_geometry(cfg)
    chans = laguerre_gauss_channels(16, 5, 6.0)
    rois = {1.0: ([], []), 0.25: ([], [])}
    for seed in range(6):  # independent scans of each version
        for version, phantom in ((0, present), (1, head)):
            scans = simulate_doses(phantom, geom, 1e5, [0.25], 5.0, seed=100 * seed + version)
            for k in rois:
                rois[k][version].append(extract_rois(scans[k], sites, 16))
    d = {k: cho(np.concatenate(p), np.concatenate(a), chans, n_resamples=200) for k, (p, a) in rois.items()}
    assert d[1.0]["dprime"] > d[0.25]["dprime"] > 0.5
    assert 0.6 < d[0.25]["auc"] < d[1.0]["auc"]


def test_ttf_of_a_gaussian_blur_gives_the_analytic_f50():
    """An insert with partial-volume edges, blurred by a Gaussian of sigma 1.2 pixels: the TTF is
    exp(-2 pi^2 sigma^2 f^2) times the pixel's sinc, whose 0.5 crossing is known."""
    from scipy import optimize

    from ldct.ttf import f50, insert_phantom, ttf

    pixel, sigma_px = 1.0, 1.2
    hu, centres = insert_phantom(128, pixel, [100.0, 40.0], insert_mm=20.0, body_mm=120.0)
    assert hu[int(round(centres[0][0])), int(round(centres[0][1]))] == pytest.approx(100.0)
    blurred = ndimage.gaussian_filter(hu, sigma_px)[None]
    freqs, curve = ttf(blurred, centres[0], 10.0, pixel)
    assert curve[0] == pytest.approx(1.0) and freqs.max() <= 0.5 / pixel
    model = lambda f: np.exp(-2 * np.pi ** 2 * (sigma_px * pixel) ** 2 * f ** 2) * np.sinc(f * pixel) - 0.5  # noqa: E731
    expected = optimize.brentq(model, 0.01, 0.5)
    assert f50(freqs, curve) == pytest.approx(expected, rel=0.05)
    sharper = ttf(ndimage.gaussian_filter(hu, 0.6)[None], centres[1], 10.0, pixel)
    assert f50(*sharper) > f50(freqs, curve)  # less blur, higher f50, at another contrast too
    assert np.isnan(f50(np.array([0.0, 0.1]), np.array([1.0, 0.9])))
