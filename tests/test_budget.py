"""The budget protocol, convergence flags, the power statement and seed stability."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ldct import budget
from ldct.config import ConfigError, validate_config
from ldct.spec import ExperimentSpec


def config(protocol="equal_macs", **extra):
    exps = {"featkpn_l1": {"model": {"name": "featkpn", "nf": 8, "nk": 8}, "loss": {"name": "l1"}},
            "redcnn_l1": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}},
            "gaussian_l1": {"model": {"name": "gaussian"}, "loss": {"name": "l1"}}}
    return validate_config({"train": {"budget": {"protocol": protocol, "tera_macs": 0.2, "steps": 1000,
                                                 "evaluations": 5, **extra}, "patch_size": 32, "batch_size": 4},
                            "experiments": exps})


def test_equal_macs_gives_every_experiment_the_same_compute():
    cfg = config()
    specs = {e: ExperimentSpec.from_config(cfg, e) for e in cfg["experiments"]}
    for e in ("featkpn_l1", "redcnn_l1"):
        b = specs[e].budget
        assert b["protocol"] == "equal_macs" and specs[e].train["epochs"] == 5
        assert b["tera_macs"] == pytest.approx(0.2, rel=0.05)  # rounded to whole steps per round (the caption says what was spent)
        assert b["steps"] == specs[e].train["epochs"] * specs[e].train["iters_per_epoch"]
    assert specs["redcnn_l1"].budget["steps"] < specs["featkpn_l1"].budget["steps"]  # more MACs, fewer steps
    assert specs["gaussian_l1"].budget["steps"] == 1000  # (almost) no MACs: the cap
    counted = budget.macs_per_pixel({"name": "redcnn"}, cfg["segmenter"], 32) * 3 * 32 * 32 * 4
    assert specs["redcnn_l1"].budget["macs_per_step"] == counted


def test_the_caption_states_the_compute_each_experiment_really_spent():
    train = config()["train"]
    training = pd.DataFrame({"experiment": ["featkpn_l1", "redcnn_l1", "gaussian_l1"], "steps": [480, 95, 1000],
                             "tera_macs": [0.199, 0.1931, 0.0001]})
    note = budget.spent_note(train, training)
    assert note == ("Compute spent: 0.193-0.199 x 10^12 MACs; 1 experiment(s) reached the step cap first and spent less "
                    "(0.0001 x 10^12).")  # one value, not a range from it to itself
    # a calibrated row (BM3D: 0 steps, 0 MACs) spent nothing and is not part of the range
    calibrated = pd.concat([training, pd.DataFrame({"experiment": ["bm3d"], "steps": [0], "tera_macs": [0.0]})])
    assert budget.spent_note(train, calibrated) == note
    # the cap is told by the compute a row would have had, not by its steps (rounded to whole
    # validation rounds, a capped row can end a few steps under the cap)
    under = pd.DataFrame({"experiment": ["featkpn_l1", "gaussian_l1"], "steps": [480, 995], "tera_macs": [0.199, 0.0001]})
    assert budget.spent_note(train, under).startswith("Compute spent: 0.199 x 10^12 MACs; 1 experiment(s) reached")
    assert budget.spent_note(config("equal_steps")["train"], training) == ""
    capped = pd.DataFrame({"experiment": ["gaussian_l1"], "steps": [1000], "tera_macs": [0.0001]})  # said nothing
    assert budget.spent_note(train, capped) == ("Compute spent: every experiment reached the step cap first and spent "
                                                "less than the budget (0.0001 x 10^12 MACs).")
    assert "equal compute, 0.2 x 10^12" in budget.describe(train) and "rounded to whole validation rounds" in budget.describe(train)
    assert "the anatomical loss's U-Net not counted" in budget.describe(train)


def test_equal_steps_and_converged():
    cfg = config("equal_steps")
    assert {ExperimentSpec.from_config(cfg, e).budget["steps"] for e in cfg["experiments"]} == {1000}
    odd = config("equal_steps", steps=1003)  # 5 rounds of 201 steps: the caption states the steps run
    assert {ExperimentSpec.from_config(odd, e).budget["steps"] for e in odd["experiments"]} == {1005}
    assert "equal steps, 1005 per experiment" in budget.describe(odd["train"])
    cfg = config("converged")
    spec = ExperimentSpec.from_config(cfg, "redcnn_l1")
    assert spec.budget["steps"] == cfg["train"]["epochs"] * cfg["train"]["iters_per_epoch"]
    assert "not improved for 5 rounds" in budget.describe({**cfg["train"], "epochs": 50})
    # patience >= epochs never stops early (the reference's protocol, configs/paper.yaml): said so
    assert cfg["train"]["epochs"] == 4 and "4 rounds of 60 steps" in budget.describe(cfg["train"])
    assert "no early stop" in budget.describe(cfg["train"])
    assert "equal compute, 0.2 x 10^12" in budget.describe(config()["train"])
    # an epoch of one pass (configs/paper.yaml): its steps are counted once the slices are
    cfg["train"]["iters_per_epoch"] = "pass"
    spec = ExperimentSpec.from_config(cfg, "redcnn_l1")
    assert spec.budget["steps"] is None and spec.budget["tera_macs"] is None
    assert "4 rounds of one pass over the training slices (in batches of 4" in budget.describe(cfg["train"])
    run = budget.resolve_pass(spec, 30)  # 7 batches of 4, 2 slices left over
    assert run.train["iters_per_epoch"] == 7 and run.budget["steps"] == 28
    assert run.budget["tera_macs"] == pytest.approx(28 * spec.budget["macs_per_step"] / 1e12)
    assert budget.resolve_pass(run, 30) == run


def test_per_experiment_epochs_are_refused_under_a_fixed_budget():
    cfg = {"experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}, "train": {"epochs": 3}}}}
    with pytest.raises(ConfigError, match="experiments.a.train.epochs: set by the budget protocol"):
        validate_config(cfg)
    cfg["train"] = {"budget": {"protocol": "converged"}}
    assert validate_config(cfg)["experiments"]["a"]["train"]["epochs"] == 3  # the converged protocol takes them


def history(psnr, best=None):
    n = len(psnr)
    return pd.DataFrame({"epoch": range(1, n + 1), "step": [10 * (i + 1) for i in range(n)],
                         "tera_macs": [0.1 * (i + 1) for i in range(n)], "val_psnr_brain": psnr,
                         "val_psnr_brain_ldct": 27.0, "lr": 1e-3,
                         "best": best if best is not None else [True] * n})


def test_training_summary_flags_rows_still_moving_or_no_better_than_their_input():
    flat = history([27.5, 28.0, 28.1, 28.1, 28.1, 28.1, 28.1, 28.1, 28.1, 28.12])
    identity = history([27.02] * 10)  # never left its near-identity start: settled, but learned nothing
    rising = history([27.5, 28.0, 28.5, 29.0, 29.5, 30.0, 30.5, 31.0, 31.5, 32.0])
    worse = history([26.0, 26.2, 26.3, 26.3, 26.3, 26.3, 26.3, 26.3, 26.3, 26.3])
    # peaked in the last quarter and fell: the kept epoch is the best, which still rose late
    falling = history([27.5, 28.0, 28.5, 29.0, 29.5, 30.0, 30.5, 31.0, 31.5, 30.0], best=[True] * 9 + [False])
    # a steady climb whose last round is flat: one flat round is no plateau (a tenth saw only it)
    climb_then_flat = history([27, 28, 29, 30, 31, 32, 33, 34, 35.0, 35.05])
    # still rising slowly, within 0.25 dB over the last quarter (0.1 dB per tenth): converged
    slow = history([27.0, 28.0, 28.5, 28.8, 29.0, 29.1, 29.15, 29.2, 29.25, 29.3])
    # peaked early and then fell (overfitting, kept at its best): converged, not "still moving"
    overfit = history([28.0, 30.0, 31.0, 31.0, 30.8, 30.6, 30.4, 30.2, 30.0, 29.8],
                      best=[False, False, True] + [False] * 7)
    sweep = pd.DataFrame({"lr": [1e-4, 1e-3], "steps": 30, "chosen": [False, True], "source": "sweep"})
    s = budget.training_summary({"flat": flat, "rising": rising, "worse": worse, "falling": falling,
                                  "identity": identity, "climb_then_flat": climb_then_flat, "overfit": overfit,
                                  "slow": slow},
                                 {"rising": sweep}, 0.1).set_index("experiment")
    # best of steps 10..70 (<= 75 % of 100) against the best of all
    assert s.loc["rising", "val_gain_last_quarter_db"] == pytest.approx(1.5)
    assert s.loc["falling", "val_gain_last_quarter_db"] == pytest.approx(1.0)
    assert s.loc["climb_then_flat", "val_gain_last_quarter_db"] == pytest.approx(2.05)
    assert s.loc["overfit", "val_gain_last_quarter_db"] == 0.0
    assert s.loc["slow", "val_gain_last_quarter_db"] == pytest.approx(0.15)
    assert list(s["not_converged"]) == [False, True, False, True, False, True, False, False]
    assert list(s["no_gain_over_input"]) == [False, False, True, False, True, False, False, False]  # within 0.1 dB of its input, or below
    assert (s["min_gain_db"] == 0.1).all()  # the threshold travels with the flags
    assert s.loc["falling", "val_psnr_brain"] == 31.5 and s.loc["overfit", "kept_epoch"] == 3  # the kept (best) epoch
    assert s.loc["rising", "lr"] == 1e-3 and s.loc["flat", "steps"] == 100
    assert math.isnan(budget.late_gain([10], [1.0]))
    assert math.isnan(budget.late_gain([80, 90, 100], [1.0, 2.0, 3.0]))  # no validation in the first 75 %
    # one validation of a trained row: convergence cannot be told, so it is not claimed; a
    # calibrated row (step 0, nothing trained) has nothing to converge
    once, calibrated = history([28.0]), history([28.0]).assign(step=0)
    s = budget.training_summary({"once": once, "calibrated": calibrated}, {}, 0.1).set_index("experiment")
    assert bool(s.loc["once", "not_converged"]) and not bool(s.loc["calibrated", "not_converged"])
    nan_row = history([float("nan")])
    assert bool(budget.training_summary({"nan": nan_row}, {}, 0.1)["no_gain_over_input"].iloc[0])


def test_a_rate_at_the_sweeps_edge_and_a_short_sweep_are_marked_in_table_2():
    from ldct.tables import lr_edge_marks, sweep_note

    h = history([27.5, 28.0, 28.1, 28.1, 28.1, 28.1, 28.1, 28.1, 28.1, 28.12])

    def sweep(chosen: int, steps: int, diverged_top: bool = False) -> pd.DataFrame:
        return pd.DataFrame({"lr": [1e-4, 1e-3, 1e-2], "steps": steps, "chosen": [i == chosen for i in range(3)],
                             "source": ["sweep", "sweep", "sweep: diverged" if diverged_top else "sweep"]})

    given = pd.DataFrame({"lr": [1e-3], "steps": 0, "chosen": [True], "source": ["given"]})
    s = budget.training_summary({"low": h, "mid": h, "high": h, "below_diverged": h, "given": h},
                                {"low": sweep(0, 40), "mid": sweep(1, 40), "high": sweep(2, 5),
                                 "below_diverged": sweep(1, 40, diverged_top=True), "given": given}, 0.1)
    s = s.set_index("experiment")
    assert list(s["lr_at_edge"]) == ["lowest", "", "highest", "", ""]  # a diverged top rate was tried: not an edge
    assert list(s["lr_sweep_steps"]) == [40, 40, 5, 40, 0]
    assert lr_edge_marks(s.reset_index()) == {("low", "lr"): "«", ("high", "lr"): "»"}
    note = sweep_note(s.reset_index())
    assert "trained 5-40 steps" in note and "fewer than 20 for high (5)" in note
    assert "the lowest validation MSE in [0, 80] HU; the sweep's steps are outside the budget" in note
    assert "lowest / highest rate it tried (low, high)" in note
    assert sweep_note(s.reset_index()[lambda d: d["experiment"] == "given"]) == ""


def test_early_stopping_after_patience_rounds():
    from ldct import engine

    net = torch.nn.Linear(1, 1)
    scores = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 1.0])
    task = engine.Task(net, torch.nn.MSELoss(), lambda: (torch.zeros(2, 1), torch.zeros(2, 1)),
                       lambda m: {"score": next(scores)}, score="score")
    cfg = {"epochs": 7, "iters_per_epoch": 1, "batch_size": 2, "lr": 1e-3}
    out = engine.fit(task, cfg, device=torch.device("cpu"), generator=torch.Generator(), key="k", patience=3)
    assert [r["epoch"] for r in out.history] == [1, 2, 3, 4, 5] and out.complete
    assert out.best_row["epoch"] == 2


def test_the_kept_epoch_is_the_one_whose_weights_are_saved_even_after_a_nan_score():
    from ldct import engine
    from ldct.errors import TrainingError

    def run(values):
        net = torch.nn.Linear(1, 1)
        scores = iter(values)
        task = engine.Task(net, torch.nn.MSELoss(), lambda: (torch.zeros(2, 1), torch.zeros(2, 1)),
                           lambda m: {"score": next(scores)}, score="score")
        cfg = {"epochs": len(values), "iters_per_epoch": 1, "batch_size": 2, "lr": 1e-3}
        return engine.fit(task, cfg, device=torch.device("cpu"), generator=torch.Generator(), key="k")

    out = run([float("nan"), 4.0, 3.0, 3.5])  # min() over the rows returned the NaN epoch
    assert out.best_row["epoch"] == 3 and out.best_state is not None
    with pytest.raises(TrainingError, match="never finite"):
        run([float("nan"), float("nan")])


def test_stability_summary_and_tau():
    from ldct.stability import summarize

    rows = []
    for seed, order in ((1, [30, 29, 28, 20.0]), (2, [30.2, 28.9, 29.1, 31.0]), (3, [30.1, 29.2, 28.0, 25.0])):
        rows += [{"seed": seed, "experiment": e, "psnr_brain": v, "ssim_brain": v / 100, "not_converged": e == "d"}
                 for e, v in zip(["a", "b", "c", "d"], order)]
    table, ranks, taus = summarize(pd.DataFrame(rows))
    assert table.set_index("experiment").loc["a", "psnr_brain_mean"] == pytest.approx(30.1)
    assert table.set_index("experiment").loc["a", "psnr_brain_sd"] == pytest.approx(0.1)
    t = taus[(taus["metric"] == "psnr_brain") & (taus["rows"] == "unmarked")].set_index(["seed_a", "seed_b"])
    assert t.loc[(1, 3), "tau"] == pytest.approx(1.0) and t.loc[(1, 2), "swapped_pairs"] == "b/c"
    assert (t["n_rows"] == 3).all()  # d, marked not converged, is not ranked
    every = taus[(taus["metric"] == "psnr_brain") & (taus["rows"] == "all")].set_index(["seed_a", "seed_b"])
    assert every.loc[(1, 2), "swapped_pairs"] == "a/d, b/c, b/d, c/d" and every.loc[(1, 2), "n_rows"] == 4
    assert set(ranks.loc[ranks["seed"] == 2, "rank_psnr_brain"]) == {1, 2, 3, 4}
    assert ranks.set_index(["seed", "experiment"])["marked"].to_dict()[(2, "d")]  # hollow in the figure


def test_stability_caption_gives_no_tau_of_too_few_rows_and_the_seeds_each_row_has(tmp_path):
    """Kendall's tau of 2 or 3 shared rows can only be +-1 or +-1/3: the caption says n/a, not
    1.00; a row missing from a seed says its n, with no SD from one seed."""
    from ldct.stability import report

    for seed, values in ((1, [30.0, 29.0, 28.0, 27.0, 26.0]), (2, [30.1, 28.8, 28.1, 27.2, 25.0])):
        (tmp_path / f"s{seed}" / "tables").mkdir(parents=True)
        exps = ["a", "b", "c", "d", "e"] if seed == 1 else ["a", "b", "c", "d", "x"]
        pd.DataFrame({"experiment": exps, "psnr_brain": values, "seed": seed,
                      "not_converged": [False, False, True, True, False]}).to_csv(
            tmp_path / f"s{seed}" / "tables" / "table2_quantitative.csv", index=False)
    report({1: tmp_path / "s1", 2: tmp_path / "s2"}, tmp_path / "out")
    md = (tmp_path / "out" / "stability.md").read_text()
    assert "every row: psnr_brain 1.00 (4 rows)" in md
    assert "rank: psnr_brain n/a (2 rows shared: too few)" in md
    assert "| e (n = 1) | 26.00 ± – |" in md and "rows in fewer seeds say n" in md


def test_seeds_merges_a_users_config_overrides_into_each_seeds_own(monkeypatch):
    """Snakemake keeps only the last --config: the user's, given after `--`, would be dropped."""
    import subprocess

    from ldct import stability

    rest, items = stability.split_config_args(["-n", "--config", "train={budget: {tera_macs: 0.5}}",
                                               "dataset={n_subjects: 4}", "--dry-run"])
    assert rest == ["-n", "--dry-run"]
    assert items == {"train": {"budget": {"tera_macs": 0.5}}, "dataset": {"n_subjects": 4}}
    # the attached form holds one item (argparse's reading): it was passed on, then dropped by seeds' own --config
    rest, items = stability.split_config_args(["-n", "--config=dataset={name: other}", "x=1"])
    assert rest == ["-n", "x=1"] and items == {"dataset": {"name": "other"}}
    from ldct.errors import UsageError

    with pytest.raises(UsageError, match="--config=seed: give --config KEY=VALUE"):
        stability.split_config_args(["--config=seed"])
    rest, items = stability.split_config_args(["-n", "--config", "train={budget: {tera_macs: 0.5}}",
                                               "dataset={n_subjects: 4}", "--dry-run"])
    ran = []

    class Snakemake:
        def __init__(self, cmd):
            ran.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Snakemake)
    stability.run_seed(43, "synthetic", 42, rest, items)
    config = ran[0][ran[0].index("--config") + 1:]
    assert config == ["train={budget: {tera_macs: 0.5}}", "dataset={n_subjects: 4, name: synthetic_seed43}", "seed=43"]


def test_stability_needs_two_seeds_and_results_of_the_seed_it_names(tmp_path, capfd):
    from ldct.cli import main
    from ldct.errors import DataError
    from ldct.stability import gather, report

    assert main(["seeds", "--seeds", "42", "--no-run"]) == 1
    assert "give at least two different seeds" in capfd.readouterr().err
    assert main(["seeds", "--seeds", "42", "43", "42", "--no-run"]) == 1  # ran seed 42's workflow twice
    assert "error: --seeds: 42 given twice" in capfd.readouterr().err
    for seed in (1, 2):
        (tmp_path / f"s{seed}" / "tables").mkdir(parents=True)
        pd.DataFrame({"experiment": ["a", "b"], "psnr_brain": [30.0, 29.0], "seed": seed}).to_csv(
            tmp_path / f"s{seed}" / "tables" / "table2_quantitative.csv", index=False)
    assert set(gather({1: tmp_path / "s1", 2: tmp_path / "s2"})["seed"]) == {1, 2}
    with pytest.raises(DataError, match="made with seed 1, not 7"):  # a folder holding another seed's run
        gather({7: tmp_path / "s1", 2: tmp_path / "s2"})
    with pytest.raises(DataError, match="at least two seeds"):
        report({1: tmp_path / "s1"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_seeds_command_checks_its_options_says_which_seed_runs_and_writes_no_report_on_a_dry_run(
        tmp_path, monkeypatch, capfd):
    """--configfile after `--` ran the tiny config while the report read config.yaml's folders; a
    dry run (`-n`) rewrote the report from the results already there, exit 0; nothing said which
    seed ran, and Ctrl-C was a traceback; --threads and a repeated seed were taken silently."""
    import yaml

    from ldct import stability
    from ldct.cli import main

    cfg = yaml.safe_load((Path(__file__).parent / "configs" / "tiny.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ran = []
    monkeypatch.setattr(stability, "run_seed", lambda seed, *args, **kw: ran.append(seed))
    assert main(["seeds", "--seeds", "1", "2", "--", "--configfile", str(config)]) == 1
    assert "give --configfile before `--`" in capfd.readouterr().err and not ran
    assert main(["seeds", "--seeds", "1", "2", "--threads", "1", "--configfile", str(config)]) == 1
    assert "--threads is not used by seeds" in capfd.readouterr().err and not ran
    report = tmp_path / "results" / "tiny_stability" / "stability.md"
    report.parent.mkdir(parents=True)
    report.write_text("the last report")
    assert main(["seeds", "--seeds", "1", "2", "--configfile", str(config), "--", "-np"]) == 0
    err = capfd.readouterr().err
    assert ran == [1, 2] and f"seed 2 (2 of 2), results in {tmp_path / 'results' / 'tiny_seed2'}" in err
    assert "a dry run: the stability report is not written" in err and report.read_text() == "the last report"
    # read as Snakemake reads them: -Rtrain (forcerun train) is a run, --executor dryrun is not
    for options in (["--dry-run"], ["-pn"], ["--executor", "dryrun"], ["-e", "dryrun"], ["--dag"], ["--touch"]):
        assert stability.is_dry_run(options), options
    for options in (["-p"], ["-Rtrain"], ["-qreason"], ["--forcerun", "denoise"], ["all"]):
        assert not stability.is_dry_run(options), options

    def interrupted(seed, *args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(stability, "run_seed", interrupted)
    assert main(["seeds", "--seeds", "1", "2", "--configfile", str(config)]) == 1
    err = capfd.readouterr().err
    assert "error: interrupted during seed 1; run the same command again" in err and "Traceback" not in err


def test_a_ctrl_c_lets_snakemake_finish_cleaning_up(monkeypatch):
    """subprocess.run killed Snakemake 0.25 s after a Ctrl-C, before it unlocked its folder: the
    "run the same command again" that ldct seeds then advises met a stale lock."""
    import subprocess

    from ldct import stability

    waits = []

    class Snakemake:
        def __init__(self, cmd):
            self.cmd = cmd

        def wait(self):
            waits.append(len(waits))
            if len(waits) == 1:
                raise KeyboardInterrupt
            return 130

        def kill(self):
            raise AssertionError("killed before it cleaned up")

    monkeypatch.setattr(subprocess, "Popen", Snakemake)
    with pytest.raises(KeyboardInterrupt):
        stability.run_seed(43, "synthetic", 42, ["--cores", "1"])
    assert waits == [0, 1]  # waited again for it to finish


def test_fixed_budget_keeps_each_experiments_own_steps_and_says_so():
    cfg = validate_config({"train": {"budget": {"protocol": "fixed"}, "epochs": 2, "iters_per_epoch": 5},
                           "experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"},
                                                 "train": {"epochs": 3, "lr": 0.01}}}})
    spec = ExperimentSpec.from_config(cfg, "a")
    assert spec.budget["steps"] == 15 and spec.train["epochs"] == 3 and spec.train["lr"] == 0.01
    assert "the budgets differ" in budget.describe(cfg["train"])


def test_a_multi_pass_sampler_is_charged_one_pass_per_training_step_and_bm3d_nothing(tmp_path):
    """CoreDiff trains on one step of its chain (one network pass) but samples with `steps`
    passes: the budget counts one pass; BM3D is calibrated, not trained: no training compute."""
    import models
    from ldct.complexity import count_macs, model_complexity
    from ldct.tables import complexity_table

    one = budget.macs_per_pixel({"name": "corediff", "width": 8, "steps": 1}, {}, 32)
    four = budget.macs_per_pixel({"name": "corediff", "width": 8, "steps": 4}, {}, 32)
    assert four == pytest.approx(one, rel=1e-6)
    assert count_macs(models.build("corediff", width=8, steps=4), 32) == pytest.approx(4 * one * 32**2, rel=1e-3)
    assert budget.macs_per_pixel({"name": "bm3d"}, {}, 32) == 0.0
    row = model_complexity("bm3d", {"name": "bm3d"}, 24, 1)
    assert math.isnan(row["gmacs"]) and row["params"] == 0 and row["cpu_latency_s"] > 0
    frozen = {"model": "segnet", "size": 24, "params": 10, "gmacs": 2.0, "frozen_gmacs": 1.5, "device": "cpu",
              "threads": row["threads"], "repeats": 1, "cpu_latency_s": 0.1, "peak_memory_mb": 3.0}
    complexity_table([row, model_complexity("gaussian", {"name": "gaussian"}, 24, 1), frozen], str(tmp_path / "t1"))
    md = (tmp_path / "t1.md").read_text()
    assert "| bm3d | 0 | n/a |" in md.replace("  ", " ") and "no MAC count" in md
    gaussian = model_complexity("gaussian", {"name": "gaussian"}, 24, 1)["gmacs"]
    assert 0 < gaussian < 0.005 and f"| {gaussian:.2g} |" in md  # a small model's MACs, not 0.00
    # the caption says what each column counts and how it was measured
    assert "segnet: 1.50 of its 2.00 are its frozen parts" in md and "Parameters: trainable ones only" in md
    assert f"median of 1 forward pass(es) after one warm-up, {row['threads']} thread(s)" in md
    assert "GPU latency" not in md  # no GPU column without a GPU
    on_gpu = {**frozen, "gpu_latency_s": 0.002, "gpu_peak_memory_mb": 40.0}
    complexity_table([on_gpu], str(tmp_path / "t1gpu"))
    md = (tmp_path / "t1gpu.md").read_text()
    assert "| 0.0020 |" in md and "in float32 without autocast" in md and "TF32" in md  # the precision timed


def test_a_frozen_submodule_is_charged_its_forward_pass_only():
    """SGDNet runs its frozen segmentation U-Net without gradients: a step costs 3 x the
    trained path's forward MACs plus 1 x the U-Net's (not 3 x everything); a patch larger than
    the slice is charged at the slice's size, as the sampler trains it."""
    import models
    from ldct.complexity import count_macs

    seg = {"base_width": 8, "norm": "instance"}
    total, frozen = budget.macs_per_pixel({"name": "sgdnet"}, seg, 32, frozen=True)
    from ldct.classes import NUM_CLASSES

    unet = count_macs(models.build("unet", num_classes=NUM_CLASSES, base_width=8, norm="instance"), 32) / 32**2
    assert 0 < frozen == pytest.approx(unet, rel=1e-6) and frozen < total
    assert budget.step_macs({"name": "sgdnet"}, seg, 32, 4) == pytest.approx((3 * (total - frozen) + frozen) * 32**2 * 4)
    assert budget.macs_per_pixel({"name": "edcnn"}, seg, 32, frozen=True)[1] == 0.0
    cfg = validate_config({"synthetic": {"matrix": 64}, "train": {"patch_size": 256, "batch_size": 2},
                           "experiments": {"e": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}}}})
    assert ExperimentSpec.from_config(cfg, "e").budget["macs_per_step"] == pytest.approx(
        budget.step_macs({"name": "edcnn"}, cfg["segmenter"], 64, 2))


def test_history_records_the_rate_each_epoch_trained_with():
    """history.csv's lr is the rate of the epoch's last step, also under one-cycle (whose
    scheduler already holds the next step's rate, and past the cycle's end bounces back up)."""
    from ldct import engine

    net = torch.nn.Linear(1, 1)
    task = engine.Task(net, torch.nn.MSELoss(), lambda: (torch.zeros(2, 1), torch.zeros(2, 1)),
                       lambda m: {"score": 1.0}, score="score")
    cfg = {"epochs": 4, "iters_per_epoch": 5, "batch_size": 2, "lr": 1e-2, "schedule": "onecycle"}
    out = engine.fit(task, cfg, device=torch.device("cpu"), generator=torch.Generator(), key="k")
    reference = torch.optim.lr_scheduler.OneCycleLR(torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=1e-2),
                                                    max_lr=1e-2, total_steps=20, pct_start=0.15)
    used = []
    for _ in range(20):
        used.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert [r["lr"] for r in out.history] == pytest.approx([used[4], used[9], used[14], used[19]])
    assert out.history[-1]["lr"] < 1e-5  # the end of the cycle, not the bounce after it


def test_the_caption_lists_the_settings_experiments_set_for_themselves():
    """configs/paper.yaml gives the Gaussian filter 5 epochs under a 400-epoch protocol: the
    caption's global numbers are not that row's, so the caption names its own."""
    own = {"gaussian_l1": {"epochs": 5, "lr": 0.01}, "a": {}, "b": {"lr_sweep": {"fraction": 0.5}}}
    assert budget.own_settings_note(own) == "Set per experiment: gaussian_l1: epochs 5, lr 0.01; b: lr_sweep.fraction 0.5."
    assert budget.own_settings_note({"a": {}}) == budget.own_settings_note(None) == ""


@pytest.mark.parametrize("body, message", [
    ("return torch.cat([x, x], 1)", r"returns \(1, 2, 32, 32\) for a \(1, 1, 32, 32\) input"),
    ("return self.conv(x)[..., 2:-2, 2:-2]", r"returns \(1, 1, 28, 28\)"),
    ("return self.conv(x).squeeze(1)", r"returns \(1, 32, 32\)"),
    ("return self.conv(x, y)", "fails on a \\(1, 1, 32, 32\\) input in eval mode: NameError"),
    # deep supervision: a tuple in training only (the probe ran eval mode; training died at its first loss)
    ("return (self.conv(x), x) if self.training else self.conv(x)",
     r"returns tuple for a \(2, 1, 32, 32\) input in a training step"),
    ("return x * 1.0", "returns, in a training step, an output that does not depend on its trainable parameters"),
    # fine on the 32-pixel patches, not on the 64-pixel slices validation and denoising run on
    ("return self.conv(x)[..., :32, :32]", r"returns \(1, 1, 32, 32\) for a \(1, 1, 64, 64\) input in eval mode"),
])
def test_a_baseline_that_breaks_the_model_contract_stops_the_plan(body, message):
    """A model returning another shape ran end to end (training broadcast the target, inference
    kept channel 0) or failed inside a job naming nothing: the planner's probe names it."""
    from torch import nn

    import models

    name = f"broken{abs(hash(body)) % 10**6}"
    ns = {"nn": nn, "torch": torch, "__name__": f"models.{name}"}  # as if in models/{name}.py
    exec("class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
         "        self.conv = nn.Conv2d(1, 1, 3, padding=1)\n    def forward(self, x):\n        " + body, ns)
    models.REGISTRY._items[name] = ns["Net"]
    try:
        cfg = validate_config({"train": {"patch_size": 32}, "synthetic": {"matrix": 64},
                               "experiments": {"b_l1": {"model": {"name": name}, "loss": {"name": "l1"}}}})
        with pytest.raises(ConfigError, match=f"config error at experiments.b_l1.model: model '{name}' "
                                              f"\\(models/{name}.py\\) {message}"):
            ExperimentSpec.from_config(cfg, "b_l1")
    finally:
        del models.REGISTRY._items[name]


def test_a_baseline_that_reads_a_value_from_a_tensor_is_planned_and_counted():
    """A forward that calls .item() or float(t) cannot run on the meta device, which holds no
    values: the probe and the MAC count run it on the CPU instead of refusing a valid model."""
    from torch import nn

    import models
    from ldct.complexity import count_macs

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            s = max(float(x.abs().max()), 1e-6)
            return x + self.conv(x / s) * s

    models.REGISTRY._items["scaled_probe"] = Scaled
    try:
        cfg = validate_config({"train": {"patch_size": 32},
                               "experiments": {"s": {"model": {"name": "scaled_probe"}, "loss": {"name": "l1"}}}})
        spec = ExperimentSpec.from_config(cfg, "s")
        assert spec.budget["macs_per_step"] > 0
        assert count_macs(Scaled(), 32) == 9 * 32 * 32  # one 3x3 convolution per pixel
    finally:
        del models.REGISTRY._items["scaled_probe"]


def test_a_baseline_taking_any_keyword_is_warned_about(caplog):
    """A constructor with **kwargs swallows a misspelled config key: said, not silent."""
    from torch import nn

    import models

    class Loose(nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    models.REGISTRY._items["loose_probe"] = Loose
    try:
        cfg = validate_config({"train": {"patch_size": 32}, "experiments": {
            "l": {"model": {"name": "loose_probe", "chanels": 8}, "loss": {"name": "l1"}}}})
        with caplog.at_level("WARNING"):
            ExperimentSpec.from_config(cfg, "l")
        assert "experiments.l.model: loose_probe takes any keyword argument (**kwargs), so 'chanels'" in caplog.text
    finally:
        del models.REGISTRY._items["loose_probe"]


def test_a_baseline_with_batchnorm_after_a_global_pooling_is_planned():
    """A squeeze-excitation block (BatchNorm on a 1x1 map) trains at batch 2 and more; the
    training-step probe ran at batch 1, where BatchNorm refuses one value per channel."""
    from torch import nn

    import models

    class Excite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.out = nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x):
            h = self.conv(x)
            return x + self.out(h * torch.sigmoid(self.bn(nn.functional.adaptive_avg_pool2d(h, 1))))

    models.REGISTRY._items["excite_probe"] = Excite
    try:
        cfg = validate_config({"experiments": {"e_l1": {"model": {"name": "excite_probe"}, "loss": {"name": "l1"}}}})
        assert ExperimentSpec.from_config(cfg, "e_l1").budget["steps"] > 0
        # at batch 1, the batch its training would get, it is refused at the plan, not at its first step
        one = validate_config({"train": {"batch_size": 1},
                               "experiments": {"e_l1": {"model": {"name": "excite_probe"}, "loss": {"name": "l1"}}}})
        with pytest.raises(ConfigError, match="fails on a \\(1, 1, 64, 64\\) input in a training step: ValueError: "
                                              "Expected more than 1 value per channel"):
            ExperimentSpec.from_config(one, "e_l1")
    finally:
        del models.REGISTRY._items["excite_probe"]


def test_a_baseline_with_nothing_to_train_is_told_to_be_calibrated():
    from torch import nn

    import models

    class Blank(nn.Module):
        def forward(self, x):
            return x

    models.REGISTRY._items["blank_probe"] = Blank
    try:
        cfg = validate_config({"experiments": {"b": {"model": {"name": "blank_probe"}, "loss": {"name": "l1"}}}})
        with pytest.raises(ConfigError, match=r"'blank_probe' \(tests/test_budget.py\) has no trainable parameters.*"
                                              "calibrated = True"):
            ExperimentSpec.from_config(cfg, "b")
    finally:
        del models.REGISTRY._items["blank_probe"]


def test_sweep_min_steps_lengthens_a_short_sweep_up_to_the_run():
    """Each swept rate trains `fraction` of the run's rounds, raised to whole rounds that cover
    `min_steps` (a large model's share under equal compute is a few steps), never past the run."""
    from ldct.train import sweep_epochs

    def train(epochs, iters, fraction, min_steps=0):
        return {"epochs": epochs, "iters_per_epoch": iters, "lr_sweep": {"fraction": fraction, "min_steps": min_steps}}

    assert sweep_epochs(train(8, 5, 0.15)) == 1  # RED-CNN in the default run: 5 steps per rate
    assert sweep_epochs(train(8, 5, 0.15, min_steps=20)) == 4  # 20 steps
    assert sweep_epochs(train(8, 5, 0.15, min_steps=21)) == 5  # whole rounds: 25 steps
    assert sweep_epochs(train(8, 5, 0.15, min_steps=1000)) == 8  # at most the run
    assert sweep_epochs(train(8, 56, 0.15, min_steps=20)) == 1  # the share already covers it
    assert sweep_epochs({"epochs": 10, "iters_per_epoch": 4, "lr_sweep": {"fraction": 0.5}}) == 5  # older specs


def test_sweep_min_steps_of_0_leaves_the_spec_as_it_was():
    """min_steps 0 changes no sweep, so it stays out of the spec (the rerun and resume key):
    trainings made before the key existed are neither rerun nor restarted."""
    auto = {"train": {"lr": "auto", "budget": {"protocol": "equal_steps", "steps": 40, "evaluations": 4}},
            "experiments": {"e": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}}}}
    spec = ExperimentSpec.from_config(validate_config(auto), "e")
    assert "min_steps" not in spec.train["lr_sweep"] and "fraction" in spec.train["lr_sweep"]
    auto["train"]["lr_sweep"] = {"min_steps": 20}
    assert ExperimentSpec.from_config(validate_config(auto), "e").train["lr_sweep"]["min_steps"] == 20


def test_a_value_outside_every_choice_names_the_choices():
    with pytest.raises(ConfigError, match=r"train.iters_per_epoch: 'pas' is none of: an integer >= 1, 'pass'"):
        validate_config({"train": {"iters_per_epoch": "pas"}})


def test_sweep_min_steps_is_validated():
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    cfg["train"]["lr_sweep"]["min_steps"] = -1
    with pytest.raises(ConfigError, match="lr_sweep.*min_steps"):
        validate_config(cfg)


def test_late_gain_leaves_out_non_finite_validations_wherever_they_fall():
    """max() with a NaN gave NaN when the NaN came first and skipped it otherwise."""
    steps = [10, 20, 30, 40, 50, 60, 70, 80]
    clean = [27, 28, 29, 30, 31, 32, 33, 34]
    for i in (0, 1, 7):
        scores = list(clean)
        scores[i] = float("nan")
        expected = max(s for s in scores if s == s) - max(s for t, s in zip(steps, scores) if t <= 60 and s == s)
        assert budget.late_gain(steps, scores) == pytest.approx(expected), i


def test_the_caption_states_the_convergence_rule_when_no_row_is_marked():
    from ldct.tables import row_flags

    training = pd.DataFrame({"experiment": ["a"], "not_converged": [False], "no_gain_over_input": [False],
                             "min_gain_db": [0.1]})
    flags, note = row_flags(training)
    assert flags == {} and "best validation PSNR [-40,120] rose by at most 0.25 dB over the last quarter" in note
    assert "(0.1 dB per tenth)" in note and budget.late_tolerance(0.1) == pytest.approx(0.25)
    flags, note = row_flags(training.assign(not_converged=True))
    assert flags == {"a": " ‡"} and "still rose by more than 0.25 dB over the last quarter of training, 0.1 dB per tenth" in note


def test_a_row_carrying_either_mark_in_either_seed_is_left_out_of_the_unmarked_tau():
    """Either mark (not converged, no gain over its input), in either seed, drops the row from the ranked tau."""
    from ldct.stability import summarize

    rows = []
    for seed, values in ((1, [30, 29, 28, 27, 26, 25.0]), (2, [30.2, 28.9, 29.1, 27.5, 25.0, 26.5])):
        rows += [{"seed": seed, "experiment": e, "psnr_brain": v, "not_converged": e == "d" and seed == 1,
                  "no_gain_over_input": e == "e"} for e, v in zip("abcdef", values)]
    _, ranks, taus = summarize(pd.DataFrame(rows))
    unmarked = taus[taus["rows"] == "unmarked"].iloc[0]
    assert unmarked["n_rows"] == 4 and unmarked["swapped_pairs"] == "b/c"  # d (seed 1 only) and e are out
    assert taus[taus["rows"] == "all"].iloc[0]["n_rows"] == 6
    marked = ranks.set_index(["seed", "experiment"])["marked"]
    assert marked[(1, "d")] and not marked[(2, "d")] and marked[(1, "e")] and not marked[(1, "f")]  # per seed


def test_each_seeds_ranks_give_the_best_experiment_rank_1():
    """ranks.csv ranks the highest metric 1 (better is higher for PSNR and SSIM)."""
    from ldct.stability import summarize

    rows = [{"seed": s, "experiment": e, "psnr_brain": v, "ssim_brain": v / 100}
            for s in (1, 2) for e, v in zip("abc", [27.0, 31.0, 29.0])]
    ranks = summarize(pd.DataFrame(rows))[1].set_index(["seed", "experiment"])
    assert ranks.loc[1, "rank_psnr_brain"].to_dict() == {"a": 3, "b": 1, "c": 2}
    assert ranks.loc[2, "rank_ssim_brain"].to_dict() == {"a": 3, "b": 1, "c": 2}


def test_tau_summary_is_na_when_any_seed_pair_shares_too_few_rows():
    """One pair sharing fewer than MIN_TAU_ROWS rows makes the metric's mean tau n/a, not a mean."""
    from ldct.stability import tau_summary

    taus = pd.DataFrame({"metric": "psnr_brain", "rows": "all", "n_rows": [3, 5, 5], "tau": [1.0, 0.2, 0.6]})
    assert tau_summary(taus, "all") == "psnr_brain n/a (3-5 rows shared: too few)"
    assert tau_summary(taus.assign(n_rows=[4, 5, 5]), "all") == "psnr_brain 0.60 (4-5 rows)"


def test_a_seed_pair_sharing_no_ranked_rows_makes_the_tau_na_and_a_nan_value_names_its_n(tmp_path):
    """Every model marked in one seed: its pairs share one unmarked row (LDCT). They were left out
    of tau.csv, and the caption gave the other pair's tau as the mean over seed pairs. A metric
    NaN in one seed is averaged over the others, and its cell says so."""
    from ldct.stability import report, tau_summary

    exps = ["LDCT", "a", "b", "c", "d"]
    values = {42: [27, 30, 29, 28, 26.0], 43: [27, 28.5, 29, 28, 26.0], 44: [27, 30, 29, float("nan"), 26.0]}
    for seed, v in values.items():
        (tmp_path / f"s{seed}" / "tables").mkdir(parents=True)
        pd.DataFrame({"experiment": exps, "psnr_brain": v, "seed": seed, "no_gain_over_input": False,
                      "not_converged": [seed == 44 and e != "LDCT" for e in exps]}).to_csv(
            tmp_path / f"s{seed}" / "tables" / "table2_quantitative.csv", index=False)
    report({s: tmp_path / f"s{s}" for s in values}, tmp_path / "out")
    md = (tmp_path / "out" / "stability.md").read_text()
    assert "which the tables rank: psnr_brain n/a (1-5 rows shared: too few)" in md
    assert tau_summary(pd.DataFrame({"metric": "psnr_brain", "rows": "all", "n_rows": [1], "tau": [float("nan")]}),
                       "all") == "psnr_brain n/a (1 row shared: too few)"  # not "1 rows"
    taus = pd.read_csv(tmp_path / "out" / "tau.csv")
    unmarked = taus[taus["rows"] == "unmarked"].set_index(["seed_a", "seed_b"])
    assert unmarked.loc[(42, 44), "n_rows"] == 1 and np.isnan(unmarked.loc[(42, 44), "tau"])
    assert "| c (‡/§ in 1 of 3) | 28.00 ± 0.00 (n = 2) |" in md and "averaged over the others, which its cell names" in md
    # the rows the tables do not rank are named as such (the caption spoke of marks no row showed)
    assert "| a (‡/§ in 1 of 3) | 29.50 ± 0.87 |" in md and "| LDCT | 27.00 ± 0.00 |" in md
    assert "(‡/§ in k of n): the row carries a convergence mark in k of its n seeds' Table 2" in md
    # a seed whose rows all tie has no ranking: n/a, not the other pairs' mean
    ties = pd.DataFrame({"metric": "psnr_brain", "rows": "all", "n_rows": 5, "tau": [0.6, float("nan")]})
    assert tau_summary(ties, "all") == "psnr_brain n/a (5 rows: a seed's values all tie)"


def test_whole_rounds_never_runs_more_rounds_than_steps():
    """Fewer steps than evaluations: one step per round, as many rounds as steps (not one per evaluation)."""
    assert budget._whole_rounds(3, 10) == (3, 1)
    assert budget._whole_rounds(1, 5) == (1, 1)
    assert budget._whole_rounds(1000, 5) == (5, 200)


def test_the_sweep_steps_reported_are_the_longest_trials_not_a_diverged_rates():
    """lr_sweep_steps is the steps each rate trained: a rate stopped early on divergence does not shorten it."""
    h = history([27.5, 28.0, 28.1, 28.1, 28.1, 28.1, 28.1, 28.1, 28.1, 28.12])
    sweep = pd.DataFrame({"lr": [1e-4, 1e-3, 1e-2], "steps": [40, 40, 7], "chosen": [False, True, False],
                          "source": ["sweep", "sweep", "sweep: diverged"]})
    s = budget.training_summary({"x": h}, {"x": sweep}, 0.1)
    assert s["lr_sweep_steps"].tolist() == [40] and s["lr_at_edge"].tolist() == [""]
