"""Command line of every workflow step: `python -m ldct <command> ...` (or `ldct <command>`).

Snakemake rules call these commands; each also runs by hand. Settings arrive as the JSON
of the relevant config section (`--params`), already validated by the workflow; by hand,
`--config config.yaml` validates a config file and takes the section from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from ldct.paths import ResultPaths


def _section(args, name: str) -> dict:
    if args.params:
        return json.loads(args.params)
    if args.config:
        from ldct.config import load_config

        cfg = load_config(args.config)
        return cfg[name] if name else cfg
    raise SystemExit("give --params JSON or --config FILE")


def _pairs(first: list, second: list, name1: str, name2: str) -> list[tuple]:
    """Zip two per-dose argument lists (a single `first` value applies to every `second`)."""
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise ValueError(f"{name1} gives {len(first)} values and {name2} {len(second)}; give one each")
    return list(zip(first, second))


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_synthesize(a) -> None:
    from ldct.synthetic import make_subject

    cfg = _section(a, "")
    make_subject(a.subject, cfg["synthetic"], cfg["seed"], a.dicom_out, a.phantom_out, a.fields)


def cmd_template_fields(a) -> None:
    from ldct.phantom import save_fields

    save_fields(a.out)


def cmd_convert(a) -> None:
    import shutil

    from ldct.dicom import SubjectSeries, convert_subject, find_series
    from ldct.io import atomic_path, write_json

    cfg = _section(a, "dataset")
    if a.full or a.low:
        series = SubjectSeries(a.subject or Path(a.out).name, Path(a.full), Path(a.low))
    elif a.subject_dir:
        series = find_series(Path(a.subject_dir), cfg["full_series"], cfg["low_series"])
    else:
        raise ValueError("give --subject-dir (TCIA layout) or --full and --low series folders")
    row = convert_subject(a.subject_dir, a.out, series=series)
    if a.phantom:
        for name in ("labels.nii.gz", "truth.nii.gz"):
            with atomic_path(Path(a.out) / name) as tmp:
                shutil.copyfile(Path(a.phantom) / name, tmp)
    write_json(Path(a.out) / "manifest.json", row)


def cmd_convert_doses(a) -> None:
    """Extra reduced-dose series of one subject (dose sweep) -> low_<pct>pct.nii.gz beside low.nii.gz.
    Each is paired with the full-dose series exactly as `convert` pairs the primary one."""
    from ldct.dicom import find_series, low_description, pair_volumes, read_series
    from ldct.io import write_nifti
    from ldct.paths import low_dose_name

    cfg = _section(a, "dataset")
    subject_dir = Path(a.subject_dir)
    full = None
    for fraction in a.fractions:
        series = find_series(subject_dir, cfg["full_series"], low_description(fraction, a.primary))
        if full is None:
            full = read_series(series.full)
        _, low, dropped = pair_volumes(full, read_series(series.low), str(subject_dir))
        if dropped:
            raise ValueError(f"{series.low}: slice positions differ from the full-dose series: {dropped}")
        write_nifti(Path(a.out) / low_dose_name(fraction), low.data, low.affine)


def cmd_manifest(a) -> None:
    from ldct.io import write_csv

    rows = [json.loads(Path(p).read_text()) for p in a.rows]
    write_csv(a.out, pd.DataFrame(rows))


def cmd_split(a) -> None:
    from ldct.io import write_json
    from ldct.splits import make_splits

    cfg = _section(a, "")
    write_json(a.out, make_splits(a.subjects, cfg["split"], cfg["seed"]))


def cmd_pretrain_segmenter(a) -> None:
    from ldct.anatomy import pretrain_segmenter

    _threads(a.threads)
    cfg = _section(a, "")
    pretrain_segmenter(nifti_dir=a.nifti, splits=json.loads(Path(a.splits).read_text()), cfg=cfg["segmenter"],
                       seed=cfg["seed"], out=a.out, out_history=a.history)


def cmd_train(a) -> None:
    from ldct.train import train_denoiser

    _threads(a.threads)
    if a.params and (a.config or a.experiment):
        raise ValueError("give either --params (as the workflow does) or --config with --experiment, not both")
    if a.params:
        p = json.loads(a.params)
    else:  # outside the workflow: one experiment of a config file
        from ldct.config import experiment_settings

        cfg = _section(a, "")
        if a.experiment not in cfg["experiments"]:
            raise ValueError(f"{a.config}: give --experiment, one of: {', '.join(cfg['experiments'])}")
        p = {"experiment": experiment_settings(cfg, a.experiment), "seed": cfg["seed"],
             "hu_range": [cfg["normalization"]["hu_min"], cfg["normalization"]["hu_max"]]}
    train_denoiser(nifti_dir=a.nifti, splits=json.loads(Path(a.splits).read_text()), experiment=p["experiment"],
                   hu_range=tuple(p["hu_range"]), seed=p["seed"], out_model=a.out, out_history=a.history,
                   checkpoint_dir=a.checkpoints, segmenter=a.segmenter, stop_after_epochs=a.stop_after_epochs)


def cmd_denoise(a) -> None:
    from ldct.evaluate import denoise_subjects

    _threads(a.threads)
    subjects = json.loads(Path(a.splits).read_text())["test"]
    for low, outdir in _pairs(a.low, a.outdir, "--low", "--outdir"):
        denoise_subjects(a.model, a.nifti, subjects, outdir, a.device, low)


def cmd_evaluate(a) -> None:
    from ldct.evaluate import evaluate_experiment

    _threads(a.threads)
    subjects = json.loads(Path(a.splits).read_text())["test"]
    denoised = a.denoised or [None] * len(a.out)
    if len(denoised) != len(a.out):
        raise ValueError(f"--denoised gives {len(denoised)} folders and --out {len(a.out)} files; give one each")
    if a.dice and len(a.out) > 1:
        raise ValueError("--dice goes with a single --out")
    for (low, out), den in zip(_pairs(a.low, a.out, "--low", "--out"), denoised):
        evaluate_experiment(a.experiment, a.nifti, subjects, den, a.segmenter, out, a.dice, a.device, low)


def cmd_complexity(a) -> None:
    from ldct.complexity import model_complexity
    from ldct.tables import complexity_table

    _threads(a.threads)
    specs = json.loads(a.params)
    rows = [model_complexity(name, spec, a.size, a.repeats) for name, spec in specs.items()]
    complexity_table(rows, a.out_prefix)


def cmd_tables(a) -> None:
    from ldct.tables import departure_note, dice_table, quantitative_table

    rp = ResultPaths.at(a.root)
    exps = a.experiments
    metric_files = {e: rp.metrics(e) for e in exps}
    fidelity = departure_note(json.loads(a.models))
    quantitative_table(metric_files, rp.table_prefix("table2_quantitative"), rp.table("stats"), seed=a.seed,
                       fidelity=fidelity)
    if "truth_psnr_full" in pd.read_csv(metric_files[exps[0]], nrows=1):
        quantitative_table(metric_files, rp.table_prefix("table2_vs_truth"), rp.table("stats_vs_truth"),
                           seed=a.seed, reference="truth", fidelity=fidelity)
    dice_table({e: rp.dice(e) for e in exps}, rp.table_prefix("table3_anatomical_dice"))


def cmd_dose_sweep(a) -> None:
    from ldct import figures
    from ldct.tables import dose_table

    rp = ResultPaths.at(a.root)
    files = {(e, d): rp.sweep_metrics(e, d, a.doses[0]) for e in a.experiments for d in a.doses}
    table = dose_table(files, rp.table_prefix("table4_dose_sweep"), training_dose=a.doses[0])
    figures.dose_sweep(table, rp.figure("fig_dose_sweep"))


def cmd_figures(a) -> None:
    import numpy as np
    import torch

    from ldct import figures
    from ldct.anatomy import segment
    from ldct.data import load_subject, to_slices
    from ldct.evaluate import LDCT
    from ldct.io import read_nifti
    from ldct.train import load_segmenter

    _threads(a.threads)
    rp = ResultPaths.at(a.root)
    splits = json.loads(rp.splits.read_text())
    subject = splits["test"][0]
    sv = load_subject(rp.nifti(), subject)
    s = figures.pick_slice(sv.full)
    trained = [e for e in a.experiments if e != LDCT]
    vols = {LDCT: sv.low}
    for e in trained:
        vols[e] = to_slices(read_nifti(rp.denoised(e, subject))[0])
    pixel = float(abs(sv.affine[0, 0]))
    figures.qualitative_grid({k: v[s] for k, v in vols.items()}, sv.full[s], rp.figure("fig_qualitative"),
                             f"{subject}, slice {s}")
    reference, ref_name = (sv.truth, "noiseless recon") if sv.truth is not None else (sv.full, "NDCT")
    figures.noise_vs_radius(vols, reference, pixel, rp.figure("fig_noise_radius"), ref_name)
    seg = load_segmenter(rp.segmenter, torch.device("cpu"))
    maps = {k: segment(seg, v[s:s + 1], torch.device("cpu"))[0] for k, v in vols.items()}
    maps["NDCT"] = segment(seg, sv.full[s:s + 1], torch.device("cpu"))[0]
    if sv.labels is not None:
        maps["true labels"] = sv.labels[s].astype(np.uint8)
    figures.segmentation_maps(maps, rp.figure("fig_segmentation"), f"frozen segmenter on {subject}, slice {s}")
    figures.training_curves({e: pd.read_csv(rp.history(e)) for e in trained}, rp.figure("fig_training_curves"))
    metrics = pd.concat([pd.read_csv(rp.metrics(e)) for e in a.experiments], ignore_index=True)
    figures.metric_distributions(metrics, rp.figure("fig_metric_distributions"))
    if sv.truth is not None and sv.labels is not None:
        phantom = to_slices(read_nifti(rp.phantom(subject) / "phantom.nii.gz")[0])
        figures.phantom_overview(phantom, sv.truth, sv.full, sv.low, sv.labels, pixel, rp.figure("fig_phantom"),
                                 f"synthetic subject {subject}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ldct", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        p.add_argument("--params", help="JSON of the config section (as the workflow passes it)")
        p.add_argument("--config", help="a config YAML file, validated against the schema")
        p.add_argument("--threads", type=int, default=None)
        return p

    p = add("synthesize", cmd_synthesize, "make one synthetic subject (DICOM + truth)")
    p.add_argument("--subject", required=True)
    p.add_argument("--dicom-out", required=True)
    p.add_argument("--phantom-out", required=True)
    p.add_argument("--fields", help="template fields cache (npz) from `ldct template-fields`")
    p = add("template-fields", cmd_template_fields, "build the MNI152 template fields once (npz cache)")
    p.add_argument("--out", required=True)
    p = add("convert", cmd_convert, "convert one subject's full/low DICOM series to NIfTI")
    p.add_argument("--subject-dir", help="subject folder in the TCIA layout")
    p.add_argument("--full", help="full-dose series folder (generic layout)")
    p.add_argument("--low", help="low-dose series folder (generic layout)")
    p.add_argument("--subject", help="subject name (default: the output folder's name)")
    p.add_argument("--out", required=True)
    p.add_argument("--phantom", help="synthetic truth folder whose labels/truth are copied along")
    p = add("convert-doses", cmd_convert_doses, "convert a subject's extra reduced-dose series (dose sweep)")
    p.add_argument("--subject-dir", required=True, help="subject folder in the TCIA layout")
    p.add_argument("--fractions", type=float, nargs="+", required=True, help="dose fractions to convert")
    p.add_argument("--primary", type=float, required=True, help="the primary dose fraction (series 'Low Dose Images')")
    p.add_argument("--out", required=True, help="the subject's NIfTI folder")
    p = add("manifest", cmd_manifest, "gather per-subject manifest rows into one CSV")
    p.add_argument("--out", required=True)
    p.add_argument("rows", nargs="+")
    p = add("split", cmd_split, "write splits.json")
    p.add_argument("--out", required=True)
    p.add_argument("subjects", nargs="+")
    p = add("pretrain-segmenter", cmd_pretrain_segmenter, "train (or load) the segmentation U-Net")
    p.add_argument("--nifti", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--history", required=True)
    p = add("train", cmd_train, "train one experiment")
    for arg in ("--nifti", "--splits", "--out", "--history", "--checkpoints"):
        p.add_argument(arg, required=True)
    p.add_argument("--segmenter")
    p.add_argument("--experiment", help="with --config: the experiment to train")
    p.add_argument("--stop-after-epochs", type=int, help="stop early (to test resuming)")
    p = add("denoise", cmd_denoise, "denoise the test subjects with a trained model")
    for arg in ("--model", "--nifti", "--splits"):
        p.add_argument(arg, required=True)
    p.add_argument("--outdir", nargs="+", required=True, help="output folder (one per --low)")
    p.add_argument("--device", default="auto")
    p.add_argument("--low", nargs="+", default=["low.nii.gz"],
                   help="low-dose input file(s) in each subject folder (other doses of the dose sweep)")
    p = add("evaluate", cmd_evaluate, "per-slice metrics and Dice of one experiment")
    for arg in ("--experiment", "--nifti", "--splits"):
        p.add_argument(arg, required=True)
    p.add_argument("--out", nargs="+", required=True, help="per-slice metrics CSV (one per --low)")
    p.add_argument("--dice", help="per-class Dice CSV (needs --segmenter)")
    p.add_argument("--denoised", nargs="+", help="folder(s) of the experiment's outputs (one per --out)")
    p.add_argument("--segmenter")
    p.add_argument("--device", default="auto")
    p.add_argument("--low", nargs="+", default=["low.nii.gz"],
                   help="low-dose input file(s) in each subject folder (other doses of the dose sweep)")
    p = add("complexity", cmd_complexity, "Table 1: parameters, MACs, latency, memory")
    p.add_argument("--out-prefix", required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    for name, fn, h in (("tables", cmd_tables, "Table 2, Dice table and statistics"),
                        ("figures", cmd_figures, "every figure")):
        p = add(name, fn, h)
        p.add_argument("--root", required=True, help="results/{dataset} folder")
        p.add_argument("--experiments", nargs="+", required=True)
        p.add_argument("--seed", type=int, default=0)
        if name == "tables":
            p.add_argument("--models", default="{}",
                           help='JSON: {"experiments": {name: model spec}, "segmenter": segmenter settings}; '
                                "Table 2's caption names the settings that depart from the reference")
    p = add("dose-sweep", cmd_dose_sweep, "dose-sweep table and figure")
    p.add_argument("--root", required=True, help="results/{dataset} folder")
    p.add_argument("--experiments", nargs="+", required=True, help="rows, LDCT included")
    p.add_argument("--doses", type=float, nargs="+", required=True, help="dose fractions, the training dose first")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
