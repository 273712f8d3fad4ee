"""The command line: config sections as typed options, and user mistakes as one-line errors."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from ldct.cli import build_parser, main, section_flags
from ldct.config import load_config


@pytest.mark.parametrize("section, command", [("synthetic", "synthesize"), ("split", "split"),
                                              ("segmenter", "pretrain-segmenter"), ("train", "train"),
                                              ("clinical", "clinical-measure")])
def test_section_flags_give_the_config_back(section, command):
    """What the rules pass (section_flags) parses back to the same values: negative numbers in
    lists, booleans, nulls and nested keys included."""
    from ldct.cli import _given

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml")  # from any directory
    required = {"synthesize": ["--subject", "S", "--dicom-out", "d", "--phantom-out", "p"],
                "split": ["--out", "o", "S001"], "pretrain-segmenter": ["--nifti", "n", "--splits", "s", "--out", "o",
                                                                     "--history", "h"],
                "train": ["--nifti", "n", "--splits", "s", "--out", "o", "--history", "h", "--checkpoints", "c"],
                "clinical-measure": ["--row", "LDCT", "--scans", "s", "--sites", "s", "--out", "o"]}
    a = build_parser().parse_args([command, *required[command], *shlex.split(section_flags(section, cfg[section]))])
    given = _given(a, section)
    assert given == {k: v for k, v in cfg[section].items() if k in given}
    assert len(given) >= len(cfg[section]) - 2  # (free-form maps are not options)


def test_user_mistakes_are_one_line_errors(tmp_path, capfd):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["A"], "val": ["B"], "test": ["C"]}))
    io = ["--nifti", str(tmp_path), "--splits", str(splits)]
    assert main(["denoise", "--model", str(tmp_path / "nope.pt"), *io, "--outdir", str(tmp_path / "o")]) == 1
    assert "nope.pt: model file not found" in capfd.readouterr().err
    train = ["train", *io, "--out", "m.pt", "--history", "h.csv", "--checkpoints", str(tmp_path / "ck")]
    assert main(train + ["--spec", "[1, 2]"]) == 1
    assert "not an experiment spec" in capfd.readouterr().err
    bad = {"name": "x", "model": {"name": "redcnn", "hu_range": [0, 1]}, "loss": {"name": "l1"}, "train": {}}
    assert main(train + ["--spec", json.dumps(bad)]) == 1
    assert "redcnn does not take 'hu_range'" in capfd.readouterr().err
    assert main(train + ["--spec", str(tmp_path / "spec.json")]) == 1
    assert "spec.json: file not found" in capfd.readouterr().err
    assert main(["split", "--out", str(tmp_path / "s.json"), "--method", "preset", "A", "B", "C"]) == 1
    assert "config error at split.preset: required when split.method is 'preset'" in capfd.readouterr().err
    splits.write_text(json.dumps({"train": ["A"], "val": ["B"]}))
    assert main(["evaluate", "--experiment", "LDCT", *io, "--out", str(tmp_path / "m.csv")]) == 1
    assert "no 'test' subjects" in capfd.readouterr().err
    clinical = ["clinical-measure", "--scans", str(tmp_path / "scans.npz"), "--sites", str(tmp_path / "sites.csv")]
    assert main(clinical + ["--row", "LDCT", "--out", "o.json"]) == 1
    assert "scans.npz: clinical scans not found" in capfd.readouterr().err
    assert main(clinical + ["--row", "LDCT", "NDCT", "--out", "o.json"]) == 1
    assert "--row gives 2 values and --out 1" in capfd.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a wrong type names the option
        main(["split", "--out", "x", "--fractions-val", "lots", "A"])
    assert "--fractions-val" in capfd.readouterr().err
    assert main(["convert", "--out", str(tmp_path / "c")]) == 1
    assert "give --subject-dir (TCIA layout) or --full and --low series folders" in capfd.readouterr().err
    assert main(train) == 1
    assert "give --spec JSON, or --config FILE with --experiment NAME" in capfd.readouterr().err
    assert main(clinical + ["--row", "a", "b", "--out", "a.json", "b.json", "--model", "m.pt"]) == 1
    assert "--model goes with a single --row" in capfd.readouterr().err
    (tmp_path / "scans.npz").write_bytes(b"")
    assert main(clinical + ["--row", "LDCT", "--out", "o.json"]) == 1
    assert "scans.npz: cannot read clinical scans (EOFError" in capfd.readouterr().err
    np.savez(tmp_path / "scans.npz", truth=np.zeros((1, 4, 4)))
    assert main(clinical + ["--row", "LDCT", "--out", "o.json"]) == 1
    assert "sites.csv: sites CSV not found" in capfd.readouterr().err
    evaluate = ["evaluate", "--experiment", "x", "--nifti", str(tmp_path), "--splits", str(splits)]
    assert main(evaluate + ["--denoised", "d1", "d2", "--out", "m.csv"]) == 1
    assert "--denoised gives 2 folders and --out 1 files; give one each" in capfd.readouterr().err
    assert main(evaluate + ["--out", "m.csv"]) == 1  # an experiment other than LDCT without its outputs
    assert "--experiment x: give --denoised" in capfd.readouterr().err
    assert main(evaluate + ["--denoised", "d1", "--out", "m.csv", "--dice", "d.csv"]) == 1
    assert "--dice needs --segmenter" in capfd.readouterr().err
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("experiments: {edcnn_l1: {model: {name: edcnn}, loss: {name: l1}}}\n")
    assert main(train + ["--config", str(cfgfile), "--experiment", "edcnn_xx"]) == 1
    assert "no experiment 'edcnn_xx'; one of: edcnn_l1" in capfd.readouterr().err
    cfgfile.unlink()
    splits.write_text("{not json")
    assert main(evaluate + ["--denoised", "d1", "--out", "m.csv"]) == 1
    assert "splits.json: not valid JSON" in capfd.readouterr().err
    assert not list(tmp_path.glob("*.csv")) and [p.name for p in tmp_path.glob("*.json")] == ["splits.json"]


def test_bad_nifti_input_is_named(tmp_path):
    """A subject's volumes: missing, unreadable, NaN, or low and full of different geometry."""
    from ldct.data import load_subject, stack_subjects
    from ldct.errors import DataError, MissingFileError
    from ldct.io import write_nifti

    d = tmp_path / "S1"
    write_nifti(d / "full.nii.gz", np.zeros((8, 8, 2, 2)), np.eye(4))
    write_nifti(d / "low.nii.gz", np.zeros((8, 8, 2, 2)), np.eye(4))
    with pytest.raises(DataError, match=r"S1/full.nii.gz: a 4-D volume \(8, 8, 2, 2\)"):
        load_subject(tmp_path, "S1")
    (d / "low.nii.gz").unlink()
    vol = np.zeros((8, 8, 2))
    write_nifti(d / "full.nii.gz", vol, np.eye(4))
    with pytest.raises(MissingFileError, match="S1/low.nii.gz: NIfTI file not found"):
        load_subject(tmp_path, "S1")
    (d / "low.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="S1/low.nii.gz: cannot read NIfTI"):
        load_subject(tmp_path, "S1")
    write_nifti(d / "low.nii.gz", np.zeros((8, 6, 2)), np.eye(4))
    with pytest.raises(DataError, match=r"S1/low.nii.gz: geometry \(8, 6, 2\) differs from full.nii.gz \(8, 8, 2\)"):
        load_subject(tmp_path, "S1")
    write_nifti(d / "low.nii.gz", np.where(np.eye(8)[..., None] > 0, np.nan, vol), np.eye(4), dtype=np.float32)
    with pytest.raises(DataError, match="S1/low.nii.gz: contains NaN or inf"):
        load_subject(tmp_path, "S1")
    with pytest.raises(DataError, match="no subjects given"):
        stack_subjects(tmp_path, [])


def test_a_subjects_labels_truth_and_repeat_scan_are_checked_against_its_full_dose_volume(tmp_path):
    """A companion volume of another grid, with NaN, or labels outside the classes: an error naming the file."""
    from ldct.classes import NUM_CLASSES
    from ldct.data import REPEAT_NAME, load_subject
    from ldct.errors import DataError
    from ldct.io import write_nifti

    d = tmp_path / "S1"
    vol = np.zeros((8, 8, 2))
    for name in ("full.nii.gz", "low.nii.gz"):
        write_nifti(d / name, vol, np.eye(4))
    for name in ("truth.nii.gz", REPEAT_NAME, "labels.nii.gz"):
        write_nifti(d / name, np.zeros((8, 8, 3)), np.eye(4))  # one slice too many
        with pytest.raises(DataError, match=rf"S1/{name}: geometry \(8, 8, 3\) differs from full.nii.gz"):
            load_subject(tmp_path, "S1", with_repeat=True)
        write_nifti(d / name, vol, np.diag([2.0, 1, 1, 1]))  # the same shape on another grid
        with pytest.raises(DataError, match=rf"S1/{name}: geometry"):
            load_subject(tmp_path, "S1", with_repeat=True)
        write_nifti(d / name, vol, np.eye(4))
    write_nifti(d / "truth.nii.gz", np.full((8, 8, 2), np.inf), np.eye(4), dtype=np.float32)
    with pytest.raises(DataError, match="S1/truth.nii.gz: contains NaN or inf"):
        load_subject(tmp_path, "S1")
    write_nifti(d / "truth.nii.gz", vol, np.eye(4))
    write_nifti(d / "labels.nii.gz", np.full((8, 8, 2), NUM_CLASSES), np.eye(4))
    with pytest.raises(DataError, match=rf"S1/labels.nii.gz: labels must be integers 0..{NUM_CLASSES - 1}"):
        load_subject(tmp_path, "S1")
    assert load_subject(tmp_path, "S1", with_labels=False).labels is None  # not read when not asked for
    write_nifti(d / "labels.nii.gz", np.full((8, 8, 2), NUM_CLASSES - 1), np.eye(4))
    sv = load_subject(tmp_path, "S1", with_repeat=True)
    assert sv.labels.dtype == np.int64 and (sv.labels == NUM_CLASSES - 1).all()
    assert sv.truth.shape == sv.repeat.shape == sv.full.shape == (2, 8, 8)


def test_ssim_l1_trains_on_the_reference_arithmetic():
    """Logging the terms apart does not change the loss the optimiser sees (bit for bit)."""
    import torch

    import losses

    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 40, 40), torch.rand(2, 1, 40, 40)
    loss = losses.build("ssim_l1")
    ms, l1 = loss._maps(x, y)
    assert torch.equal(loss(x, y), loss.scale * (loss.alpha * (1 - ms) + (1 - loss.alpha) * l1).mean())
    assert set(loss.last_terms) == {"ms_ssim", "l1"}
    assert torch.allclose(sum(loss.last_terms.values()), loss(x, y))


def test_a_damaged_or_foreign_weights_file_is_named(tmp_path):
    """A truncated file, a saved web page and a pickled whole module: one error naming the file
    (torch's own errors named none, or suggested loading untrusted pickles)."""
    import torch

    from ldct.errors import DataError
    from ldct.inference import load_checkpoint

    torch.save({"w": torch.ones(1000)}, tmp_path / "ok.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ok.pth").read_bytes()[:2000])
    (tmp_path / "page.pth").write_text("<html>403 Forbidden</html>")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    assert load_checkpoint(tmp_path / "ok.pth")["w"].shape == (1000,)
    for name, why in (("cut", "not a readable weights file"), ("page", "holds more than tensors"),
                      ("module", "holds more than tensors")):
        with pytest.raises(DataError, match=f"{name}.pth: .*{why}") as err:
            load_checkpoint(tmp_path / f"{name}.pth")
        assert "weights_only" not in str(err.value)


def test_options_are_not_abbreviated(tmp_path, capsys):
    """`ldct split --val 0.3 ...` was read as --val-as-test with 0.3 a subject, and exited 0."""
    with pytest.raises(SystemExit) as err:
        main(["split", "--out", str(tmp_path / "s.json"), "--val", "0.3", "S01", "S02", "S03", "S04"])
    assert err.value.code == 2 and "unrecognized arguments: --val" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(SystemExit):
        main(["split", "--out", str(tmp_path / "s.json"), "--threads", "-1", "S01", "S02"])
    assert "-1 is not a positive integer" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is")
def test_cuda_without_a_gpu_names_the_setting():
    from ldct.errors import ConfigError
    from ldct.inference import pick_device

    with pytest.raises(ConfigError, match="config error at experiments.a.train.device: cuda asked for, but torch"):
        pick_device("cuda", "experiments.a.train.device")
    assert pick_device("auto").type == "cpu"


def test_sigterm_leaves_no_half_written_file(tmp_path):
    """A cancelled run or a SLURM time limit sends SIGTERM: a command exits through the
    `finally` of atomic_path, so neither the output nor its hidden temporary file is left."""
    import subprocess
    import sys

    script = ("import os, signal\n"
              "from ldct.cli import _exit_on_sigterm\n"
              "from ldct.io import atomic_path\n"
              "_exit_on_sigterm()\n"
              f"with atomic_path({str(tmp_path / 'full.nii.gz')!r}) as tmp:\n"
              "    tmp.write_bytes(b'half a volume')\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    raise AssertionError('not stopped')\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 143, res.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    assert "ldct: stopped by SIGTERM (a cancelled job or a time limit)" in res.stderr  # the log just stopped


def test_ctrl_c_is_one_line_and_stop_after_epochs_is_checked(monkeypatch, capfd):
    """Ctrl-C printed a KeyboardInterrupt traceback into the job's log; --stop-after-epochs -1
    ran no training and exited 0, writing nothing and saying nothing."""
    import ldct.cli

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setitem(ldct.cli.COMMANDS["manifest"], "fn", interrupted)
    assert main(["manifest", "--out", "x.csv", "a.json"]) == 130
    err = capfd.readouterr().err
    assert err.strip() == ("ldct: interrupted (Ctrl-C); nothing half-written is kept: run it again to go on (a training "
                           "resumes from its last epoch)")
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--stop-after-epochs", bad, "--checkpoints", "c", "--nifti", "n",
                                       "--splits", "s", "--out", "o", "--history", "h"])


def test_the_dose_sweep_names_a_damaged_training_csv(tmp_path, capfd):
    """Table 4 read tables/training.csv with pandas alone: an empty one was a traceback naming no file."""
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "training.csv").write_text("")
    assert main(["dose-sweep", "--root", str(tmp_path), "--experiments", "LDCT", "--doses", "0.25"]) == 1
    err = capfd.readouterr().err
    assert "training.csv: empty; rerun the tables" in err and "Traceback" not in err
