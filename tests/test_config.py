import copy
from pathlib import Path

import pytest
import yaml

from ldct.config import ConfigError, load_config, validate_config
from ldct.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "config.yaml", *sorted((ROOT / "tests" / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    named = (yaml.safe_load(path.read_text()) or {}).get("experiments") or {}
    assert cfg["experiments"] and set(named) <= set(cfg["experiments"])  # every experiment the file names
    assert all(spec["model"]["name"] and spec["loss"]["name"] for spec in cfg["experiments"].values())
    assert cfg["normalization"] == {"hu_min": -1024.0, "hu_max": 3072.0}


def test_defaults_are_filled_for_an_empty_config():
    cfg = validate_config({})
    assert cfg["dataset"]["name"] == "synthetic"
    assert cfg["synthetic"]["dose_fractions"] == [0.25]
    assert cfg["train"]["lr_decay"] == 0.99
    assert "redcnn_l1" in cfg["experiments"]


def test_every_schema_key_has_default_and_description():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")

    walk(schema, "")


@pytest.mark.parametrize("patch, key", [
    ({"train": {"lr": -1}}, "train.lr: less than or equal to the minimum of 0"),
    ({"synthetic": {"matrix": "big"}}, "synthetic.matrix: is not of type 'integer'"),
    ({"dataset": {"source": "ftp"}}, "dataset.source: is not one of"),
    ({"unknown_key": 1}, "(top level): 'unknown_key' was unexpected"),
    ({"experiments": {"x": {"model": {"name": "nonexistent"}, "loss": {"name": "l1"}}}},
     "experiments.x.model.name: unknown model 'nonexistent'"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l9"}}}},
     "experiments.x.loss.name: unknown loss 'l9'"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"lr": 0}}}},
     "experiments.x.train.lr: less than or equal to the minimum of 0"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"lrr": 1}}}},
     "experiments.x.train: 'lrr' was unexpected"),
    ({"dataset": {"source": "dicom"}}, "dataset.dicom_root: required when dataset.source is 'dicom'"),
    ({"dataset": {"source": "dicom", "dicom_root": "/data"}}, "segmenter.weights: no labels to pre-train"),
    ({"split": {"method": "preset"}}, "split.preset: required when split.method is 'preset'"),
    ({"dataset": {"source": "dicom", "dicom_root": "/data", "layout": "generic"}, "segmenter": {"weights": "w.pth"}},
     "dataset.series: the generic layout needs"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_2", "classes": [10, 17]}}}},
     "experiments.x.loss: classes [17] are not class ids"),
    ({"experiments": {"x": {"model": {"name": "redcnn", "channnels": 32}, "loss": {"name": "l1"}}}},
     "experiments.x.model: redcnn does not take 'channnels'"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_1", "weight": 0.1}}}},
     "experiments.x.loss: l1_l1ana_1 does not take 'weight'"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_1", "segmenter": "x"}}}},
     "experiments.x.loss: l1_l1ana_1 does not take 'segmenter'"),
    ({"dataset": {"source": "dicom", "dicom_root": "/data"}, "segmenter": {"weights": "w.pth"},
      "experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"target": "repeat"}}}},
     "experiments.x.train.target: repeat (Noise2Noise) needs a second"),
    ({"train": {"lr": float("nan")}}, "train.lr: nan is not a finite number"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1", "weight": 0.5}}}},
     "experiments.x.loss: l1 does not take 'weight'"),  # l1 has no __init__: torch's Module(**kwargs) took anything
    ({"experiments": [{"name": "x", "model": {"name": "redcnn"}, "loss": {"name": "l1"}}]},
     "experiments: must be a mapping"),
    ({"train": [1, 2]}, "train: must be a mapping"),
    ({"seed": -1}, "seed: less than the minimum of 0"),
    ({"train": {"budget": {"tera_macs": float("inf")}}}, "train.budget.tera_macs: inf is not a finite number"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"lr": float("nan")}}}},
     "experiments.x.train.lr: nan is not a finite number"),
    ({"synthetic": {"dose_fractions": [0.25, float("nan")]}}, "synthetic.dose_fractions.1: nan is not a finite number"),
    ({"synthetic": {"dose_fractions": [1.0]}}, "synthetic.dose_fractions.0: greater than or equal to the maximum of 1"),
    ({"synthetic": {"dose_fractions": [0.25, 0.25]}}, "synthetic.dose_fractions: non-unique elements"),
    ({"synthetic": {"z_range_mm": [40.0, -20.0]}}, "synthetic.z_range_mm: is not [low, high]"),
    ({"train": {"crop_scale": [1.0, 0.5]}}, "train.crop_scale: is not [low, high]"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"crop_scale": [0.9, 0.6]}}}},
     "experiments.x.train.crop_scale: is not [low, high]"),
    ({"normalization": {"hu_min": 100.0, "hu_max": -100.0}}, "normalization: must be below hu_max"),
    ({"train": {"device": "gpu"}}, "train.device: 'gpu' does not match"),
    ({"split": {"fractions": {"val": 0.6, "test": 0.6}}}, "split.fractions: leaves no training subjects"),
    ({"dataset": {"name": ".."}}, "dataset.name: '..' does not match"),  # results/..: beside results/
    ({"experiments": {"..": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}}}}, "experiments: '..' does not match"),
    ({"split": {"fractions": {"val": 0.0}}}, "split.fractions.val: must be > 0"),  # was one validation subject anyway
    ({"split": {"fractions": {"test": 0.0}}}, "split.fractions.test: must be > 0"),  # was one test subject anyway
    ({"segmenter": {"device": "cuda0"}}, "segmenter.device: 'cuda0' does not match"),
    ({"dataset": {"source": "dicom", "dicom_root": "/data/scans {v2}"}, "segmenter": {"weights": "w.pth"}},
     "dataset.dicom_root: '/data/scans {v2}' has a brace"),  # was Snakemake's WildcardError naming neither
    ({"results": "out{1}"}, "results: 'out{1}' has a brace"),
    # the anatomical-effect table reported any <m>_ana minus <m>_l1 as the anatomical loss's effect
    ({"experiments": {"m_l1": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}},
                      "m_ana": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}}}},
     "experiments.m_ana: the anatomical-effect table pairs it with m_l1 by name as the anatomical loss's effect, but its "
     "loss 'l1' is not an anatomical perception loss"),
    ({"experiments": {"m_l1": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}},
                      "m_ana": {"model": {"name": "edcnn"}, "loss": {"name": "l1_l1ana_1"}}}},
     "experiments.m_ana: the anatomical-effect table pairs it with m_l1 by name as the anatomical loss's effect, but its "
     "model {'name': 'edcnn'} is not m_l1's {'name': 'redcnn'}"),
    ({"experiments": {"m_l1": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}},
                      "m_ana": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_1"},
                                "train": {"lr": 0.1, "patch_size": 32}}}},
     "experiments.m_ana: the anatomical-effect table pairs it with m_l1 by name as the anatomical loss's effect, but its "
     "training settings differ from m_l1's in patch_size"),  # the rate is named by the caption; the patch was not
    ({"experiments": {"ndct": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}}}},
     "experiments.ndct: 'ndct' is the name of a row"),  # its folder is NDCT's on a case-insensitive disk
])
def test_invalid_config_names_the_key(patch, key):
    """`key` is 'the key: part of the reason': an error at the same key for another reason fails."""
    key, reason = key.split(": ", 1)
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(patch))
    assert f"config error at {key}: " in str(err.value) and reason in str(err.value)


def test_misspelt_model_argument_names_what_the_model_takes():
    cfg = {"experiments": {"x": {"model": {"name": "redcnn", "channnels": 32}, "loss": {"name": "l1"}}}}
    with pytest.raises(ConfigError, match="redcnn does not take 'channnels'; it takes: channels"):
        validate_config(cfg)


def test_a_test_fraction_of_zero_is_accepted_with_val_as_test():
    cfg = validate_config({"split": {"fractions": {"val": 0.3, "test": 0.0}, "val_as_test": True}})
    assert cfg["split"]["fractions"]["test"] == 0.0


@pytest.mark.parametrize("model, loss, message", [
    ({"name": "edcnn"}, {"name": "l1_weighted", "weight": -50}, r"experiments.x.loss: weight must be >= 0"),
    ({"name": "edcnn"}, {"name": "l1_weighted", "weight": "x"}, r"experiments.x.loss: l1_weighted: weight must be a number or null, got 'x'"),
    ({"name": "edcnn"}, {"name": "l1_l1ana_1", "ana_weight": -5}, r"experiments.x.loss: ana_weight must be in \[0, 1\], got -5"),
    ({"name": "edcnn"}, {"name": "l1_l1ana_1", "ana_weight": "big"}, r"experiments.x.loss: l1_l1ana_1: ana_weight must be a number, got 'big'"),
    ({"name": "edcnn"}, {"name": "l1_l1ana_2", "ana_weight": 2.0, "classes": [1]}, r"experiments.x.loss: ana_weight must be in"),
    ({"name": "edcnn"}, {"name": "ssim_l1", "scale": 0}, r"experiments.x.loss: scale must be > 0"),
    ({"name": "edcnn"}, {"name": "dugan", "spectral": "maybe"}, r"experiments.x.loss: dugan: spectral must be true or false"),
    ({"name": "edcnn", "channels": 8.5}, {"name": "l1"}, r"experiments.x.model: edcnn: channels must be an integer, got 8.5"),
])
def test_model_and_loss_arguments_are_checked_at_validation(model, loss, message):
    """A loss weight of the wrong sign or type passed validation and trained (a negative
    head-window weight maximises the error there) or failed at the first step with a traceback."""
    with pytest.raises(ConfigError, match=message):
        validate_config({"experiments": {"x": {"model": model, "loss": loss}}})
    ok = validate_config({"experiments": {"x": {"model": {"name": "edcnn"}, "loss": {"name": "l1_weighted", "weight": None}}}})
    assert ok["experiments"]["x"]["loss"]["weight"] is None


def test_experiment_overrides_merge_with_training_defaults():
    cfg = validate_config({"train": {"epochs": 3, "lr": 0.01, "budget": {"protocol": "converged"}},
                           "experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}, "train": {"lr": 0.1}}}})
    s = ExperimentSpec.from_config(cfg, "a")
    assert s.train["lr"] == 0.1 and s.train["epochs"] == 3 and s.budget["steps"] == 3 * s.train["iters_per_epoch"]
    assert ExperimentSpec.from_json(s.to_json()) == s


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- dataset: {name: x}\n")
    with pytest.raises(ConfigError, match="listed.yaml: the top level must be a mapping of sections .*not a list"):
        load_config(listed)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train: {batchsize: 4}\n")  # the file named, as the reading errors name it
    with pytest.raises(ConfigError, match=r"typo.yaml: config error at train: .*'batchsize' was unexpected"):
        load_config(typo)


def test_an_experiment_appended_under_the_last_section_is_named_as_one(tmp_path):
    """Appended at the end of config.yaml, a new experiment lands under complexity: the error
    said only that complexity takes no such key."""
    text = (ROOT / "config.yaml").read_text()
    assert list(yaml.safe_load(text))[-1] == "complexity"  # the section it lands in
    cfg = tmp_path / "appended.yaml"
    cfg.write_text(text + "  mynet_l1:\n    model: {name: edcnn}\n    loss: {name: l1}\n")
    with pytest.raises(ConfigError, match=r"at complexity: .*'mynet_l1' looks like an experiment: put it under experiments:"):
        load_config(cfg)
    cfg.write_text(text + "  typo: 3\n")  # a mere misspelling gets no such hint
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "looks like an experiment" not in str(err.value)


def test_strings_from_the_command_line_are_read_as_the_schema_types():
    """Snakemake passes nested `--config` values as strings ('2', 'false', '[0.4, 1]', 'null')."""
    cfg = {"train": {"epochs": "2", "augment": "false", "crop_scale": ["0.4", "1"], "patch_size": "null"},
           "synthetic": {"dose_fractions": "[0.25, 0.1]"}, "segmenter": {"weights": "null"},
           "dataset": {"name": "123"},
           "experiments": {"a": {"model": {"name": "featkpn", "nf": "8", "near_identity_init": "true"},
                                 "loss": {"name": "l1_l1ana_1", "ana_weight": "0.02"}, "train": {"lr": "1e-3"}}}}
    v = validate_config(cfg)
    assert v["train"]["epochs"] == 2 and v["train"]["augment"] is False and v["train"]["patch_size"] is None
    assert v["train"]["crop_scale"] == [0.4, 1] and v["synthetic"]["dose_fractions"] == [0.25, 0.1]
    assert v["segmenter"]["weights"] is None and v["dataset"]["name"] == "123"  # a string stays a string
    exp = v["experiments"]["a"]
    assert exp["model"] == {"name": "featkpn", "nf": 8, "near_identity_init": True}
    assert exp["loss"]["ana_weight"] == 0.02 and exp["train"]["lr"] == 0.001
    with pytest.raises(ConfigError, match="train.epochs: 'two' is not of type 'integer'"):
        validate_config({"train": {"epochs": "two"}})


def test_engine_injected_arguments_are_refused():
    for part, arg in (("model", "seg_width"), ("model", "hu_range"), ("loss", "segmenter")):
        exp = {"model": {"name": "sgdnet"}, "loss": {"name": "l1_l1ana_1"}}
        exp[part] = {**exp[part], arg: 1}
        with pytest.raises(ConfigError, match=f"does not take '{arg}'"):
            validate_config({"experiments": {"x": exp}})


def test_optimiser_and_schedule_names_agree_with_the_engine():
    from ldct import engine
    from ldct.config import load_schema

    for section in ("train", "segmenter"):
        props = load_schema()["properties"][section]["properties"]
        assert tuple(props["optimizer"]["enum"]) == engine.OPTIMIZERS
        assert tuple(props["schedule"]["enum"]) == engine.SCHEDULES


def test_a_numbered_cuda_device_and_nan_from_the_command_line():
    """cuda:N is a device; '.nan' given on Snakemake's command line is read as NaN and refused."""
    assert validate_config({"train": {"device": "cuda:1"}})["train"]["device"] == "cuda:1"
    with pytest.raises(ConfigError, match=r"config error at train.lr: nan is not a finite number"):
        validate_config({"train": {"lr": ".nan"}})


@pytest.mark.parametrize("name", ["LDCT", "NDCT", "noiseless"])
def test_an_experiment_may_not_take_a_reserved_row_name(name):
    with pytest.raises(ConfigError, match=f"experiments.{name}: '{name}' is the name of a row every table shows"):
        validate_config({"experiments": {name: {"model": {"name": "edcnn"}, "loss": {"name": "l1"}}}})


def test_split_settings_that_would_be_ignored_are_refused():
    with pytest.raises(ConfigError, match="split.preset: 'featkpn' is used only with split.method: preset"):
        validate_config({"split": {"preset": "featkpn"}})
    with pytest.raises(ConfigError, match=r"split.fractions: train \+ val \+ test = 1.1, not 1"):
        validate_config({"split": {"fractions": {"train": 0.8, "val": 0.1, "test": 0.2}}})
    assert validate_config({"split": {"fractions": {"val": 0.3, "test": 0.3}}})["split"]["fractions"]["train"] is None
    from ldct.config import validate_section  # `ldct split` checks the same

    with pytest.raises(ConfigError, match="split.preset: 'featkpn' is used only with split.method: preset"):
        validate_section("split", {"preset": "featkpn"})


def test_an_experiments_nested_train_keys_add_to_the_global_ones():
    """experiments.a.train.lr_sweep: {fraction: 0.5} keeps the global candidates (a shallow merge
    dropped them and training failed); the spec the workflow trains from has both."""
    cfg = validate_config({"train": {"lr": "auto", "lr_sweep": {"candidates": [1e-3, 1e-4]}},
                           "experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"},
                                                 "train": {"lr_sweep": {"fraction": 0.5}}}}})
    spec = ExperimentSpec.from_config(cfg, "a")
    assert spec.train["lr_sweep"] == {"candidates": [1e-3, 1e-4], "fraction": 0.5}
    assert spec.train["budget"]["protocol"] == "equal_macs"


def test_whole_number_floats_for_integer_keys_become_integers():
    """seed: 1e3 or batch_size: 2.0 pass the schema (JSON's integers) but crashed numpy and torch
    deep in a job; they are integers, the same spec as 1000 and 2; 2.5 is still refused."""
    cfg = validate_config({"seed": "1e3", "train": {"batch_size": 2.0},
                           "synthetic": {"n_subjects": 12.0}, "experiments": {"a": {"model": {"name": "edcnn"},
                                                                                   "loss": {"name": "l1"}}}})
    assert cfg["seed"] == 1000 and isinstance(cfg["seed"], int)
    assert type(cfg["train"]["batch_size"]) is int and type(cfg["synthetic"]["n_subjects"]) is int
    with pytest.raises(ConfigError, match="train.batch_size"):
        validate_config({"train": {"batch_size": 2.5}})


def test_settings_a_training_never_reads_leave_its_spec_unchanged():
    """The spec is the training's rerun and resume key: a table's threshold (min_gain_db),
    patience outside `converged`, the compute once turned into steps, the sweep's grid when the
    rate is given and a crop's scale when nothing is cropped must not retrain anything."""
    def spec(**train) -> str:
        cfg = validate_config({"train": {"lr": 1e-3, **train},
                               "experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}}}})
        return ExperimentSpec.from_config(cfg, "a").to_json()

    base = spec()
    assert spec(budget={"min_gain_db": 0.5}) == base
    assert spec(budget={"patience": 3}) == base  # equal_macs: no early stop
    assert spec(lr_sweep={"candidates": [1e-2]}) == base
    assert spec(crop_scale=[0.3, 1.0]) == base
    # what a training does read still changes it
    assert spec(budget={"tera_macs": 0.1}) != base and spec(crop_prob=0.5) != base  # fewer steps
    assert spec(budget={"protocol": "converged", "patience": 3}) != spec(budget={"protocol": "converged", "patience": 4})
    assert spec(lr="auto") != base


def test_a_workflow_spec_trained_as_is_keeps_its_settings_and_key():
    """`ldct train --spec` validates the spec (filling the schema's defaults) and trims it again:
    the saved spec and the resume key are the workflow's, not 2 x 10^12 MACs and 400 steps from
    the schema; an option needing a setting the spec left out is refused, not defaulted."""
    from ldct.cli import spec_with_overrides
    from ldct.errors import UsageError

    cfg = validate_config({"train": {"lr": 1e-3, "budget": {"tera_macs": 1.0, "steps": 800, "evaluations": 8}},
                           "experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}},
                                           "b": {"model": {"name": "bm3d"}, "loss": {"name": "l1"},
                                                 "train": {"lr": "auto"}}}})
    spec = ExperimentSpec.from_config(cfg, "a")
    again = ExperimentSpec.from_json(spec.to_json())
    assert spec_with_overrides(again, {}).to_json() == spec.to_json()
    assert spec_with_overrides(again, {"lr": 2e-3}).train["lr"] == 2e-3
    with pytest.raises(UsageError, match="--lr-sweep-candidates: this spec has no such setting"):
        spec_with_overrides(again, {"lr": "auto"})
    assert "lr_sweep" not in ExperimentSpec.from_config(cfg, "b").train  # calibrated (BM3D): no rate to sweep


def test_an_experiment_cannot_set_its_own_budget():
    """The budget is the comparison's rule: one experiment with its own (a larger compute, more
    validations, another min_gain_db) would be ranked under a caption that is not its own."""
    exp = {"model": {"name": "edcnn"}, "loss": {"name": "l1"}, "train": {"budget": {"evaluations": 4}}}
    with pytest.raises(ConfigError, match="experiments.a.train.budget: the budget is one rule for every experiment"):
        validate_config({"experiments": {"a": exp}})


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path):
    """Two `train:` sections: YAML keeps the second, so the first's lr was lost; in the workflow
    too (Snakemake reads the file the same way)."""
    import subprocess
    import sys

    from ldct.config import load_config

    f = tmp_path / "twice.yaml"
    f.write_text("train:\n  lr: 0.001\nseed: 3\ntrain:\n  batch_size: 2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML: key 'train' appears twice .*first on line 1"):
        load_config(f)
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(root / "Snakefile"),
                          "--configfile", str(f), "--directory", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode != 0 and "key 'train' appears twice" in res.stdout + res.stderr
    assert f"{f}: {f}" not in res.stdout + res.stderr  # named once (the validation's prefix is not added)


def test_yaml_merge_keys_still_work(tmp_path):
    """The duplicate-key check leaves YAML's `<<:` merges alone (a merged key may be overridden
    by an explicit one)."""
    from ldct.config import load_config

    f = tmp_path / "merge.yaml"
    f.write_text("train:\n  <<: {lr: 0.001, batch_size: 2}\n  batch_size: 4\n"
                 "experiments: {a: {model: {name: edcnn}, loss: {name: l1}}}\n")
    cfg = load_config(f)
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["batch_size"] == 4
    f.write_text("train:\n  <<: {lr: 0.001, lr: 0.002}\n")  # inside an inline merge: still refused
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        load_config(f)


def test_a_home_folder_tilde_in_the_paths_is_expanded(monkeypatch, tmp_path):
    """YAML and a quoted --config keep `~` literal: `~/scans` was reported missing."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate_config({"results": "~/res", "dataset": {"source": "dicom", "dicom_root": "~/scans", "layout": "generic",
                                                          "series": {"p1": {"full": "~/p1/fd", "low": "qd"}}},
                           "segmenter": {"weights": "~/w.pth"}, "split": {"method": "preset", "preset": "~/s.json",
                                                                         "val_as_test": True}})
    assert cfg["results"] == str(tmp_path / "res") and cfg["dataset"]["dicom_root"] == str(tmp_path / "scans")
    assert cfg["dataset"]["series"]["p1"] == {"full": str(tmp_path / "p1" / "fd"), "low": "qd"}
    assert cfg["segmenter"]["weights"] == str(tmp_path / "w.pth") and cfg["split"]["preset"] == str(tmp_path / "s.json")


def test_an_anatomical_pair_may_spell_a_default_argument_out():
    """{channels: 96} is redcnn's default: the same model as {} (it was refused as another)."""
    cfg = validate_config({"experiments": {"m_l1": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}},
                                           "m_ana": {"model": {"name": "redcnn", "channels": 96},
                                                     "loss": {"name": "l1_l1ana_1"}}}})
    assert list(cfg["experiments"]) == ["m_l1", "m_ana"]
    # the rate and its sweep are each run's own (the caption names differing rates)
    validate_config({"experiments": {"m_l1": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}},
                                     "m_ana": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_1"},
                                               "train": {"lr": 0.001, "lr_sweep": {"fraction": 0.5}}}}})
