"""The command line: config sections as typed options, and user mistakes as one-line errors."""

import json
import shlex

import pytest

from ldct.cli import build_parser, main, section_flags
from ldct.config import load_config


@pytest.mark.parametrize("section, command", [("synthetic", "synthesize"), ("split", "split"),
                                              ("segmenter", "pretrain-segmenter"), ("train", "train"),
                                              ("clinical", "clinical-measure")])
def test_section_flags_give_the_config_back(section, command):
    """What the rules pass (section_flags) parses back to the same values: negative numbers in
    lists, booleans, nulls and nested keys included."""
    from ldct.cli import _given

    cfg = load_config("config.yaml")
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
    assert "split.preset is required" in capfd.readouterr().err
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
