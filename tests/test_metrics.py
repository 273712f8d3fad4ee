from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from scipy.ndimage import uniform_filter

from ldct.metrics import stack_metrics, window_metrics
from ldct.stats import compare_pairs, holm


def brain_image(n=96, seed=0):
    rng = np.random.default_rng(seed)
    img = uniform_filter(rng.normal(30, 40, (n, n)), 5) + 20
    return img


def test_identical_images():
    img = brain_image()
    m = window_metrics(img, img, "brain")
    assert m["psnr"] == float("inf") and m["ssim"] == pytest.approx(1.0) and m["rmse"] == 0.0
    assert m["vif"] == pytest.approx(1.0, abs=1e-6)


def test_known_noise_gives_the_analytic_psnr():
    img = np.full((128, 128), 40.0)
    noisy = img + np.random.default_rng(1).normal(0, 8.0, img.shape)
    m = window_metrics(noisy, img, "brain")
    mse = np.mean((np.clip(noisy, -40, 120) - img) ** 2)
    assert m["psnr"] == pytest.approx(10 * np.log10(160**2 / mse), rel=1e-9)
    assert m["rmse"] == pytest.approx(np.sqrt(mse))


def test_full_window_uses_4096_peak():
    img = brain_image()
    shifted = img + 10.0
    m = window_metrics(shifted, img, "full")
    assert m["psnr"] == pytest.approx(20 * np.log10(4096 / 10.0), rel=1e-6)


def test_known_shift_lowers_ssim_and_more_noise_lowers_vif():
    img = brain_image()
    rng = np.random.default_rng(2)
    a = window_metrics(img + rng.normal(0, 2, img.shape), img, "brain")
    b = window_metrics(img + rng.normal(0, 10, img.shape), img, "brain")
    assert 1 > a["ssim"] > b["ssim"] and 1 > a["vif"] > b["vif"] > 0


def test_stack_metrics_equal_the_slice_by_slice_metrics():
    """Evaluation scores a whole volume at once (VIF in one batched call): each slice's values
    are those of the slice alone, keyed metric_window with the prefix."""
    rng = np.random.default_rng(3)
    ref = np.stack([brain_image(seed=s) for s in range(3)])
    out = ref + rng.normal(0, 6, ref.shape)
    rows = stack_metrics(out, ref, windows=("brain", "full"), prefix="truth_")
    for s, row in enumerate(rows):
        for w in ("brain", "full"):
            single = window_metrics(out[s], ref[s], w)
            assert list(single) == ["psnr", "ssim", "ssim_skimage", "vif", "rmse"]
            for k, v in single.items():
                assert row[f"truth_{k}_{w}"] == pytest.approx(v, rel=1e-5)


def test_stacks_of_different_shape_are_refused_not_truncated():
    """A reference with one slice fewer (a truth.nii.gz of another length) must not silently score fewer slices."""
    ref = np.stack([brain_image(seed=s) for s in range(3)])
    with pytest.raises(ValueError, match=r"prediction \(3, 96, 96\) and reference \(2, 96, 96\) differ"):
        stack_metrics(ref, ref[:2])


def vif_single_scale(ref, dist, sigma_nsq=2.0):
    """VIF by its definition (Sheikh & Bovik 2006) at one scale with a uniform window:
    the ratio of the information the distorted channel carries to the reference's."""
    mu1, mu2 = uniform_filter(ref, 9), uniform_filter(dist, 9)
    s11 = uniform_filter(ref * ref, 9) - mu1**2
    s22 = uniform_filter(dist * dist, 9) - mu2**2
    s12 = uniform_filter(ref * dist, 9) - mu1 * mu2
    s11, s22 = np.maximum(s11, 0), np.maximum(s22, 0)
    g = s12 / (s11 + 1e-10)
    sv = np.maximum(s22 - g * s12, 1e-10)
    num = np.log10(1 + g**2 * s11 / (sv + sigma_nsq)).sum()
    den = np.log10(1 + s11 / sigma_nsq).sum()
    return num / den


def test_vif_agrees_with_its_definition_on_a_gain_distortion():
    """A pure contrast gain g < 1 with no noise gives VIF < 1 and matching ordering."""
    ref = brain_image(128, 3)
    scale = 255 / 160
    r = (np.clip(ref, -40, 120) + 40) * scale
    mean = r.mean()
    values = []
    for gain in (0.9, 0.6):
        dist_hu = (mean + gain * (r - mean)) / scale - 40
        ours = window_metrics(dist_hu, ref, "brain")["vif"]
        definition = vif_single_scale(r, mean + gain * (r - mean))
        values.append((ours, definition))
        assert ours == pytest.approx(definition, abs=0.02)  # sigma_n^2 0.5 instead of 2 is off by 0.05
    assert values[0][0] > values[1][0]


def test_holm_correction():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    adj = holm([0.01, float("nan"), 0.02])  # a comparison without a p-value: not counted, never significant
    assert adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.02) and np.isnan(adj[1])
    # an experiment without a single finite subject value is no comparison: it does not dilute the others
    rows = [{"experiment": e, "subject": f"s{k}", "psnr": v}
            for k in range(8) for e, v in (("best", 30.0 + k), ("worse", 29.0 + k), ("broken", float("nan")))]
    st = compare_pairs(pd.DataFrame(rows), ["psnr"])
    assert len(st) == 3 and (st["comparisons"] == 1).all()  # three pairs, one with a p-value
    st = st[st["against_best"]].set_index("experiment")
    assert np.isnan(st.loc["broken", "p"]) and not st.loc["broken", "significant"]
    assert st.loc["worse", "p_holm"] == pytest.approx(st.loc["worse", "p"])  # one real comparison


def test_one_subject_gives_no_interval_and_no_p():
    from ldct.stats import paired_difference

    one = paired_difference(np.array([0.5]))
    assert one["n_subjects"] == 1 and one["mean_diff"] == 0.5
    assert np.isnan(one["ci_low"]) and np.isnan(one["ci_high"]) and np.isnan(one["p"])  # not [0.5, 0.5], p = 1
    assert np.isnan(one["p_wilcoxon"])
    assert holm([one["p"], 0.02]) == pytest.approx([float("nan"), 0.02], nan_ok=True)  # not a comparison


def test_a_marked_row_is_shown_but_never_the_best(tmp_path):
    """A row flagged not converged (‡) or no better than its input (§) is not ranked: the bold
    row, and the row every other one is tested against, is the best unmarked one."""
    from ldct.tables import TABLE2_COLUMNS, dice_table, quantitative_table

    rng = np.random.default_rng(0)
    files, dice_files = {}, {}
    for exp, shift in (("LDCT", 0.0), ("good", 2.0), ("unconv", 3.0)):
        rows = [{"experiment": exp, "subject": f"s{s}", "slice": 0,
                 **{c: 30.0 + shift + rng.normal(0, 0.05) for c, _ in TABLE2_COLUMNS}} for s in range(10)]
        files[exp] = str(tmp_path / f"{exp}.csv")
        pd.DataFrame(rows).to_csv(files[exp], index=False)
        dice_files[exp] = str(tmp_path / f"{exp}_dice.csv")
        pd.DataFrame([{"experiment": exp, "subject": f"s{s}", "slice": 0, "class": 1, "out_px": 10,
                       "ndct_px": 10, "inter_ndct": {"unconv": 10, "good": 9, "LDCT": 8}[exp], "truth_px": np.nan,
                       "inter_truth": np.nan} for s in range(10)]).to_csv(dice_files[exp], index=False)
    training = pd.DataFrame({"experiment": ["good", "unconv"], "steps": [100, 100], "tera_macs": [1.0, 1.0],
                             "lr": [1e-3, 1e-3], "val_gain_last_quarter_db": [0.0, 2.5],
                             "not_converged": [False, True], "no_gain_over_input": [False, False],
                             "min_gain_db": 0.1})
    quantitative_table(files, str(tmp_path / "t2"), str(tmp_path / "stats.csv"), training=training)
    st = pd.read_csv(tmp_path / "stats.csv")
    st = st[st["against_best"]]
    assert set(st["against"]) == {"good"} and set(st["experiment"]) == {"LDCT", "unconv"}
    md = (tmp_path / "t2.md").read_text()
    assert next(x for x in md.splitlines() if x.startswith("| good |")).startswith("| good | **")
    unconv = next(x for x in md.splitlines() if x.startswith("| unconv ‡ |"))
    assert "**" not in unconv and "†" not in unconv  # higher, not bold, and not called worse either
    assert unconv.count("*") == len(TABLE2_COLUMNS)  # but significantly better than the bold row: *
    assert "‡ not converged" in md and "by more than 0.25 dB over the last quarter of training, 0.1 dB per tenth" in md and "not ranked" in md
    t2tex = (tmp_path / "t2.tex").read_text()
    assert t2tex.isascii() and "unconv $^\\ddagger$" in t2tex  # pdflatex-ready: marks as LaTeX commands
    dice_table(dice_files, str(tmp_path / "t3"), training, str(tmp_path / "dice_stats.csv"))
    t3 = (tmp_path / "t3.md").read_text()
    assert "**" not in next(x for x in t3.splitlines() if x.startswith("| unconv ‡ |"))
    # Table 3's bold is tested as Table 2's: LDCT is below the best in all 10 subjects
    assert "†" in next(x for x in t3.splitlines() if x.startswith("| LDCT |"))
    st3 = pd.read_csv(tmp_path / "dice_stats.csv")
    st3 = st3[st3["against_best"]].set_index(["metric", "experiment"])
    assert set(st3["against"]) == {"good"} and st3.loc[("dice_vs_ndct", "LDCT"), "significant"]
    everyone = training.assign(no_gain_over_input=True)
    quantitative_table({e: files[e] for e in ("good", "unconv")}, str(tmp_path / "t2b"),
                       str(tmp_path / "stats_b.csv"), training=everyone)
    assert "**" not in (tmp_path / "t2b.md").read_text()
    assert "Every row is marked" in (tmp_path / "t2b.md").read_text()
    assert pd.read_csv(tmp_path / "stats_b.csv").empty


def test_a_row_better_in_most_subjects_is_not_marked_worse():
    """Best by mean, but the other row wins 11 of 12 subjects and loses one badly: the t-test
    on the mean difference is not significant, so no mark (the signed-rank test, which counts
    the wins, is; the CSV carries its p as a check)."""
    rows = []
    for s in range(12):
        rows += [{"experiment": "steady", "subject": f"s{s}", "psnr": 30.0 + (0.1 if s < 11 else -50.0)},
                 {"experiment": "mean_best", "subject": f"s{s}", "psnr": 30.0}]
    row = compare_pairs(pd.DataFrame(rows), ["psnr"]).iloc[0]
    assert row["against"] == "mean_best" and row["against_best"] and row["mean_diff"] < 0
    assert row["p_holm"] > 0.3 and not row["significant"] and row["p_wilcoxon"] < 0.05


def test_the_tested_best_is_the_row_shown_in_bold(tmp_path):
    """With unequal slice counts the mean over slices (the table's number, bold) and the mean
    over subjects can disagree; Table 2's tests compare with the row it shows in bold, so no
    cell is both bold and marked worse."""
    from ldct.tables import TABLE2_COLUMNS, quantitative_table

    files = {}
    for exp in ("A", "B"):
        rows = []
        for s in range(10):
            a = 2.0 if s == 0 else -0.5 + 0.01 * s  # A: far ahead on the big subject only
            rows += [{"experiment": exp, "subject": f"s{s}", "slice": k,
                      **{c: 30.0 + (a if exp == "A" else 0.0) for c, _ in TABLE2_COLUMNS}}
                     for k in range(100 if s == 0 else 5)]
        files[exp] = tmp_path / f"{exp}.csv"
        pd.DataFrame(rows).to_csv(files[exp], index=False)
    quantitative_table({k: str(v) for k, v in files.items()}, str(tmp_path / "t2"), str(tmp_path / "stats.csv"))
    st = pd.read_csv(tmp_path / "stats.csv")
    assert set(st["against"]) == {"A"} and set(st["experiment"]) == {"B"}  # bold A (slice mean), though B wins per subject
    assert st["mean_diff"].gt(0).all() and not st["significant"].any()  # B ahead over subjects, not significantly
    rows = [line for line in (tmp_path / "t2.md").read_text().splitlines() if line.startswith(("| A |", "| B |"))]
    assert rows[0].startswith("| A | **") and not {"†", "*"} & set(rows[1])  # A bold everywhere, nothing marked


def test_compare_pairs_finds_a_real_difference():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(12):
        base = rng.normal(30, 1)
        rows += [{"experiment": "good", "subject": f"s{s}", "psnr": base + 2 + rng.normal(0, 0.1)},
                 {"experiment": "bad", "subject": f"s{s}", "psnr": base}]
    st = compare_pairs(pd.DataFrame(rows), ["psnr"])
    row = st.iloc[0]
    assert row["against"] == "good" and row["experiment"] == "bad" and row["significant"]
    assert row["ci_low"] < row["mean_diff"] < row["ci_high"] < 0
    assert row["mean_diff"] == pytest.approx(-2.0, abs=0.1)
    wide = pd.DataFrame(rows).pivot(index="subject", columns="experiment", values="psnr")
    diff = (wide["bad"] - wide["good"]).to_numpy()
    t_95 = 2 * scipy.stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    assert row["ci_high"] - row["ci_low"] == pytest.approx(t_95, rel=1e-9)  # the t-interval (a normal one: 0.89 x)
    assert row["p"] == pytest.approx(scipy.stats.ttest_rel(wide["bad"], wide["good"]).pvalue, rel=1e-9)


def test_anatomical_dice_table_scores_whole_volumes(tmp_path):
    """Table 3 computes Dice over each test volume from the per-slice counts, not as a mean of
    per-slice Dice: a class missed on one slice of two costs what its pixels weigh."""
    from ldct.evaluate import DICE_COLUMNS, dice_counts
    from ldct.tables import dice_table

    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, :4, :4] = 1  # 16 px of class 1 on slice 0 ...
    labels[1, :1, :2] = 1  # ... and 2 px on slice 1
    seg_out = labels.copy()
    seg_out[1] = 0  # the output misses slice 1's two pixels
    files = {}
    for exp, seg in (("LDCT", seg_out), ("perfect", labels)):
        rows = dice_counts(exp, "S001", seg, labels, labels)
        files[exp] = tmp_path / f"{exp}.csv"
        pd.DataFrame(rows, columns=DICE_COLUMNS).to_csv(files[exp], index=False)
    table = dice_table(files, str(tmp_path / "t3")).set_index("experiment")
    # volume Dice of class 1: 2 * 16 / (16 + 18); the per-slice mean would be (1 + 0) / 2
    assert table.loc["LDCT", "dice_vs_truth"] == pytest.approx(32 / 34)
    assert table.loc["LDCT", "dice_vs_ndct"] == pytest.approx(32 / 34)
    assert table.loc["perfect", "dice_vs_truth"] == 1.0
    assert table.loc["LDCT", "dice_brain_parenchyma"] == pytest.approx(32 / 34)
    assert "**1.0000**" in (tmp_path / "t3.md").read_text()


def test_learning_rates_keep_their_significant_digits_in_the_tables():
    """A rate of 3e-5 must not print as 0.0000 (Table 2's lr column)."""
    from ldct.tables import _fmt

    assert [_fmt(v, "e") for v in (3e-5, 2.5e-4, 1e-3)] == ["3e-05", "0.00025", "0.001"]
    assert _fmt(27.456, 2) == "27.46" and _fmt(float("nan"), "e") == ""


def test_the_dose_table_does_not_rank_a_marked_row(tmp_path):
    from ldct.tables import dose_table

    files = {}
    for exp, shift in (("LDCT", 0.0), ("good", 2.0), ("unconv", 3.0)):
        for dose in (0.25, 0.5):
            path = tmp_path / f"{exp}_{dose}.csv"
            pd.DataFrame({"subject": ["s0", "s1"], "slice": 0, "psnr_brain": 30.0 + shift + dose, "ssim_brain": 0.9 + shift / 100,
                          "psnr_full": 50.0, "ssim_full": 0.99}).to_csv(path, index=False)
            files[(exp, dose)] = str(path)
    training = pd.DataFrame({"experiment": ["good", "unconv"], "not_converged": [False, True],
                             "no_gain_over_input": [False, False], "min_gain_db": 0.1})
    dose_table(files, str(tmp_path / "t4"), training_dose=0.25, training=training)
    md = (tmp_path / "t4.md").read_text()
    assert next(x for x in md.splitlines() if x.startswith("| good |")).count("**") == 8  # bold in all 4 columns
    assert "**" not in next(x for x in md.splitlines() if x.startswith("| unconv ‡ |"))
    assert "not tested (Table 2 tests the rows at the training dose)" in md  # bold is not a significance claim
    assert "at each dose fraction (mean over 2 test slices of 2 subjects)" in (tmp_path / "t4.tex").read_text()


def test_a_slice_identical_to_its_reference_is_left_out_of_the_psnr_mean(tmp_path):
    """An all-air slice clips to the same image in the brain window: its PSNR is inf, which made
    the row's mean inf. The reference's measure averages PSNR over slices with MSE > 0; the
    table does the same and its caption says how many values it left out."""
    from ldct.errors import DataError
    from ldct.metrics import infinite_psnr_note, read_metrics
    from ldct.tables import quantitative_table

    ref = np.stack([brain_image(48, 0), np.full((48, 48), -1000.0)])
    noisy = ref + np.random.default_rng(2).normal(0, 10, ref.shape)
    noisy[1] = np.minimum(noisy[1], -100)  # still air: identical to the reference once clipped to [-40, 120] (so is the model's)
    files = {}
    for exp, out in (("LDCT", noisy), ("model", ref + 3.0)):
        rows = stack_metrics(out, ref)
        files[exp] = tmp_path / f"{exp}.csv"
        pd.DataFrame([{"experiment": exp, "subject": "s0", "slice": i, **r} for i, r in enumerate(rows)]).to_csv(
            files[exp], index=False)
    assert pd.read_csv(files["LDCT"])["psnr_brain"].tolist()[1] == np.inf  # metrics.csv keeps the fact
    m = read_metrics([files["LDCT"]])
    assert np.isnan(m.loc[1, "psnr_brain"]) and np.isfinite(m.loc[1, "psnr_full"])
    table = quantitative_table({k: str(v) for k, v in files.items()}, str(tmp_path / "t2"), str(tmp_path / "st.csv"))
    assert table.loc[0, "psnr_brain"] == pytest.approx(m.loc[0, "psnr_brain"])  # the finite slice alone
    assert "2 slice-window PSNR value(s) were infinite" in (tmp_path / "t2.md").read_text()
    assert "the differences are in st.csv" in (tmp_path / "t2.md").read_text()  # its own stats file (vs truth: stats_vs_truth.csv)
    # the air slice is constant in [-40, 120] HU: its VIF there is 0 / 0 in both rows, left out and counted
    assert np.isnan(m.loc[1, "vif_brain"]) and table.loc[0, "vif_brain"] == pytest.approx(m.loc[0, "vif_brain"])
    assert "1 slice-window VIF value(s) per row were undefined" in (tmp_path / "t2.md").read_text()
    f = pd.read_csv(files["model"])
    f.loc[0, "vif_full"] = np.nan  # a NaN VIF in one row only: not a constant reference, not averaged away
    f.to_csv(files["model"], index=False)
    with pytest.raises(DataError, match=r"model.csv: vif_full is NaN on subject s0, slice 0 in one of it and"):
        quantitative_table({k: str(v) for k, v in files.items()}, str(tmp_path / "t2"), str(tmp_path / "st.csv"))
    # a NaN that is not an infinite PSNR is not counted as one; files from different evaluations
    # (one without the truth columns) are an error, not NaN cells called "infinite PSNRs"
    odd = pd.read_csv(files["model"])
    odd.loc[0, "psnr_full"] = np.nan
    odd.to_csv(tmp_path / "odd.csv", index=False)
    assert infinite_psnr_note(read_metrics([tmp_path / "odd.csv"]), ["psnr_full"]) == ""
    odd.drop(columns=["psnr_head"]).to_csv(tmp_path / "older.csv", index=False)
    with pytest.raises(DataError, match=r"older.csv: no column psnr_head that .*LDCT.csv has"):
        read_metrics([files["LDCT"], tmp_path / "older.csv"])
    # validation during training too: an inf LDCT level marked every row "no gain over input"
    from ldct.metrics import mean_psnr

    assert mean_psnr(noisy, ref, "brain") == pytest.approx(m.loc[0, "psnr_brain"])
    assert np.isnan(mean_psnr(noisy[1:], ref[1:], "brain"))


def test_anatomical_effect_pairs_ana_with_l1_and_drops_a_stale_table(tmp_path):
    """`<model>_ana` minus `<model>_l1` per subject; once the pair is gone from the run, the
    table an earlier config left is removed rather than shown for experiments no longer there."""
    from ldct.tables import TABLE2_COLUMNS, anatomical_effect

    files, dice = {}, {}
    for exp, shift in (("m_ana", 0.5), ("m_l1", 0.0)):
        rows = [{"experiment": exp, "subject": f"s{s}", "slice": 0,
                 **{c: 30.0 + shift + 0.01 * s for c, _ in TABLE2_COLUMNS}} for s in range(8)]
        files[exp] = str(tmp_path / f"{exp}.csv")
        pd.DataFrame(rows).to_csv(files[exp], index=False)
        dice[exp] = str(tmp_path / f"{exp}_dice.csv")
        pd.DataFrame([{"experiment": exp, "subject": f"s{s}", "slice": 0, "class": 1, "out_px": 10, "ndct_px": 10,
                       "inter_ndct": 9, "truth_px": np.nan, "inter_truth": np.nan} for s in range(8)]
                     ).to_csv(dice[exp], index=False)
    prefix = str(tmp_path / "anatomical_effect")
    table = anatomical_effect(files, dice, prefix).set_index("metric")
    assert table.loc["psnr_brain", "mean_diff"] == pytest.approx(0.5) and table.loc["psnr_brain", "model"] == "m"
    md = (tmp_path / "anatomical_effect.md").read_text()
    assert "| m | psnr_brain | +0.50 |" in md and "paired t-test p" in md
    assert "| m | dice_vs_ndct | 0.0000 | n/a (all differences equal) |" in md  # not a CI of [+0, +0]
    # the runs' convergence marks, as in every table: a pair with an unconverged run is no evidence
    assert "the anatomical run also spends the frozen U-Net's passes in its loss" in md
    assert "learning rate of its own sweep" not in md  # no rates known
    training = pd.DataFrame({"experiment": ["m_ana", "m_l1"], "not_converged": [True, True],
                             "no_gain_over_input": [False, True], "min_gain_db": 0.1, "lr": [0.003, 0.01]})
    anatomical_effect(files, dice, prefix, training=training)
    md = (tmp_path / "anatomical_effect.md").read_text()
    assert "| m (ana ‡ l1 ‡ §) | psnr_brain | +0.50 |" in md and "is not evidence for or against the loss" in md
    # each run's sweep picked its own rate (edcnn 0.003 / 0.01): the difference is not the loss's alone
    assert "which differs in m 0.003 / 0.01 (ana / l1): those rows mix the loss with the rate" in md
    assert "its own learning rate (swept or set)" in md  # no sweep recorded: not said to be one
    anatomical_effect(files, dice, prefix, training=training.assign(lr_source=["sweep", "sweep: diverged"]))
    assert "its own learning rate (from its own sweep)" in (tmp_path / "anatomical_effect.md").read_text()
    assert "never in bold" not in md and "\nMade with python " in md  # nothing is ranked here; its versions, as every table
    assert anatomical_effect({"m_l1": files["m_l1"]}, dice, prefix).empty
    assert not (tmp_path / "anatomical_effect.md").exists() and not (tmp_path / "anatomical_effect.csv").exists()


def test_a_narrow_interval_is_shown_with_the_digits_that_tell_its_ends_apart():
    """featkpn's PSNR effect read '-0.01 [-0.01, -0.01]' for -0.0132 [-0.0144, -0.0120]; a small
    negative mean read '-0.0000', and Table 5 showed '-0.0'."""
    from ldct.tables import _fmt, shown_digits, unsigned_zero

    d = shown_digits(2, -0.0144, -0.0120)
    assert [f"{v:+.{d}f}" for v in (-0.0132, -0.0144, -0.0120)] == ["-0.0132", "-0.0144", "-0.0120"]
    assert shown_digits(2, 1.29, 1.49) == 2 and shown_digits(4, -0.0021, -0.0006) == 4  # wide enough already
    assert shown_digits(2, 0.0, 1e-9) == 5 and shown_digits(2, np.nan, np.nan) == 2  # at most 3 more
    assert unsigned_zero("-0.0000") == "0.0000" and unsigned_zero("+0.00") == "0.00" and unsigned_zero("-0.01") == "-0.01"
    assert _fmt(-0.004, 1) == "0.0" and _fmt(-3.0, 1) == "-3.0"


def test_table_2_says_when_the_checkpoints_were_chosen_on_the_test_subjects(tmp_path):
    """split.val_as_test (configs/paper.yaml): the best of 400 validations was kept on the
    subjects Table 2 scores, and the caption did not say so."""
    import json

    from ldct.tables import selection_note

    f = tmp_path / "splits.json"
    f.write_text(json.dumps({"train": ["A"], "val": ["B", "C"], "test": ["C", "B"]}))
    assert "test subjects are the validation subjects" in selection_note(f)
    f.write_text(json.dumps({"train": ["A"], "val": ["B"], "test": ["C"]}))
    assert selection_note(f) == "" and selection_note(tmp_path / "missing.json") == ""


def test_a_row_significant_before_holm_but_not_after_is_not_marked_worse():
    """compare_pairs marks on Holm's adjusted p over every pair of rows, not on the raw p: two
    rows below the best at raw p 0.03 and 0.04 are not significant over the 3 pairs (0.087)."""
    rng = np.random.default_rng(37)
    rows = []
    for s in range(8):
        rows.append({"experiment": "best", "subject": f"s{s}", "psnr": 30.0})
        rows += [{"experiment": e, "subject": f"s{s}", "psnr": round(29.9 + rng.normal(0, 0.1), 3)} for e in "ab"]
    st = compare_pairs(pd.DataFrame(rows), ["psnr"])
    assert len(st) == 3 and (st["comparisons"] == 3).all()
    assert st["p_holm"].tolist() == pytest.approx(holm(st["p"].tolist()))
    vs_best = st[st["against_best"]]
    assert (vs_best["p"] < 0.05).all() and (vs_best["mean_diff"] < 0).all()
    assert (vs_best["p_holm"] >= 0.05).all() and not st["significant"].any()


def test_picking_the_best_row_on_the_same_subjects_keeps_the_error_rate():
    """Rows that differ in nothing: the bold row is whichever happens to be highest, and a
    correction over its comparisons alone let 14 % of 12-row tables mark a row (simulated at 10
    subjects); over every pair (compare_pairs) a mark against the bold row stays within 5 %."""
    rng = np.random.default_rng(3)
    marked = 0
    for _ in range(150):
        subject = rng.normal(30, 1, 10)
        rows = [{"experiment": f"e{j}", "subject": f"s{i}", "psnr": subject[i] + rng.normal(0, 0.3)}
                for j in range(6) for i in range(10)]
        st = compare_pairs(pd.DataFrame(rows), ["psnr"])
        marked += bool((st["against_best"] & st["significant"]).any())
    assert marked / 150 <= 0.08  # 0.05 plus two binomial standard errors


def test_wilcoxon_p_is_exact_for_few_subjects():
    """paired_difference's Wilcoxon p is the exact one: 8 subjects all worse give 2 / 2^8."""
    from ldct.stats import paired_difference

    r = paired_difference(-0.01 * np.arange(1, 9))
    assert r["p_wilcoxon"] == pytest.approx(2 / 2**8, rel=1e-9)  # the normal approximation gives 0.0117


def test_paired_difference_is_the_paired_t_test_and_its_interval():
    """paired_difference: scipy's paired t-test p and the 95 % t-interval of the mean difference
    (mean +- t(0.975, n-1) s / sqrt n); differences with no spread get the sign test's p."""
    from ldct.stats import paired_difference

    a, b = np.random.default_rng(4).normal(30.0, 1.0, (2, 10))
    r = paired_difference(a - b)
    assert r["p"] == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-12)
    half = scipy.stats.t.ppf(0.975, 9) * (a - b).std(ddof=1) / np.sqrt(10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(((a - b).mean() - half, (a - b).mean() + half), rel=1e-12)
    same = paired_difference(np.full(3, 0.25))  # an exact shift: the t-test's limit, as a near-exact one gives
    assert same["p"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.25
    assert paired_difference(np.array([0.25, 0.25, 0.25 + 1e-9]))["p"] < 1e-6
    assert paired_difference(np.zeros(4))["p"] == 1.0


def test_test_note_names_the_test_its_subjects_and_every_pair():
    """test_note: the caption's account of the marks' test: n subjects, Holm over the pairs of
    rows that have a test (all k(k-1)/2 where every row has values), a word on few subjects."""
    from ldct.tables import test_note

    noise = np.random.default_rng(0).normal(0, 0.1, (12, 10))
    rows = [{"experiment": f"e{j}", "subject": f"s{i}", "psnr": 30.0 + j + noise[j, i]} for j in range(12) for i in range(10)]
    st = compare_pairs(pd.DataFrame(rows), ["psnr"])
    assert test_note(10, st, "stats.csv") == (
        "Tests: two-sided paired t-tests on the per-subject means of 10 test subjects, Holm-corrected over the "
        "column's 66 pairs of rows with a test (every pair: choosing the bold row on the same subjects does not raise "
        "the error rate); each comparison's 95 % t-interval, not adjusted for the multiplicity, in stats.csv.")
    broken = pd.DataFrame(rows).assign(psnr=lambda d: d["psnr"].where(d["experiment"] != "e11"))
    assert "column's 55 pairs of rows with a test" in test_note(10, compare_pairs(broken, ["psnr"]))
    assert test_note(1, st) == "With 1 test subject there is no test: nothing is marked."
    assert test_note(3, st).endswith("With 3 subjects the t-test rests on the differences being near normal, which "
                                     "so few cannot show.")
    assert test_note(10, st.iloc[:0]) == "No pair of rows has a test: nothing is marked."


def test_table_2_averages_slices_and_tests_per_subject_means(tmp_path):
    """Table 2: means (not medians) over slices and per subject, n-1 comparisons, and the slice count per row."""
    from ldct.tables import TABLE2_COLUMNS, quantitative_table

    files, skew = {}, np.array([0.0, 0.0, 3.0])  # per subject: mean 1, median 0
    for exp, shift in (("A", 0.0), ("B", -0.2), ("C", -0.4)):
        rows = [{"experiment": exp, "subject": f"s{s}", "slice": k,
                 **{c: 30.0 + 0.1 * s + shift + (skew[k] * (1 + 0.1 * s) if exp == "A" else 0.0)
                    for c, _ in TABLE2_COLUMNS}} for s in range(8) for k in range(3)]
        files[exp] = str(tmp_path / f"{exp}.csv")
        pd.DataFrame(rows).to_csv(files[exp], index=False)
    table = quantitative_table(files, str(tmp_path / "t2"), str(tmp_path / "st.csv")).set_index("experiment")
    s = np.arange(8)
    a_subject = 30.0 + 0.1 * s + (1 + 0.1 * s)  # the mean of A's three slices per subject
    assert table.loc["A", "psnr_brain"] == pytest.approx(a_subject.mean())
    assert table.loc["B", "psnr_brain"] == pytest.approx(30.0 + 0.1 * s.mean() - 0.2)
    st = pd.read_csv(tmp_path / "st.csv")
    st = st[st["against_best"]].set_index(["metric", "experiment"])
    assert st.loc[("psnr_brain", "B"), "against"] == "A"
    assert st.loc[("psnr_brain", "B"), "mean_diff"] == pytest.approx((30.0 + 0.1 * s - 0.2 - a_subject).mean())
    md = (tmp_path / "t2.md").read_text()
    assert "mean over 24 test slices of 8 subjects" in md
    assert "8 test subjects, Holm-corrected over the column's 3 pairs of rows with a test" in md


def test_dice_table_averages_classes_and_counts_its_comparisons(tmp_path):
    """Table 3: Dice is the mean over classes (not the sum); 3 rows make 3 pairs."""
    from ldct.tables import dice_table

    files = {}
    for exp, inter in (("A", (9, 5)), ("B", (8, 4)), ("C", (7, 3))):
        rows = [{"experiment": exp, "subject": f"s{s}", "slice": 0, "class": c, "out_px": 10, "ndct_px": 10,
                 "inter_ndct": inter[c - 1], "truth_px": np.nan, "inter_truth": np.nan}
                for s in range(3) for c in (1, 2)]
        files[exp] = str(tmp_path / f"{exp}.csv")
        pd.DataFrame(rows).to_csv(files[exp], index=False)
    table = dice_table(files, str(tmp_path / "t3")).set_index("experiment")
    assert table["dice_vs_ndct"].tolist() == pytest.approx([0.7, 0.6, 0.5])  # (0.9 + 0.5) / 2, ...
    assert "3 test subjects, Holm-corrected over the column's 3 pairs of rows" in (tmp_path / "t3.md").read_text()


def test_the_not_converged_caption_scales_with_min_gain():
    """row_flags' ‡ sentence gives late_tolerance(min_gain_db): 0.5 dB for 0.2 dB, not 0.1's 0.25 dB."""
    from ldct.tables import row_flags

    training = pd.DataFrame({"experiment": ["a"], "not_converged": [True], "no_gain_over_input": [False],
                             "min_gain_db": [0.2]})
    flags, note = row_flags(training)
    assert flags == {"a": " ‡"}
    assert "rose by more than 0.5 dB over the last quarter of training, 0.2 dB per tenth" in note
    # a marked row can score above the bold one (edcnn_ana ‡'s SSIM): bold is the best ranked row
    assert note.endswith("a marked row is not ranked (never in bold, even where its value is above the bold one).")


def _clinical_results(n_rows: int = 4) -> dict:
    """Minimal clinical.measure results: LDCT, n_rows - 1 rows and NDCT, two lesion conditions."""
    names = ["LDCT"] + [f"m{k}_l1" for k in range(1, n_rows)] + ["NDCT"]
    results = {}
    for k, name in enumerate(names):
        conds = [{"contrast_hu": -15.0, "diameter_mm": 6.0, "dprime": 1.0 + 0.1 * k, "measured_contrast_hu": -12.0,
                  "cnr": 0.5 + k, "cnr_se": 0.05 * (k + 1), "auc": 0.6 + 0.01 * k, "n_test": 40},
                 {"contrast_hu": -40.0, "diameter_mm": 12.0, "dprime": 3.0 + 0.1 * k, "measured_contrast_hu": -35.0,
                  "cnr": 5.0 + k, "cnr_se": 0.5, "auc": 0.9 + 0.01 * k, "n_test": 44}]
        results[name] = {"conditions": conds, "nps": {"noise_sd": 10.0 - k, "mean_frequency": 0.25 + 0.05 * k},
                         "roi": {"bias": 0.1 * k}, "ttf": [{"contrast_hu": 340.0, "f50": 0.3}],
                         "subjects": ["S001"], "channels": 6, "channel_width_mm": 12.0, "roi_px": 11}
    return results


def test_clinical_table_marks_only_holm_significant_rows(tmp_path, monkeypatch):
    """Table 5 marks a d' difference on Holm's p: raw p 0.02 in 3 comparisons (Holm 0.06) is no mark."""
    import ldct.stats
    from ldct.tables import clinical_table

    lower = {"diff": -0.5, "ci_low": -0.9, "ci_high": -0.1, "p": 0.02}  # every row below its reference, raw p 0.02
    monkeypatch.setattr(ldct.stats, "paired_dprime", lambda a, b, seed=0, n_resamples=2000: dict(lower))
    _, st = clinical_table(_clinical_results(4), str(tmp_path / "t5"), str(tmp_path / "st.csv"), "LDCT", ["NDCT"])
    assert len(st) == 2 * 3  # 2 conditions x 3 rows against the input
    assert st["p_holm"].to_numpy() == pytest.approx(0.06) and not st["significant"].any()
    lines = [x for x in (tmp_path / "t5.md").read_text().splitlines() if x.startswith(("| LDCT", "| m"))]
    assert len(lines) == 4 and not any(sym in x for x in lines for sym in "†↓↑")


def test_clinical_table_columns_and_site_count(tmp_path, monkeypatch):
    """Table 5: AUC/CNR of the first (hardest) condition, NPS shift 100 (f / f_LDCT - 1), sites n_test / 2."""
    import ldct.stats
    from ldct.tables import clinical_table

    same = {"diff": 0.1, "ci_low": -0.9, "ci_high": 1.0, "p": 0.5}
    monkeypatch.setattr(ldct.stats, "paired_dprime", lambda a, b, seed=0, n_resamples=2000: dict(same))
    results = _clinical_results(2)
    table, _ = clinical_table(results, str(tmp_path / "t5"), str(tmp_path / "st.csv"), "LDCT", ["NDCT"], seed=7)
    table = table.set_index("experiment")
    assert (pd.read_csv(tmp_path / "t5.csv")["seed"] == 7).all()  # the run's seed, as Table 2's CSV
    assert table["auc_hardest"].tolist() == pytest.approx([0.6, 0.61, 0.62])
    assert table["cnr_hardest"].tolist() == pytest.approx([0.5, 1.5, 2.5])
    assert table.loc["m1_l1", "nps_shift_pct"] == pytest.approx(20.0) and table.loc["LDCT", "nps_shift_pct"] == 0
    md = (tmp_path / "t5.md").read_text()
    assert "| m1_l1 | **1.10** | **3.10** | 0.610 | 1.50 | 9.00 | 0.300 | 20.0 |" in md
    assert "on 20-22 held-out lesion sites per condition" in md
    # the CNR's standard error (the compared rows' largest, of the hardest condition; NDCT's not
    # counted) and the channels' cut by the ROI are in the caption, each row's SE in the CSV
    assert "its standard error over the sites is up to 0.10 in the compared rows" in md
    assert table["cnr_hardest_se"].tolist() == pytest.approx([0.05, 0.1, 0.15])
    assert "6 Laguerre-Gauss channels of width 12 mm, cut to the 11-pixel ROI: not orthonormal" in md


def test_tables_name_the_commit_and_machine_each_model_was_trained_with(tmp_path):
    """A table's "Made with" line names the commit that drew it; training is not rerun for a
    change to ldct/, so the models' own commit and machine (model.pt) are named apart."""
    import torch

    from ldct.tables import trained_with, trained_with_note

    def model_pt(name, commit, machine):
        torch.save({"state_dict": {}, "versions": {"ldct": commit}, "machine": machine}, tmp_path / name)
        return tmp_path / name

    cpu = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "torch_threads": 2}
    a = trained_with(model_pt("a.pt", "0.1.0 (abc)", cpu))
    b = trained_with(model_pt("b.pt", "0.1.0 (def)", {**cpu, "gpu": "NVIDIA H100"}))
    assert a == ("0.1.0 (abc)", "AMD EPYC (AVX512), 2 threads") and b == ("0.1.0 (def)", "NVIDIA H100")
    assert trained_with(tmp_path / "missing.pt") == ("", "")
    one = pd.DataFrame({"trained_with": [a[0], a[0]], "trained_on": [a[1], a[1]]})
    assert trained_with_note(one) == "Models trained with ldct 0.1.0 (abc) on AMD EPYC (AVX512), 2 threads (training.csv)."
    two = pd.DataFrame({"trained_with": [a[0], b[0], a[0]], "trained_on": [a[1], b[1], a[1]]})
    assert "ldct 0.1.0 (abc) (2 rows), 0.1.0 (def) (1 rows)" in trained_with_note(two)
    assert trained_with_note(pd.DataFrame({"trained_with": [""], "trained_on": [""]})) == ""
    older = pd.DataFrame({"trained_with": [a[0], ""], "trained_on": [a[1], ""]})  # a model.pt that records neither
    assert "ldct 0.1.0 (abc) (1 rows), not recorded (1 rows)" in trained_with_note(older)


def _scored_run(root, experiments=("LDCT", "m_l1"), slices=4):
    """A results folder with each experiment's metrics.csv and dice.csv (two subjects), as the
    evaluation writes them."""
    from ldct.paths import ResultPaths
    from ldct.tables import TABLE2_COLUMNS

    rp = ResultPaths.at(root)
    for k, exp in enumerate(experiments):
        rows = [{"experiment": exp, "subject": f"S00{s % 2}", "slice": s // 2,
                 **{c: 30.0 + k + 0.01 * s for c, _ in TABLE2_COLUMNS}} for s in range(slices)]
        rp.metrics(exp).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(rp.metrics(exp), index=False)
        pd.DataFrame([{"experiment": exp, "subject": f"S00{s % 2}", "slice": s // 2, "class": 1, "out_px": 10,
                       "ndct_px": 10, "inter_ndct": 9, "truth_px": np.nan, "inter_truth": np.nan}
                      for s in range(slices)]).to_csv(rp.dice(exp), index=False)
    return rp


def test_a_damaged_results_csv_is_one_error_naming_it_and_the_job_that_remakes_it(tmp_path):
    """Writers rename whole files into place, so an empty, cut-short or NaN-holding metrics.csv
    was damaged afterwards: it gave a pandas traceback naming no file, a Table 2 silently averaged
    over the rows left (exit 0, the caption's slice count right for neither), or blamed the intact
    file for the columns of a cut-short header."""
    from ldct.errors import DataError
    from ldct.tables import read_result_csv, read_scores

    rp = _scored_run(tmp_path / "run")
    ldct, model = rp.metrics("LDCT"), rp.metrics("m_l1")
    whole = model.read_bytes()
    assert len(read_scores([ldct, model])) == 8
    model.write_bytes(b"")
    with pytest.raises(DataError, match=r"m_l1/metrics.csv: empty; rerun its evaluation"):
        read_scores([ldct, model])
    model.write_bytes(whole[:-40])  # cut mid-row
    with pytest.raises(DataError, match=r"m_l1/metrics.csv: cut short \(its last line is not whole\)"):
        read_scores([ldct, model])
    model.write_bytes(whole[:whole.index(b"\n") - 5])  # its header cut: it blamed LDCT's intact file
    with pytest.raises(DataError, match=r"m_l1/metrics.csv: cut short"):
        read_scores([ldct, model])
    lines = whole.decode().splitlines(keepends=True)
    model.write_text("".join(lines[:3]))  # whole lines, two slices gone
    with pytest.raises(DataError, match=r"m_l1/metrics.csv: lacks 2 of the 4 slices .*LDCT/metrics.csv scores "
                                        r"\(first: subject S000, slice 1\); the rows are compared slice by slice"):
        read_scores([ldct, model])
    nan = pd.read_csv(ldct).assign(experiment="m_l1")
    nan.loc[2, "psnr_full"] = np.nan
    nan.to_csv(model, index=False)
    with pytest.raises(DataError, match=r"m_l1/metrics.csv: NaN in psnr_full \(subject S000, slice 1\)"):
        read_scores([ldct, model])
    both = [pd.read_csv(ldct).assign(truth_psnr_brain=31.0), nan.assign(psnr_full=40.0, truth_psnr_brain=31.0)]
    both[1].loc[1:, "truth_psnr_brain"] = np.nan  # Table 2 vs truth averaged the one slice left, in bold
    for frame, path in zip(both, (ldct, model)):
        frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"m_l1/metrics.csv: NaN in truth_psnr_brain \(subject S001, slice 0\)"):
        read_scores([ldct, model])
    dice = rp.dice("m_l1")
    dice.write_bytes(b"")
    with pytest.raises(DataError, match=r"m_l1/dice.csv: empty; rerun its evaluation"):
        read_result_csv(dice)
    with pytest.raises(DataError, match=r"history.csv: not found; rerun its training"):
        read_result_csv(tmp_path / "history.csv")


def test_the_tables_check_every_input_before_writing_any(tmp_path):
    """An empty dice.csv stopped `ldct tables` after Table 2 and its statistics were rewritten and
    before Table 3 was: a half-updated set. Now nothing is written."""
    from ldct.errors import DataError
    from ldct.tables import write_tables

    rp = _scored_run(tmp_path / "run")
    write_tables(rp, ["LDCT", "m_l1"], {}, seed=0)
    table2, table3 = rp.table_prefix("table2_quantitative") + ".md", rp.table_prefix("table3_anatomical_dice") + ".md"
    before = {p: Path(p).read_bytes() for p in (table2, table3)}
    assert b"| m_l1 |" in before[table2]
    rows = pd.read_csv(rp.metrics("m_l1"))
    rows.assign(psnr_brain=rows["psnr_brain"] + 1).to_csv(rp.metrics("m_l1"), index=False)  # a new evaluation
    rp.dice("m_l1").write_bytes(b"")
    with pytest.raises(DataError, match="dice.csv: empty"):
        write_tables(rp, ["LDCT", "m_l1"], {}, seed=0)
    assert {p: Path(p).read_bytes() for p in before} == before
