"""Config validation against workflow/schemas/config.schema.yaml, with defaults filled in.

The Snakefile and the command line share this one implementation. Errors name the key:
    config error at experiments.redcnn_l1.train.lr: -1 is less than or equal to the minimum of 0

Values given on Snakemake's command line (`--config 'train={epochs: 2}'`) arrive as strings
below the top level; `coerce` reads each as YAML where the schema wants a number, boolean,
list or null, so every key can be overridden there.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from pathlib import Path

import yaml

from ldct.errors import ConfigError
from ldct.paths import RESERVED_ROWS

__all__ = ["ConfigError", "coerce", "load_config", "load_schema", "validate_config", "validate_section"]

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    """The config schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema() -> dict:
    # parsed once per process with libyaml where present: every CLI command builds its
    # options from the schema, and pure-Python parsing took ~0.4 s per section
    if not SCHEMA_PATH.is_file():
        raise ConfigError(f"{SCHEMA_PATH}: config schema not found (install the project with `pip install -e .`)")
    return yaml.load(SCHEMA_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


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


def _types(schema: dict) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _from_text(text: str):
    """A number as Python reads it (1e-3 too, which YAML 1.1 leaves a string), else YAML."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(schema: dict, inst):
    """`inst` with strings read as YAML where the schema expects another type (see above), and
    whole-number floats made integers where the schema expects an integer."""
    types = _types(schema)
    if isinstance(inst, str) and types and ("string" not in types or ("null" in types and inst in ("null", "~"))):
        inst = _from_text(inst)
    elif isinstance(inst, str) and ("number" in types or "integer" in types):  # lr: a number or 'auto'
        value = _from_text(inst)
        inst = value if isinstance(value, (int, float)) and not isinstance(value, bool) else inst
    if isinstance(inst, float) and inst.is_integer() and "integer" in types and "number" not in types:
        inst = int(inst)  # 7.0 or 1e3 for an integer key: the schema accepts it, Python's range() and numpy do not
    if isinstance(inst, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, value in inst.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                inst[key] = coerce(sub, value)
    elif isinstance(inst, list) and isinstance(schema.get("items"), dict):
        inst = [coerce(schema["items"], v) for v in inst]
    return inst


def _coerce_experiments(config: dict, train_schema: dict) -> None:
    """Model and loss arguments have no schema types: read any string but a name as YAML."""
    for exp in (config.get("experiments") or {}).values():
        if not isinstance(exp, dict):
            continue
        for part in ("model", "loss"):
            if isinstance(exp.get(part), dict):
                exp[part] = {k: (_from_text(v) if isinstance(v, str) and k != "name" else v)
                             for k, v in exp[part].items()}
        if isinstance(exp.get("train"), dict):
            exp["train"] = coerce(train_schema, exp["train"])


def _check(schema: dict, inst, where: str = "") -> None:
    import jsonschema  # here: commands that validate no section start without it

    err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(inst))
    if err is not None:
        path = ".".join(str(p) for p in err.absolute_path)
        key = ".".join(x for x in (where, path) if x) or "(top level)"
        message = err.message
        if err.validator == "anyOf":  # "not valid under any of the given schemas": say which are
            options = [f"{o['const']!r}" if "const" in o else _describe_option(o) for o in err.validator_value]
            message = f"{err.instance!r} is none of: {', '.join(options)}"
        elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
            strays = [k for k, v in err.instance.items() if isinstance(v, dict) and "model" in v
                      and k not in schema_at(schema, err.absolute_path).get("properties", {})]
            if strays:  # an experiment appended at the end of config.yaml lands in its last section
                message += (f"; {', '.join(map(repr, strays))} looks like an experiment: put it under "
                            "experiments:, above the next section")
        raise ConfigError(f"config error at {key}: {message}")


def schema_at(schema: dict, path) -> dict:
    """The sub-schema at a path of object keys (list indices and free-form maps: {})."""
    for key in path:
        schema = schema.get("properties", {}).get(key, {}) if isinstance(key, str) else {}
    return schema


def _describe_option(option: dict) -> str:
    """One anyOf branch in words ('a number > 0', 'an integer >= 1')."""
    kind = {"integer": "an integer", "number": "a number"}.get(option.get("type"), f"a {option.get('type', 'value')}")
    bounds = [f"{op} {option[k]:g}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
              if k in option]
    return " ".join([kind, *bounds])


def _reject_non_finite(inst, where: str = "") -> None:
    """NaN and infinity pass a schema's bounds (`.nan` compares false with everything): refused
    by key, before any of them reaches a learning rate or a budget."""
    if isinstance(inst, float) and not math.isfinite(inst):
        raise ConfigError(f"config error at {where or '(top level)'}: {inst} is not a finite number")
    items = inst.items() if isinstance(inst, dict) else enumerate(inst) if isinstance(inst, list) else ()
    for key, value in items:
        _reject_non_finite(value, f"{where}.{key}" if where else str(key))


# (section, key): [low, high] pairs whose first value must not exceed the second
ORDERED_PAIRS = (("synthetic", "z_range_mm"), ("train", "crop_scale"))


def _check_pair(values: dict, key: str, where: str) -> None:
    pair = values.get(key)
    if isinstance(pair, list) and len(pair) == 2 and not pair[0] <= pair[1]:
        raise ConfigError(f"config error at {where}.{key}: {pair} is not [low, high]")


def _check_order(config: dict) -> None:
    """Ranges a schema cannot order: a [low, high] pair, and the HU window."""
    for section, key in ORDERED_PAIRS:
        _check_pair(config.get(section) or {}, key, section)
    norm = config.get("normalization") or {}
    if "hu_min" in norm and "hu_max" in norm and not norm["hu_min"] < norm["hu_max"]:
        raise ConfigError(f"config error at normalization: hu_min ({norm['hu_min']}) must be below hu_max ({norm['hu_max']})")


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, nested sections merged key by key (an experiment's
    `lr_sweep: {fraction: 0.5}` keeps the global candidates)."""
    return {**base, **{k: merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in over.items()}}


def experiment_train(config: dict, name: str) -> dict:
    """The training settings of experiment `name`: its own `train` keys over the global ones."""
    return merge(config["train"], config["experiments"][name].get("train", {}))


def validate_config(config: dict) -> dict:
    """Validate `config` in place (defaults filled), plus checks a schema cannot express."""
    from ldct.budget import OWN_STEPS
    from ldct.spec import ExperimentSpec

    schema = load_schema()
    train_schema = schema["properties"]["train"]
    for key, sub in schema["properties"].items():  # before anything walks them
        if sub.get("type") == "object" and config.get(key) is not None and not isinstance(config[key], dict):
            example = " (name: {model: ..., loss: ...}, one per row)" if key == "experiments" else ""
            raise ConfigError(f"config error at {key}: must be a mapping of keys to values{example}, "
                              f"not a {type(config[key]).__name__}")
    coerce(schema, config)
    _coerce_experiments(config, train_schema)
    _reject_non_finite(config)
    # case-insensitively: on a case-insensitive disk (macOS, Windows) `ldct` would share LDCT's folders
    reserved = [n for n in (config.get("experiments") or {}) if n.upper() in {r.upper() for r in RESERVED_ROWS}]
    if reserved:
        raise ConfigError(f"config error at experiments.{reserved[0]}: {reserved[0]!r} is the name of a row every "
                          f"table shows ({', '.join(RESERVED_ROWS)}); give the experiment another name")
    _fill_defaults(schema, config)
    _check(schema, config)
    _check_paths(config)
    _check_order(config)
    for name, exp in config["experiments"].items():
        train = experiment_train(config, name)
        _check(train_schema, train, f"experiments.{name}.train")
        for key in (k for section, k in ORDERED_PAIRS if section == "train"):
            _check_pair(exp.get("train", {}), key, f"experiments.{name}.train")
        if "budget" in exp.get("train", {}):
            raise ConfigError(f"config error at experiments.{name}.train.budget: the budget is one rule for every "
                              "experiment (Table 2 ranks them under it and its caption states it once); set it in "
                              "train.budget, or run a separate config for a different budget")
        protocol = train["budget"]["protocol"]
        fixed = [k for k in ("epochs", "iters_per_epoch") if k in exp.get("train", {}) and protocol not in OWN_STEPS]
        if fixed:
            raise ConfigError(f"config error at experiments.{name}.train.{fixed[0]}: set by the budget protocol "
                              f"({protocol}) for every experiment alike; remove it (or use train.budget.protocol: "
                              "converged or fixed)")
        ExperimentSpec.from_config(config, name, resolve=False).check()
        if train.get("target") == "repeat" and config["dataset"]["source"] != "synthetic":
            raise ConfigError(f"config error at experiments.{name}.train.target: repeat (Noise2Noise) needs a second, "
                              "independent low-dose scan of every subject, which the synthetic data draws and real "
                              "DICOM data (the Mayo cases) does not have; remove the experiment or use source: synthetic")
    ds = config["dataset"]
    if ds["source"] == "dicom" and not ds["dicom_root"]:
        raise ConfigError("config error at dataset.dicom_root: required when dataset.source is 'dicom'")
    if ds["layout"] == "generic" and ds["source"] == "dicom" and not ds["series"]:
        raise ConfigError("config error at dataset.series: the generic layout needs subject -> {full, low} folders")
    if ds["source"] == "dicom" and not config["segmenter"]["weights"]:
        raise ConfigError("config error at segmenter.weights: real DICOM data has no labels to pre-train the "
                          "segmentation U-Net; give the converted HeadCTSegmentation weights (model.pth, base_width 64)")
    _check_doses(config)
    _check_split(config["split"])
    _check_anatomical_pairs(config)
    return config


def _check_paths(config: dict) -> None:
    """`~` in the config's paths (results, dataset.dicom_root and the generic layout's series,
    segmenter.weights, a preset file) stands for the home folder, as in a shell: YAML and a quoted
    --config keep it literal, and `~/scans` was then reported missing. A path with braces is
    refused: Snakemake reads them as wildcards in every input and output, and cannot escape
    them in the paths the workflow finds."""
    def home(value):
        return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value

    ds = config["dataset"]
    config["results"] = home(config["results"])
    ds["dicom_root"] = home(ds["dicom_root"])
    for folders in (ds.get("series") or {}).values():
        if isinstance(folders, dict):
            folders.update({k: home(v) for k, v in folders.items()})
    config["segmenter"]["weights"] = home(config["segmenter"]["weights"])
    config["split"]["preset"] = home(config["split"]["preset"])
    paths = {"results": config["results"], "dataset.dicom_root": ds["dicom_root"],
             "segmenter.weights": config["segmenter"]["weights"], "split.preset": config["split"]["preset"]}
    for key, value in paths.items():
        if isinstance(value, str) and ("{" in value or "}" in value):
            raise ConfigError(f"config error at {key}: {value!r} has a brace, which Snakemake reads as a wildcard in "
                              "the workflow's file paths; rename the folder or give a link to it without { or }")


def _check_anatomical_pairs(config: dict) -> None:
    """The anatomical-effect table pairs `<model>_ana` with `<model>_l1` by name and reports the
    difference as the anatomical loss's effect: a pair so named must be that comparison (the
    same model and arguments, defaults filled in; the same training settings but the learning
    rate and its sweep, the rate the table's caption names where it differs; the anatomical loss
    in the _ana run only), not two unrelated runs."""
    import inspect

    import losses
    import models

    def full(model: dict) -> dict:  # the constructor's defaults filled in: {channels: 96} is {}
        cls = models.REGISTRY.get(model["name"])
        params = inspect.signature(cls.__init__).parameters.values()
        return {**{q.name: q.default for q in params if q.default is not inspect.Parameter.empty}, **model}

    experiments = config["experiments"]
    for name, exp in experiments.items():
        other = name[:-4] + "_l1"
        if not name.endswith("_ana") or other not in experiments:
            continue
        why = []
        if full(exp["model"]) != full(experiments[other]["model"]):
            why.append(f"its model {exp['model']} is not {other}'s {experiments[other]['model']}")
        if not losses.needs_segmenter(exp["loss"]["name"]):
            why.append(f"its loss {exp['loss']['name']!r} is not an anatomical perception loss")
        if losses.needs_segmenter(experiments[other]["loss"]["name"]):
            why.append(f"{other}'s loss {experiments[other]['loss']['name']!r} is an anatomical one too")
        mine, theirs = experiment_train(config, name), experiment_train(config, other)
        differ = sorted(k for k in set(mine) | set(theirs) if k not in ("lr", "lr_sweep") and mine.get(k) != theirs.get(k))
        if differ:
            why.append(f"its training settings differ from {other}'s in {', '.join(differ)}")
        if why:
            raise ConfigError(f"config error at experiments.{name}: the anatomical-effect table pairs it with {other} by "
                              f"name as the anatomical loss's effect, but {'; '.join(why)}: make it that comparison, "
                              "or rename it")


def _check_doses(config: dict) -> None:
    """A dose sweep is synthetic (real data has one low dose), and each fraction needs its own
    name (files and series are named by percent: 0.1 and 0.1000001 would share one)."""
    from ldct.paths import dose_tag

    fractions = config["synthetic"]["dose_fractions"]
    if config["dataset"]["source"] != "synthetic" and len(fractions) > 1:
        raise ConfigError(f"config error at synthetic.dose_fractions: a dose sweep ({fractions}) simulates the doses, "
                          "which needs dataset.source: synthetic; real DICOM data has its one low-dose series")
    tags = [dose_tag(f) for f in fractions]
    same = sorted({t for t in tags if tags.count(t) > 1})
    if same:
        raise ConfigError(f"config error at synthetic.dose_fractions: {fractions} name the same dose "
                          f"({', '.join(t + ' %' for t in same)}): give fractions that differ at the percent's 6th digit")


def _check_split(split: dict) -> None:
    if split["method"] == "preset" and not split["preset"]:
        raise ConfigError("config error at split.preset: required when split.method is 'preset'")
    if split["method"] != "preset" and split["preset"]:  # it would be ignored: a random split instead
        raise ConfigError(f"config error at split.preset: {split['preset']!r} is used only with split.method: preset "
                          f"(now {split['method']!r}); set the method or remove the preset")
    fr = split["fractions"]
    if split["method"] == "random":
        if fr["val"] <= 0:
            raise ConfigError("config error at split.fractions.val: must be > 0 (the validation subjects choose the "
                              "learning rate and the checkpoint; the split gives at least one)")
        if fr["test"] <= 0 and not split["val_as_test"]:
            raise ConfigError("config error at split.fractions.test: must be > 0 (set split.val_as_test: true to "
                              "evaluate on the validation subjects instead, the paper's protocol)")
        held_out = fr["val"] + (0.0 if split["val_as_test"] else fr["test"])
        if held_out >= 1:
            raise ConfigError(f"config error at split.fractions: val + test = {held_out:g} leaves no training subjects")
    if fr.get("train") is not None and abs(fr["train"] + fr["val"] + fr["test"] - 1) > 1e-6:
        raise ConfigError(f"config error at split.fractions: train + val + test = "
                          f"{fr['train'] + fr['val'] + fr['test']:g}, not 1 (set train: null, or leave it out, and it "
                          "is the remainder)")


def validate_section(name: str, values: dict) -> dict:
    """One top-level section (e.g. `synthetic`) on its own: defaults filled, checked in place."""
    schema = load_schema()["properties"][name]
    _reject_non_finite(values, name)
    _fill_defaults(schema, values)
    _check(schema, values, name)
    _check_order({name: values})
    if name == "split":  # `ldct split` checks what the workflow's config check does
        _check_split(values)
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last:
    a second `train:` section silently replaced the first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys it brings may be overridden
                if isinstance(value_node, yaml.MappingNode):  # an inline `<<: {...}`: its own keys once each
                    self.construct_mapping(value_node, deep=deep)
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); "
                    "the second would silently replace the first", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path):
    """A config file's YAML (no key given twice); a ConfigError naming the file otherwise."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def load_config(path: str | Path) -> dict:
    path = Path(path)
    cfg = read_yaml(path) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (dataset:, train:, ...), "
                          f"not a {type(cfg).__name__}")
    try:
        return validate_config(cfg)
    except ConfigError as err:  # the file it came from, as the reading errors name it
        raise ConfigError(f"{path}: {err}") from None


if __name__ == "__main__":
    import sys

    print(yaml.safe_dump(load_config(sys.argv[1]), sort_keys=False))
