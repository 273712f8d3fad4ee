"""Training engine: determinism, resume after a kill, fresh start on changed settings."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ldct.data import REPEAT_NAME, load_subject, to_slices
from ldct.errors import DataError, TrainingError
from ldct.io import read_nifti
from ldct.spec import ExperimentSpec
from ldct.train import load_training_data, train_denoiser

EXPERIMENT = {"model": {"name": "edcnn", "channels": 4, "stages": 2}, "loss": {"name": "l1"},
              "train": {"epochs": 3, "iters_per_epoch": 2, "batch_size": 2, "patch_size": 16, "lr": 1e-3,
                        "lr_decay": 0.99, "warmup_iters": 3, "weight_decay": 0.01, "augment": True, "hu_offset": 20.0,
                        "val_max_slices": 2, "device": "cpu", "amp": True}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from ldct.dicom import convert_subject
    from ldct.synthetic import make_subject
    from tests.conftest import SMALL_SYNTH

    base = tmp_path_factory.mktemp("train")
    for s in ("S001", "S002"):
        make_subject(s, SMALL_SYNTH, 11, base / "dicom" / s, base / "phantom" / s)
        convert_subject(base / "dicom" / s, base / "nifti" / s)
        shutil.copyfile(base / "phantom" / s / REPEAT_NAME, base / "nifti" / s / REPEAT_NAME)  # as `ldct convert` does
    return base, {"train": ["S001"], "val": ["S002"], "test": ["S002"]}


def train(dataset, tag, tmp_path, experiment=EXPERIMENT, **kw):
    base, splits = dataset
    out = tmp_path / tag
    spec = ExperimentSpec(name=tag, seed=5, hu_range=(-1024.0, 3072.0), **experiment)
    hist = train_denoiser(spec, nifti_dir=str(base / "nifti"), splits=splits, out_model=str(out / "model.pt"),
                          out_history=str(out / "history.csv"), checkpoint_dir=str(kw.pop("ck", out / "ck")), **kw)
    return hist, out


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_same_seed_same_history_and_weights(dataset, tmp_path):
    h1, o1 = train(dataset, "a", tmp_path)
    h2, o2 = train(dataset, "b", tmp_path)
    cols = ["epoch", "train_loss", "val_mse_head", "lr"]
    pd.testing.assert_frame_equal(h1[cols], h2[cols])
    w1, w2 = weights(o1 / "model.pt"), weights(o2 / "model.pt")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # what made it, loadable without unpickling code: the versions, the project's commit, the machine
    saved = torch.load(o1 / "model.pt", map_location="cpu", weights_only=True)
    assert saved["versions"]["torch"] == torch.__version__ and saved["versions"]["ldct"].startswith("0.")
    assert saved["machine"]["torch_threads"] >= 1 and saved["machine"]["cpu"] and "gpu" not in saved["machine"]
    assert saved["machine"]["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "NO AVX")  # the kernels used


@pytest.mark.parametrize("style", ["project", "reference"])
def test_killed_run_resumes_to_the_same_weights(dataset, tmp_path, style):
    """Also with the reference style's shuffled passes (drawn at each epoch's start)."""
    # 3 steps of 2 of the 4 training slices: epochs end mid-pass (the next epoch starts a new one)
    exp = {**EXPERIMENT, "train": {**EXPERIMENT["train"], "augment_style": style, "rotation_deg": 90.0,
                                   "crop_prob": 0.5, "iters_per_epoch": 3}}
    _, full = train(dataset, "full", tmp_path, experiment=exp)
    ck = tmp_path / "resume_ck"
    train(dataset, "resume", tmp_path, experiment=exp, ck=ck, stop_after_epochs=1)
    assert (ck / "last.pt").exists() and not (tmp_path / "resume" / "model.pt").exists()
    hist, out = train(dataset, "resume", tmp_path, experiment=exp, ck=ck)
    assert list(hist["epoch"]) == [1, 2, 3]
    w1, w2 = weights(full / "model.pt"), weights(out / "model.pt")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_an_epoch_of_one_pass_trains_the_slices_over_the_batch_size(dataset, tmp_path):
    """`iters_per_epoch: pass` (configs/paper.yaml): an epoch is one pass over the training
    slices in whole batches, the last short one dropped, as the reference's DataLoader; the
    budget record counts the steps so made. Too few slices for one batch is a config error."""
    from ldct.config import ConfigError

    base, splits = dataset
    n = len(load_training_data(str(base / "nifti"), splits, None)[0]["low"])
    batch = 3 if n % 3 else 2  # a batch that leaves a short one over (when n is not a multiple of 6)
    exp = {**EXPERIMENT, "train": {**EXPERIMENT["train"], "iters_per_epoch": "pass", "batch_size": batch,
                                   "augment_style": "reference", "warmup_iters": 0}}
    hist, out = train(dataset, "pass", tmp_path, experiment=exp)
    iters = n // batch
    assert list(hist["step"]) == [iters, 2 * iters, 3 * iters]
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert json.loads(saved["spec"])["train"]["iters_per_epoch"] == iters and saved["budget"]["steps"] == 3 * iters
    with pytest.raises(ConfigError, match=f"iters_per_epoch: pass: {n} training slices do not fill one batch of {n + 1}"):
        train(dataset, "none", tmp_path, experiment={**exp, "train": {**exp["train"], "batch_size": n + 1}})


def test_changed_settings_start_fresh(dataset, tmp_path, capfd):
    ck = tmp_path / "ck"
    train(dataset, "x", tmp_path, ck=ck, stop_after_epochs=1)
    assert (f"x: stopped after epoch 1 as asked (--stop-after-epochs): no model.pt written; the same command without "
            f"it resumes from {ck}") in capfd.readouterr().err  # exit 0 and nothing written, nothing said
    changed = json.loads(json.dumps(EXPERIMENT))
    changed["train"]["lr"] = 5e-4
    hist, _ = train(dataset, "y", tmp_path, experiment=changed, ck=ck)
    assert f"{ck / 'last.pt'}: the experiment's settings changed since it was written: starting fresh" \
        in capfd.readouterr().err  # it said "settings or inputs changed", whatever had
    assert list(hist["epoch"]) == [1, 2, 3]


def test_other_thread_count_or_training_code_starts_fresh(dataset, tmp_path, capfd, monkeypatch):
    """On the CPU the thread count changes the weights (the sums' order): a run stopped under
    one count and resumed under another went on silently on another path. So did a run
    resumed after an edit of the training code (ldct/engine.py, ...)."""
    import ldct.train

    threads = torch.get_num_threads()
    ck = tmp_path / "ck"
    train(dataset, "x", tmp_path, ck=ck, stop_after_epochs=1)
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        hist, _ = train(dataset, "y", tmp_path, ck=ck, stop_after_epochs=2)
    finally:
        torch.set_num_threads(threads)
    other = 1 if threads > 1 else 2
    err = capfd.readouterr().err  # the cause named, and how to resume (it said "settings or inputs changed")
    assert (f"the CPU thread count ({threads} -> {other}: other threads sum in another order, so the weights would "
            f"differ; to resume, run it with {threads} threads again: snakemake --cores {threads}, or ldct train "
            f"--threads {threads}) changed") in err
    assert "starting fresh" in err and list(hist["epoch"]) == [1, 2]
    train(dataset, "w", tmp_path, ck=ck, stop_after_epochs=1)  # the thread count of the start again
    capfd.readouterr()
    edited = tmp_path / "edited.py"
    edited.write_text("# an edit of the training code\n")
    real = ldct.train.library_files
    monkeypatch.setattr(ldct.train, "library_files", lambda *a: [*real(*a), str(edited)])
    hist, _ = train(dataset, "z", tmp_path, ck=ck)
    assert "the data or code changed since it was written: starting fresh" in capfd.readouterr().err
    assert list(hist["epoch"]) == [1, 2, 3]


def test_a_checkpoint_of_another_device_or_an_older_key_says_so(tmp_path, capfd):
    """GPU keys hold no thread count: the message read 'thread count (None -> 4 ...; run it with
    None again)'. A last.pt written before the key's parts were recorded cannot name them."""
    from ldct import engine

    net = torch.nn.Conv2d(1, 1, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = engine.Schedule(opt, {"lr": 0.1, "epochs": 1, "iters_per_epoch": 1}, 1, 1)
    args = (sched, torch.Generator(), torch.amp.GradScaler("cuda", enabled=False))
    parts = {"spec": "s", "inputs": "i"}
    engine._Checkpoint(tmp_path, {**parts, "threads": None}).save(net, opt, *args, [], 1, 0.0, {})
    capfd.readouterr()
    engine._Checkpoint(tmp_path, {**parts, "threads": 4}).resume(net, opt, *args)
    assert capfd.readouterr().err.strip().endswith(
        "the device (a GPU -> the CPU with 4 threads: another device computes other weights; to resume, run it on a "
        "GPU again) changed since it was written: starting fresh")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["key_parts"]  # as written before the parts were recorded
    torch.save(state, tmp_path / "last.pt")
    engine._Checkpoint(tmp_path, {**parts, "spec": "other", "threads": None}).resume(net, opt, *args)
    assert "settings or inputs changed since it was written: starting fresh" in capfd.readouterr().err


def test_damaged_checkpoint_starts_fresh_and_a_wrong_model_file_is_named(dataset, tmp_path, capfd):
    """A damaged last.pt stopped every rerun with torch's zip-reader traceback (no path); a
    model.pt that is not a denoiser of this architecture failed with a bare KeyError or a
    state-dict mismatch."""
    from ldct.inference import load_denoiser

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "last.pt").write_bytes(b"")
    (ck / ".last.pt.x1y2.pt").write_bytes(b"PK half a checkpoint")  # what a SIGKILL during its write leaves
    train(dataset, "e", tmp_path, ck=ck, stop_after_epochs=1)
    assert f"{ck / 'last.pt'}: unreadable checkpoint (EOFError: empty or cut short): starting fresh" \
        in capfd.readouterr().err  # it said "EOFError: " with nothing after it
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt"]  # the leftover removed (it stayed forever)
    (ck / "last.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    hist, out = train(dataset, "x", tmp_path, ck=ck)
    assert f"{ck / 'last.pt'}: unreadable checkpoint" in capfd.readouterr().err and list(hist["epoch"]) == [1, 2, 3]
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    torch.save({"state_dict": saved["state_dict"]}, tmp_path / "no_spec.pt")  # e.g. segmenter.pt passed as --model
    with pytest.raises(DataError, match="no_spec.pt: not a denoiser written by `ldct train`.*holds: state_dict"):
        load_denoiser(tmp_path / "no_spec.pt", torch.device("cpu"))
    torch.save({**saved, "model": {**saved["model"], "channels": 8}}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="other.pt: its weights do not fit model 'edcnn'"):
        load_denoiser(tmp_path / "other.pt", torch.device("cpu"))


def test_remade_data_start_fresh(dataset, tmp_path, capfd):
    """Same settings, other training data (e.g. the dataset was resynthesized): the finished
    checkpoint of the old data is not reused as the new model."""
    import shutil

    base, splits = dataset
    other = tmp_path / "data"
    shutil.copytree(base / "nifti", other / "nifti")
    shutil.copy(other / "nifti" / "S002" / "low.nii.gz", other / "nifti" / "S001" / "low.nii.gz")
    ck = tmp_path / "ck"
    train(dataset, "x", tmp_path, ck=ck)
    capfd.readouterr()
    train((other, splits), "y", tmp_path, ck=ck)
    assert "starting fresh" in capfd.readouterr().err
    assert not all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "x" / "model.pt").values(),
                                                      weights(tmp_path / "y" / "model.pt").values()))


def test_model_file_holds_the_best_validation_epoch(dataset, tmp_path, monkeypatch):
    """model.pt is the epoch with the lowest [0, 80] HU validation MSE, not the last one."""
    import ldct.train

    scores = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(ldct.train, "head_window_mse", lambda pred, full: next(scores))
    hist, out = train(dataset, "best", tmp_path)
    assert list(hist["best"]) == [True, True, False]
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and saved["val_mse_head"] == 1.0
    from ldct.inference import checkpoint_amp  # inference runs in the precision the model was trained in

    assert json.loads(saved["spec"])["train"]["amp"] and "gpu" not in saved["machine"]
    assert checkpoint_amp(saved) is False  # amp asked for, but trained on the CPU: float32
    on_gpu = {**saved, "machine": {**saved["machine"], "gpu": "NVIDIA H100"}}
    assert checkpoint_amp(on_gpu) is True
    off = json.loads(saved["spec"])
    off["train"]["amp"] = False
    assert checkpoint_amp({**on_gpu, "spec": json.dumps(off)}) is False and checkpoint_amp({}) is True
    # the same run stopped after epoch 2: its weights are the ones kept
    scores = iter([3.0, 1.0])
    monkeypatch.setattr(ldct.train, "head_window_mse", lambda pred, full: next(scores))
    train(dataset, "two", tmp_path, stop_after_epochs=2)
    after2 = torch.load(tmp_path / "two" / "ck" / "last.pt", map_location="cpu", weights_only=True)["model"]
    last3 = torch.load(out / "ck" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(saved["state_dict"][k], after2[k]) for k in after2)
    assert not all(torch.equal(saved["state_dict"][k], last3[k]) for k in last3)


def test_training_log_shows_threads_and_progress(dataset, tmp_path, capfd):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what `ldct train --threads 1` (Snakemake's {threads}) sets
    try:
        train(dataset, "log", tmp_path)
    finally:
        torch.set_num_threads(before)
    err = capfd.readouterr().err
    assert "on cpu (threads: 1)" in err and "on cpu (mixed precision: off)" in err
    for epoch in (1, 2, 3):  # the tqdm bar of each epoch, run to its end, and the time left of the run
        assert f"log: epoch {epoch}/3: 100%" in err and f"log: epoch {epoch}: loss" in err
    assert re.search(r"log: epoch 1: loss .*; about \d+ s left of 3 epochs", err)
    # the last line sums the run up (the log ended at the last epoch's line)
    hist = pd.read_csv(tmp_path / "log" / "history.csv")
    kept = hist[hist["best"]].iloc[-1]
    assert err.strip().splitlines()[-1] == (
        f"log: done: 6 of 6 steps, {hist['tera_macs'].iloc[-1]:.3g} x 10^12 MACs, lr 0.001; kept epoch "
        f"{kept['epoch']} of 3 (step {kept['step']}): validation PSNR [-40, 120] HU {kept['val_psnr_brain']:.2f} dB, "
        f"the LDCT input's {kept['val_psnr_brain_ldct']:.2f} dB")


def test_nan_loss_stops_with_a_clear_error(dataset, tmp_path):
    bad = json.loads(json.dumps(EXPERIMENT))
    bad["train"]["lr"] = 1e30
    bad["train"]["epochs"] = 5
    bad["train"]["iters_per_epoch"] = 20
    with pytest.raises(TrainingError, match="^nan: epoch 1, step .*non-finite loss"):  # the experiment named
        train(dataset, "nan", tmp_path, experiment=bad)
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_a_non_finite_loss_says_what_is_not_finite():
    """The model's output at the first step (no update yet: not the learning rate), the data,
    or the loss: each named, so a broken new model is not blamed on its rate."""
    from ldct import engine

    class NanNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x) * torch.log(x - x - 1.0)

    x = torch.rand(2, 1, 8, 8)
    task = engine.Task(NanNet(), torch.nn.L1Loss(), lambda: (x, x), lambda m: {"val": 0.0}, score="val")
    cfg = {**EXPERIMENT["train"], "epochs": 1, "iters_per_epoch": 2, "amp": False}
    with pytest.raises(TrainingError, match=r"epoch 1, step 1 \(the first step: no update yet, so not the learning "
                                            r"rate\): non-finite loss \(nan\); the model's output is not finite"):
        engine.fit(task, cfg, device=torch.device("cpu"), generator=torch.Generator(), key="k")
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="the batch holds NaN or inf: check the input data"):
        engine.train_step(net, torch.nn.L1Loss(), opt, scaler, bad, x, False)
    with pytest.raises(TrainingError, match="the model's output is finite, the loss of it is not"):
        engine.train_step(net, lambda out, y: (out - y).abs().mean() / 0.0, opt, scaler, x, x, False)


def _labelled_subjects(root, pixel, n=2, size=32):
    """Subjects of a constant image with 4 label classes in quadrants, at `pixel` mm."""
    from ldct.io import write_nifti

    labels = np.zeros((size, size, 3), np.int16)
    labels[size // 2:, :], labels[:, size // 2:] = 1, 2
    labels[size // 2:, size // 2:] = 3
    affine = np.diag([pixel, pixel, 5.0, 1.0])
    for s in range(n):
        (root / f"S{s}").mkdir(parents=True)
        for name in ("full", "low"):
            write_nifti(root / f"S{s}" / f"{name}.nii.gz", np.full((size, size, 3), 40, np.int16), affine)
        write_nifti(root / f"S{s}" / "labels.nii.gz", labels, affine)
    return [f"S{s}" for s in range(n)]


def test_given_weights_on_another_pixel_size_or_segmenting_nothing_are_refused(tmp_path):
    """The shipped preset (2 mm pixels) on 0.5 mm slices segments no anatomy: refused, naming
    the sizes; a file of this project records its pixel size, a bare state dict says none;
    weights that score next to nothing on labelled validation data are refused too."""
    import models
    from ldct.anatomy import check_grid, pretrain_segmenter, save_segmenter, trained_pixel_mm
    from ldct.errors import DataError

    preset = Path(__file__).resolve().parents[1] / "ldct" / "presets" / "segmenter_synthetic.pt"
    assert trained_pixel_mm(preset) == 2.0
    subjects = _labelled_subjects(tmp_path / "half", 0.5)
    cfg = {"weights": str(preset), "base_width": 12, "norm": "instance", "device": "cpu"}
    with pytest.raises(DataError, match=r"segmenter_synthetic.pt: a U-Net trained on 2 mm pixels, but subject S0 "
                                        r"has 0.5 mm \(4.0 x\)"):
        pretrain_segmenter(nifti_dir=str(tmp_path / "half"), splits={"train": subjects[:1], "val": subjects[1:]},
                           cfg=cfg, seed=0, out=str(tmp_path / "seg.pt"), out_history=str(tmp_path / "h.csv"))
    assert not (tmp_path / "seg.pt").exists()
    check_grid(preset, 2.0, {"S0": 1.7, "S1": 2.4})  # within 1.25 x: carried over
    net = models.build("unet", base_width=4)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    save_segmenter(tmp_path / "own.pt", net, "test", pixel_mm=0.7)
    assert trained_pixel_mm(tmp_path / "bare.pth") is None and trained_pixel_mm(tmp_path / "own.pt") == 0.7
    # an untrained U-Net on labelled subjects of any size: no grid to check, but it segments nothing
    subjects = _labelled_subjects(tmp_path / "two", 2.0)
    with pytest.raises(DataError, match=r"bare.pth: mean foreground Dice 0.\d+ on the validation subjects' labels "
                                        r"\(below 0.2\): these weights do not segment this data"):
        pretrain_segmenter(nifti_dir=str(tmp_path / "two"), splits={"train": subjects[:1], "val": subjects[1:]},
                           cfg={**cfg, "weights": str(tmp_path / "bare.pth"), "base_width": 4, "norm": "channel"},
                           seed=0, out=str(tmp_path / "seg.pt"), out_history=str(tmp_path / "h.csv"))


def test_a_segmenter_option_given_another_weights_file_is_one_line(tmp_path):
    """--segmenter of segment-ndct, evaluate and train takes a segmenter.pt: a denoiser's model.pt
    or a bare state dict was a KeyError traceback; a bare dict of another width listed every
    parameter's size mismatch (82 lines)."""
    import models
    from ldct.anatomy import load_weights
    from ldct.errors import ConfigError, DataError
    from ldct.inference import load_segmenter

    torch.save(models.build("unet", base_width=12).state_dict(), tmp_path / "w12.pth")
    with pytest.raises(DataError, match=r"w12.pth: not a segmenter.pt \(ldct pretrain-segmenter writes one"):
        load_segmenter(tmp_path / "w12.pth", torch.device("cpu"))
    with pytest.raises(ConfigError) as err:
        load_weights(tmp_path / "w12.pth", {"base_width": 4, "norm": "channel"})
    assert str(err.value) == (f"{tmp_path / 'w12.pth'}: holds a U-Net of base_width 12 (its first convolution has 12 "
                              "filters), but the config says segmenter.base_width=4 (the published network: 64, norm "
                              "'channel'); make them agree")
    torch.save(models.build("unet", base_width=4, num_classes=19).state_dict(), tmp_path / "c19.pth")
    with pytest.raises(ConfigError, match=r"c19.pth: holds conv10.weight of shape \(19, 4, 1, 1\), not the "
                                          r"\(17, 4, 1, 1\) of the U-Net at base_width 4 with 17 classes"):
        load_weights(tmp_path / "c19.pth", {"base_width": 4, "norm": "channel"})


def test_segmenter_weights_load_strictly_or_fail_clearly(tmp_path):
    import models
    from ldct.anatomy import pretrain_segmenter
    from ldct.inference import load_segmenter

    src = models.build("unet", base_width=4)
    torch.save(src.state_dict(), tmp_path / "model.pth")
    cfg = {"weights": str(tmp_path / "model.pth"), "base_width": 4, "norm": "channel", "device": "cpu"}
    pretrain_segmenter(nifti_dir="unused", splits={}, cfg=cfg, seed=0, out=str(tmp_path / "seg.pt"),
                       out_history=str(tmp_path / "h.csv"))
    loaded = load_segmenter(tmp_path / "seg.pt", torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), loaded.state_dict().values()))
    # the same weights written again give the same bytes (the trainings that use the segmenter
    # resume by its fingerprint; torch names its archive after the file it writes to)
    pretrain_segmenter(nifti_dir="unused", splits={}, cfg=cfg, seed=0, out=str(tmp_path / "again.pt"),
                       out_history=str(tmp_path / "h3.csv"))
    assert (tmp_path / "again.pt").read_bytes() == (tmp_path / "seg.pt").read_bytes()
    with pytest.raises(ValueError, match="base_width=8"):
        pretrain_segmenter(nifti_dir="unused", splits={}, cfg={**cfg, "base_width": 8}, seed=0,
                           out=str(tmp_path / "seg2.pt"), out_history=str(tmp_path / "h2.csv"))
    assert not (tmp_path / "seg2.pt").exists()


@pytest.mark.slow
def test_segmenter_file_says_its_norm_and_loaded_weights_are_scored_on_validation(dataset, tmp_path, capfd,
                                                                                   monkeypatch):
    import shutil

    from ldct.anatomy import pretrain_segmenter
    from ldct.inference import load_segmenter

    base, splits = dataset
    nifti = tmp_path / "nifti"
    for s in ("S001", "S002"):  # with the labels, which the workflow's convert step copies along
        shutil.copytree(base / "nifti" / s, nifti / s)
        shutil.copy(base / "phantom" / s / "labels.nii.gz", nifti / s / "labels.nii.gz")
    cfg = {"weights": None, "base_width": 4, "norm": "instance", "epochs": 1, "iters_per_epoch": 2, "batch_size": 2,
           "lr": 1e-3, "rotation_deg": 10.0, "scale_jitter": 0.1, "device": "cpu"}
    pretrain_segmenter(nifti_dir=str(nifti), splits=splits, cfg=cfg, seed=0, out=str(tmp_path / "a.pt"),
                       out_history=str(tmp_path / "a.csv"), checkpoint_dir=str(tmp_path / "ck"))
    # as a denoiser's, its checkpoint resumes only with the thread count it was written with
    # (it resumed under another, and ended with weights no uninterrupted run gives)
    threads = torch.get_num_threads()
    capfd.readouterr()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        pretrain_segmenter(nifti_dir=str(nifti), splits=splits, cfg=cfg, seed=0, out=str(tmp_path / "a2.pt"),
                           out_history=str(tmp_path / "a2.csv"), checkpoint_dir=str(tmp_path / "ck"))
    finally:
        torch.set_num_threads(threads)
    assert f"the CPU thread count ({threads} -> {1 if threads > 1 else 2}:" in capfd.readouterr().err
    ck = torch.load(tmp_path / "a.pt", weights_only=True)
    assert (ck["norm"], ck["base_width"]) == ("instance", 4)
    assert load_segmenter(tmp_path / "a.pt", torch.device("cpu")).norm == "instance"
    # given as weights, the file is loaded and scored on the labelled validation subjects; two
    # steps of training segment next to nothing, which given weights may not
    again = {**cfg, "weights": str(tmp_path / "a.pt")}
    with pytest.raises(DataError, match=r"a.pt: mean foreground Dice 0.0\d\d on the validation subjects' labels"):
        pretrain_segmenter(nifti_dir=str(nifti), splits=splits, cfg=again, seed=0,
                           out=str(tmp_path / "b.pt"), out_history=str(tmp_path / "b.csv"))
    import ldct.anatomy

    monkeypatch.setattr(ldct.anatomy, "MIN_GIVEN_DICE", 0.0)
    hist = pretrain_segmenter(nifti_dir=str(nifti), splits=splits, cfg=again, seed=0,
                              out=str(tmp_path / "b.pt"), out_history=str(tmp_path / "b.csv"))
    trained = pd.read_csv(tmp_path / "a.csv")
    # the shared training loop: each loss term, the learning rate and the best flag per epoch
    assert {"loss_cross_entropy", "loss_soft_dice", "lr", "best"} <= set(trained.columns)
    assert trained["train_loss"].iloc[0] == pytest.approx(trained[["loss_cross_entropy", "loss_soft_dice"]].iloc[0].sum())
    assert hist.loc[0, "val_mean_dice"] == pytest.approx(trained["val_mean_dice"].max())
    assert {f"dice_{c:02d}" for c in range(17)} <= set(pd.read_csv(tmp_path / "b.csv").columns)
    # a config that disagrees with the file's norm is a clear error, before anything is written
    with pytest.raises(ValueError, match="norm 'instance'.*segmenter.norm='channel'"):
        pretrain_segmenter(nifti_dir=str(nifti), splits=splits, cfg={**again, "norm": "channel"}, seed=0,
                           out=str(tmp_path / "c.pt"), out_history=str(tmp_path / "c.csv"))
    assert not (tmp_path / "c.pt").exists()


def test_reference_style_augmentation_is_the_references_pipeline():
    """augment_style 'reference' re-states albumentations 1.2.1's Rotate(limit=90, p=0.5; bilinear,
    BORDER_REFLECT_101), RandomResizedCrop(scale, ratio 3/4-4/3, p=0.5) and the two flips:
    checked against an independent bilinear warp (scipy, mode 'mirror' = reflect-101), an exact
    quarter turn, and the rates at which each step happens."""
    from scipy.ndimage import map_coordinates

    from ldct.hu import from_unit
    from ldct.train import RRC_RATIO, PatchSampler

    g = np.random.default_rng(0)
    img = g.normal(0, 100, (40, 36))
    for angle in (33.0, -71.5):
        got = PatchSampler.rotate_reflect(torch.from_numpy(img)[None, None].float(), angle)[0, 0].double().numpy()
        a, (h, w) = np.radians(angle), img.shape
        yy, xx = np.mgrid[:h, :w].astype(float)
        cy, cx = (h - 1) / 2, (w - 1) / 2  # cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle)
        sx = np.cos(a) * (xx - cx) - np.sin(a) * (yy - cy) + cx
        sy = np.sin(a) * (xx - cx) + np.cos(a) * (yy - cy) + cy
        assert np.abs(got - map_coordinates(img, [sy, sx], order=1, mode="mirror")).max() < 1e-3
    sq = torch.from_numpy(img[:36, :36]).float()[None, None]
    assert torch.allclose(PatchSampler.rotate_reflect(sq, 90.0), torch.rot90(sq, 1, (-2, -1)), atol=1e-3)

    full = g.normal(30, 20, (2, 32, 32)).astype(np.float32)
    low = full + 40.0
    s = PatchSampler(low, full, None, 1, True, 0.0, (-1024.0, 3072.0), torch.Generator().manual_seed(4),
                     rotation_deg=90.0, crop_prob=0.5, crop_scale=(0.5, 1.0), style="reference")
    plain = 0
    for _ in range(400):
        x, y = (from_unit(t, -1024.0, 3072.0)[0, 0] for t in s.sample())
        assert torch.allclose(x - y, torch.full_like(x, 40.0), atol=1e-2)  # one warp for the pair
        src = [torch.from_numpy(f) for f in full]
        plain += any(torch.allclose(y, v, atol=1e-3) for f in src for v in (f, f.flip(-1), f.flip(-2), f.flip(-1).flip(-2)))
    assert 0.17 < plain / 400 < 0.33  # neither rotated (1/2) nor cropped (1/2): a quarter, only flipped
    boxes = [s._crop_box(64, 48) for _ in range(2000)]
    area = np.array([b[2] * b[3] for b in boxes]) / (64 * 48)
    ratio = np.array([b[3] / b[2] for b in boxes])
    assert area.min() > 0.47 and area.max() <= 1.0 and ratio.min() > RRC_RATIO[0] * 0.95 and ratio.max() < RRC_RATIO[1] * 1.05
    assert all(0 <= t <= 64 - ch and 0 <= left <= 48 - cw for t, left, ch, cw in boxes)
    assert len({b[:2] for b in boxes}) > 100  # anywhere in the slice, not centred
    patches = PatchSampler(low, full, 16, 3, False, 0.0, (-1024.0, 3072.0), torch.Generator().manual_seed(5),
                           style="reference")
    assert patches.sample()[0].shape == (3, 1, 16, 16)
    # shuffled passes: an epoch of len/batch steps shows every slice once; a generator restored
    # at an epoch's start (a resumed run) draws the same pass
    many = np.stack([np.full((8, 8), float(i), np.float32) for i in range(6)])
    s = PatchSampler(many, many, None, 2, False, 0.0, (-1024.0, 3072.0), torch.Generator().manual_seed(6),
                     style="reference")
    state = s.g.get_state()
    s.start_epoch()
    seen = [from_unit(s.sample()[1], -1024.0, 3072.0)[:, 0, 0, 0].round().tolist() for _ in range(3)]
    assert sorted(v for batch in seen for v in batch) == [0, 1, 2, 3, 4, 5]
    s.g.set_state(state)
    s.start_epoch()
    assert [from_unit(s.sample()[1], -1024.0, 3072.0)[:, 0, 0, 0].round().tolist() for _ in range(3)] == seen
    s.start_epoch()  # an epoch that ends mid-pass: the next starts a whole new pass
    s.sample()
    s.start_epoch()
    fresh = [v for _ in range(3) for v in from_unit(s.sample()[1], -1024.0, 3072.0)[:, 0, 0, 0].round().tolist()]
    assert sorted(fresh) == [0, 1, 2, 3, 4, 5]


def test_rotation_and_resized_crop_keep_input_and_target_aligned():
    """The project-style augmentations transform input and target with one warp: a pair that differs
    by a constant stays exactly that constant apart under nearest rotation, and regions outside
    the slice are filled with -1024 HU."""
    import numpy as np

    from ldct.hu import from_unit
    from ldct.train import PatchSampler

    g = np.random.default_rng(0)
    full = g.normal(30, 20, (3, 48, 48)).astype(np.float32)
    low = full + 40.0
    sampler = PatchSampler(low, full, None, 6, True, 0.0, (-1024.0, 3072.0), torch.Generator().manual_seed(1),
                           rotation_deg=90.0)
    x, y = (from_unit(t, -1024.0, 3072.0) for t in sampler.sample())
    inside = y > -1000
    assert torch.allclose((x - y)[inside], torch.full_like(x[inside], 40.0), atol=1e-2)
    assert (y <= -1023.9).any()                                   # rotated corners: -1024 HU fill
    ref = np.sort(full.ravel())
    pos = np.clip(np.searchsorted(ref, y[inside].numpy()), 1, len(ref) - 1)
    gap = np.minimum(np.abs(ref[pos] - y[inside].numpy()), np.abs(ref[pos - 1] - y[inside].numpy()))
    assert gap.max() < 0.01                                       # nearest: no interpolated values
    crop = PatchSampler(low, full, 32, 4, True, 0.0, (-1024.0, 3072.0), torch.Generator().manual_seed(2),
                        rotation_deg=0.0, crop_prob=1.0, crop_scale=(0.5, 0.5))
    x, y = (from_unit(t, -1024.0, 3072.0) for t in crop.sample())
    assert x.shape == (4, 1, 32, 32)
    # bilinear zoom blends the -1024 fill into border pixels by a share a, which scales the
    # difference to 40 (1 - a): aligned, it never exceeds 40 and is 40 away from the border
    # (misaligned pairs would differ by 40 +- the image's noise)
    diff = (x - y)[y > -100]
    assert diff.max() <= 40.01 and (diff - 40).abs().lt(0.01).float().mean() > 0.8
    assert y[y > -100].std() < 0.9 * full.std()                     # bilinear zoom smooths the white noise
    # no rotation, no zoom (crop scale 1): the warp is the identity, every pixel taken once
    same = PatchSampler(low, full, None, 1, False, 0.0, (-1024.0, 3072.0), torch.Generator().manual_seed(3),
                        rotation_deg=0.0, crop_prob=1.0, crop_scale=(1.0, 1.0))
    lo, fu = same._warp(torch.from_numpy(low[0]), torch.from_numpy(full[0]), 24, 24, (48, 48))
    assert torch.allclose(fu, torch.from_numpy(full[0]), atol=1e-3)  # (the fill's +-1024 HU shift rounds)
    assert torch.allclose(lo, torch.from_numpy(low[0]), atol=1e-3)


@pytest.mark.slow
def test_train_command_takes_an_experiment_of_a_config_file(dataset, tmp_path, capfd):
    """`python -m ldct train --config FILE --experiment NAME` trains outside the workflow."""
    from pathlib import Path

    from ldct.cli import main

    base, splits = dataset
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    tiny = Path(__file__).parent / "configs" / "tiny.yaml"
    args = ["train", "--config", str(tiny), "--nifti", str(base / "nifti"), "--splits", str(tmp_path / "splits.json"),
            "--out", str(tmp_path / "model.pt"), "--history", str(tmp_path / "history.csv"),
            "--checkpoints", str(tmp_path / "ck")]
    assert main(args + ["--experiment", "edcnn_l1", "--spec", "{}"]) == 1
    assert "give either --spec" in capfd.readouterr().err
    assert main(args + ["--experiment", "nope"]) == 1
    assert "no experiment 'nope'; one of: featkpn_ana, edcnn_l1" in capfd.readouterr().err
    assert main(args + ["--experiment", "edcnn_l1"]) == 0
    saved = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert saved["model"]["name"] == "edcnn" and saved["model"]["channels"] == 8
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2]
    # typed overrides of the experiment's training settings, and a spec given as a file
    assert main(args + ["--experiment", "edcnn_l1", "--epochs", "1", "--lr", "2e-3", "--budget-protocol", "fixed",
                        "--checkpoints", str(tmp_path / "ck1")]) == 0
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1] and "at lr 0.002," in capfd.readouterr().err
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "x", "seed": 3, **EXPERIMENT}))
    assert main(args[:1] + args[3:] + ["--spec", str(spec), "--epochs", "1", "--checkpoints", str(tmp_path / "ck2")]) == 0
    assert main(args + ["--experiment", "edcnn_l1", "--epochs", "0"]) == 1
    assert "config error at train.epochs: 0 is less than the minimum of 1" in capfd.readouterr().err
    # epochs that a budget protocol would overwrite are refused, not ignored; a budget option
    # given alone keeps the config's other budget settings
    assert main(args + ["--experiment", "edcnn_l1", "--epochs", "2"]) == 1
    assert "--epochs: set by the budget protocol 'equal_steps'; give --budget-protocol fixed" in capfd.readouterr().err
    assert main(args + ["--experiment", "edcnn_l1", "--budget-steps", "2", "--checkpoints", str(tmp_path / "ck3")]) == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2  # equal_steps, 2 evaluations of the config: 1 step each
    from ldct.config import load_config

    resolved = ExperimentSpec.from_config(load_config(tiny), "edcnn_l1").to_json()  # as the workflow passes it
    assert main(args[:1] + args[3:] + ["--spec", resolved, "--batch-size", "2"]) == 1
    assert "--batch-size: this spec's steps were set by its budget (equal_steps, 4 steps)" in capfd.readouterr().err
    assert main(args[:1] + args[3:] + ["--spec", resolved, "--budget-steps", "3"]) == 1
    assert "--budget-steps: this spec's steps were set by its budget" in capfd.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (mixed precision runs only there)")
@pytest.mark.slow
def test_mixed_precision_training_on_cuda(dataset, tmp_path, capfd):
    """On a GPU the engine trains under autocast with gradient scaling and keeps finite weights."""
    import models

    gpu = json.loads(json.dumps(EXPERIMENT))
    gpu["train"]["device"] = "cuda"
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        hist, out = train(dataset, "gpu", tmp_path, experiment=gpu)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    err = capfd.readouterr().err
    assert "on cuda" in err and "mixed precision: on" in err
    assert list(hist["epoch"]) == [1, 2, 3] and (hist["val_mse_head"] > 0).all()
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    torch.manual_seed(5)  # the engine's seed: the weights it started from
    init = models.build("edcnn", channels=4, stages=2).state_dict()
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert not all(torch.equal(saved[k], init[k]) for k in init)  # the scaled steps did update the weights


def test_a_cuda_checkpoint_keeps_the_training_gpus_random_state_only(tmp_path, monkeypatch):
    """last.pt holds the random state of the GPU it trained on, not one per visible GPU: a run
    killed where two GPUs were visible resumes where one is (restoring every state indexed
    GPUs the node does not have). An older last.pt's list gives the training GPU's entry, or
    nothing where that GPU is not there. CUDA is faked: this checks which state goes where."""
    from ldct import engine

    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([device.index or 0, 7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state.tolist(), str(device))))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("every GPU's state restored"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    net = torch.nn.Linear(2, 2)
    opt = engine.build_optimizer(net.parameters(), {"lr": 1e-3})
    args = (engine.Schedule(opt, {"lr": 1e-3}, 1, 1), torch.Generator(), torch.amp.GradScaler("cuda", enabled=False))
    checkpoint = engine._Checkpoint(tmp_path, "k", torch.device("cuda:1"))
    checkpoint.save(net, opt, *args, [], 1, 0.0, {})
    assert torch.load(tmp_path / "last.pt", weights_only=True)["cuda_rng"].tolist() == [1, 7]
    checkpoint.resume(net, opt, *args)
    assert restored == [([1, 7], "cuda:1")]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["cuda_rng"] = [torch.tensor([0, 9], dtype=torch.uint8), torch.tensor([1, 9], dtype=torch.uint8)]
    torch.save(state, tmp_path / "last.pt")  # as written before: every visible GPU's state
    for device, expected in (("cuda", [([0, 9], "cuda")]), ("cuda:1", [([1, 9], "cuda:1")]), ("cuda:3", [])):
        restored.clear()
        assert engine._Checkpoint(tmp_path, "k", torch.device(device)).resume(net, opt, *args)["epoch"] == 1
        assert restored == expected
    restored.clear()
    engine._Checkpoint(tmp_path, "k").resume(net, opt, *args)  # resumed on the CPU: no GPU state to set
    assert restored == []


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizers_are_torchs_fused_ones_with_the_same_updates(name):
    """build_optimizer takes torch's fused kernel on the CPU; its steps (with weight decay and a
    changing learning rate) match the plain per-tensor implementation's to rounding."""
    from ldct.engine import build_optimizer

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 1, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    init = [p.detach().clone() for p in nets[0].parameters()]
    cfg = {"lr": 1e-2, "weight_decay": 0.05, "optimizer": name}
    fused = build_optimizer(nets[0].parameters(), cfg)
    plain = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    plain = plain(nets[1].parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                  **({"momentum": 0.9} if name == "sgd" else {}), foreach=False)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    groups = [{"params": [nets[0][0].weight]}, {"params": [nets[0][0].bias], "weight_decay": 0.0}]
    assert build_optimizer(groups, cfg).defaults["fused"]  # parameter groups too
    x = torch.randn(2, 1, 8, 8)
    for step in range(5):
        for opt, net in ((fused, nets[0]), (plain, nets[1])):
            opt.param_groups[0]["lr"] = cfg["lr"] / (step + 1)
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b, a0 in zip(nets[0].parameters(), nets[1].parameters(), init):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, a0)  # five steps did move every parameter


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_exponential_schedule_is_torchs_with_the_linear_warm_up():
    """The engine's one writer of the learning rate gives, float for float, what torch's
    ExponentialLR stepped per epoch gives, times the linear warm-up over the first steps."""
    from ldct.engine import Schedule

    cfg = {"lr": 3e-4, "lr_decay": 0.97, "warmup_iters": 7}
    net = torch.nn.Linear(2, 2)
    ours = Schedule(torch.optim.AdamW(net.parameters(), lr=cfg["lr"]), cfg, steps_per_epoch=5, total_steps=40)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"])
    ref = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg["lr_decay"])
    for step in range(40):
        epoch_lr = ref.get_last_lr()[0]
        expected = epoch_lr * (step + 1) / 7 if step < 7 else epoch_lr
        assert ours.lr(step) == expected
        if step % 5 == 4:
            ref.step()


def test_each_loss_term_is_logged(dataset, tmp_path):
    weighted = json.loads(json.dumps(EXPERIMENT))
    weighted["loss"] = {"name": "l1_weighted"}
    weighted["train"]["epochs"] = 1
    hist, _ = train(dataset, "terms", tmp_path, experiment=weighted)
    assert hist.loc[0, "train_loss"] == pytest.approx(hist.loc[0, "loss_l1"] + hist.loc[0, "loss_head_window"])
    assert hist.loc[0, "loss_head_window"] > 0


@pytest.mark.slow
def test_lr_auto_sweeps_and_keeps_the_best(dataset, tmp_path):
    """`lr: auto` trains each candidate briefly from the same start, records the sweep beside
    the model and trains the run at the winner; a diverging rate is out, not fatal."""
    auto = json.loads(json.dumps(EXPERIMENT))
    auto["train"].update(lr="auto", lr_sweep={"candidates": [1e-4, 1e-3, 1e30], "fraction": 0.34})
    hist, out = train(dataset, "auto", tmp_path, experiment=auto)
    sweep = pd.read_csv(out / "lr_sweep.csv")
    assert list(sweep["lr"]) == [1e-4, 1e-3, 1e30] and sweep["chosen"].sum() == 1
    assert sweep.loc[2, "source"].startswith("sweep: ") and "non-finite" in sweep.loc[2, "source"]
    chosen = float(sweep.loc[sweep["chosen"], "lr"].iloc[0])
    assert chosen == sweep.loc[sweep["val_mse_head"].idxmin(), "lr"] and sweep.loc[0, "steps"] == 2
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert saved["lr"] == chosen and list(hist["epoch"]) == [1, 2, 3]
    assert {"val_psnr_brain", "val_psnr_brain_ldct", "step", "tera_macs"} <= set(hist.columns)
    fixed = json.loads(json.dumps(EXPERIMENT))
    fixed["train"]["lr"] = chosen
    again, _ = train(dataset, "fixed", tmp_path, experiment=fixed)  # the same run as with the rate given
    pd.testing.assert_series_equal(again["val_mse_head"], hist["val_mse_head"])


@pytest.mark.slow
def test_gan_trains_its_discriminators_and_resumes_them(dataset, tmp_path):
    """DU-GAN: the discriminators step before each generator step with their own optimiser, their
    loss is logged beside the generator's terms, and a killed run resumes them exactly."""
    gan = json.loads(json.dumps(EXPERIMENT))
    gan["model"] = {"name": "redcnn", "channels": 4}
    gan["loss"] = {"name": "dugan", "d_width": 4, "d_depth": 2, "cutmix_warmup": 2}
    hist, full = train(dataset, "gan", tmp_path, experiment=gan)
    assert {"loss_pixel", "loss_gradient", "loss_adv_image", "loss_adv_gradient", "loss_discriminator"} <= set(hist.columns)
    assert (hist["loss_discriminator"] > 0).all()
    ck = tmp_path / "gan_ck"
    train(dataset, "gan_resume", tmp_path, experiment=gan, ck=ck, stop_after_epochs=1)
    saved = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)["adversary"]
    assert int(saved["discriminator"]["steps"]) == 2 and saved["opt"]["state"]  # two D steps, Adam moments kept
    again, out = train(dataset, "gan_resume", tmp_path, experiment=gan, ck=ck)
    pd.testing.assert_series_equal(again["loss_discriminator"], hist["loss_discriminator"])
    w1, w2 = weights(full / "model.pt"), weights(out / "model.pt")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_noise2noise_targets_are_the_repeat_scan_and_never_ndct(dataset, tmp_path):
    base, splits = dataset
    data, val = load_training_data(str(base / "nifti"), splits, None, target="repeat")
    s1, s2 = (load_subject(base / "nifti", s, with_repeat=True) for s in ("S001", "S002"))
    assert load_subject(base / "nifti", "S001").repeat is None  # read only when asked for
    assert s1.repeat is not None and torch.equal(torch.from_numpy(data["full"]), torch.from_numpy(s1.repeat))
    assert torch.equal(torch.from_numpy(data["low"]), torch.from_numpy(s1.low)) and set(data) == {"low", "full"}
    assert torch.equal(torch.from_numpy(val["full"]), torch.from_numpy(s2.repeat))  # picks the checkpoint
    assert torch.equal(torch.from_numpy(val["ndct"]), torch.from_numpy(s2.full))  # reported only
    truth = to_slices(read_nifti(base / "phantom" / "S001" / "truth.nii.gz")[0])
    head = truth > 0
    # an independent scan at the input's dose: the same noise level, uncorrelated with the input's noise
    n_low, n_rep = (s1.low - truth)[head], (s1.repeat - truth)[head]
    assert abs(n_rep.std() / n_low.std() - 1) < 0.1
    assert abs(float(((n_low - n_low.mean()) * (n_rep - n_rep.mean())).mean()) / (n_low.std() * n_rep.std())) < 0.1
    lonely = tmp_path / "nifti"
    shutil.copytree(base / "nifti", lonely)
    (lonely / "S002" / REPEAT_NAME).unlink()
    with pytest.raises(DataError, match=r"repeat.nii.gz.*missing for S002"):
        load_training_data(str(lonely), splits, None, target="repeat")


def test_noise2noise_trains_without_ndct(dataset, tmp_path):
    n2n = json.loads(json.dumps(EXPERIMENT))
    n2n["train"].update(target="repeat", epochs=1)
    hist, out = train(dataset, "n2n", tmp_path, experiment=n2n)
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert saved["target"] == "repeat" and len(hist) == 1
    supervised, _ = train(dataset, "n2n_twin", tmp_path, experiment={**n2n, "train": {**n2n["train"], "target": "ndct"}})
    # validation PSNR is reported against NDCT for both (same LDCT level); the checkpoint score is not
    assert hist.loc[0, "val_psnr_brain_ldct"] == supervised.loc[0, "val_psnr_brain_ldct"]
    assert hist.loc[0, "val_mse_head"] != supervised.loc[0, "val_mse_head"]


def test_bm3d_is_calibrated_on_the_training_pairs_and_its_scale_chosen_on_validation(dataset, tmp_path):
    exp = {"model": {"name": "bm3d", "noise_scales": [0.25, 1.0, 4.0], "stages": "hard"}, "loss": {"name": "l1"},
           "train": {**EXPERIMENT["train"], "val_max_slices": 1}}
    hist, out = train(dataset, "bm3d", tmp_path, experiment=exp)
    sweep = pd.read_csv(out / "lr_sweep.csv")
    assert list(sweep["noise_scale"]) == [0.25, 1.0, 4.0] and sweep["chosen"].sum() == 1
    assert sweep.loc[sweep["chosen"], "val_mse_head"].iloc[0] == sweep["val_mse_head"].min()
    assert len(hist) == 1 and hist.loc[0, "step"] == 0 and hist.loc[0, "tera_macs"] == 0
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert float(saved["state_dict"]["noise_scale"]) == sweep.loc[sweep["chosen"], "noise_scale"].iloc[0]
    cov = saved["state_dict"]["autocovariance"]
    r = cov.shape[0] // 2
    assert cov[r, r] == cov.max() and cov[r, r + 1] > 0.1 * cov[r, r]  # FBP noise: correlated with its neighbours


@pytest.mark.slow
def test_wgan_vgg_trains_with_its_critic(dataset, tmp_path):
    from losses.perceptual import VGG19Features

    torch.save(VGG19Features().state_dict(), tmp_path / "vgg19.pth")
    gan = json.loads(json.dumps(EXPERIMENT))
    gan["model"] = {"name": "redcnn", "channels": 4}
    gan["loss"] = {"name": "wgan_vgg", "vgg_weights": str(tmp_path / "vgg19.pth"), "d_width": 4}
    gan["train"]["epochs"] = 1
    hist, _ = train(dataset, "wgan", tmp_path, experiment=gan)
    assert {"loss_adversarial", "loss_vgg", "loss_discriminator"} <= set(hist.columns)
    assert hist[["loss_adversarial", "loss_vgg", "loss_discriminator"]].notna().all().all()


def test_evaluation_reads_the_ndct_segmentation_made_once(dataset, tmp_path):
    """`segment_ndct` writes the segmenter's NDCT labels once; an evaluation that reads them
    gives the same Dice rows as one that segments NDCT itself, and refuses labels of another
    shape, naming the file."""
    import models
    from ldct.anatomy import save_segmenter
    from ldct.errors import DataError
    from ldct.evaluate import evaluate_experiment, segment_ndct
    from ldct.io import write_nifti

    base, splits = dataset
    torch.manual_seed(0)
    seg = str(tmp_path / "seg.pt")
    save_segmenter(seg, models.build("unet", base_width=4), source="test")
    nifti, test = str(base / "nifti"), splits["test"]
    segment_ndct(nifti, test, seg, str(tmp_path / "ndct_seg"), "cpu")
    dice = {}
    for way, seg_dir in (("made", None), ("read", str(tmp_path / "ndct_seg"))):
        evaluate_experiment("LDCT", nifti, test, None, seg, str(tmp_path / f"{way}.csv"),
                            str(tmp_path / f"{way}_dice.csv"), "cpu", ndct_seg_dir=seg_dir)
        dice[way] = pd.read_csv(tmp_path / f"{way}_dice.csv")
    assert (dice["made"]["ndct_px"] > 0).any() and (dice["made"]["out_px"] > 0).any()
    pd.testing.assert_frame_equal(dice["made"], dice["read"])
    write_nifti(tmp_path / "bad" / f"{test[0]}.nii.gz", np.zeros((4, 4, 2)), np.eye(4), dtype=np.uint8)
    with pytest.raises(DataError, match=f"{test[0]}.nii.gz: shape .* differs from the NDCT"):
        evaluate_experiment("LDCT", nifti, test, None, seg, str(tmp_path / "bad.csv"), str(tmp_path / "bad_dice.csv"),
                            "cpu", ndct_seg_dir=str(tmp_path / "bad"))
    assert not (tmp_path / "bad.csv").exists()
    # all subjects or none: a failure on a later subject left the earlier ones rewritten
    with pytest.raises(DataError, match="NOPE"):
        segment_ndct(nifti, [*test, "NOPE"], seg, str(tmp_path / "partial"), "cpu")
    assert not (tmp_path / "partial" / f"{test[0]}.nii.gz").exists()


def test_runs_that_cannot_give_a_result_stop_clearly_and_write_nothing(dataset, tmp_path):
    """A loss that needs the segmenter without it, a learning-rate sweep where every rate
    diverges, a model that outputs NaN, a denoised volume of the wrong shape: one clear error
    each, and no model, NIfTI or metrics file left behind."""
    from ldct.evaluate import denoise_subjects, evaluate_experiment
    from ldct.io import write_nifti

    base, splits = dataset
    ana = {**EXPERIMENT, "loss": {"name": "l1_l1ana_1"}}
    with pytest.raises(TrainingError, match="needs the segmenter checkpoint"):
        train(dataset, "ana", tmp_path, experiment=ana)
    wild = {**EXPERIMENT, "train": {**EXPERIMENT["train"], "lr": "auto",
                                    "lr_sweep": {"candidates": [1e30, 1e31], "fraction": 0.34}}}
    with pytest.raises(TrainingError, match=r"every learning rate of the sweep diverged: \[1e\+30, 1e\+31\]; "
                                            r"1e\+30: epoch 1, step \d+.*non-finite loss"):
        train(dataset, "wild", tmp_path, experiment=wild)
    assert not (tmp_path / "ana" / "model.pt").exists() and not (tmp_path / "wild" / "model.pt").exists()

    _, out = train(dataset, "ok", tmp_path)
    # the denoised volume keeps the model's float output (whole HU would bias PSNR and SSIM)
    denoise_subjects(str(out / "model.pt"), str(base / "nifti"), ["S002"], str(tmp_path / "den_ok"), device="cpu")
    kept = nib.load(str(tmp_path / "den_ok" / "S002.nii.gz"))
    assert kept.get_data_dtype() == np.float32
    assert not np.array_equal(np.asarray(kept.dataobj), np.rint(np.asarray(kept.dataobj)))
    with pytest.raises(DataError, match="NOPE"):  # a later subject fails: the earlier one is not written either
        denoise_subjects(str(out / "model.pt"), str(base / "nifti"), ["S002", "NOPE"], str(tmp_path / "den2"), "cpu")
    assert not (tmp_path / "den2" / "S002.nii.gz").exists()
    ck = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    first = next(iter(ck["state_dict"]))
    ck["state_dict"][first] = torch.full_like(ck["state_dict"][first], float("nan"))
    torch.save(ck, tmp_path / "nan.pt")
    with pytest.raises(DataError, match="nan.pt: produced non-finite values on S002"):
        denoise_subjects(str(tmp_path / "nan.pt"), str(base / "nifti"), ["S002"], str(tmp_path / "den"), device="cpu")
    assert not (tmp_path / "den" / "S002.nii.gz").exists()

    full, affine = read_nifti(base / "nifti" / "S002" / "full.nii.gz")
    write_nifti(tmp_path / "den" / "S002.nii.gz", full[:-2], affine)
    with pytest.raises(DataError, match=r"den/S002.nii.gz: shape .* differs from the NDCT.s"):
        evaluate_experiment("x", str(base / "nifti"), ["S002"], str(tmp_path / "den"), segmenter=None,
                            out_metrics=str(tmp_path / "m.csv"), out_dice=None, device="cpu")
    assert not (tmp_path / "m.csv").exists()
    # a NaN slice was scored (its PSNR NaN, left out of the means), and a volume flipped with a
    # matching affine (the same image in the world) was scored voxel by voxel against the NDCT
    bad = {"nan": (np.where(np.arange(full.shape[2]) == 1, np.nan, full), affine, "contains NaN or inf"),
           "flipped": (full[::-1], affine @ np.diag([-1.0, 1, 1, 1]), "its affine differs from the NDCT's"),
           "4d": (full[..., None], affine, "a 4-D volume")}
    for name, (vol, aff, message) in bad.items():
        write_nifti(tmp_path / name / "S002.nii.gz", vol, aff, dtype=np.float32)
        with pytest.raises(DataError, match=f"{name}/S002.nii.gz: {message}"):
            evaluate_experiment("x", str(base / "nifti"), ["S002"], str(tmp_path / name), segmenter=None,
                                out_metrics=str(tmp_path / "m.csv"), out_dice=None, device="cpu")
    assert not (tmp_path / "m.csv").exists()


def test_subjects_of_different_matrix_sizes_are_named(tmp_path):
    """Stacking 64x64 and 48x48 subjects failed in numpy with no subject named."""
    from ldct.data import stack_subjects
    from ldct.io import write_nifti

    for subject, n in (("A", 64), ("B", 48)):
        for name in ("full.nii.gz", "low.nii.gz"):
            write_nifti(tmp_path / subject / name, np.zeros((n, n, 2)), np.eye(4))
    with pytest.raises(DataError, match=r"slices differ in size \(A 64x64, B 48x48\)"):
        stack_subjects(tmp_path, ["A", "B"], with_labels=False)
