"""Command line of every workflow step: `python -m ldct <command> ...` (or `ldct <command>`).

Each command declares its typed options next to its handler (`@command`) and runs by hand on
a folder with sensible defaults, e.g. `ldct convert --subject-dir X --out Y`. A command that
uses a config section (synthetic, dataset, split, segmenter, train) also takes that
section's keys as options, made from the config schema with their types, defaults and
descriptions (see `--help`); `--config FILE` starts from a config file's values instead of
the defaults. The Snakemake rules pass the validated config as such options
(`section_flags`), and `train` takes a whole experiment as `--spec` (ldct.spec).

Project errors (ldct.errors.LdctError: bad config, data or options) print as one line and
exit with status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Callable

from ldct.allocator import keep_large_allocations
from ldct.config import experiment_train, merge
from ldct.errors import DataError, LdctError, MissingFileError, UsageError
from ldct.paths import LDCT, ResultPaths

COMMANDS: dict[str, dict] = {}


def arg(*flags: str, **kwargs) -> tuple:
    return flags, kwargs


def command(name: str, help: str, *args: tuple, sections: dict | None = None, seed: bool = False) -> Callable:
    """Register a handler with its options; `sections` maps a config section to the keys it
    takes as options (None: every key); they arrive validated in `a.settings`, with the seed
    (`--seed`, else --config's) where `seed`."""
    def deco(fn: Callable) -> Callable:
        COMMANDS[name] = {"fn": fn, "help": help, "args": args, "sections": sections or {}, "seed": seed}
        return fn
    return deco


# --- config sections as options -------------------------------------------------------------

def _leaves(schema: dict, path: tuple = ()):
    """(key path, schema) of every option-able key of a section; free-form maps are skipped."""
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object":
            yield from _leaves(sub, path + (key,))
        else:
            yield path + (key,), sub


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _caster(schema: dict) -> Callable[[str], object]:
    types = schema.get("type", "string")
    types = [types] if isinstance(types, str) else types
    numbers = [t for t, name in ((int, "integer"), (float, "number")) if name in types]

    def cast(text: str):
        if "null" in types and text in ("null", "~"):
            return None
        for number in numbers:
            try:
                return number(text)
            except ValueError:
                pass
        if "string" in types:
            return text
        raise ValueError(text)
    cast.__name__ = "|".join(types)  # argparse names the type in its errors
    return cast


def _flag(*path: str) -> str:
    """The command-line option of a config key (its path within the section): --budget-tera-macs."""
    return "--" + "-".join(path).replace("_", "-")


def _add_section(p: argparse.ArgumentParser, section: str, keys) -> None:
    from ldct.config import load_schema

    group = p.add_argument_group(f"config section `{section}` (defaults: the schema's, or --config FILE's)")
    for path, sub in _leaves(load_schema()["properties"][section]):
        if keys is not None and ".".join(path) not in keys:
            continue
        kw = {"dest": f"{section}:{'.'.join(path)}", "default": argparse.SUPPRESS,
              "help": f"{sub.get('description', '')} (default: {sub.get('default')})".replace("%", "%%")}
        if sub.get("type") == "boolean":
            kw["action"] = argparse.BooleanOptionalAction
        elif sub.get("type") == "array":
            kw.update(nargs="+", type=_caster(sub.get("items", {})), metavar="X")
        else:
            types = sub.get("type", "string")
            kw.update(type=_caster(sub), metavar="|".join([types] if isinstance(types, str) else types).upper())
            if "enum" in sub:
                kw["choices"] = sub["enum"]
        group.add_argument(_flag(*path), **kw)


def _given(a, section: str) -> dict:
    """The section's options given on the command line, as a nested dict."""
    out: dict = {}
    for dest, value in vars(a).items():
        if dest.startswith(section + ":"):
            *parents, leaf = dest.split(":", 1)[1].split(".")
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
    return out


def _settings(a, sections: dict) -> dict:
    """{section: values, 'seed': int}: --config FILE's (or the defaults), then the options."""
    from ldct.config import load_config, validate_section

    cfg = load_config(a.config) if a.config else {}
    out = {name: validate_section(name, merge(cfg.get(name, {}), _given(a, name))) for name in sections}
    out["seed"] = a.seed if getattr(a, "seed", None) is not None else cfg.get("seed", 42)
    return out


def section_flags(section: str, values: dict, keys=None, exclude: tuple[str, ...] = ()) -> str:
    """Shell options that give a validated config section to a command (for the rules): its
    leaves, or only `keys`, less those under `exclude` (dotted prefixes: a command's defaults
    stand in for them, and changing them does not rerun the rule)."""
    from ldct.config import load_schema

    parts = []
    for path, sub in _leaves(load_schema()["properties"][section]):
        dotted = ".".join(path)
        if (keys is not None and dotted not in keys) or any(dotted == e or dotted.startswith(e + ".") for e in exclude):
            continue
        value = values
        for key in path:
            value = value[key]
        flag = _flag(*path)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            if value:
                parts.append(flag + " " + " ".join(shlex.quote(str(v)) for v in value))
        elif isinstance(value, float) and value.is_integer() and "integer" in str(sub.get("type")):
            parts.append(f"{flag} {int(value)}")
        else:
            parts.append(f"{flag} {shlex.quote('null' if value is None else str(value))}")
    return " ".join(parts)


# --- helpers of the handlers ------------------------------------------------------------------

def _pairs(first: list, second: list, name1: str, name2: str) -> list[tuple]:
    """Zip two per-dose argument lists (a single `first` value applies to every `second`)."""
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise UsageError(f"{name1} gives {len(first)} values and {name2} {len(second)}; give one each")
    return list(zip(first, second))


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None


def _test_subjects(path: str) -> list[str]:
    split = _read_json(path)
    if "test" not in split:
        raise DataError(f"{path}: no 'test' subjects")
    return split["test"]


SERIES_KEYS = ("full_series", "low_series")
CONVERT_KEYS = (*SERIES_KEYS, "unpaired_slices")


# --- data ---------------------------------------------------------------------------------------

@command("synthesize", "make one synthetic subject (DICOM series + noiseless truth)",
         arg("--subject", required=True, help="subject name, e.g. S001"),
         arg("--dicom-out", required=True, help="the subject's DICOM folder (TCIA layout)"),
         arg("--phantom-out", required=True, help="folder for phantom, truth, labels and parameters"),
         arg("--fields", help="template fields cache from `ldct template-fields` (default: build them)"),
         sections={"synthetic": None}, seed=True)
def cmd_synthesize(a) -> None:
    from ldct.synthetic import make_subject

    make_subject(a.subject, a.settings["synthetic"], a.settings["seed"], a.dicom_out, a.phantom_out, a.fields)


@command("template-fields", "build the MNI152 template fields once (npz cache)",
         arg("--out", required=True, help="the .npz file to write"))
def cmd_template_fields(a) -> None:
    from ldct.phantom import save_fields

    save_fields(a.out)


@command("convert", "convert one subject's full- and low-dose DICOM series to NIfTI",
         arg("--subject-dir", help="subject folder in the TCIA layout (series found by description)"),
         arg("--full", help="full-dose series folder (generic layout; with --low)"),
         arg("--low", help="low-dose series folder (generic layout; with --full)"),
         arg("--subject", help="subject name (default: the subject folder's name with --subject-dir, the output "
                                "folder's name with --full and --low)"),
         arg("--out", required=True, help="the subject's NIfTI folder"),
         arg("--phantom", help="synthetic truth folder whose labels, truth and repeat scan are copied along"),
         sections={"dataset": CONVERT_KEYS})
def cmd_convert(a) -> None:
    import dataclasses

    from ldct.dicom import SubjectSeries, convert_subject, find_series

    cfg = a.settings["dataset"]
    if a.full or a.low:
        if not (a.full and a.low):
            raise UsageError("give both --full and --low (or --subject-dir)")
        series = SubjectSeries(a.subject or Path(a.out).name, Path(a.full), Path(a.low))
    elif a.subject_dir:
        series = find_series(Path(a.subject_dir), cfg["full_series"], cfg["low_series"])
        if a.subject:
            series = dataclasses.replace(series, subject=a.subject)
    else:
        raise UsageError("give --subject-dir (TCIA layout) or --full and --low series folders")
    phantom = [Path(a.phantom) / name for name in ("labels.nii.gz", "truth.nii.gz", "repeat.nii.gz")] if a.phantom else []
    for path in phantom:  # before anything is written
        if not path.is_file():
            raise MissingFileError(f"{path}: synthetic truth file not found (--phantom)")
    convert_subject(a.subject_dir, a.out, series=series, companions=tuple(phantom),  # all files or none
                    unpaired=cfg["unpaired_slices"])


@command("convert-doses", "convert a subject's extra reduced-dose series (dose sweep)",
         arg("--subject-dir", required=True, help="subject folder in the TCIA layout"),
         arg("--fractions", type=float, nargs="+", required=True, help="dose fractions to convert"),
         arg("--primary", type=float, required=True, help="the primary dose fraction (series 'Low Dose Images')"),
         arg("--out", required=True, help="the subject's NIfTI folder"),
         sections={"dataset": CONVERT_KEYS})
def cmd_convert_doses(a) -> None:
    """Each extra series -> low_<pct>pct.nii.gz on full.nii.gz's slices: the full dose is paired
    with the primary low dose first, as `convert` pairs them (dataset.unpaired_slices), so an
    extra volume has the converted full dose's slices even where `convert` dropped some."""
    from ldct.dicom import (
        DicomError,
        find_series,
        hu_storage_dtype,
        low_description,
        pair_volumes,
        read_series,
    )
    from ldct.io import write_niftis
    from ldct.paths import low_dose_name

    cfg, subject_dir, volumes = a.settings["dataset"], Path(a.subject_dir), {}
    primary = find_series(subject_dir, cfg["full_series"], cfg["low_series"])
    full, _, _ = pair_volumes(read_series(primary.full), read_series(primary.low), str(subject_dir),
                              unpaired=cfg["unpaired_slices"])
    converted = {round(float(p), 3) for p in full.positions}
    for fraction in a.fractions:  # every series read and paired before any is written
        series = find_series(subject_dir, cfg["full_series"], low_description(fraction, a.primary))
        _, low, dropped = pair_volumes(full, read_series(series.low), str(subject_dir), unpaired="drop")
        missing = [p for p in dropped if round(p, 3) in converted]  # full.nii.gz has them, the extra not
        if missing or (dropped and cfg["unpaired_slices"] == "error"):
            raise DicomError(f"{series.low}: slice positions differ from the full-dose series: "
                             f"{missing or dropped}" + (" (missing here)" if missing else ""))
        volumes[Path(a.out) / low_dose_name(fraction)] = (low.data, low.affine)
    write_niftis(volumes, dtype=hu_storage_dtype(*(data for data, _ in volumes.values())))


@command("manifest", "gather per-subject manifest rows into one CSV",
         arg("--out", required=True, help="manifest.csv to write"),
         arg("rows", nargs="+", help="the subjects' manifest.json files"))
def cmd_manifest(a) -> None:
    import pandas as pd

    from ldct.io import write_csv

    write_csv(a.out, pd.DataFrame([_read_json(p) for p in a.rows]))


@command("split", "write splits.json (subject-level train / val / test)",
         arg("--out", required=True, help="splits.json to write"),
         arg("subjects", nargs="+", help="every subject name"),
         sections={"split": None}, seed=True)
def cmd_split(a) -> None:
    from ldct.io import write_json
    from ldct.splits import make_splits

    write_json(a.out, make_splits(a.subjects, a.settings["split"], a.settings["seed"]))


# --- training -------------------------------------------------------------------------------------

TRAINING_IO = (arg("--nifti", required=True, help="results/{dataset}/nifti"),
               arg("--splits", required=True, help="splits.json"),
               arg("--out", required=True, help="the model file to write"),
               arg("--history", required=True, help="history.csv to write"))


@command("pretrain-segmenter", "train (or load given weights of) the segmentation U-Net",
         *TRAINING_IO, arg("--checkpoints", help="folder for the resumable state (default: none)"),
         sections={"segmenter": None}, seed=True)
def cmd_pretrain_segmenter(a) -> None:
    from ldct.anatomy import pretrain_segmenter

    pretrain_segmenter(nifti_dir=a.nifti, splits=_read_json(a.splits),
                       cfg=a.settings["segmenter"], seed=a.settings["seed"], out=a.out, out_history=a.history,
                       checkpoint_dir=a.checkpoints)


def spec_with_overrides(spec, given: dict):
    """A workflow spec with `ldct train`'s own options over its training settings: validated
    with the schema's defaults, then trimmed again to what the run reads (ldct.budget.training_only),
    so the saved spec and the resume key are the workflow's; a setting the spec left out because
    its run did not use it is refused rather than made up from a default."""
    import copy
    import dataclasses

    from ldct.budget import training_only
    from ldct.config import validate_section

    train = training_only(validate_section("train", merge(copy.deepcopy(spec.train), given)), spec.model)
    refilled = [k for k in ("lr_sweep", "crop_scale") if k in train and k not in spec.train and k not in given]
    if refilled:
        flags = {"lr_sweep": "--lr-sweep-candidates", "crop_scale": "--crop-scale"}
        raise UsageError(f"{', '.join(flags[k] for k in refilled)}: this spec has no such setting (its run did not "
                         "use one); give it too, or train from --config FILE --experiment NAME")
    return dataclasses.replace(spec, train=train)


@command("train", "train one experiment (--spec, or --config with --experiment)",
         *TRAINING_IO,
         arg("--checkpoints", required=True, help="folder for the resumable state"),
         arg("--spec", help="the experiment as JSON (ldct.spec.ExperimentSpec: name, model, loss, train, seed, "
                            "hu_range), or a file holding it; the workflow passes this"),
         arg("--experiment", help="with --config: the experiment to train"),
         arg("--segmenter", help="segmenter.pt, for experiments that use the frozen U-Net"),
         arg("--stop-after-epochs", type=positive_int, help="stop after this many epochs, keeping the checkpoint "
                                                             "and writing no model (to test resuming)"),
         sections={"train": None}, seed=True)
def cmd_train(a) -> None:
    import dataclasses

    from ldct.budget import OWN_STEPS
    from ldct.config import load_config, validate_section
    from ldct.spec import ExperimentSpec
    from ldct.train import train_denoiser

    if a.spec and (a.config or a.experiment):
        raise UsageError("give either --spec (as the workflow does) or --config with --experiment, not both")
    given = _given(a, "train")
    if a.spec:
        inline = a.spec.lstrip()[:1] in ("{", "[")
        spec = ExperimentSpec.from_json(a.spec if inline else json.dumps(_read_json(a.spec)))
        spec.check()
        shaping = [_flag(k) for k in ("epochs", "iters_per_epoch", "batch_size", "patch_size") if k in given] \
            + [_flag("budget", k) for k in given.get("budget", {})]
        if spec.budget and shaping:  # the spec's budget record would no longer describe the run
            steps = spec.budget.get("steps")
            raise UsageError(f"{', '.join(shaping)}: this spec's steps were set by "
                             f"its budget ({spec.budget.get('protocol')}, "
                             f"{'one pass per epoch' if steps is None else f'{steps} steps'}); to "
                             "change them, train from --config FILE --experiment NAME")
        spec = spec_with_overrides(spec, given)
    elif a.config:
        cfg = load_config(a.config)
        if a.experiment not in cfg["experiments"]:
            raise UsageError(f"{a.config}: " + (f"no experiment {a.experiment!r}" if a.experiment else "give --experiment")
                             + f"; one of: {', '.join(cfg['experiments'])}")
        exp = cfg["experiments"][a.experiment]
        exp["train"] = validate_section("train", merge(experiment_train(cfg, a.experiment), given))  # before the budget
        protocol = exp["train"]["budget"]["protocol"]
        own = [_flag(k) for k in ("epochs", "iters_per_epoch") if k in given]
        if own and protocol not in OWN_STEPS:  # the budget would overwrite them
            raise UsageError(f"{' and '.join(own)}: set by the budget protocol {protocol!r}; give "
                             "--budget-protocol fixed (or converged) with them, or size the run with "
                             "--budget-tera-macs / --budget-steps")
        spec = ExperimentSpec.from_config(cfg, a.experiment)
    else:
        raise UsageError("give --spec JSON, or --config FILE with --experiment NAME")
    if a.seed is not None:
        spec = dataclasses.replace(spec, seed=a.seed)
    train_denoiser(spec, nifti_dir=a.nifti, splits=_read_json(a.splits), out_model=a.out,
                   out_history=a.history, checkpoint_dir=a.checkpoints, segmenter=a.segmenter,
                   stop_after_epochs=a.stop_after_epochs)


# --- evaluation -----------------------------------------------------------------------------------

LOW_ARG = arg("--low", nargs="+", default=["low.nii.gz"],
              help="low-dose input file(s) in each subject folder (other doses of the dose sweep)")


@command("denoise", "denoise the test subjects with a trained model",
         arg("--model", required=True, help="a trained model.pt"),
         arg("--nifti", required=True, help="results/{dataset}/nifti"),
         arg("--splits", required=True, help="splits.json (its test subjects are denoised)"),
         arg("--outdir", nargs="+", required=True, help="output folder (one per --low)"),
         arg("--device", default="auto", help="auto, cpu, cuda or cuda:N"), LOW_ARG)
def cmd_denoise(a) -> None:
    from ldct.evaluate import denoise_subjects

    for low, outdir in _pairs(a.low, a.outdir, "--low", "--outdir"):
        denoise_subjects(a.model, a.nifti, _test_subjects(a.splits), outdir, a.device, low)


@command("evaluate", "per-slice metrics and Dice of one experiment (or of LDCT)",
         arg("--experiment", required=True, help="row name (LDCT: the low-dose input itself)"),
         arg("--nifti", required=True, help="results/{dataset}/nifti"),
         arg("--splits", required=True, help="splits.json (its test subjects are scored)"),
         arg("--out", nargs="+", required=True, help="per-slice metrics CSV (one per --low)"),
         arg("--dice", help="per-class Dice CSV (needs --segmenter)"),
         arg("--denoised", nargs="+", help="folder(s) of the experiment's outputs (one per --out)"),
         arg("--segmenter", help="segmenter.pt (for --dice)"),
         arg("--ndct-seg", help="folder of the NDCT segmentations from `segment-ndct` (else made here)"),
         arg("--device", default="auto", help="auto, cpu, cuda or cuda:N"), LOW_ARG)
def cmd_evaluate(a) -> None:
    from ldct.evaluate import evaluate_experiment

    if a.experiment != LDCT and not a.denoised:
        raise UsageError(f"--experiment {a.experiment}: give --denoised (the experiment's outputs); "
                         f"only --experiment {LDCT} scores the low-dose input itself")
    if a.dice and not a.segmenter:
        raise UsageError("--dice needs --segmenter (the frozen U-Net that segments each output)")
    denoised = a.denoised or [None] * len(a.out)
    if len(denoised) != len(a.out):
        raise UsageError(f"--denoised gives {len(denoised)} folders and --out {len(a.out)} files; give one each")
    if a.dice and len(a.out) > 1:
        raise UsageError("--dice goes with a single --out")
    for (low, out), den in zip(_pairs(a.low, a.out, "--low", "--out"), denoised):
        evaluate_experiment(a.experiment, a.nifti, _test_subjects(a.splits), den, a.segmenter, out, a.dice,
                            a.device, low, a.ndct_seg)


@command("segment-ndct", "segment the test subjects' NDCT with the frozen segmenter (the Dice reference)",
         arg("--nifti", required=True, help="results/{dataset}/nifti"),
         arg("--splits", required=True, help="splits.json (its test subjects are segmented)"),
         arg("--segmenter", required=True, help="segmenter.pt"),
         arg("--outdir", required=True, help="folder for one label NIfTI per subject"),
         arg("--device", default="auto", help="auto, cpu, cuda or cuda:N"))
def cmd_segment_ndct(a) -> None:
    from ldct.evaluate import segment_ndct

    segment_ndct(a.nifti, _test_subjects(a.splits), a.segmenter, a.outdir, a.device)


# --- clinical image quality (synthetic data) ------------------------------------------------------

@command("clinical-scans", "make the lesion-task and QA-phantom scans of the clinical-quality section",
         arg("--phantom", required=True, help="results/{dataset}/phantom (the synthetic subjects' phantoms)"),
         arg("--splits", required=True, help="splits.json (its first `subjects` test subjects are scanned)"),
         arg("--out", required=True, help="scans .npz to write"),
         arg("--sites", required=True, help="sites CSV to write (every lesion and noise ROI)"),
         sections={"synthetic": None, "clinical": None}, seed=True)
def cmd_clinical_scans(a) -> None:
    from ldct.clinical import make_scans

    cfg = a.settings["clinical"]
    make_scans(a.phantom, _test_subjects(a.splits)[:cfg["subjects"] or None], a.settings["synthetic"], cfg,
               a.settings["seed"], a.out, a.sites)


@command("clinical-measure", "detectability, noise power spectrum and TTF of rows",
         arg("--row", nargs="+", required=True, help="LDCT, NDCT, noiseless, or one experiment (with --model)"),
         arg("--scans", required=True, help="scans .npz from `ldct clinical-scans`"),
         arg("--sites", required=True, help="its sites CSV"),
         arg("--model", help="the experiment's trained model.pt"),
         arg("--out", nargs="+", required=True, help="JSON to write, one per --row"),
         arg("--device", default="auto", help="auto, cpu, cuda or cuda:N"),
         sections={"synthetic": None, "clinical": None}, seed=True)
def cmd_clinical_measure(a) -> None:
    import pandas as pd

    from ldct import clinical
    from ldct.io import write_json
    from ldct.provenance import versions

    pairs = _pairs(a.row, a.out, "--row", "--out") if len(a.row) > 1 else [(a.row[0], a.out[0])]
    if a.model and len(a.row) > 1:
        raise UsageError("--model goes with a single --row")
    scans = clinical.load_scans(a.scans)
    if not Path(a.sites).is_file():
        raise MissingFileError(f"{a.sites}: sites CSV not found")
    sites = pd.read_csv(a.sites)
    for row, out in pairs:
        images, qa = clinical.row_images(row, scans, a.model, a.device)
        result = clinical.measure(row, images, qa, scans, sites, a.settings["synthetic"], a.settings["clinical"],
                                  a.settings["seed"])
        write_json(out, {**result, "made_with": versions()})  # as the tables and model.pt record theirs


# --- tables and figures ---------------------------------------------------------------------------

@command("complexity", "Table 1: parameters, MACs, latency, memory",
         arg("--models", type=json.loads, required=True, help='JSON: {"row label": {"name": model, **kwargs}}'),
         arg("--out-prefix", required=True, help="table path without extension"),
         arg("--size", type=int, default=512, help="slice size (default 512)"),
         arg("--repeats", type=int, default=3, help="timed passes per model (default 3)"))
def cmd_complexity(a) -> None:
    from ldct.complexity import model_complexity
    from ldct.tables import complexity_table

    complexity_table([model_complexity(name, spec, a.size, a.repeats) for name, spec in a.models.items()],
                     a.out_prefix)


# The training settings that Table 2's caption states (ldct.budget.describe).
TABLE_TRAIN_KEYS = ("budget.protocol", "budget.tera_macs", "budget.steps", "budget.evaluations", "budget.patience",
                    "budget.min_gain_db", "epochs", "iters_per_epoch", "batch_size", "patch_size")
REPORT_ARGS = (arg("--root", required=True, help="results/{dataset} folder"),
               arg("--experiments", nargs="+", required=True, help="rows, LDCT included"))


@command("tables", "Table 2, the Dice table, the statistics and the training summary", *REPORT_ARGS,
         arg("--models", type=json.loads, default={},
             help='JSON: {"experiments": {name: model spec}, "segmenter": settings}; Table 2\'s caption names '
                  "the settings that depart from the reference"),
         arg("--seed", type=int, default=0, help="the run's seed, recorded in Table 2's CSV for `ldct seeds` (default 0)"),
         arg("--own-train", type=json.loads, default={},
             help='JSON: {experiment: its own train keys}; Table 2\'s caption lists them beside the global ones'),
         sections={"train": TABLE_TRAIN_KEYS})
def cmd_tables(a) -> None:
    from ldct.tables import write_tables

    write_tables(ResultPaths.at(a.root), a.experiments, a.models, a.seed, a.settings["train"], a.own_train)


@command("figures", "every figure", *REPORT_ARGS)
def cmd_figures(a) -> None:
    from ldct.figures import draw_all

    draw_all(ResultPaths.at(a.root), a.experiments)


@command("clinical-report", "Table 5 (clinical image quality), its statistics and the NPS, TTF and "
         "detectability figures", *REPORT_ARGS,
         arg("--seed", type=int, default=0, help="seed of the bootstrap (default 0)"),
         arg("--bootstrap", type=int, default=2000, help="bootstrap resamples of the paired tests"))
def cmd_clinical_report(a) -> None:
    from ldct.clinical_report import report

    report(ResultPaths.at(a.root), a.experiments, a.seed, a.bootstrap)


@command("dose-sweep", "dose-sweep table and figure", *REPORT_ARGS,
         arg("--doses", type=float, nargs="+", required=True, help="dose fractions, the training dose first"))
def cmd_dose_sweep(a) -> None:
    from ldct import figures
    from ldct.tables import dose_table, read_result_csv, row_flags

    rp = ResultPaths.at(a.root)
    files = {(e, d): rp.sweep_metrics(e, d, a.doses[0]) for e in a.experiments for d in a.doses}
    training = read_result_csv(rp.table("training")) if rp.table("training").is_file() else None
    table = dose_table(files, rp.table_prefix("table4_dose_sweep"), training_dose=a.doses[0], training=training)
    figures.dose_sweep(table, rp.figure("fig_dose_sweep"), row_flags(training)[0])


@command("seeds", "repeat the whole benchmark for several seeds; write the stability table",
         arg("--seeds", type=int, nargs="+", required=True, help="seeds (data, split and initialisation)"),
         arg("--configfile", help="the config (default: config.yaml in the working directory)"),
         arg("--cores", default="all", help="Snakemake --cores (default: all)"),
         arg("--no-run", action="store_true", help="only gather results already there"),
         arg("snakemake_args", nargs="*", help="further Snakemake options, after --"))
def cmd_seeds(a) -> None:
    """Runs `snakemake` once per seed (results/{dataset}_seed{s}; the config's own seed keeps
    results/{dataset}) and writes results/{dataset}_stability/ (ldct.stability)."""
    from ldct import stability
    from ldct.config import load_config

    stability.check_seed_args(a.seeds, a.snakemake_args, a.threads)
    rest, overrides = stability.split_config_args(a.snakemake_args)  # a user's --config, merged into each seed's
    cfg = merge(load_config(a.configfile or "config.yaml"), overrides)
    name, results = cfg["dataset"]["name"], Path(cfg["results"])
    # Snakemake's --configfile takes several values: it goes last, so a target given after `--` stays a target
    args = ["--cores", a.cores] + rest + (["--configfile", a.configfile] if a.configfile else [])
    roots = {seed: stability.seed_root(results, name, seed, cfg["seed"]) for seed in a.seeds}
    dry = stability.is_dry_run(rest)
    if not a.no_run:
        for i, seed in enumerate(a.seeds, 1):
            print(f"ldct seeds: seed {seed} ({i} of {len(a.seeds)}), results in {roots[seed]}", file=sys.stderr, flush=True)
            try:
                stability.run_seed(seed, name, cfg["seed"], args, overrides)
            except KeyboardInterrupt:
                raise LdctError(f"interrupted during seed {seed}; run the same command again to go on "
                                "(what is finished is not redone)") from None
    if dry:
        print("ldct seeds: a dry run: the stability report is not written", file=sys.stderr)
        return
    out = results / f"{name}_stability"
    stability.report(roots, out)
    print(f"ldct seeds: stability report in {out}/stability.md", file=sys.stderr)


# --- entry point ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ldct", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, c in COMMANDS.items():
        # no abbreviations: `--val 0.3` was taken as --val-as-test and 0.3 as a subject
        p = sub.add_parser(name, help=c["help"], description=c["fn"].__doc__ or c["help"], allow_abbrev=False)
        p.set_defaults(command_spec=c)
        for flags, kwargs in c["args"]:
            p.add_argument(*flags, **kwargs)
        threads = {"seeds": "not used: Snakemake's --cores sets each job's threads",
                   "train": "torch CPU threads (default: torch's choice); on the CPU a checkpoint resumes only with "
                            "the count it was written with (other threads, other weights)"}
        p.add_argument("--threads", type=positive_int, help=threads.get(name, "torch CPU threads (default: torch's choice)"))
        if c["seed"]:
            p.add_argument("--seed", type=int, help="seed (default: the seed of --spec or --config, else 42)"
                           if name == "train" else "seed (default: --config's, else 42)")
        if c["sections"]:
            p.add_argument("--config", help="a config YAML file whose section(s) replace the defaults")
            for section, keys in c["sections"].items():
                _add_section(p, section, keys)
    return ap


def _exit_on_sigterm() -> None:
    """SIGTERM (a cancelled Snakemake run, a SLURM time limit) exits as an error does, through
    the `finally` of ldct.io.atomic_path, so no half-written temporary file is left behind
    (a SIGKILL, e.g. SLURM's after its KillWait, cannot be caught). Returns the handler it
    replaced (None off the main thread, where none is installed)."""
    import signal
    import threading

    def stop(signum, frame):
        print("ldct: stopped by SIGTERM (a cancelled job or a time limit); nothing half-written is kept: run it "
              "again to go on (a training resumes from its last epoch)", file=sys.stderr)
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, stop)
    return None


def main(argv: list[str] | None = None) -> int:
    import signal

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    before = _exit_on_sigterm()
    try:
        return _main(argv)
    finally:
        if before is not None:  # a caller's own handler back (tests call main() in-process)
            signal.signal(signal.SIGTERM, before)


def _main(argv: list[str] | None) -> int:
    keep_large_allocations()
    a = build_parser().parse_args(argv)
    c = a.command_spec
    try:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        if c["sections"]:
            a.settings = _settings(a, {k: v for k, v in c["sections"].items() if k != "train" or c["fn"] != cmd_train})
        c["fn"](a)
    except (LdctError, FileNotFoundError) as err:  # a missing input file is the user's too
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("ldct: interrupted (Ctrl-C); nothing half-written is kept: run it again to go on (a training "
              "resumes from its last epoch)", file=sys.stderr)
        return 130
    return 0
