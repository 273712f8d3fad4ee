"""The configs in configs/: the paper-scale protocol dry-runs on a stand-in of the real data
(the 50 Feat-KPN cases in the TCIA layout), the dose sweep dry-runs, and the dose sweep runs
end to end at toy scale (models trained at quarter dose, scored at 10, 25 and 50 % dose)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import make_tcia_tree
from tests.golden import load as load_golden
from tests.golden import max_rel_diff, random_weights

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
PAPER = ROOT / "configs" / "paper.yaml"
DOSE_SWEEP = ROOT / "configs" / "dose_sweep.yaml"
FAMILIES = ROOT / "configs" / "families.yaml"
PAPER_CNNS = {"featkpn", "redcnn", "edcnn", "sgdnet", "dncnn", "kpn"}


def run(args, cwd, timeout=600):
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    counts, on = {}, False
    for line in text.splitlines():
        if line.startswith("job "):
            on = True
        elif on and line.strip() and not line.startswith("-"):
            name, *n = line.split()
            if name == "total" or not n:
                break
            counts[name] = int(n[0])
    return counts


@pytest.mark.parametrize("path", [PAPER, DOSE_SWEEP, FAMILIES], ids=lambda p: p.name)
def test_configs_validate(path):
    from ldct.config import load_config

    cfg = load_config(path)
    written = yaml.safe_load(path.read_text())["experiments"]
    assert list(cfg["experiments"]) == list(written)  # its own rows (not the schema's default row)


def test_paper_config_is_the_protocol():
    import models
    from ldct.config import load_config
    from ldct.spec import ExperimentSpec

    cfg = load_config(PAPER)
    assert cfg["dataset"]["source"] == "dicom" and cfg["dataset"]["layout"] == "tcia"
    assert cfg["split"] == {**cfg["split"], "method": "preset", "preset": "featkpn", "val_as_test": True}
    assert cfg["segmenter"]["base_width"] == 64 and cfg["segmenter"]["weights"]
    t = cfg["train"]
    assert (t["epochs"], t["batch_size"], t["patch_size"], t["lr"], t["lr_decay"], t["amp"]) == (400, 1, None, 1e-4, 0.99, True)
    assert t["iters_per_epoch"] == "pass"  # an epoch is one pass over the training slices, as the reference's
    exps = {n: ExperimentSpec.from_config(cfg, n) for n in cfg["experiments"]}
    denoisers = set(models.denoisers()) - {"unet"}
    missing = denoisers - {e.model["name"] for e in exps.values()}
    assert not missing, f"{missing}: a registered model without a row in configs/paper.yaml (README, Add a baseline, step 3)"
    assert {e.model["name"] for e in exps.values()} == denoisers
    for name in PAPER_CNNS:  # the paper's comparison: each CNN with L1 and with the anatomical loss
        assert {e.loss["name"] for e in exps.values() if e.model["name"] == name} >= {"l1", "l1_l1ana_1"}
    assert any(e.loss["name"] == "dugan" for e in exps.values())  # the adversarial family
    assert exps["featkpn_ana"].model == {"name": "featkpn", "nf": 16, "nk": 16, "kernel_size": 5}
    assert exps["featkpn_ana"].loss == {"name": "l1_l1ana_1", "ana_weight": 0.01}


def test_families_config_has_a_row_of_every_family():
    """configs/families.yaml: classical, CNN, transformer, adversarial, diffusion and
    self-supervised rows on the CPU, with the default run's data and budget."""
    from ldct.config import load_config

    cfg, default = load_config(FAMILIES), load_config(ROOT / "config.yaml")
    exps = cfg["experiments"].values()
    assert {"bm3d", "featkpn", "restormer", "corediff"} <= {e["model"]["name"] for e in exps}
    assert any(e["loss"]["name"] == "dugan" for e in exps)
    assert any(e.get("train", {}).get("target") == "repeat" for e in exps)
    assert cfg["synthetic"] == default["synthetic"] and cfg["train"]["budget"] == default["train"]["budget"]


@pytest.fixture(scope="module")
def featkpn_tree(tmp_path_factory, synthetic_subject):
    """The 50 cases of the Feat-KPN split as a stand-in TCIA tree (copies of one small series
    pair), with a U-Net weights file saved under the reference's parameter names (the
    well-conditioned golden weights, tests/golden.py)."""
    base = tmp_path_factory.mktemp("mayo")
    split = json.loads((ROOT / "ldct" / "presets" / "split_featkpn_seed.json").read_text())
    root = make_tcia_tree(base / "LDCT-and-Projection-data", split["train"] + split["val"], synthetic_subject["dicom"])
    torch.save(random_weights(load_golden("unet")), base / "model.pth")
    return root


@pytest.mark.slow
def test_paper_config_dry_runs_on_the_tcia_layout(featkpn_tree, tmp_path):
    """The README's command: paths given with --config on top of configs/paper.yaml; a case
    the preset split does not name (the collection has more head cases) is not converted."""
    import shutil

    extra = featkpn_tree / "N999"
    shutil.copytree(featkpn_tree / "N005", extra)
    try:
        res = run(["-n", "-p", "--configfile", str(PAPER), "--cores", "2", "--config",
                   f"dataset={{dicom_root: {featkpn_tree}}}", f"segmenter={{weights: {featkpn_tree.parent / 'model.pth'}}}"],
                  tmp_path)
    finally:
        shutil.rmtree(extra)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "N999" not in res.stdout
    counts = job_counts(res.stdout)
    n_exp = len(yaml.safe_load(PAPER.read_text())["experiments"])
    assert counts["convert"] == 50 and counts["train"] == n_exp and counts["evaluate"] == n_exp + 1
    assert "synthesize" not in counts and "dose_sweep" not in counts
    assert "results/mayo_head/train/featkpn_ana/model.pt" in out and "N300" in out
    assert '"patch_size": null' in out and '"epochs": 400' in out and '"batch_size": 1' in out
    # given weights are loaded where Snakemake runs (a local rule): no GPU job queued for seconds of work
    import re

    assert re.search(r"rule pretrain_segmenter:\n(?:    .*\n)*?    resources: [^\n]*gpu=0\n", res.stdout)


@pytest.mark.slow
def test_paper_config_loads_reference_named_unet_weights_strictly(featkpn_tree):
    """configs/paper.yaml's segmenter settings load a state dict in the reference's names
    strictly, and the loaded network computes the reference's logits."""
    from ldct.anatomy import load_weights

    cfg = yaml.safe_load(PAPER.read_text())["segmenter"]
    net = load_weights(featkpn_tree.parent / "model.pth", cfg).eval()
    g = load_golden("unet_random")
    assert net.turns == 1  # orientation dcm2niix: the network sees the slice turned, answers turned back
    with torch.no_grad():
        x = torch.rot90(torch.from_numpy(g["x_hu"]), 1, (-2, -1))  # so that it sees the golden input itself
        assert max_rel_diff(torch.rot90(net(x), -1, (-2, -1)), g["logits"]) < 1e-5
    state = torch.load(featkpn_tree.parent / "model.pth", weights_only=True)
    state["conv10.extra"] = state.pop("conv10.bias")
    torch.save(state, featkpn_tree.parent / "renamed.pth")
    with pytest.raises(ValueError, match=r"renamed.pth: its parameter names are not the U-Net's.*'conv10.extra'"):
        load_weights(featkpn_tree.parent / "renamed.pth", cfg)


@pytest.mark.slow
def test_dose_sweep_config_dry_runs(tmp_path):
    res = run(["-n", "--configfile", str(DOSE_SWEEP), "--cores", "2"], tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    cfg = yaml.safe_load(DOSE_SWEEP.read_text())
    n_exp, n_extra = len(cfg["experiments"]), len(cfg["synthetic"]["dose_fractions"]) - 1
    counts = job_counts(res.stdout)
    assert counts["train"] == n_exp and counts["dose_sweep"] == 1
    assert n_extra >= 2  # one job per experiment covers every extra dose
    assert counts["denoise_doses"] == n_exp and counts["evaluate_doses"] == n_exp + 1
    assert "fig_dose_sweep.png" in res.stdout


@pytest.mark.slow
def test_dose_sweep_end_to_end(tmp_path):
    """configs/dose_sweep.yaml at toy scale: 3 subjects, 64x64, 2 experiments, a few steps."""
    cfg = yaml.safe_load(DOSE_SWEEP.read_text())
    cfg["dataset"]["name"] = "dose_tiny"
    cfg["synthetic"].update(n_subjects=3, matrix=64, fov_mm=240.0, slice_mm=10.0, z_range_mm=[0.0, 40.0], n_views=120)
    cfg["split"] = {"method": "random", "fractions": {"train": 0.34, "val": 0.33, "test": 0.33}}
    cfg["segmenter"] = {"base_width": 4, "epochs": 1, "iters_per_epoch": 2, "batch_size": 2}
    cfg["train"] = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "patch_size": 32}
    cfg["experiments"] = {"edcnn_l1": {"model": {"name": "edcnn", "channels": 8, "stages": 3}, "loss": {"name": "l1"}},
                          "gaussian_l1": {"model": {"name": "gaussian"}, "loss": {"name": "l1"}}}
    path = tmp_path / "dose_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    doses = sorted(cfg["synthetic"]["dose_fractions"])
    assert len(doses) >= 3
    # rule all asks for the dose-sweep outputs; building only those keeps the test short
    dry = run(["-n", "--configfile", str(path), "--cores", "2"], tmp_path)
    assert dry.returncode == 0 and "fig_dose_sweep.pdf" in dry.stdout, dry.stderr[-3000:]
    out = tmp_path / "results" / "dose_tiny"
    targets = [str((out / "tables" / "table4_dose_sweep.csv").relative_to(tmp_path)),
               str((out / "figures" / "fig_dose_sweep.png").relative_to(tmp_path))]
    res = run(["--configfile", str(path), "--cores", "2", *targets], tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    table = pd.read_csv(out / "tables" / "table4_dose_sweep.csv")
    rows = ["LDCT", "edcnn_l1", "gaussian_l1"]
    assert sorted(zip(table["experiment"], table["dose_fraction"])) == sorted((e, d) for e in rows for d in doses)
    assert table[["psnr_brain", "ssim_brain"]].notna().all().all()
    assert table.loc[table["training_dose"], "dose_fraction"].unique().tolist() == [cfg["synthetic"]["dose_fractions"][0]]
    ldct = table[table["experiment"] == "LDCT"].sort_values("dose_fraction")
    assert ldct["psnr_brain"].is_monotonic_increasing and ldct["psnr_brain"].nunique() == len(doses)
    # the training-dose rows are the main evaluation's numbers
    t2 = pd.read_csv(out / "eval" / "LDCT" / "metrics.csv")
    primary = ldct[ldct["training_dose"]].iloc[0]
    assert primary["psnr_brain"] == pytest.approx(t2["psnr_brain"].mean())
    assert (out / "figures" / "fig_dose_sweep.png").stat().st_size > 5000
    assert (out / "figures" / "fig_dose_sweep.pdf").exists()
    assert "**" in (out / "tables" / "table4_dose_sweep.md").read_text()
    for extra in doses:
        if extra != cfg["synthetic"]["dose_fractions"][0]:
            assert (out / "dose_sweep" / f"{extra * 100:g}pct" / "eval" / "edcnn_l1" / "metrics.csv").exists()


@pytest.mark.slow
def test_paper_epoch_benchmark_runs_the_paper_training_step(tmp_path):
    """benchmarks/paper_epoch.py (the GPU epoch timing of the paper config) runs the engine's
    training step for Feat-KPN with L1 and with the anatomical loss (width-64 U-Net); here
    on the CPU at a toy size, one timed step each."""
    out = tmp_path / "epoch.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_epoch.py"), "--config", str(PAPER),
                          "--matrix", "48", "--slices", "2", "--steps", "1", "--json", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["experiment"] for r in rows] == ["featkpn_l1", "featkpn_ana"]
    for r in rows:
        assert r["step_ms"] > 0 and r["steps_timed"] == 1 and not r["measured_epoch"]
        assert r["epoch_s"] == pytest.approx(r["step_ms"] / 1000 * 1400) and r["epochs"] == 400
    assert "featkpn_ana costs" in res.stdout


def test_featkpn_benchmark_times_equal_computations():
    """benchmarks/featkpn_speed.py compares like with like: its re-statement of the reference's
    arithmetic (whole kernel heads, unfold filtering) and the project's fused model give the
    same outputs and parameter gradients in float64."""
    from benchmarks.featkpn_speed import check_identical

    diff = check_identical()
    assert diff["output"] < 1e-12 and diff["gradient"] < 1e-12


@pytest.mark.slow
def test_featkpn_benchmark_prints_the_ratios():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "featkpn_speed.py"), "--workloads", "train64",
                          "--repeats", "1", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "train64    reference" in res.stdout and "train64    project" in res.stdout
    assert "train64    time" in res.stdout and "peak memory" in res.stdout


def test_run_times_counts_the_jobs_of_a_group_job():
    """Snakemake indents the jobs of a group job (the SLURM profile bundles evaluate): they were
    left out, and such a run read '0 jobs'."""
    from benchmarks.run_times import parse

    log = """[Mon Dec  7 10:00:00 2026]
Group job bundle (jobs in lexicogr. order):
    [Mon Dec  7 10:00:00 2026]
    rule evaluate:
        jobid: 3
    [Mon Dec  7 10:00:00 2026]
    rule evaluate:
        jobid: 4
[Mon Dec  7 10:00:30 2026]
Finished jobid: 3 (Rule: evaluate)
Finished jobid: 4 (Rule: evaluate)
[Mon Dec  7 10:00:31 2026]
localrule tables:
    jobid: 5
[Mon Dec  7 10:00:41 2026]
Finished jobid: 5 (Rule: tables)
"""
    per_rule, wall = parse(log.splitlines())
    assert dict(per_rule) == {"evaluate": [30.0, 30.0], "tables": [10.0]} and wall == 41.0


def test_the_finetune_gradient_probe_leaves_the_model_as_it_was():
    """benchmarks/anatomical_finetune.py probes the anatomical gradient on the first batch of
    each anatomical variant: its forward pass in train mode moved a BatchNorm's running
    statistics (DnCNN), so those variants no longer started from the control's weights."""
    import torch

    from benchmarks.anatomical_finetune import gradient_ratio

    class Criterion:
        w = 0.5

        @staticmethod
        def term(pred, y):
            return ((pred - y) ** 2).mean()

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    assert gradient_ratio(net, Criterion(), x, y) > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("script, args, message", [
    ("featkpn_speed.py", ["--repeats", "0"], "argument --repeats: 0 is not a positive integer"),  # a child's StatisticsError
    ("paper_epoch.py", ["--steps", "0"], "argument --steps: 0 is not a positive integer"),  # timed a whole epoch
    ("throughput.py", ["--patch", "6", "--steps", "1"], "error: featkpn l1_l1ana_1: cannot run on 6x6 patches"),
    ("run_times.py", ["."], ".: a folder; give a Snakemake log"),  # IsADirectoryError
])
def test_benchmarks_refuse_bad_arguments_in_one_line(script, args, message):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert res.returncode in (1, 2) and message in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_benchmark_asked_for_a_gpu_where_there_is_none_says_so():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "featkpn_speed.py"), "--device", "cuda"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 1 and "Traceback" not in res.stderr  # torch's AssertionError before
    assert "error: config error at --device: cuda asked for, but torch" in res.stderr


def test_benchmark_numbers_come_with_what_they_were_measured_with():
    from benchmarks import header
    from ldct.provenance import versions

    line = header()
    assert line.startswith(f"Measured with python {versions()['python']}, ldct {versions()['ldct']}")
    assert f"torch threads {torch.get_num_threads()}" in line and "CPU " in line
