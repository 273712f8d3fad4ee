"""The segmentation U-Net shipped for the default synthetic benchmark still fits the phantom.

config.yaml loads ldct/presets/segmenter_synthetic.pt instead of pre-training the U-Net in every
run. The file was trained on the phantom as it is now; a change to the phantom's anatomy or
labels that the file no longer fits fails here (remake it as the README says)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ldct.anatomy import dice_per_class, load_weights
from ldct.inference import segment
from ldct.config import load_config
from ldct.lowdose import make_geometry, simulate_doses
from ldct.phantom import draw_subject, synthesize_subject
from ldct.synthetic import subject_seed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_segmenter_segments_an_unseen_synthetic_subject():
    cfg = load_config(ROOT / "config.yaml")
    seg_cfg, s = cfg["segmenter"], cfg["synthetic"]
    ck = torch.load(ROOT / seg_cfg["weights"], map_location="cpu", weights_only=True)
    assert ck["val_mean_dice"] >= 0.75  # as trained: mean foreground Dice on its 4 validation subjects
    net = load_weights(ROOT / seg_cfg["weights"], seg_cfg)
    # a subject outside the default run's 20 (S001-S020): new deformation, size, tilt, lesions
    seed = subject_seed(cfg["seed"], "S100")
    ph = synthesize_subject(draw_subject("S100", seed, s["lesion_probability"]), s["matrix"],
                            s["fov_mm"] / s["matrix"], s["slice_mm"], tuple(s["z_range_mm"]))
    ndct = simulate_doses(ph["hu"], make_geometry(s), s["i0"], s["dose_fractions"][:1], s["electronic_noise"], seed)[1.0]
    dice = dice_per_class(segment(net, ndct, torch.device("cpu")), ph["labels"])
    assert np.nanmean(dice[1:]) >= 0.7, np.round(dice, 2)
    assert dice[1] > 0.85 and dice[10] > 0.6  # brain parenchyma, ventricles

    # scanner padding outside the reconstruction circle (-3024 HU, as GE writes) is segmented as
    # the clipped volume (every denoised output is clipped to [-1024, 3072]); fed raw, it would
    # relabel tissue inside the circle, the case this guards
    n = ndct.shape[-1]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    padded = np.where((np.hypot(yy, xx) > 0.47 * n) & (ndct < -900), -3024.0, ndct).astype(np.float32)
    assert (padded == -3024).any()
    labels = segment(net, padded, torch.device("cpu"))
    assert np.array_equal(labels, segment(net, np.maximum(padded, -1024), torch.device("cpu")))
    with torch.no_grad():
        raw = net(torch.from_numpy(padded)[:, None]).argmax(1).numpy()
    assert (raw != labels).sum() > 0.001 * labels.size


def test_a_turned_segmenter_sees_the_slice_turned_and_answers_in_the_slices_layout(tmp_path):
    """orientation dcm2niix: the U-Net sees each slice turned a quarter clockwise (the published
    network's layout); its logits and features come back in the slice's own layout. The turn
    travels in segmenter.pt, and weights saved with another orientation are refused."""
    import models
    from ldct.anatomy import save_segmenter
    from ldct.errors import ConfigError
    from ldct.inference import load_checkpoint, load_segmenter

    torch.manual_seed(0)
    plain = models.build("unet", base_width=4, norm="instance")
    turned = models.build("unet", base_width=4, norm="instance", turns=1)
    turned.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 32, 48)
    lp, fp = plain(torch.rot90(x, -1, (-2, -1)), return_features=True)
    lt, ft = turned(x, return_features=True)
    assert lt.shape == (2, 17, 32, 48) and torch.allclose(torch.rot90(lp, 1, (-2, -1)), lt, atol=1e-5)
    assert all(torch.allclose(torch.rot90(a, 1, (-2, -1)), b, atol=1e-5) for a, b in zip(fp, ft))
    save_segmenter(tmp_path / "seg.pt", turned, "test")
    # the package versions, not the commit or machine: the same weights, the same bytes (trainings resume by them)
    first = (tmp_path / "seg.pt").read_bytes()
    assert "(" not in load_checkpoint(tmp_path / "seg.pt")["versions"]["ldct"]
    save_segmenter(tmp_path / "seg.pt", turned, "test")
    assert (tmp_path / "seg.pt").read_bytes() == first
    assert load_segmenter(tmp_path / "seg.pt", torch.device("cpu")).turns == 1
    cfg = {"base_width": 4, "norm": "instance"}
    assert load_weights(tmp_path / "seg.pt", {**cfg, "orientation": "dcm2niix"}).turns == 1
    with pytest.raises(ConfigError, match="sees slices turned 1 time.*segmenter.orientation='display'"):
        load_weights(tmp_path / "seg.pt", {**cfg, "orientation": "display"})
    old = load_checkpoint(tmp_path / "seg.pt")
    del old["turns"]  # a segmenter.pt written before orientations: it learnt displayed slices
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match="sees slices turned 0 time"):
        load_weights(tmp_path / "old.pt", {**cfg, "orientation": "dcm2niix"})
    # SGDNet's own copy of the U-Net takes the turn from segmenter.pt, and model.pt records it
    from ldct.config import validate_config
    from ldct.spec import ExperimentSpec

    cfg = validate_config({"segmenter": cfg, "experiments": {"s": {"model": {"name": "sgdnet", "width": 4},
                                                                   "loss": {"name": "l1"}}}})
    net, saved = ExperimentSpec.from_config(cfg, "s", resolve=False).build_model(load_checkpoint(tmp_path / "seg.pt"))
    assert net.segmenter.turns == 1 and saved["seg_turns"] == 1


def test_given_weights_in_common_wrappers_load(tmp_path):
    """A state dict saved inside {'model_state_dict': ...} or from DataParallel ('module.' names)
    loads; names that are not the U-Net's are listed (the message blamed base_width before)."""
    import models
    from ldct.errors import ConfigError

    net = models.build("unet", base_width=4, norm="instance")
    cfg = {"base_width": 4, "norm": "instance"}
    state = net.state_dict()
    torch.save({"model_state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "parallel.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 9}, tmp_path / "both.pth")
    for name in ("wrapped", "parallel", "both"):
        loaded = load_weights(tmp_path / f"{name}.pth", cfg)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    torch.save({("enc." + k): v for k, v in state.items()}, tmp_path / "renamed.pth")
    with pytest.raises(ConfigError, match=r"renamed.pth: its parameter names are not the U-Net's .* missing"):
        load_weights(tmp_path / "renamed.pth", cfg)
