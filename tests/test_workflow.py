"""The Snakemake workflow: every shipped config dry-runs, lint is clean, and the tiny config
runs end to end (in a temporary working directory)."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# the stand-in tree fixture `standin_tcia` lives in conftest.py with this helper
from tests.conftest import weights_line

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "tests" / "configs").glob("*.yaml"))]


def run(args, cwd, timeout=900):
    res = subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return res


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run(config, tmp_path):
    res = run(["-n", "--configfile", str(config), "--cores", "2"], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "rule all" in res.stdout or "localrule all" in res.stdout


def test_default_dry_run_from_repository_root():
    """The README's `snakemake --cores all` picks up config.yaml and profiles/default."""
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "all", "--directory", str(ROOT)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "train" in res.stdout and "synthesize" in res.stdout
    assert "Using workflow specific profile profiles/default" in res.stdout + res.stderr


def test_table1_counts_the_segmenter_the_run_uses(tmp_path):
    """Table 1 built SGDNet with its constructor's U-Net (width 64, channel norm: 251 GMACs at
    512x512) while the run trains it with config.yaml's segmenter (width 12, instance norm: 41)."""
    import json
    import shlex

    import yaml

    res = run(["-n", "-p", "--forceall", "--cores", "2", "--until", "complexity"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if "ldct complexity" in x)
    specs = json.loads(shlex.split(line)[shlex.split(line).index("--models") + 1])
    seg = yaml.safe_load((ROOT / "config.yaml").read_text())["segmenter"]
    assert specs["sgdnet"] == {"name": "sgdnet", "seg_width": seg["base_width"], "seg_norm": seg["norm"]}
    assert "seg_width" not in specs["edcnn"]


def test_default_config_is_found_from_another_directory(tmp_path):
    """`snakemake -s /path/to/Snakefile` elsewhere reads the config.yaml next to the Snakefile
    (results go to the working directory)."""
    res = run(["-n", "--cores", "2"], tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "synthesize" in res.stdout and "pretrain_segmenter" in res.stdout


def test_lint_is_clean(tmp_path):
    res = run(["--lint", "--configfile", str(ROOT / "tests/configs/tiny.yaml")], tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in text, text[-3000:]


def test_invalid_config_stops_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    res = run(["-n", "--configfile", str(bad)], tmp_path)
    assert res.returncode != 0
    assert f"{bad}: config error at train.lr" in res.stdout + res.stderr  # the file named
    over = run(["-n", "--configfile", str(bad), "--config", "seed=2"], tmp_path)
    assert f"{bad} + --config: config error at train.lr" in over.stdout + over.stderr


def test_a_missing_dicom_root_stops_the_plan_in_one_line(tmp_path):
    """A data error while planning (the DICOM root not found) printed frames of ldct/dicom.py."""
    res = run(["-n", "--config", "dataset={source: dicom, name: mayo, dicom_root: /nope/LDCT}"], tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and "/nope/LDCT: DICOM root folder not found" in text
    assert "dicom.py" not in text and "Traceback" not in text, text[-2000:]


def test_command_line_config_overrides_are_typed(tmp_path):
    """`snakemake --config` with numbers, booleans, lists and null, at every depth, reaches the
    jobs with the schema's types (Snakemake passes nested values as strings)."""
    res = run(["-n", "-p", "--configfile", str(ROOT / "config.yaml"), "--cores", "2", "--config", "seed=7",
               "train={budget: {protocol: fixed}, epochs: 2, lr: 1e-3, augment: false, crop_prob: 0.5, crop_scale: [0.4, 1.0], val_max_slices: null, device: cpu}",
               "segmenter={device: 'cuda:1'}", "synthetic={n_subjects: 6, dose_fractions: [0.25, 0.1]}",
               # both runs of the anatomical pair alike: the pair's check refuses one changed alone
               "experiments={featkpn_l1: {model: {nf: 8}, train: {epochs: 1}}, "
               "featkpn_ana: {model: {nf: 8}, train: {epochs: 1}}}"], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    edcnn = next(x for x in lines if "ldct train" in x and '"name": "edcnn_l1"' in x)
    for part in ('"epochs": 2', '"lr": 0.001', '"augment": false', '"crop_scale": [0.4, 1.0]',
                 '"val_max_slices": null', '"seed": 7'):
        assert part in edcnn, part
    featkpn = next(x for x in lines if "ldct train" in x and '"name": "featkpn_l1"' in x)
    assert '"nf": 8' in featkpn and '"epochs": 1' in featkpn
    synth = [x for x in lines if "ldct synthesize" in x]
    assert len(synth) == 6 and all("--dose-fractions 0.25 0.1" in x and "--seed 7" in x for x in synth)
    # the configured devices reach every job that runs a model, not only training; the NDCT labels
    # are made where evaluate segments the outputs (auto), not on segmenter.device: one device per Dice
    for command, device in (("ldct denoise", "cpu"), ("ldct clinical-measure", "cpu"), ("ldct segment-ndct", "auto")):
        jobs = [x for x in lines if command in x and ("--model" in x or command == "ldct segment-ndct")]
        assert jobs and all(f"--device {device}" in x for x in jobs), (command, jobs[:1])


def test_tiny_workflow_end_to_end(tmp_path):
    res = run(["--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--cores", "2"], tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = tmp_path / "results" / "tiny"
    t2 = pd.read_csv(out / "tables" / "table2_quantitative.csv")
    assert list(t2["experiment"]) == ["LDCT", "featkpn_ana", "edcnn_l1"]
    assert t2[["psnr_full", "ssim_full", "vif_full", "psnr_brain", "ssim_brain", "vif_brain"]].notna().all().all()
    assert t2.loc[0, "psnr_full"] > 40  # LDCT against NDCT in the full window
    t1 = pd.read_csv(out / "tables" / "table1_complexity.csv")
    assert set(t1["model"]) == {"featkpn", "edcnn"} and (t1["params"] > 0).all()
    assert "\\toprule" in (out / "tables" / "table2_quantitative.tex").read_text()
    t2_md = (out / "tables" / "table2_quantitative.md").read_text()
    assert "**" in t2_md and "SSIM as the paper computes it" in t2_md
    assert "Departures from the reference implementation (project options): segmenter base_width=" in t2_md
    assert "Training budget: equal steps, 4 per experiment" in t2_md and "1 test subject there is no test" in t2_md
    assert "Set per experiment: edcnn_l1: lr 0.001." in t2_md
    training = pd.read_csv(out / "tables" / "training.csv")
    assert list(training["experiment"]) == ["featkpn_ana", "edcnn_l1"] and (training["steps"] == 4).all()
    assert training["trained_with"].str.startswith("0.1.0").all() and training["trained_on"].str.len().gt(0).all()
    assert "Models trained with ldct 0.1.0" in t2_md  # the models' own commit, apart from the table's
    assert set(t2.columns) >= {"steps", "tera_macs", "lr", "not_converged", "no_gain_over_input", "seed"}
    assert "ssim_skimage_brain" in pd.read_csv(out / "eval" / "LDCT" / "metrics.csv", nrows=1)
    for fig in ("fig_qualitative", "fig_segmentation", "fig_noise_radius", "fig_training_curves", "fig_learning_curves",
                "fig_metric_distributions", "fig_phantom"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
    for exp in ("featkpn_ana", "edcnn_l1"):
        hist = pd.read_csv(out / "train" / exp / "history.csv")
        assert list(hist["epoch"]) == [1, 2]
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 4 and (manifest["dose_ratio"] == 0.25).all()
    # every rule wrote its log
    train_log = (out / "logs" / "train" / "edcnn_l1.log").read_text()
    assert "threads: 2)" in train_log  # Snakemake's {threads}, capped at --cores 2
    assert "epoch 2/2: 100%" in train_log  # tqdm progress of each epoch
    truth = pd.read_csv(out / "tables" / "table2_vs_truth.csv")
    # LDCT is NDCT plus inserted noise (variance 3 sigma_f^2 at 25 % dose), while LDCT minus the
    # noiseless recon carries all of its noise (4 sigma_f^2): LDCT is closer to NDCT than to truth
    assert truth.loc[0, "psnr_brain"] < t2.loc[0, "psnr_brain"]
    # clinical image quality: every row, the references last, and its three figures
    t5 = pd.read_csv(out / "tables" / "table5_clinical.csv")
    assert list(t5["experiment"]) == ["LDCT", "featkpn_ana", "edcnn_l1", "NDCT", "noiseless"]
    assert t5.loc[3, "noise_sd"] < t5.loc[0, "noise_sd"] and t5.loc[4, "noise_sd"] == 0
    refs = t5.set_index("experiment").loc[["LDCT", "NDCT", "noiseless"], ["f50_40", "f50_120", "f50_340"]]
    assert np.isinf(t5.loc[4, "dprime_0"]) and refs.gt(0).all().all()  # (4-step models may have no f50)
    assert "background-known-exactly" in (out / "tables" / "table5_clinical.md").read_text()
    measured = json.loads((out / "clinical" / "edcnn_l1.json").read_text())  # records its versions, as every result
    assert measured["made_with"]["ldct"].startswith("0.1.0") and "torch" in measured["made_with"]
    for fig in ("fig_nps", "fig_ttf", "fig_detectability"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
    off = run(["-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--config", "clinical={enabled: false}",
               "--cores", "2", "--forceall"], tmp_path)
    assert off.returncode == 0 and "clinical_scans" not in off.stdout and "clinical_measure" not in off.stdout
    # where the run's minutes went, per rule, from its Snakemake log
    from benchmarks.run_times import parse
    per_rule, wall = parse(sorted((tmp_path / ".snakemake" / "log").glob("*.snakemake.log"))[0].read_text().splitlines())
    assert len(per_rule["train"]) == 2 and len(per_rule["synthesize"]) == 4 and len(per_rule["evaluate"]) == 3
    assert 0 < sum(per_rule["train"]) <= 2 * wall
    # nothing left to do on a second run, and the paper target only redraws from what exists
    for target in ([], ["paper"]):
        again = run(["-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--cores", "2", *target], tmp_path)
        assert "Nothing to be done" in again.stdout + again.stderr
    # the anatomical-loss check continues a trained model with each loss on the same batches:
    # weight 0 is L1 under another name, so its rows must repeat the control's
    csv = tmp_path / "finetune.csv"
    fine = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "anatomical_finetune.py"), "--root", str(out),
                           "--start", "featkpn_ana", "--variants", "l1", "l1_l1ana_1:0.0", "l1_l1ana_1:1.0",
                           "--steps", "2", "--every", "1", "--csv", str(csv)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert fine.returncode == 0, fine.stderr[-3000:]
    rows = pd.read_csv(csv)
    assert list(rows["variant"][:2]) == ["LDCT input", "noiseless reconstruction"]
    runs = {v: r.reset_index(drop=True) for v, r in rows[2:].groupby("variant", sort=False)}
    assert list(runs) == ["l1", "l1_l1ana_1:0.0", "l1_l1ana_1:1.0"]
    scores = ["dice_vs_ndct", "anatomical_distance", "psnr_brain"]
    for r in runs.values():
        assert list(r["step"]) == [0, 1, 2] and r[scores].notna().all().all()
        assert r["dice_vs_ndct"].between(0, 1).all() and (r["anatomical_distance"] > 0).all()
        assert r.loc[0, scores].tolist() == runs["l1"].loc[0, scores].tolist()  # one starting model
    pd.testing.assert_frame_equal(runs["l1"][scores], runs["l1_l1ana_1:0.0"][scores], rtol=1e-5)
    assert not np.allclose(runs["l1"]["psnr_brain"][1:], runs["l1_l1ana_1:1.0"]["psnr_brain"][1:], rtol=1e-6)
    assert "anatomical gradient 0.00x the L1 gradient" in fine.stdout and "change after 2 steps" in fine.stdout
    # the HTML report bundles every table and figure
    rep = run(["--report", "report.html", "--configfile", str(ROOT / "tests/configs/tiny.yaml")], tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="ignore")
    for name in ("fig_qualitative.png", "fig_segmentation.png", "table2_quantitative.md", "fig_detectability.png",
                 "table5_clinical.md"):
        assert name in html
    # each table its own caption, and the tests behind their marks shown (every output's name is
    # in the report's file lists either way: the captions are what tells)
    assert "The tests behind a table's marks" in html and "Statistical tests" in html
    assert "Table 2 scored against the noiseless reconstruction" in html and "Tables as Markdown" not in html
    # a table's threshold retrains nothing (the training spec leaves out what training never reads) ...
    thr = run(["-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--cores", "2",
               "--config", "train={budget: {min_gain_db: 0.5}}"], tmp_path)
    assert thr.returncode == 0 and "tables" in planned(thr) and "train" not in planned(thr), thr.stdout[-3000:]
    obs = run(["-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--cores", "2",
               "--config", "clinical={observer: {bootstrap: 300}}"], tmp_path)  # remeasures, does not rescan
    assert "clinical_measure" in planned(obs) and "clinical_scans" not in planned(obs), obs.stdout[-3000:]
    # ... and a deleted noiseless reconstruction, which evaluation and the figures read, is made again
    # before they rerun (it was undeclared: evaluation dropped its truth columns without a word)
    (out / "nifti" / "S004" / "truth.nii.gz").unlink()
    gone = run(["-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--cores", "2", "--forcerun", "figures"],
               tmp_path)
    assert {"convert", "evaluate", "figures"} <= planned(gone), gone.stdout[-3000:]


def planned(res) -> set[str]:
    """The rules a dry run plans (its job-stats table)."""
    text = res.stdout + res.stderr
    if "Job stats:" not in text:
        return set()
    rows = text.split("Job stats:", 1)[1].strip().splitlines()[2:]
    return {line.split()[0] for line in itertools.takewhile(str.strip, rows)} - {"total"}


def test_dry_run_on_a_tcia_layout_tree(standin_tcia, tmp_path):
    cfg = tmp_path / "real.yaml"
    cfg.write_text(f"dataset: {{name: standin, source: dicom, dicom_root: '{standin_tcia}'}}\n"
                   "split: {method: random, fractions: {train: 0.5, val: 0.25, test: 0.25}}\n" + weights_line(standin_tcia))
    res = run(["-n", "--configfile", str(cfg), "--cores", "2"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "--subject-dir" in out and "N030" in out and "synthesize" not in out
    assert "--unpaired-slices" not in out  # the default (error) adds nothing: existing runs' commands stay the same
    drop = run(["-n", "--configfile", str(cfg), "--cores", "2", "--config", "dataset={unpaired_slices: drop}"], tmp_path)
    assert drop.returncode == 0 and (drop.stdout + drop.stderr).count("--unpaired-slices drop") >= 1, drop.stderr[-3000:]


def test_replaced_dicom_data_is_converted_again(standin_tcia, tmp_path):
    """A conversion's inputs are the files it reads, not only the subject folder (whose time
    does not change when a series two levels down is replaced); a notes file beside the
    slices is skipped, not an error."""
    import os
    import shutil

    import pydicom

    tree = tmp_path / "tree"
    shutil.copytree(standin_tcia, tree)
    low = next(p for p in (tree / "N005").rglob("*Low Dose*") if p.is_dir())
    (low / "README.txt").write_text("downloaded with the NBIA data retriever\n")
    cfg = tmp_path / "real.yaml"
    cfg.write_text(f"dataset: {{name: standin, source: dicom, dicom_root: '{tree}'}}\n"
                   "split: {method: random, fractions: {train: 0.5, val: 0.25, test: 0.25}}\n" + weights_line(standin_tcia))
    target = "results/standin/nifti/N005/low.nii.gz"
    res = run(["--configfile", str(cfg), "--cores", "2", target], tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    log = (tmp_path / "results/standin/logs/convert/N005.log").read_text()
    assert "skipped files that are not DICOM slices: README.txt" in log
    res = run(["-n", "--configfile", str(cfg), "--cores", "2", target], tmp_path)
    assert "Nothing to be done" in res.stdout + res.stderr
    # a hidden file dropped into the case folder (skipped by the conversion) converts nothing again:
    # the folder's newer time reconverted the case and retrained everything after it
    (tree / "N005" / ".DS_Store").write_bytes(b"\0")
    later = os.stat(tmp_path / target).st_mtime + 5
    os.utime(tree / "N005", (later, later))
    res = run(["-n", "--configfile", str(cfg), "--cores", "2", target], tmp_path)
    assert "Nothing to be done" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
    first = sorted(low.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)  # a slice replaced (other pixels), two levels below the subject folder
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(first)
    later = os.stat(tmp_path / target).st_mtime + 5
    os.utime(first, (later, later))
    res = run(["-n", "--configfile", str(cfg), "--cores", "2", target], tmp_path)
    assert "convert" in planned(res), (res.stdout + res.stderr)[-3000:]


def test_dry_run_on_a_generic_layout(standin_tcia, tmp_path):
    full = next(p for p in (standin_tcia / "N005").rglob("*Full Dose*") if p.is_dir())
    low = next(p for p in (standin_tcia / "N005").rglob("*Low Dose*") if p.is_dir())
    rel = lambda p: str(p.relative_to(standin_tcia))  # noqa: E731
    series = ", ".join(f"{s}: {{full: '{rel(full)}', low: '{rel(low)}'}}" for s in ("A", "B", "C"))
    cfg = tmp_path / "generic.yaml"
    cfg.write_text(f"dataset: {{name: gen, source: dicom, layout: generic, dicom_root: '{standin_tcia}', "
                   f"series: {{{series}}}}}\n" + weights_line(standin_tcia))
    res = run(["-n", "--configfile", str(cfg), "--cores", "2"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "--full" in out and "--subject C" in out


def test_missing_dicom_root_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"dataset: {{source: dicom, dicom_root: '{tmp_path / 'nowhere'}'}}\n"
                   "segmenter: {weights: ldct/presets/segmenter_synthetic.pt, base_width: 12, norm: instance}\n")
    res = run(["-n", "--configfile", str(cfg)], tmp_path)
    assert res.returncode != 0 and "DICOM root folder not found" in res.stdout + res.stderr


def test_segmenter_weights_that_do_not_fit_stop_the_plan(tmp_path):
    """The weights file is loaded when Snakemake plans: a width that does not fit was found by
    the pretrain_segmenter job, after conversion and the trainings without the U-Net had run."""
    import models
    import torch

    torch.save(models.build("unet", base_width=12).state_dict(), tmp_path / "model.pth")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"segmenter: {{weights: '{tmp_path / 'model.pth'}', base_width: 4, norm: channel}}\n")
    res = run(["-n", "--configfile", str(cfg)], tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and (f"config error at segmenter.weights: {tmp_path / 'model.pth'}: holds a U-Net of "
                                    "base_width 12") in text
    assert "Job stats" not in text  # nothing planned


def test_missing_segmenter_weights_name_the_key(tmp_path):
    """A weights path that does not exist was Snakemake's MissingInputException of
    pretrain_segmenter, which never names the key to set."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"segmenter: {{weights: '{tmp_path / 'model.pth'}'}}\n")
    res = run(["-n", "--configfile", str(cfg)], tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and f"config error at segmenter.weights: {tmp_path / 'model.pth'}: file not found" in text
    assert "MissingInputException" not in text
