"""Figure helpers: every experiment's line can be told apart."""

import numpy as np
import pytest

from ldct.figures import experiment_styles


def test_every_experiment_gets_its_own_line_style():
    names = ["featkpn_l1", "featkpn_ana", "redcnn_l1", "redcnn_ana", "edcnn_l1", "edcnn_ana", "sgdnet_l1",
             "sgdnet_ana", "dncnn_l1", "kpn_l1", "gaussian_l1", "mynet"]
    styles = experiment_styles(names)
    looks = {(tuple(s["color"]), s["ls"]) for s in styles.values()}
    assert len(looks) == len(names)  # matplotlib's default cycle would repeat featkpn_l1's colour
    assert styles["featkpn_l1"]["color"] == styles["featkpn_ana"]["color"]  # one colour per model
    assert styles["featkpn_l1"]["ls"] != styles["featkpn_ana"]["ls"]  # one dash pattern per loss
    assert len({tuple(styles[n]["color"]) for n in ("featkpn_l1", "redcnn_l1", "gaussian_l1", "mynet")}) == 4
    many = [f"featkpn_{loss}" for loss in ("l1", "mse", "ssim_l1", "l1_weighted", "l1_l1ana_1", "l1_l1ana_2")]
    many += [f"model{i}_l1" for i in range(25)]  # more models than tab20 has colours
    looks = {(tuple(s["color"]), s["ls"], s["marker"]) for s in experiment_styles(many).values()}
    assert len(looks) == len(many)


def test_dose_sweep_figure_draws_every_experiment(tmp_path):
    import pandas as pd

    from ldct.figures import dose_sweep

    rows = [{"experiment": e, "dose_fraction": d, "psnr_brain": 25 + 10 * d + i, "ssim_brain": 0.9, "training_dose": d == 0.25}
            for i, e in enumerate(["LDCT", "featkpn_l1", "featkpn_ana", "edcnn_l1"]) for d in (0.1, 0.25, 0.5)]
    import matplotlib.pyplot as plt

    from ldct import figures

    drawn = []
    real_save = figures.save
    figures.save = lambda fig, out: drawn.append(fig.axes)
    try:
        dose_sweep(pd.DataFrame(rows), str(tmp_path / "sweep.png"))
    finally:
        figures.save = real_save
        plt.close("all")
    psnr, ssim = drawn[0]
    for ax, column in ((psnr, "psnr_brain"), (ssim, "ssim_brain")):
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert set(lines) == {"LDCT", "featkpn_l1", "featkpn_ana", "edcnn_l1"}  # one line per row, each labelled
        for name, line in lines.items():
            want = sorted((r["dose_fraction"], r[column]) for r in rows if r["experiment"] == name)
            assert list(zip(line.get_xdata(), line.get_ydata())) == want  # its values, in dose order
        assert [v.get_xdata()[0] for v in ax.get_lines() if v.get_linestyle() == ":"] == [0.25]  # the training dose
    assert {t.get_text() for t in ssim.get_legend().get_texts()} == {"LDCT", "featkpn_l1", "featkpn_ana", "edcnn_l1"}


def test_training_curves_show_a_gans_adversarial_terms(tmp_path):
    """A third panel appears only with an adversarial run; a self-supervised row is labelled."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ldct import figures

    base = {"epoch": [1, 2], "train_loss": [0.1, 0.05], "val_mse_head": [30.0, 20.0]}
    gan = pd.DataFrame({**base, "loss_adv_image": [0.2, 0.3], "loss_discriminator": [1.0, 0.8]})
    n2n = pd.DataFrame({**base, "target": ["repeat", "repeat"]})
    from matplotlib.legend import Legend

    panels, clear = [], []
    real_save = figures.save

    def keep(fig, out):
        fig.canvas.draw()
        panels.append(fig.axes)
        legends = fig.findobj(Legend)
        right = max(a.get_window_extent().x1 for a in fig.axes)  # the experiments' legend covers no panel
        clear.append([lg.get_window_extent().x0 >= right for lg in legends if len(lg.get_texts()) >= 3])

    figures.save = keep
    try:
        figures.training_curves({"cnn": pd.DataFrame(base)}, tmp_path / "a")
        figures.training_curves({"cnn": pd.DataFrame(base), "gan": gan, "n2n": n2n}, tmp_path / "b")
    finally:
        figures.save = real_save
        plt.close("all")
    assert len(panels[0]) == 2 and len(panels[1]) == 3
    texts = [{t.get_text() for t in lg.get_texts()} for lg in panels[1][2].findobj(Legend)]
    assert {"gan: discriminator", "gan: adv_image"} in texts  # the GAN panel's own legend, inside it
    assert any("n2n (vs its repeat scan)" in t for t in texts) and clear[1] == [True]


def test_nps_figure_draws_every_radial_bin_and_normalises_to_unit_area(tmp_path):
    """radial_nps leaves zero frequency out already: the figure draws each of its bins, the first included."""
    import matplotlib.pyplot as plt

    from ldct import figures
    from ldct.nps import nps_summary

    rng = np.random.default_rng(0)
    nps = rng.random((32, 32)) + 1.0
    summary = nps_summary(nps, pixel_mm=0.5)
    results = {"LDCT": {"nps": summary}, "featkpn_l1": {"nps": {**summary, "curve": [2 * c for c in summary["curve"]]}}}
    drawn = []
    real_save = figures.save
    figures.save = lambda fig, out: drawn.append(fig.axes)
    try:
        figures.nps_curves(results, tmp_path / "nps.png")
    finally:
        figures.save = real_save
        plt.close("all")
    absolute, normalised = drawn[0]
    for line in absolute.get_lines():
        assert list(line.get_xdata()) == summary["frequency"]  # all 16 bins, the lowest included
    assert absolute.get_lines()[0].get_xdata()[0] == pytest.approx(1 / (32 * 0.5))  # the DFT spacing
    for line in normalised.get_lines():
        assert np.trapezoid(line.get_ydata(), line.get_xdata()) == pytest.approx(1.0)


def test_learning_curves_label_each_row_with_the_tables_marks(monkeypatch, tmp_path):
    import pandas as pd

    from ldct import figures

    def history(psnr):
        return pd.DataFrame({"step": [10, 20, 30], "tera_macs": [0.1, 0.2, 0.3], "val_psnr_brain": psnr,
                             "val_psnr_brain_ldct": 27.0, "best": [False, False, True]})

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out: drawn.append(fig.axes[0]))
    figures.learning_curves({"good_l1": history([28.0, 29.0, 29.05]), "flat_l1": history([27.0, 27.01, 27.02])},
                            str(tmp_path / "lc.png"), {"flat_l1": " §"})
    labels = [t.get_text() for t in drawn[0].get_legend().get_texts()]
    assert labels[:2] == ["good_l1", "flat_l1 §"] and "LDCT (validation input)" in labels
    cheap = history([27.0, 27.0, 27.0]).assign(tera_macs=[1e-4, 2e-4, 3e-4])  # a Gaussian filter's compute
    figures.learning_curves({"good_l1": history([28.0, 29.0, 29.05]), "gauss_l1": cheap}, str(tmp_path / "lc2.png"))
    # linear from 0: a logarithmic axis (for the near-zero row) squeezed the trained rows into its last decade
    assert drawn[1].get_xscale() == "linear" and drawn[1].get_xlim()[0] == 0
    assert drawn[1].get_xlim()[1] == pytest.approx(0.3, rel=0.1)
    # equal passes (configs/paper.yaml): costs per step differ 30x, a linear axis would squeeze the
    # cheap models into its first few per cent: logarithmic, 0 still shown
    costly = history([28.0, 29.0, 29.05]).assign(tera_macs=[10.0, 20.0, 30.0])
    figures.learning_curves({"good_l1": history([28.0, 29.0, 29.05]), "big_l1": costly, "gauss_l1": cheap},
                            str(tmp_path / "lc3.png"))
    assert drawn[2].get_xscale() == "symlog" and drawn[2].get_xlim()[0] == 0


def test_dose_sweep_legend_carries_the_marks_outside_the_axes(monkeypatch, tmp_path):
    import pandas as pd

    from ldct import figures

    rows = [{"experiment": e, "dose_fraction": d, "psnr_brain": 25.0, "ssim_brain": 0.9, "training_dose": d == 0.25}
            for e in ("LDCT", "flat_l1") for d in (0.1, 0.25)]
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out: drawn.append(fig.axes))
    figures.dose_sweep(pd.DataFrame(rows), str(tmp_path / "sweep.png"), {"flat_l1": " ‡ §"})
    legend = drawn[0][1].get_legend()
    assert {t.get_text() for t in legend.get_texts()} == {"LDCT", "flat_l1 ‡ §"}  # as Table 4 labels it
    assert legend.get_bbox_to_anchor().transformed(drawn[0][1].transAxes.inverted()).x0 > 1  # beside, not over, the lines
    # the marks said in the figure itself (only the report's caption did), only those drawn
    assert legend.get_title().get_text() == "‡ not converged; § no better than its input"
    figures.dose_sweep(pd.DataFrame(rows), str(tmp_path / "sweep.png"), {"flat_l1": " ‡"})
    assert drawn[1][1].get_legend().get_title().get_text() == "‡ not converged"


def _head(n=64, scalp_noise=0.0, bone=1000.0, seed=0):
    """(reference, image) slices of a round head: brain (40 HU) inside a closed skull (`bone`),
    brain-range scalp outside it, air beyond; the image adds noise of SD 5 HU in the brain and
    `scalp_noise` in the scalp."""
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2 + 0.5, xx - n / 2 + 0.5)
    ref = np.where(r < 20, 40.0, np.where(r < 23, bone, np.where(r < 28, 40.0, -1000.0)))[None].repeat(3, 0)
    rng = np.random.default_rng(seed)
    noise = np.where(r < 20, 5.0, np.where((r >= 23) & (r < 28), scalp_noise, 0.0))
    return ref, ref + noise * rng.standard_normal(ref.shape)


def test_noise_rings_stop_at_the_skull(monkeypatch, tmp_path):
    """Scalp, pads and head holder are brain-range too: rings past the skull measured their edges
    (a blurring model's error peaked there), not brain noise."""
    from ldct import figures

    ref, image = _head(scalp_noise=60.0)
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out: drawn.append(fig.axes[0]))
    figures.noise_vs_radius({"LDCT": image}, ref, 2.0, str(tmp_path / "r.png"))
    radius, stds = drawn[0].get_lines()[0].get_data()
    assert max(radius) < 20 * 2.0 and max(stds) < 7  # brain only: SD 5, no scalp ring (SD 60)
    assert "inside the skull" in drawn[0].get_ylabel()
    mask, region = figures.intracranial(_head(bone=40.0)[0])  # no skull: the whole head, and said so
    assert mask.sum() == (_head(bone=40.0)[0] == 40).sum() and "whole head" in region


def test_seed_ranks_colour_models_as_the_other_figures_do_with_ldct_a_row(monkeypatch, tmp_path):
    import pandas as pd

    from ldct import figures

    names = ["LDCT", "featkpn_l1", "featkpn_ana", "edcnn_l1"]
    ranks = pd.DataFrame([{"experiment": n, "seed": s, "rank_psnr_brain": (i + s) % 4 + 1, "rank_ssim_brain": i + 1}
                          for s in (42, 43) for i, n in enumerate(names)])
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out: drawn.append(fig))
    figures.seed_ranks(ranks, tmp_path / "ranks.png")
    lines = {ln.get_label(): ln for ln in drawn[0].axes[0].get_lines()}
    assert set(lines) == set(names)
    models = experiment_styles(names[1:])  # as the training curves, without the LDCT row
    for n in names[1:]:
        assert lines[n].get_color() == models[n]["color"] and lines[n].get_linestyle() == models[n]["ls"]
    assert lines["LDCT"].get_color() == figures.REFERENCE_STYLES["LDCT"]["color"]
    # a filled point as large as a hollow one (the models' were 3 pt against 6), and every rank
    # a tick, 1 (the best) included: the axis showed 2, 4, ... only
    assert {ln.get_markersize() for ln in drawn[0].axes[0].get_lines()} == {6}
    assert list(drawn[0].axes[0].get_yticks()) == [1, 2, 3, 4]
    # a row missing from the last seed is named at its last point (the label sat at a NaN: not drawn)
    figures.seed_ranks(ranks[~((ranks["experiment"] == "edcnn_l1") & (ranks["seed"] == 43))], tmp_path / "r2.png")
    labels = {t.get_text(): t.xy for t in drawn[1].axes[0].texts}
    assert labels["edcnn_l1"] == (0, 2) and labels["LDCT"][0] == 1  # rank 2 in seed 42


def test_detectability_names_the_rows_it_leaves_out_in_its_legend(monkeypatch, tmp_path):
    """The note was a text of its own at the figure's corner, drawn over the tick labels once the
    legend below the axes grew the saved area."""
    from ldct import figures

    def row(d):
        return {"conditions": [{"dprime": d, "dprime_ci_low": d - 0.1, "dprime_ci_high": d + 0.1, "contrast_hu": -5,
                                "diameter_mm": 8}]}

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, out: drawn.append(fig))
    figures.detectability({"LDCT": row(1.0), "edcnn_l1": row(1.2), "noiseless": row(np.inf)},
                          {"LDCT": 0.0, "edcnn_l1": 3.0}, tmp_path / "d.png")
    fig = drawn[0]
    assert "not drawn: noiseless" in fig.axes[0].get_legend().get_title().get_text()
    assert not fig.texts  # no loose note


def test_a_figure_is_the_same_bytes_twice_and_names_its_versions(tmp_path):
    """The PDF carried its creation date (two saves of one figure differed) and neither file
    said what made it."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ldct import figures

    for name in ("a", "b"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        figures.save(fig, tmp_path / f"{name}.png")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert Image.open(tmp_path / "a.png").text["Software"].startswith("Made with python")
    assert b"Made with python" in (tmp_path / "a.pdf").read_bytes()
