"""Subject-level train/val/test splits: published presets or a seeded random split."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from ldct.errors import LdctError

PRESETS = {
    "featkpn": "split_featkpn_seed.json",               # 40 train / 10 val, val doubles as test
    "ldct_benchmark_neuro": "split_ldct_benchmark_neuro.json",  # 35 / 10 / 5
}


class SplitError(LdctError, ValueError):
    pass


DESCRIPTIVE_KEYS = {"source", "description", "notes"}  # free text a split file may carry beside its lists


def _shipped(name: str):
    """A shipped preset's file (ldct/presets)."""
    return resources.files("ldct.presets").joinpath(PRESETS[name])


def preset_file(name: str) -> str:
    """The file a preset name stands for (a shipped preset, or the JSON file named): the split
    rule's input, so editing it redoes the split."""
    return str(_shipped(name)) if name in PRESETS else name


def load_preset(name: str) -> dict[str, list[str]]:
    if name in PRESETS:
        text = _shipped(name).read_text()
        where = f"preset {name!r}"
    else:
        path = Path(name)
        if not path.is_file():
            raise SplitError(f"split preset {name!r} is neither one of {sorted(PRESETS)} nor a JSON file")
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SplitError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise SplitError(f"{where}: expected an object with 'train', 'val' and 'test' subject lists")
    unknown = sorted(set(data) - {"train", "val", "test"} - DESCRIPTIVE_KEYS)
    if unknown:  # a misspelt "vals" would otherwise leave the validation set empty
        raise SplitError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected 'train', 'val' and "
                         f"'test' (and text under {', '.join(map(repr, sorted(DESCRIPTIVE_KEYS)))})")
    out = {}
    for part in ("train", "val", "test"):
        names = data.get(part, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise SplitError(f"{where}: '{part}' must be a list of subject names (strings), not {names!r}")
        if len(set(names)) != len(names):
            raise SplitError(f"{where}: '{part}' names a subject twice: "
                             f"{', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        out[part] = list(names)
    for part in ("train", "val"):
        if not out[part]:
            raise SplitError(f"{where}: no '{part}' subjects")
    return out


def make_splits(subjects: list[str], cfg: dict, seed: int) -> dict[str, list[str]]:
    """Build the split from the `split` config section for the subjects found on disk."""
    twice = sorted({s for s in subjects if list(subjects).count(s) > 1})
    if twice:
        raise SplitError(f"subject(s) named more than once: {', '.join(twice)}")
    subjects = sorted(subjects)
    if cfg["method"] == "preset":
        if not cfg.get("preset"):
            raise SplitError("split.preset is required when split.method is 'preset'")
        split = load_preset(cfg["preset"])
        missing = sorted({s for part in split.values() for s in part} - set(subjects))
        if missing:
            named = {s for part in split.values() for s in part}
            found = (f"; found {len(subjects)} subject folder(s) instead ({', '.join(subjects[:5])}"
                     f"{', ...' if len(subjects) > 5 else ''}): is dataset.dicom_root the folder that holds the "
                     "case folders?" if len(missing) == len(named) else "")
            raise SplitError(f"split preset {cfg['preset']!r} names subjects missing on disk: {', '.join(missing)}"
                             + found)
        if cfg["val_as_test"] and split.get("test") and set(split["test"]) != set(split["val"]):
            raise SplitError(f"split preset {cfg['preset']!r} has its own test subjects, which split.val_as_test "
                             "would replace by its validation subjects; set split.val_as_test: false")
        if not cfg["val_as_test"] and not split.get("test"):  # scoring the subjects that chose the checkpoint: say so
            raise SplitError(f"split preset {cfg['preset']!r} has no test subjects; set split.val_as_test: true to "
                             "evaluate on its validation subjects (the paper's protocol)")
    else:
        fr = cfg["fractions"]
        rng = np.random.default_rng(seed)
        order = [subjects[i] for i in rng.permutation(len(subjects))]
        n = len(order)
        n_val = max(1, int(round(fr["val"] * n)))
        n_test = 0 if cfg["val_as_test"] else max(1, int(round(fr["test"] * n)))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise SplitError(f"{n} subjects are too few for split fractions {fr}")
        split = {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
                 "test": sorted(order[n_train + n_val:])}
    if cfg["val_as_test"] or not split["test"]:
        split["test"] = list(split["val"])  # the paper evaluates on its validation subjects
    seen: dict[str, str] = {}
    for part in ("train", "val"):
        for s in split[part]:
            if s in seen:
                raise SplitError(f"subject {s} appears in both {seen[s]} and {part}")
            seen[s] = part
    overlap = set(split["test"]) & set(split["train"])
    if overlap:
        raise SplitError(f"subjects in both train and test: {', '.join(sorted(overlap))}")
    shared = set(split["test"]) & set(split["val"])
    if shared and set(split["test"]) != set(split["val"]):
        # test == val is the paper's protocol (val_as_test); a partial overlap scores some test
        # subjects that chose the checkpoint and others that did not
        raise SplitError(f"subjects in both val and test: {', '.join(sorted(shared))} (the test set must be the "
                         "validation set, split.val_as_test, or apart from it)")
    return split
