"""Config validation against workflow/schemas/config.schema.yaml, with defaults filled in.

The Snakefile and the command line share this one implementation. Errors name the key:
    config error at experiments.redcnn_l1.train.lr: -1 is less than or equal to the minimum of 0
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


def load_schema() -> dict:
    if not SCHEMA_PATH.is_file():
        raise ConfigError(f"{SCHEMA_PATH}: config schema not found (install the project with `pip install -e .`)")
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(schema: dict, inst):
    """Recursively insert schema defaults for missing object keys."""
    if not isinstance(inst, dict) or schema.get("type") != "object":
        return inst
    for key, sub in schema.get("properties", {}).items():
        if key not in inst and "default" in sub:
            inst[key] = copy.deepcopy(sub["default"])
        if key in inst:
            _fill_defaults(sub, inst[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in inst:
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, inst[key])
    return inst


def _check(schema: dict, inst, where: str = "") -> None:
    err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(inst))
    if err is not None:
        path = ".".join(str(p) for p in err.absolute_path)
        key = ".".join(x for x in (where, path) if x) or "(top level)"
        raise ConfigError(f"config error at {key}: {err.message}")


def validate_config(config: dict) -> dict:
    """Validate `config` in place (defaults filled), plus checks a schema cannot express."""
    schema = load_schema()
    _fill_defaults(schema, config)
    _check(schema, config)
    import losses
    import models

    train_schema = schema["properties"]["train"]
    for name, exp in config["experiments"].items():
        if exp["model"]["name"] not in models.available():
            raise ConfigError(f"config error at experiments.{name}.model.name: unknown model {exp['model']['name']!r}; "
                              f"available: {', '.join(models.available())}")
        if exp["loss"]["name"] not in losses.available():
            raise ConfigError(f"config error at experiments.{name}.loss.name: unknown loss {exp['loss']['name']!r}; "
                              f"available: {', '.join(losses.available())}")
        for part, reg, injected in (("model", models.REGISTRY, ("hu_range", "seg_width", "seg_norm")),
                                    ("loss", losses.REGISTRY, ("hu_range", "segmenter"))):
            takes = reg.arguments(exp[part]["name"])  # None: any argument
            bad = [k for k in exp[part] if k != "name" and (k in injected or (takes is not None and k not in takes))]
            if bad:
                own = [p for p in takes or [] if p not in injected]
                raise ConfigError(f"config error at experiments.{name}.{part}: {exp[part]['name']} does not take "
                                  f"{', '.join(map(repr, bad))}; it takes: {', '.join(own) or 'nothing'}")
        check = getattr(losses.REGISTRY.get(exp["loss"]["name"]), "check_config", None)
        if check is not None:  # a loss may need more than the schema can say (e.g. a weights file)
            try:
                check({k: v for k, v in exp["loss"].items() if k != "name"})
            except ValueError as err:
                raise ConfigError(f"config error at experiments.{name}.loss: {err}") from None
        _check(train_schema, {**config["train"], **exp.get("train", {})}, f"experiments.{name}.train")
    ds = config["dataset"]
    if ds["source"] == "dicom" and not ds["dicom_root"]:
        raise ConfigError("config error at dataset.dicom_root: required when dataset.source is 'dicom'")
    if ds["layout"] == "generic" and ds["source"] == "dicom" and not ds["series"]:
        raise ConfigError("config error at dataset.series: the generic layout needs subject -> {full, low} folders")
    if ds["source"] == "dicom" and not config["segmenter"]["weights"]:
        raise ConfigError("config error at segmenter.weights: real DICOM data has no labels to pre-train the "
                          "segmentation U-Net; give the converted HeadCTSegmentation weights (model.pth, base_width 64)")
    if config["split"]["method"] == "preset" and not config["split"]["preset"]:
        raise ConfigError("config error at split.preset: required when split.method is 'preset'")
    return config


def experiment_settings(config: dict, name: str) -> dict:
    """One experiment with the training defaults merged in: {'model', 'loss', 'train'}."""
    exp = config["experiments"][name]
    return {"model": dict(exp["model"]), "loss": dict(exp["loss"]), "train": {**config["train"], **exp.get("train", {})}}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return validate_config(cfg)


if __name__ == "__main__":
    import sys

    print(yaml.safe_dump(load_config(sys.argv[1]), sort_keys=False))
