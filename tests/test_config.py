import copy
from pathlib import Path

import pytest
import yaml

from ldct.config import ConfigError, experiment_settings, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "config.yaml", *sorted((ROOT / "tests" / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg["experiments"]
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
    ({"train": {"lr": -1}}, "train.lr"),
    ({"synthetic": {"matrix": "big"}}, "synthetic.matrix"),
    ({"dataset": {"source": "ftp"}}, "dataset.source"),
    ({"unknown_key": 1}, "(top level)"),
    ({"experiments": {"x": {"model": {"name": "nonexistent"}, "loss": {"name": "l1"}}}}, "experiments.x.model.name"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l9"}}}}, "experiments.x.loss.name"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"lr": 0}}}},
     "experiments.x.train.lr"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1"}, "train": {"lrr": 1}}}},
     "experiments.x.train"),
    ({"dataset": {"source": "dicom"}}, "dataset.dicom_root"),
    ({"dataset": {"source": "dicom", "dicom_root": "/data"}}, "segmenter.weights"),
    ({"split": {"method": "preset"}}, "split.preset"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_2", "classes": [10, 17]}}}},
     "experiments.x.loss"),
    ({"experiments": {"x": {"model": {"name": "redcnn", "channnels": 32}, "loss": {"name": "l1"}}}},
     "experiments.x.model"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_1", "weight": 0.1}}}},
     "experiments.x.loss"),
    ({"experiments": {"x": {"model": {"name": "redcnn"}, "loss": {"name": "l1_l1ana_1", "segmenter": "x"}}}},
     "experiments.x.loss"),
])
def test_invalid_config_names_the_key(patch, key):
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(patch))
    assert f"config error at {key}" in str(err.value)


def test_misspelt_model_argument_names_what_the_model_takes():
    cfg = {"experiments": {"x": {"model": {"name": "redcnn", "channnels": 32}, "loss": {"name": "l1"}}}}
    with pytest.raises(ConfigError, match="redcnn does not take 'channnels'; it takes: channels"):
        validate_config(cfg)


def test_experiment_overrides_merge_with_training_defaults():
    cfg = validate_config({"train": {"epochs": 3, "lr": 0.01},
                           "experiments": {"a": {"model": {"name": "edcnn"}, "loss": {"name": "l1"}, "train": {"lr": 0.1}}}})
    s = experiment_settings(cfg, "a")
    assert s["train"]["lr"] == 0.1 and s["train"]["epochs"] == 3


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
