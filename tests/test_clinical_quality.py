"""The clinical image-quality measures against cases with a known answer: the channelized
Hotelling observer against the analytic d' of a known signal in white Gaussian noise, the
noise power spectrum against white and blurred noise."""

import numpy as np
import pytest
import pandas as pd
from scipy import ndimage, stats

from ldct.errors import DataError
from ldct.nps import nps_2d, nps_summary, radial_nps
from ldct.observer import cho, laguerre_gauss_channels

SIZE, WIDTH, SIGMA = 32, 8.0, 10.0


def gaussian_signal(amplitude: float) -> np.ndarray:
    c = np.arange(SIZE) - SIZE // 2  # the channels' centre
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


def test_paired_cho_resamples_sites_so_a_shared_site_error_does_not_widen_its_interval():
    """present[i] and absent[i] are one site read twice: an error they share (the row's error
    on that site's anatomy) cancels in d' but, resampled apart, widened the CI (~20 %)."""
    rng = np.random.default_rng(6)
    n = 300
    site_error = 12.0 * rng.standard_normal((n, SIZE, SIZE))
    present = gaussian_signal(4.0) + site_error + SIGMA * rng.standard_normal((n, SIZE, SIZE))
    absent = site_error + SIGMA * rng.standard_normal((n, SIZE, SIZE))
    chans = laguerre_gauss_channels(SIZE, 6, WIDTH)
    apart, paired = (cho(present, absent, chans, n_resamples=300, paired=p) for p in (False, True))
    assert apart["dprime"] == paired["dprime"]  # the estimate is the same; only its interval differs
    width = lambda o: o["dprime_ci_high"] - o["dprime_ci_low"]  # noqa: E731
    assert paired["dprime_ci_low"] < paired["dprime"] < paired["dprime_ci_high"] and width(paired) < 0.9 * width(apart)
    with pytest.raises(DataError, match="paired sites"):
        cho(present, absent[:-2], chans, paired=True)


def test_an_output_with_no_signal_gets_no_dprime_interval_test_or_f50():
    """A constant output (a collapsed network): d' is 0/0, not a number with a finite CI; the
    TTF of an edge-less image is undefined, not 'above 0.5 up to Nyquist' (f50 = inf, read as
    perfect resolution); a paired test of such a d' is not made."""
    from ldct.stats import paired_dprime
    from ldct.ttf import insert_phantom, ttf_record

    chans = laguerre_gauss_channels(SIZE, 6, WIDTH)
    flat = np.zeros((12, SIZE, SIZE))
    out = cho(flat, flat, chans, n_resamples=50, scores=True, paired=True)
    assert np.isnan(out["dprime"]) and np.isnan(out["dprime_ci_low"]) and np.isnan(out["dprime_ci_high"])
    assert out["auc"] == out["auc_ci_low"] == out["auc_ci_high"] == 0.5  # all ties: the AUC is defined
    # the test ROIs of each class all alike, the classes apart: d' infinite, and no CI [inf, inf]
    rng = np.random.default_rng(8)
    train_present = gaussian_signal(4.0) + SIGMA * rng.standard_normal((6, SIZE, SIZE))
    train_absent = SIGMA * rng.standard_normal((6, SIZE, SIZE))
    apart = cho(np.concatenate([train_present, np.repeat(gaussian_signal(4.0)[None], 6, 0)]),
                np.concatenate([train_absent, np.zeros((6, SIZE, SIZE))]), chans, n_resamples=50, paired=True)
    assert np.isinf(apart["dprime"]) and np.isnan(apart["dprime_ci_low"]) and np.isnan(apart["dprime_ci_high"])
    rng = np.random.default_rng(7)
    real = cho(gaussian_signal(4.0) + SIGMA * rng.standard_normal((12, SIZE, SIZE)),
               SIGMA * rng.standard_normal((12, SIZE, SIZE)), chans, n_resamples=50, scores=True, paired=True)
    assert np.isnan(paired_dprime(out, real, n_resamples=50)["p"])
    _, centres = insert_phantom(128, 1.0, [100.0, 40.0], insert_mm=20.0, body_mm=120.0)
    record = ttf_record(np.zeros((4, 128, 128)), centres[0], 10.0, 1.0)
    assert np.isnan(record["f50"]) and np.isnan(record["curve"]).all()


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance():
    rng = np.random.default_rng(2)
    pixel = 0.5
    rois = SIGMA * rng.standard_normal((400, 64, 64))
    nps, freqs = nps_2d(rois, pixel)
    assert nps.shape == (64, 64) and freqs[0] == pytest.approx(-1.0)  # -Nyquist at 0.5 mm pixels
    f, curve = radial_nps(nps, pixel)
    assert len(f) == 32 and f[0] == pytest.approx(1 / 32) and f[-1] == pytest.approx(1.0)  # k df, k = 1 .. Nyquist
    np.testing.assert_allclose(curve, SIGMA ** 2 * pixel ** 2, rtol=0.1)  # flat, HU^2 mm^2, first annulus too
    s = nps_summary(nps, pixel)
    assert s["noise_sd"] == pytest.approx(SIGMA, rel=0.02)
    # TG-233's f_av over the radial NPS: for a flat curve the mean of the annuli's frequencies
    assert s["mean_frequency"] == pytest.approx(33 / 64, rel=0.02)


@pytest.mark.parametrize("n", [24, 25])
def test_radial_nps_puts_a_known_frequency_in_its_bin_for_even_and_odd_rois(n):
    """A cosine of 5 cycles per ROI (f0 = 5 / (N pixel)) peaks in the annulus centred on f0, for
    an odd ROI side too (its DFT spacing is 1 / (N pixel), not Nyquist / (N // 2))."""
    pixel = 2.0
    y, x = np.mgrid[:n, :n]
    phases = np.random.default_rng(0).uniform(0, 2 * np.pi, 50)
    rois = np.stack([10 * np.cos(2 * np.pi * 5 * x / n + p) for p in phases])
    s = nps_summary(nps_2d(rois, pixel)[0], pixel)
    assert s["peak_frequency"] == pytest.approx(5 / (n * pixel))
    assert s["frequency"][-1] <= 0.5 / pixel + 1e-12


def test_noise_of_a_smoothing_row_excludes_its_error_on_the_anatomy():
    """A blur applied to anatomy + noise: output minus truth mixes the blurred anatomy's error
    into the noise; the difference of the two scans' errors (noise_rois) keeps the noise only."""
    from ldct.clinical import noise_rois

    rng = np.random.default_rng(5)
    anatomy = ndimage.gaussian_filter(rng.standard_normal((1, 96, 96)), 2.0) * 400  # structured background
    scans = np.concatenate([anatomy + SIGMA * rng.standard_normal((1, 96, 96)) for _ in range(2)])
    blur = (0, 1.5, 1.5)
    errors = ndimage.gaussian_filter(scans, blur) - np.concatenate([anatomy, anatomy])
    sites = pd.DataFrame([{"subject": "S", "kind": "nps", "slice": 0, "row": r, "col": c, "present_image": i}
                          for r in (24, 48, 72) for c in (24, 48, 72) for i in (0, 1)])
    rois = noise_rois(errors, sites, 16)
    true_noise = ndimage.gaussian_filter(scans - np.concatenate([anatomy, anatomy]), blur)
    expected = np.sqrt(np.mean([true_noise[0][r - 8:r + 8, c - 8:c + 8].var(ddof=1)
                                for r in (24, 48, 72) for c in (24, 48, 72)]))
    naive = np.sqrt(np.mean([errors[0][r - 8:r + 8, c - 8:c + 8].var(ddof=1) for r in (24, 48, 72) for c in (24, 48, 72)]))
    measured = np.sqrt(rois.var(axis=(1, 2), ddof=1).mean())
    assert measured == pytest.approx(expected, rel=0.25) and naive > 1.5 * measured
    with pytest.raises(DataError, match="every noise ROI needs exactly its two scans"):
        noise_rois(errors, sites.iloc[1:], 16)


def test_blurred_noise_moves_its_power_to_low_frequencies():
    """Smoothing, as a denoiser does: lower noise SD and a lower mean frequency."""
    rng = np.random.default_rng(3)
    white = SIGMA * rng.standard_normal((200, 64, 64))
    blurred = ndimage.gaussian_filter(white, sigma=(0, 1.5, 1.5), mode="wrap")
    w, b = (nps_summary(nps_2d(rois, 0.5)[0], 0.5) for rois in (white, blurred))
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


def test_qa_inserts_that_crowd_each_others_edge_windows_are_refused():
    """Eight 30 mm inserts on a 45 mm ring: each one's edge window takes in its neighbour
    (f50 +26 % with no sign of it), so the phantom is refused; three (the default) fit."""
    from ldct.errors import ConfigError
    from ldct.ttf import insert_phantom

    insert_phantom(64, 4.0, [40.0, 120.0, 340.0], insert_mm=30.0, body_mm=180.0, reach_mm=12.0)
    with pytest.raises(ConfigError, match="clinical.qa: 8 inserts of 30 mm .* do not fit"):
        insert_phantom(64, 4.0, [40.0] * 8, insert_mm=30.0, body_mm=180.0, reach_mm=12.0)
    with pytest.raises(ConfigError, match="do not fit"):  # one insert whose window leaves the water
        insert_phantom(64, 4.0, [40.0], insert_mm=60.0, body_mm=180.0, reach_mm=24.0)


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
    assert f50(np.array([0.0, 0.1]), np.array([1.0, 0.9])) == np.inf  # sharper than the grid shows: above Nyquist
    assert np.isnan(f50(np.array([0.0, 0.1]), np.array([0.4, 0.3])))


def test_f50_interval_covers_the_noise_of_the_qa_realisations():
    """The bootstrap interval over noise realisations: a point for identical (noiseless)
    images, an interval around f50 for noisy ones that narrows with more realisations."""
    from ldct.ttf import f50, f50_interval, insert_phantom, ttf

    pixel, radius = 2.0, 15.0
    hu, centres = insert_phantom(128, pixel, [40.0], insert_mm=2 * radius, body_mm=200.0)
    clean = np.repeat(ndimage.gaussian_filter(hu.astype(np.float64), 1.0)[None], 4, axis=0)
    exact = f50(*ttf(clean, centres[0], radius, pixel, reach_mm=12.0))
    assert f50_interval(clean, centres[0], radius, pixel, reach_mm=12.0) == pytest.approx((exact, exact))
    rng = np.random.default_rng(1)
    widths = []
    for n in (4, 32):
        noisy = clean[:1] + 15.0 * rng.standard_normal((n, 128, 128))
        lo, hi = f50_interval(noisy, centres[0], radius, pixel, reach_mm=12.0, n_resamples=300)
        assert lo < f50(*ttf(noisy, centres[0], radius, pixel, reach_mm=12.0)) < hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]
    assert all(np.isnan(f50_interval(clean[:3], centres[0], radius, pixel, reach_mm=12.0)))  # too few to say
    # an edge so sharp that some resamples' TTF never falls to 0.5: those count as above Nyquist,
    # not dropped (which biased the interval low); the upper bound is then inf
    edge = ndimage.gaussian_filter(hu.astype(np.float64), 0.4)  # f50 0.235 / mm, near Nyquist (0.25)
    sharp = edge[None] + 8.0 * rng.standard_normal((40, 128, 128))
    lo, hi = f50_interval(sharp, centres[0], radius, pixel, reach_mm=12.0, n_resamples=200)
    assert 0.15 < lo < 0.235 and hi == np.inf


def test_ttf_record_reads_each_edge_once_and_matches_ttf_and_f50_interval():
    """The clinical record's TTF, f50 and interval: those of ttf and f50_interval; each
    realisation's ESF averaged equals the ESF of the mean image (the ESF is linear)."""
    from ldct.ttf import edge_spreads, f50, f50_interval, insert_phantom, ttf, ttf_record

    pixel, radius = 2.0, 15.0
    hu, centres = insert_phantom(128, pixel, [40.0], insert_mm=2 * radius, body_mm=200.0)
    noisy = ndimage.gaussian_filter(hu.astype(np.float64), 1.0) + 15.0 * np.random.default_rng(4).standard_normal((6, 128, 128))
    r, esfs = edge_spreads(noisy, centres[0], radius, pixel, reach_mm=12.0)
    _, esf_of_mean = edge_spreads(noisy.mean(0, keepdims=True), centres[0], radius, pixel, reach_mm=12.0)
    assert esfs.shape == (6, len(r))
    np.testing.assert_allclose(esfs.mean(0), esf_of_mean[0], rtol=0, atol=1e-9)
    rec = ttf_record(noisy, centres[0], radius, pixel, reach_mm=12.0, seed=3)
    f, curve = ttf(noisy, centres[0], radius, pixel, reach_mm=12.0)
    assert rec["frequency"] == f.tolist() and rec["curve"] == curve.tolist() and rec["f50"] == f50(f, curve)
    assert (rec["f50_ci_low"], rec["f50_ci_high"]) == f50_interval(noisy, centres[0], radius, pixel, reach_mm=12.0, seed=3)


@pytest.mark.parametrize("sigma_mm", [2.0, 3.0, 4.0])
def test_ttf_of_a_wide_blur_is_not_biased_high(sigma_mm):
    """The clinical geometry (2 mm pixels, a 30 mm insert, the edge window measure() uses): a
    blur as wide as a strong denoiser's still gives the analytic f50 within 3 % (the LSF's tails
    are not cut, the frequency grid is fine)."""
    from scipy import optimize

    from ldct.ttf import f50, insert_phantom, ttf

    pixel, radius = 2.0, 15.0
    hu, centres = insert_phantom(128, pixel, [100.0], insert_mm=2 * radius, body_mm=200.0, supersample=8)
    blurred = ndimage.gaussian_filter(hu.astype(np.float64), sigma_mm / pixel)[None]
    model = lambda f: np.exp(-2 * np.pi ** 2 * sigma_mm ** 2 * f ** 2) * np.sinc(f * pixel) - 0.5  # noqa: E731
    measured = f50(*ttf(blurred, centres[0], radius, pixel, reach_mm=0.8 * radius))
    assert measured == pytest.approx(optimize.brentq(model, 0.001, 0.25), rel=0.03)


def test_paired_dprime_tells_a_better_observer_from_the_same_one():
    from ldct.stats import paired_dprime

    rng = np.random.default_rng(3)
    chans = laguerre_gauss_channels(SIZE, 6, WIDTH)
    noise = lambda: SIGMA * rng.standard_normal((160, SIZE, SIZE))  # noqa: E731
    absent, present_noise = noise(), noise()
    weak = cho(gaussian_signal(2.5) + present_noise, absent, chans, n_resamples=10, scores=True)
    strong = cho(gaussian_signal(5.0) + present_noise, absent, chans, n_resamples=10, scores=True)
    same = paired_dprime(weak, weak)
    assert same["diff"] == 0 and same["p"] == 1.0
    better = paired_dprime(strong, weak, n_resamples=1000)
    assert better["diff"] == pytest.approx(strong["dprime"] - weak["dprime"])
    assert better["diff"] > 0.5 and better["ci_low"] > 0 and better["p"] < 0.01
    with pytest.raises(ValueError, match="same sites and split"):
        paired_dprime({**strong, "channels_absent": strong["channels_absent"][:-1]}, weak)


def test_paired_dprime_holds_its_level_under_the_null():
    """Two observers of the same true d' on the same sites (correlated noise): the test, which
    learns both templates again in every replicate, rejects at most about 5 % of such pairs
    (a test over the test sites with the templates fixed rejected 7-10 %)."""
    from ldct.stats import paired_dprime

    rng = np.random.default_rng(4)
    chans = laguerre_gauss_channels(SIZE, 5, WIDTH)
    signal, rho, runs, rejected = gaussian_signal(3.0), 0.8, 200, 0
    for k in range(runs):
        a_abs, a_pre, b_abs, b_pre = (SIGMA * rng.standard_normal((120, SIZE, SIZE)) for _ in range(4))
        mix = lambda x, y: rho * x + np.sqrt(1 - rho**2) * y  # noqa: E731
        a = cho(signal + a_pre, a_abs, chans, n_resamples=10, scores=True)
        b = cho(signal + mix(a_pre, b_pre), mix(a_abs, b_abs), chans, n_resamples=10, scores=True)
        rejected += paired_dprime(a, b, seed=k, n_resamples=400)["p"] < 0.05
    assert rejected <= 12  # 6 %; the fixed-template test rejected 19 of these 200 pairs


# --- the clinical-quality section on a small disc-shaped "brain" ---------------------------------

MATRIX, FOV = 64, 192.0


@pytest.fixture(scope="module")
def clinical_run(tmp_path_factory):
    """Two subjects' phantoms (a grey-matter disc in a skull), their clinical scans, and the
    LDCT, NDCT and noiseless rows measured on them."""
    from ldct import clinical
    from ldct.config import validate_section
    from ldct.io import write_nifti

    root = tmp_path_factory.mktemp("clinical")
    yy, xx = np.mgrid[:MATRIX, :MATRIX]
    r = np.hypot(yy - 31.5, xx - 31.5)
    for k, subject in enumerate(["S001", "S002"]):
        hu = np.where(r < 27, np.where(r < 25, 35.0 + 3 * k, 800.0), -1000.0).astype(np.float32)[None].repeat(4, 0)
        labels = np.where(r < 25, np.where(r < 15, 12, 1), 0).astype(np.uint8)[None].repeat(4, 0)
        write_nifti(root / "phantom" / subject / "phantom.nii.gz", hu.transpose(2, 1, 0), np.eye(4), np.float32)
        write_nifti(root / "phantom" / subject / "labels.nii.gz", labels.transpose(2, 1, 0), np.eye(4), np.uint8)
    synth = validate_section("synthetic", {"matrix": MATRIX, "fov_mm": FOV, "n_views": 120, "i0": 1e5,
                                           "dose_fractions": [0.25]})
    cfg = validate_section("clinical", {"contrasts_hu": [-15.0, -40.0], "diameters_mm": [12.0], "roi_px": 9,
                                        "lesions_per_slice": 6, "nps_roi_px": 12, "observer": {"bootstrap": 200},
                                        "qa": {"slices": 3}})
    clinical.make_scans(root / "phantom", ["S001", "S002"], synth, cfg, 5, root / "scans.npz", root / "sites.csv")
    scans = clinical.load_scans(root / "scans.npz")
    sites = pd.read_csv(root / "sites.csv")
    rows = {row: clinical.measure(row, *clinical.row_images(row, scans), scans, sites, synth, cfg)
            for row in ("LDCT", "NDCT", "noiseless")}
    return {"root": root, "scans": scans, "sites": sites, "rows": rows, "synth": synth, "cfg": cfg}


def test_every_lesion_site_is_present_in_one_scan_and_absent_in_the_other(clinical_run):
    scans, sites = clinical_run["scans"], clinical_run["sites"]
    lesions = sites[sites["kind"] == "lesion"]
    n_slices = 4
    assert len(scans["low"]) == len(scans["full"]) == len(scans["noiseless"]) == 2 * 2 * n_slices
    assert set(lesions["half"]) == {"train", "test"} and set(lesions["subject"]) == {"S001", "S002"}
    for r in lesions.itertuples():
        assert r.present_image != r.absent_image
        assert r.present_image // (2 * n_slices) == r.absent_image // (2 * n_slices)  # same subject
        assert r.present_image % n_slices == r.absent_image % n_slices == r.slice  # same slice
        diff = scans["noiseless"][r.present_image] - scans["noiseless"][int(r.absent_image)]
        assert diff[r.row, r.col] < 0.5 * r.contrast_hu  # the lesion, at the site, in the noiseless scan
    for (c, d), grp in lesions.groupby(["contrast_hu", "diameter_mm"]):  # balanced halves per condition
        assert abs((grp["half"] == "train").sum() - (grp["half"] == "test").sum()) <= 1


def test_ndct_shows_the_lesions_better_than_ldct_and_the_noiseless_row_perfectly(clinical_run):
    rows = clinical_run["rows"]
    ldct, ndct, clean = rows["LDCT"], rows["NDCT"], rows["noiseless"]
    # quarter dose: twice the noise SD
    assert ldct["nps"]["noise_sd"] / ndct["nps"]["noise_sd"] == pytest.approx(2.0, rel=0.15)
    assert clean["nps"]["noise_sd"] == 0 and clean["roi"]["bias"] == 0
    hardest, easiest = 0, -1
    assert ndct["conditions"][easiest]["dprime"] > ldct["conditions"][easiest]["dprime"] > 1
    assert ldct["conditions"][hardest]["dprime"] < ldct["conditions"][easiest]["dprime"]
    assert all(np.isinf(c["dprime"]) for c in clean["conditions"])
    for c in ldct["conditions"]:
        assert len(c["channels_present"]) == len(c["channels_absent"]) == (c["n_train"] + c["n_test"]) // 2
        assert c["n_train_present"] == c["n_train_absent"] == c["n_train"] // 2
        assert c["dprime_ci_low"] < c["dprime"] < c["dprime_ci_high"] and 0.5 < c["auc"] <= 1
    # the CNR's noise is the table's noise SD (the NPS integral): it used the ROIs' ddof-1 SD, and
    # a CNR computed from Table 5's own columns rounded differently (0.34 vs 0.35)
    for row in (ldct, ndct):
        for c in row["conditions"]:
            assert c["cnr"] == abs(c["measured_contrast_hu"]) / row["nps"]["noise_sd"]
            assert c["cnr_se"] == c["measured_contrast_se_hu"] / row["nps"]["noise_sd"]
    # the contrast is measured through the noise: its standard error over the sites (it had none,
    # and LDCT's CNR read 27 % high at about 1 SE) shrinks with the noise; without noise what is
    # left is the sites' own spread (where the lesion falls on the pixel grid)
    for c_low, c_full, c_clean in zip(ldct["conditions"], ndct["conditions"], clean["conditions"]):
        assert 0 < c_full["measured_contrast_se_hu"] < c_low["measured_contrast_se_hu"]
        assert c_clean["measured_contrast_se_hu"] < 0.01 * c_low["measured_contrast_se_hu"]
    # the measured contrast is the inserted one, less the scanner's blur
    for c in clean["conditions"]:
        assert 0.5 * c["contrast_hu"] > c["measured_contrast_hu"] > 1.05 * c["contrast_hu"]
    # the QA inserts: the same scanner resolution in every linear row
    for t_low, t_clean in zip(ldct["ttf"], clean["ttf"]):
        assert 0.02 < t_clean["f50"] < 0.5 / (FOV / MATRIX)
        assert t_low["f50"] == pytest.approx(t_clean["f50"], rel=0.25)


def _report_rows(rp, rows: dict, n_resamples: int) -> str:
    """Each row's clinical measurements written where the report reads them, Table 5 made from
    them (ldct.clinical_report.report); its Markdown."""
    import json

    from ldct.clinical_report import report

    for name, res in rows.items():
        rp.clinical(name).parent.mkdir(parents=True, exist_ok=True)
        rp.clinical(name).write_text(json.dumps(res))
    report(rp, list(rows), n_resamples=n_resamples)
    return rp.table("table5_clinical", "md").read_text()


def test_clinical_table_marks_a_row_that_loses_detectability(clinical_run, tmp_path):
    """A row made from LDCT with its lesion scores shuffled (an observer that lost the lesion)
    is significantly lower than LDCT (↓), a sharper one higher (↑); the references are not compared."""
    import copy

    from ldct.clinical_report import report
    from ldct.observer import dprime_rows, hold_out_scores
    from ldct.paths import ResultPaths

    rows = copy.deepcopy(clinical_run["rows"])
    blind = copy.deepcopy(rows["LDCT"])
    blind["row"] = "blind_l1"
    for c in blind["conditions"]:  # each present ROI another site's absent one: the lesion lost
        v0, h = np.asarray(c["channels_absent"]), c["n_train_present"]
        v1 = np.concatenate([np.roll(v0[:h], 1, axis=0), np.roll(v0[h:], 1, axis=0)])
        c["channels_present"] = v1.tolist()
        c["dprime"] = float(dprime_rows(*hold_out_scores(v1, v0, h, h)))
        c["dprime_ci_low"], c["dprime_ci_high"] = c["dprime"] - 0.3, c["dprime"] + 0.3
    sharp = copy.deepcopy(rows["NDCT"])  # better than LDCT, but its training did not converge: not ranked
    sharp["row"] = "sharp_l1"
    rows = {"LDCT": rows["LDCT"], "blind_l1": blind, "sharp_l1": sharp, "NDCT": rows["NDCT"],
            "noiseless": rows["noiseless"]}
    rp = ResultPaths(tmp_path, "d")
    rp.table("training").parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"experiment": ["blind_l1", "sharp_l1"], "not_converged": [False, True],
                  "no_gain_over_input": [False, False], "min_gain_db": 0.1}).to_csv(rp.table("training"), index=False)
    md = _report_rows(rp, rows, 300)
    line = next(x for x in md.splitlines() if x.startswith("| blind_l1 "))
    assert "↓" in line and "†" not in line  # lower than LDCT; no row is tested against the bold one
    sharp_line = next(x for x in md.splitlines() if x.startswith("| sharp_l1 ‡ "))
    assert "**" not in sharp_line and "↑" in sharp_line  # higher than LDCT, but not ranked
    assert next(x for x in md.splitlines() if x.startswith("| LDCT ")).startswith("| LDCT | **")
    noiseless = next(x for x in md.splitlines() if x.startswith("| noiseless "))
    assert "∞" in noiseless and "†" not in noiseless
    stats_df = pd.read_csv(rp.table("clinical_stats"))
    assert set(stats_df["experiment"]) == {"blind_l1", "sharp_l1"}  # LDCT the best; references never compared
    assert set(stats_df["reference"]) == {"LDCT"} and len(stats_df) == 2 * len(rows["LDCT"]["conditions"])
    by_row = stats_df.set_index("experiment")
    assert (by_row.loc["sharp_l1", "diff"] > 0).any() and by_row.loc["sharp_l1", "significant"].any()
    assert (by_row.loc["blind_l1", "diff"] < 0).any() and by_row.loc["blind_l1", "significant"].any()
    t5tex = rp.table("table5_clinical", "tex").read_text()
    assert "$^\\downarrow$" in t5tex and "$^\\dagger$" not in t5tex and t5tex.isascii()
    assert rp.figure("fig_detectability").stat().st_size > 10_000
    from ldct import figures  # the figures name each row with its marks, as the table does

    drawn = []
    real_save = figures.save
    figures.save = lambda fig, out: drawn.append([t.get_text() for a in fig.axes if a.get_legend()
                                                  for t in a.get_legend().get_texts()])
    try:
        report(rp, list(rows), n_resamples=50)
    finally:
        figures.save = real_save
    assert all(any(t.startswith("sharp_l1 ‡") for t in legend) for legend in drawn)
    for f in ("fig_nps", "fig_ttf", "fig_detectability"):
        assert rp.figure(f).stat().st_size > 10_000 and rp.figure(f, "pdf").is_file()


def test_a_row_with_undefined_dprime_and_f50_reads_na_and_is_not_compared(clinical_run, tmp_path):
    """A constant output's d' and f50 are NaN: Table 5 says n/a (a blank cell said nothing) and
    why, and marks nothing on them."""
    import copy

    from ldct.paths import ResultPaths

    rows = copy.deepcopy(clinical_run["rows"])
    flat = copy.deepcopy(rows["LDCT"])
    for c in flat["conditions"]:
        c["channels_present"] = c["channels_absent"] = np.zeros_like(np.asarray(c["channels_absent"])).tolist()
        c["dprime"] = c["dprime_ci_low"] = c["dprime_ci_high"] = float("nan")
    for t in flat["ttf"]:
        t["f50"] = t["f50_ci_low"] = t["f50_ci_high"] = float("nan")
    rows = {"LDCT": rows["LDCT"], "flat_l1": flat, "NDCT": rows["NDCT"], "noiseless": rows["noiseless"]}
    rp = ResultPaths(tmp_path, "d")
    md = _report_rows(rp, rows, 100)
    line = next(x for x in md.splitlines() if x.startswith("| flat_l1 "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    n_conditions, n_inserts = len(flat["conditions"]), len(flat["ttf"])
    assert cells[1:1 + n_conditions] == ["n/a"] * n_conditions and cells.count("n/a") == n_conditions + n_inserts
    assert "n/a: undefined for that row (flat_l1)" in md
    stats_df = pd.read_csv(rp.table("clinical_stats"))
    assert stats_df.loc[stats_df["experiment"] == "flat_l1", "p"].isna().all()


def test_too_few_lesion_sites_is_a_clear_error(clinical_run, tmp_path):
    from ldct import clinical

    cfg = {**clinical_run["cfg"], "lesions_per_slice": 1, "contrasts_hu": [-5.0, -10.0, -20.0]}
    with pytest.raises(DataError, match="observer needs at least 6"):
        clinical.make_scans(clinical_run["root"] / "phantom", ["S001"], clinical_run["synth"], cfg, 5,
                            tmp_path / "s.npz", tmp_path / "s.csv")
    assert not (tmp_path / "s.npz").exists()


def test_bad_clinical_inputs_are_named(clinical_run, tmp_path):
    """Images that do not match the scans or hold NaN, an experiment row without its model, a
    phantom whose labels differ in shape, a missing row's measurements: one clear error each."""
    from ldct import clinical
    from ldct.clinical_report import report
    from ldct.io import write_nifti
    from ldct.paths import ResultPaths

    scans, sites, synth, cfg = (clinical_run[k] for k in ("scans", "sites", "synth", "cfg"))
    low, qa = clinical.row_images("LDCT", scans)
    with pytest.raises(DataError, match=r"clinical row 'x': images .* do not match the scans"):
        clinical.measure("x", low[:-1], qa, scans, sites, synth, cfg)
    with pytest.raises(DataError, match="clinical row 'x': the images contain NaN or infinite values"):
        clinical.measure("x", np.where(low > 0, np.nan, low), qa, scans, sites, synth, cfg)
    with pytest.raises(DataError, match="clinical row 'edcnn_l1': an experiment needs its trained model"):
        clinical.row_images("edcnn_l1", scans)
    bad = tmp_path / "phantom" / "S009"
    write_nifti(bad / "phantom.nii.gz", np.zeros((8, 8, 2)), np.eye(4), np.float32)
    write_nifti(bad / "labels.nii.gz", np.zeros((8, 8, 3)), np.eye(4), np.uint8)
    with pytest.raises(DataError, match=r"S009: phantom .* and labels .* differ in shape"):
        clinical.make_scans(tmp_path / "phantom", ["S009"], synth, cfg, 5, tmp_path / "s.npz", tmp_path / "s.csv")
    assert not (tmp_path / "s.npz").exists()
    rp = ResultPaths(tmp_path / "results", "d")
    with pytest.raises(DataError, match=r"LDCT.json: clinical measurements of row 'LDCT' not found"):
        report(rp, ["LDCT"])


def test_bootstrap_indices_draw_training_and_test_rois_each_within_its_half():
    """A replicate's training indices lie in [0, h) and its test indices in [h, n): the halves never mix."""
    from ldct.observer import bootstrap_indices

    tr, te = bootstrap_indices(np.random.default_rng(0), 500, 10, 4)
    assert tr.shape == (500, 4) and te.shape == (500, 6)
    assert tr.min() == 0 and tr.max() < 4 <= te.min() and te.max() == 9  # every index of each half is drawn


def test_laguerre_gauss_channels_follow_their_documented_formula():
    """u_j(r) = exp(-pi r^2 / a^2) L_j(2 pi r^2 / a^2), each of unit norm: channels 0 and 1 by hand."""
    chans = laguerre_gauss_channels(SIZE, 2, WIDTH)
    c = np.arange(SIZE) - SIZE // 2
    x = np.pi * (c[None, :] ** 2 + c[:, None] ** 2) / WIDTH ** 2
    for got, want in zip(chans, (np.exp(-x), np.exp(-x) * (1 - 2 * x))):
        np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-12)


def _paired_sites(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = SIGMA * rng.standard_normal((2, n, SIZE, SIZE))
    return gaussian_signal(4.0) + noise[0], noise[1]


def test_cho_and_paired_dprime_intervals_are_the_2_5_and_97_5_percentiles_of_their_replicates():
    """The 95 % CIs: the 2.5 / 97.5 percentiles of the documented replicates (sites resampled within each half)."""
    from ldct.observer import auc_rows, bootstrap_indices, dprime_rows, hold_out_scores
    from ldct.stats import paired_dprime

    chans = laguerre_gauss_channels(SIZE, 4, WIDTH)
    present, absent = _paired_sites(11)
    out = cho(present, absent, chans, seed=5, n_resamples=200, scores=True, paired=True)
    v1, v0, h = np.array(out["channels_present"]), np.array(out["channels_absent"]), out["n_train_present"]
    tr, te = bootstrap_indices(np.random.default_rng(5), 200, len(v1), h)
    r1, r0 = hold_out_scores(v1, v0, h, h, (tr, tr, te, te))
    for key, values in (("dprime", dprime_rows(r1, r0)), ("auc", auc_rows(r1, r0))):
        expected = np.percentile(values, [2.5, 97.5])
        assert [out[f"{key}_ci_low"], out[f"{key}_ci_high"]] == pytest.approx(expected, rel=1e-9), key
    other = cho(*_paired_sites(12), chans, n_resamples=10, scores=True, paired=True)
    u = [np.array(o[k]) for o in (out, other) for k in ("channels_present", "channels_absent")]
    tr, te = bootstrap_indices(np.random.default_rng(3), 300, len(v1), h)
    idx = (tr, tr, te, te)
    diff = dprime_rows(*hold_out_scores(u[0], u[1], h, h, idx)) - dprime_rows(*hold_out_scores(u[2], u[3], h, h, idx))
    test = paired_dprime(out, other, seed=3, n_resamples=300)
    assert [test["ci_low"], test["ci_high"]] == pytest.approx(np.percentile(diff, [2.5, 97.5]), rel=1e-9)


def test_f50_interval_is_the_2_5_and_97_5_percentiles_of_the_resampled_realisations():
    """The 95 % f50 interval: percentiles 2.5 / 97.5 of f50 of each resample's mean edge (same seed)."""
    from ldct.ttf import f50, f50_interval, insert_phantom, ttf

    pixel, radius, n, resamples = 2.0, 15.0, 5, 60
    hu, centres = insert_phantom(96, pixel, [40.0], insert_mm=2 * radius, body_mm=160.0)
    noise = 15.0 * np.random.default_rng(9).standard_normal((n, 96, 96))
    noisy = ndimage.gaussian_filter(hu.astype(np.float64), 1.5) + noise
    picks = np.random.default_rng(2).integers(0, n, size=(resamples, n))
    values = [f50(*ttf(noisy[p], centres[0], radius, pixel, reach_mm=12.0)) for p in picks]
    assert np.isfinite(values).all() and max(values) < 0.5 / pixel  # no censoring at Nyquist to model
    got = f50_interval(noisy, centres[0], radius, pixel, reach_mm=12.0, n_resamples=resamples, seed=2)
    assert list(got) == pytest.approx(np.percentile(values, [2.5, 97.5]), rel=1e-9)


def test_nps_removes_each_rois_own_mean():
    """A different constant on each ROI (e.g. a slow drift between ROIs) leaves the NPS and the noise SD unchanged."""
    rng = np.random.default_rng(5)
    pixel = 0.5
    rois = SIGMA * rng.standard_normal((8, 16, 16))
    shifted = rois + np.array([-40.0, 0, 5, 17, 100, -3, 60, 2])[:, None, None]
    nps, _ = nps_2d(rois, pixel)
    nps_shifted, _ = nps_2d(shifted, pixel)
    np.testing.assert_allclose(nps_shifted, nps, rtol=1e-9, atol=1e-9)
    assert nps_summary(nps_shifted, pixel)["noise_sd"] == pytest.approx(nps_summary(nps, pixel)["noise_sd"], rel=1e-9)
