"""The paper's tables as CSV, Markdown and LaTeX (booktabs): quantitative (Table 2),
anatomical fidelity (Dice), complexity (Table 1), the dose sweep and clinical image quality."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ldct.classes import CLASS_NAMES
from ldct.errors import DataError
from ldct.io import write_csv, write_text
from ldct.metrics import infinite_psnr_note, read_metrics
from ldct.provenance import made_with
from ldct.stats import ALPHA, compare_pairs, holm

TABLE2_COLUMNS = [  # (column, header) in the paper's layout
    ("psnr_full", "PSNR [-1024,3072]"), ("ssim_full", "SSIM [-1024,3072]"), ("vif_full", "VIF [-1024,3072]"),
    ("psnr_brain", "PSNR [-40,120]"), ("ssim_brain", "SSIM [-40,120]"), ("vif_brain", "VIF [-40,120]"),
]


# Training columns shown in Table 2 when the training summary is given (ldct.budget.training_summary).
TRAINING_COLUMNS = [("steps", "steps"), ("lr", "lr"), ("val_gain_last_quarter_db", "best val. gain, last 25 % (dB)")]


def _fmt(v, digits: int | str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float) and np.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return unsigned_zero(f"{v:.2g}" if digits == "e" else f"{v:.{digits}f}")  # "e": two significant digits (learning rates)


def unsigned_zero(text: str) -> str:
    """'-0.00' (a small negative value rounded to zero) as '0.00', '+0.0' as '0.0': no sign on a shown zero."""
    return text[1:] if text[:1] in "+-" and not text.strip("+-0.") else text


def signed(v: float, digits: int) -> str:
    """A difference with its sign ('+0.50'), a shown zero without one."""
    return unsigned_zero(f"{v:+.{digits}f}")


def shown_digits(base: int, ci_low: float, ci_high: float) -> int:
    """Decimals for a difference and its CI: `base`, or more (at most 3 more) where the CI is
    narrower than two digits at `base` would show ([-0.01, -0.01] for -0.0144 to -0.0120)."""
    width = ci_high - ci_low
    if not np.isfinite(width) or width <= 0:
        return base
    return int(max(base, min(base + 3, 1 - np.floor(np.log10(width)))))


TEX_SYMBOLS = {"«": "$^{<}$", "»": "$^{>}$", "†": "$^\\dagger$", "‡": "$^\\ddagger$", "§": "\\S{}",
               "↓": "$^\\downarrow$", "↑": "$^\\uparrow$",
               "∞": "$\\infty$", "′": "$'$", "±": "$\\pm$", "×": "$\\times$", "−": "$-$", "≤": "$\\le$",
               "≥": "$\\ge$", "<": "$<$", ">": "$>$", "~": "$\\sim$", "%": "\\%", "&": "\\&", "#": "\\#",
               "_": "\\_", "^": "\\^{}"}


def latex(text: str) -> str:
    """Text for LaTeX (pdflatex, no Unicode): the tables' marks and symbols as LaTeX commands,
    special characters escaped, powers (10^12) as superscripts; what is between $...$ is kept."""
    parts = str(text).split("$")
    for i in range(0, len(parts), 2):
        p = re.sub(r"(\d+)\^(-?\d+)", lambda m: f"{m[1]}\0{m[2]}\1", parts[i].replace("\\%", "%"))
        p = "".join(TEX_SYMBOLS.get(ch, ch) for ch in p)
        parts[i] = p.replace("\0", "$^{").replace("\1", "}$")
    return "$".join(parts)


def render(df: pd.DataFrame, first: str, cols: list[tuple[str, str]], digits: dict[str, int | str],
           bold: dict[str, str | None], marks: dict[tuple[str, str], str], caption: str,
           flags: dict[str, str] | None = None) -> tuple[str, str]:
    """Markdown and LaTeX of a table whose rows are df[first]; `bold[col]` names the best row
    (None: none), `marks[(row, col)]` what follows a cell, `flags[row]` what follows a row's
    name (its convergence marks, row_flags)."""
    heads = [first] + [h for _, h in cols]
    md = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    tex = ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex(caption)}}}",
           "\\begin{tabular}{l" + "r" * len(cols) + "}", "\\toprule",
           " & ".join(latex(h) for h in heads) + " \\\\", "\\midrule"]
    for _, r in df.iterrows():
        label = f"{r[first]}{(flags or {}).get(r[first], '')}"
        cells_md = [label]
        cells_tex = [latex(label)]
        for c, _ in cols:
            s = _fmt(r[c], digits.get(c, 4)) + marks.get((r[first], c), "")
            is_best = bold.get(c) == r[first]
            cells_md.append(f"**{s}**" if is_best and s else s)
            cells_tex.append(f"\\textbf{{{latex(s)}}}" if is_best and s else latex(s))
        md.append("| " + " | ".join(cells_md) + " |")
        tex.append(" & ".join(cells_tex) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def write_table(out_prefix: str | Path, df: pd.DataFrame, md: str, tex: str, note: str = "") -> None:
    """The table as CSV, Markdown (with its note) and LaTeX; the last two say the package
    versions they were made with."""
    out_prefix = str(out_prefix)
    made = made_with()
    write_csv(out_prefix + ".csv", df)
    write_text(out_prefix + ".md", md + (f"\n{note}\n" if note else "") + f"\n{made}\n")
    write_text(out_prefix + ".tex", f"% {made}\n" + tex)


def departure_note(spec: dict) -> str:
    """One sentence naming every model setting (per experiment) and segmenter setting that
    departs from the reference implementation (models.departures), or saying there is none;
    empty without a spec. `spec`: {"experiments": {name: model spec}, "segmenter": settings}."""
    import models

    if not spec:
        return ""

    def listed(settings: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in settings.items())

    by_setting: dict[str, list[str]] = {}
    for exp, mspec in spec.get("experiments", {}).items():
        for k, v in models.departures(mspec["name"], mspec).items():
            by_setting.setdefault(f"{mspec['name']} {k}={v}", []).append(exp)
    parts = [f"{setting} ({', '.join(exps)})" for setting, exps in by_setting.items()]
    seg_dep = models.departures("unet", spec.get("segmenter") or {})
    if seg_dep:
        published = models.REGISTRY.get("unet").reference_settings
        parts.append(f"segmenter {listed(seg_dep)} (published U-Net: {listed(published)})")
    if not parts:
        return "Models, losses and metrics as in the reference implementation."
    return "Departures from the reference implementation (project options): " + "; ".join(parts) + "."


MADE_BY = {"metrics.csv": "its evaluation", "dice.csv": "its evaluation", "history.csv": "its training",
           "lr_sweep.csv": "its training", "training.csv": "the tables"}


def read_result_csv(path: str | Path) -> pd.DataFrame:
    """A CSV another job wrote, whole: every writer here renames a finished file into place, so
    an empty one, one cut short (not ending its last line) or one pandas cannot parse was
    damaged afterwards; a DataError names it and the job that remakes it (it was a traceback
    naming no file, or a table silently averaged over the rows that were left)."""
    path = Path(path)
    remake = f"rerun {MADE_BY.get(path.name, 'the job that made it')}"
    if not path.is_file():
        raise DataError(f"{path}: not found; {remake}")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: empty; {remake}")
    if not data.endswith(b"\n"):
        raise DataError(f"{path}: cut short (its last line is not whole); {remake}")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: not a readable CSV ({type(err).__name__}: {err}); {remake}") from err


def subjects(n: int, kind: str = "") -> str:
    """"1 subject", "10 test subjects" (`kind` "test ")."""
    return f"{n} {kind}subject" + ("s" if n != 1 else "")


SCORED = ("psnr", "ssim", "rmse")  # never NaN in a metrics.csv, truth_ ones included (an identical slice's PSNR is inf)
# VIF is NaN where the reference is constant in the window (no information to keep): on the same
# slices in every row, as it depends on the reference alone; read_scores checks that, and
# undefined_vif_note says how many a table's means leave out.


def undefined_vif_note(df: pd.DataFrame, cols: list[str]) -> str:
    """A caption sentence when slices of `df` were left out of a VIF mean because the reference
    is constant in that window (VIF 0 / 0: NaN in metrics.csv, on the same slices in every row)."""
    one = df[df["experiment"] == df["experiment"].iloc[0]] if len(df) else df  # the same slices in every row
    n = sum(int(one[c].isna().sum()) for c in cols if "vif" in c and c in one)
    return (f"{n} slice-window VIF value(s) per row were undefined (the reference constant in that window) and are "
            "left out of the means." if n else "")


def read_scores(paths) -> pd.DataFrame:
    """ldct.metrics.read_metrics of metrics.csv files, after checking that each is whole
    (read_result_csv), has no NaN score (read_metrics would drop it from the means unsaid), a
    NaN VIF only where the first has one, and scores the same (subject, slice) pairs as the
    first: the rows are compared slice by slice and subject by subject, and a caption says how
    many slices each mean covers."""
    paths = [str(p) for p in paths]
    first, keys, undefined = None, None, None
    for path in paths:
        f = read_result_csv(path)
        if not {"subject", "slice"} <= set(f.columns):
            raise DataError(f"{path}: no subject and slice columns; rerun {MADE_BY['metrics.csv']}")
        nan = [c for c in f if c.removeprefix("truth_").startswith(SCORED) and f[c].isna().any()]
        if nan:
            row = int(np.flatnonzero(f[nan[0]].isna())[0])
            raise DataError(f"{path}: NaN in {nan[0]} (subject {f['subject'].iloc[row]}, slice "
                            f"{f['slice'].iloc[row]}); rerun {MADE_BY['metrics.csv']}")
        own = set(zip(f["subject"].astype(str), f["slice"]))
        vif = {c: set(zip(f.loc[f[c].isna(), "subject"].astype(str), f.loc[f[c].isna(), "slice"]))
               for c in f if c.removeprefix("truth_").startswith("vif")}
        if keys is None:
            first, keys, undefined = path, own, vif
        elif own != keys:
            lacks, extra = sorted(keys - own), sorted(own - keys)
            what = (f"lacks {len(lacks)} of the {len(keys)} slices {first} scores (first: subject {lacks[0][0]}, "
                    f"slice {lacks[0][1]})" if lacks else f"scores {len(extra)} slice(s) {first} does not "
                    f"(first: subject {extra[0][0]}, slice {extra[0][1]})")
            raise DataError(f"{path}: {what}; the rows are compared slice by slice: rerun the evaluation "
                            "that is out of date")
        odd = next(((c, sorted(v ^ undefined.get(c, set()))[0]) for c, v in vif.items()
                    if v != undefined.get(c, set())), None)
        if odd:
            raise DataError(f"{path}: {odd[0]} is NaN on subject {odd[1][0]}, slice {odd[1][1]} in one of it and "
                            f"{first}, not in both (VIF is undefined only where the reference is constant); rerun "
                            "the evaluation that is out of date")
    return read_metrics(paths)


def quantitative_table(metric_files: dict[str, str], out_prefix: str, out_stats: str, seed: int = 0,
                       reference: str = "NDCT", fidelity: str = "", training: pd.DataFrame | None = None,
                       protocol: str = "") -> pd.DataFrame:
    """Table 2: mean over test slices per experiment; best in bold; † / * = significantly worse /
    better than it (tested_best). `reference="truth"`
    makes the same table against the noiseless phantom (synthetic data). `fidelity`
    (departure_note) and `protocol` (ldct.budget.describe) are added to the caption; `training`
    (ldct.budget.training_summary) adds each row's steps, compute, learning rate and
    convergence flags, which mark the row. SSIM is the paper's definition
    (ldct.metrics.paper_ssim)."""
    allm = read_scores(metric_files.values())
    shown = [("truth_" if reference == "truth" else "") + c for c, _ in TABLE2_COLUMNS]
    infinite = " ".join(x for x in (infinite_psnr_note(allm, shown), undefined_vif_note(allm, shown)) if x)
    if reference == "truth":
        allm = allm[["experiment", "subject", "slice"] + [c for c in allm if c.startswith("truth_")]]
        allm.columns = [c.removeprefix("truth_") for c in allm.columns]
    order = list(metric_files)
    cols = [c for c, _ in TABLE2_COLUMNS]
    extra = [c for c in ("psnr_head", "ssim_head", "vif_head", "rmse_brain") if c in allm]
    table = allm.groupby("experiment", sort=False)[cols + extra].mean().reindex(order).reset_index()
    if training is not None:
        table = table.merge(training, on="experiment", how="left")
    table["seed"] = seed  # the run's seed: `ldct seeds` checks it
    per_subject = allm.groupby(["experiment", "subject"])[cols].mean().reset_index()
    flags, flag_note = row_flags(training)
    bold, st, marks = tested_best(table.set_index("experiment"), per_subject, cols, flags)
    if not bold:
        flag_note += " " + EVERY_ROW_MARKED
    write_csv(out_stats, st)
    marks.update(lr_edge_marks(training))
    digits = {c: (2 if c.startswith("psnr") else 4) for c in cols}
    n_subj = per_subject["subject"].nunique()
    tests = " ".join(x for x in (test_note(n_subj, st, Path(out_stats).name), infinite) if x)
    protocol = " ".join(x for x in (protocol, sweep_note(training)) if x)
    shown_cols = TABLE2_COLUMNS + (TRAINING_COLUMNS if training is not None else [])
    digits.update({"steps": 0, "lr": "e", "val_gain_last_quarter_db": 2})
    md, tex = render(table, "experiment", shown_cols, digits, bold, marks,
                     f"Mean over test slices against {reference}. SSIM as in the paper (11x11 Gaussian window, "
                     f"zero padding). {MARKS_NOTE} "
                     + " ".join(x for x in (tests, protocol, flag_note, fidelity) if x), flags)
    note = (f"Against {reference}: mean over {len(allm) // max(1, len(order))} test slices of {subjects(n_subj)}. "
            f"{MARKS_NOTE} "
            + " ".join(x for x in (tests, protocol, flag_note) if x) + " "
            "SSIM as the paper computes it (11x11 Gaussian window, sigma 1.5, zero padding; "
            "scikit-image's default SSIM is `ssim_skimage_*` in metrics.csv). " + fidelity)
    write_table(out_prefix, table, md, tex, note)
    return table


MARKS_NOTE = "Best in bold; † / * significantly worse / better than it (Holm p < 0.05)."


def test_note(n_subjects: int, stats: pd.DataFrame, stats_file: str = "") -> str:
    """How a table's rows are tested (ldct.stats.compare_pairs; `stats` what it returned), with
    its numbers: the marks' test, its family (the pairs with a test, per column) and where its
    per-comparison intervals are."""
    where = f"; the differences are in {stats_file}." if stats_file else "."
    if n_subjects < 2:
        return f"With {subjects(n_subjects, 'test ')} there is no test: nothing is marked{where}"
    family = sorted(set(stats["comparisons"])) if len(stats) else [0]
    if family[-1] == 0:
        return f"No pair of rows has a test: nothing is marked{where}"
    pairs = f"{family[0]}" if len(family) == 1 else f"{family[0]}-{family[-1]}"
    few = (f" With {n_subjects} subjects the t-test rests on the differences being near normal, which so few "
           "cannot show." if n_subjects < 5 else "")
    return (f"Tests: two-sided paired t-tests on the per-subject means of {subjects(n_subjects, 'test ')}, "
            f"Holm-corrected over the column's {pairs} pairs of rows with a test (every pair: choosing the bold row "
            "on the same subjects does not raise the error rate); each comparison's 95 % t-interval, not adjusted "
            "for the multiplicity" + (f", in {stats_file}." if stats_file else ".") + few)


LR_EDGE_MARKS = {"lowest": "«", "highest": "»"}  # the lr cell's mark where the sweep chose an end of its grid
SHORT_SWEEP_STEPS = 20  # fewer steps per swept rate than this: the caption names the rows


def lr_edge_marks(training: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """Table 2's marks on the lr column: « / » where the sweep chose its lowest / highest rate."""
    if training is None or "lr_at_edge" not in training:
        return {}
    return {(r.experiment, "lr"): LR_EDGE_MARKS[r.lr_at_edge] for r in training.itertuples()
            if r.lr_at_edge in LR_EDGE_MARKS}


def sweep_note(training: pd.DataFrame | None) -> str:
    """The caption's sentence on the learning-rate sweeps (training_summary's lr_at_edge and
    lr_sweep_steps): how long each rate trained, the rows whose sweep was short, and the marks."""
    if training is None or "lr_sweep_steps" not in training:
        return ""
    swept = training[training["lr_sweep_steps"] > 0]
    if swept.empty:
        return ""
    steps = swept["lr_sweep_steps"]
    text = (f"Learning-rate sweep (the rate kept has the lowest validation MSE in [0, 80] HU; the sweep's "
            f"steps are outside the budget): each rate tried trained {steps.min()}"
            + (f"-{steps.max()}" if steps.max() > steps.min() else "") + " steps")
    short = swept[steps < SHORT_SWEEP_STEPS]
    if not short.empty:
        text += (f" (fewer than {SHORT_SWEEP_STEPS} for " + ", ".join(f"{r.experiment} ({r.lr_sweep_steps})"
                                                                      for r in short.itertuples())
                 + ": their rate was chosen on little evidence; train.lr_sweep.min_steps lengthens a sweep)")
    text += "."
    edges = swept[swept["lr_at_edge"].isin(list(LR_EDGE_MARKS))]
    if not edges.empty:
        text += (" « / »: the sweep chose the lowest / highest rate it tried (" + ", ".join(edges["experiment"])
                 + "); a better rate may lie outside the grid.")
    return text


FLAGS = {"not_converged": ("‡", "not converged (its best validation PSNR [-40,120] still rose by more than "
                                "{q} over the last quarter of training, {t} per tenth, or validated too rarely to tell)"),
         "no_gain_over_input": ("§", "no better than its own input on validation (the kept model less than {t} "
                                     "above the LDCT level, or below it)")}


def row_flags(training: pd.DataFrame | None, ranked: bool = True) -> tuple[dict[str, str], str]:
    """Marks appended to an experiment's name in every table, and the sentence explaining them.
    A marked row is shown but not ranked: it is never the best row (`best_row`; `ranked`: the
    table ranks its rows, and the sentence says so)."""
    if training is None or training.empty:
        return {}, ""
    flags = {}
    for _, r in training.iterrows():
        flags[r["experiment"]] = "".join(" " + sym for col, (sym, _) in FLAGS.items() if bool(r.get(col)))
    from ldct.budget import late_tolerance

    gain = training["min_gain_db"].iloc[0] if "min_gain_db" in training else None
    t = f"{gain:g} dB" if gain is not None else "the configured threshold"
    q = f"{late_tolerance(gain):g} dB" if gain is not None else f"{late_tolerance(1.0):g} x that"
    used = [f"{sym} {text.format(t=t, q=q)}" for col, (sym, text) in FLAGS.items()
            if col in training and training[col].astype(bool).any()]
    unranked = "; a marked row is not ranked (never in bold, even where its value is above the bold one)."
    note = ("; ".join(used) + (unranked if ranked else ".") if used else
            f"No row marked: every learned model's best validation PSNR [-40,120] rose by at most {q} over the "
            f"last quarter of training ({t} per tenth) and ends at least {t} above its input.")
    return {e: f for e, f in flags.items() if f}, note


EVERY_ROW_MARKED = "Every row is marked: none is shown as best and none is compared."


def tested_best(means: pd.DataFrame, per_subject: pd.DataFrame, cols: list[str],
                flags: dict[str, str]) -> tuple[dict[str, str], pd.DataFrame, dict[tuple[str, str], str]]:
    """A table's bold row per column (best_row over `means`, indexed by experiment; a column
    with no unmarked value has none), every pair of rows tested on `per_subject`
    (ldct.stats.compare_pairs, oriented against the bold row), and the marks of the rows
    significantly worse (†) or better (*, a row the table does not rank, or one behind by its
    mean over slices but ahead over subjects) than the bold row: (bold, stats, marks)."""
    bold = {c: best_row(means[c], flags) for c in cols}
    bold = {c: e for c, e in bold.items() if e is not None}
    st = compare_pairs(per_subject, list(bold), best=bold)
    return bold, st, {(r.experiment, r.metric): "†" if r.mean_diff < 0 else "*"
                      for r in st.itertuples() if r.against_best and r.significant}


def best_row(values: pd.Series, flags: dict[str, str]) -> str | None:
    """The row a table shows in bold for one column (`values` indexed by experiment, higher is
    better): the highest among the rows with no mark, or None where every row is marked."""
    judged = values[[e not in flags for e in values.index]].dropna()
    return judged.idxmax() if not judged.empty else None


def volume_dice(dice: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Dice per experiment, subject and class over the whole test volume, from the per-slice
    counts of dice.csv; `reference` is "ndct" or "truth". NaN where the class is in neither."""
    g = dice.groupby(["experiment", "subject", "class"], sort=False)[["out_px", f"{reference}_px", f"inter_{reference}"]].sum()
    denom = g["out_px"] + g[f"{reference}_px"]
    return (2 * g[f"inter_{reference}"] / denom.where(denom > 0)).rename("dice").reset_index()


def dice_table(dice_files: dict[str, str], out_prefix: str, training: pd.DataFrame | None = None,
               out_stats: str | None = None) -> pd.DataFrame:
    """Anatomical fidelity: Dice of the frozen segmenter on each output over each test volume,
    against its segmentation of NDCT and against the true labels (synthetic data); mean over
    the foreground classes, then over subjects; best in bold, † / * significantly worse / better than
    it (the subject-level tests of Table 2, tested_best, written to `out_stats`). The CSV
    adds each class's Dice vs the labels (vs NDCT where there are none)."""
    allm = pd.concat([read_result_csv(p) for p in dice_files.values()], ignore_index=True)
    order = list(dice_files)
    cols = [("dice_vs_ndct", "Dice vs NDCT segmentation"), ("dice_vs_truth", "Dice vs true labels")]
    refs = ["ndct"] + (["truth"] if allm["truth_px"].notna().any() else [])
    table = pd.DataFrame({"experiment": order, "dice_vs_ndct": np.nan, "dice_vs_truth": np.nan})
    per_subject = []
    for ref in refs:
        vd = volume_dice(allm, ref)
        subj = vd.groupby(["experiment", "subject"], sort=False)["dice"].mean()
        table[f"dice_vs_{ref}"] = subj.groupby("experiment").mean().reindex(order).to_numpy()
        per_subject.append(subj.rename(f"dice_vs_{ref}"))
    per_class = vd.groupby(["experiment", "class"])["dice"].mean().unstack("class").reindex(order)  # the last ref
    per_class.columns = ["dice_" + re.sub(r"\W+", "_", CLASS_NAMES[c]).strip("_") for c in per_class.columns]
    table = table.join(per_class.reset_index(drop=True))
    flags, flag_note = row_flags(training)
    bold, st, marks = tested_best(table.set_index("experiment"), pd.concat(per_subject, axis=1).reset_index(),
                                  [c for c, _ in cols], flags)
    if out_stats:
        write_csv(out_stats, st)
    n_subjects = allm["subject"].nunique()
    caption = ("Mean foreground Dice of the frozen segmentation U-Net on each output, over each test volume "
               f"(mean over classes, then over {subjects(n_subjects)}).")
    if not bold:
        caption += " " + EVERY_ROW_MARKED
    elif len(order) > 1:
        caption += f" {MARKS_NOTE} " + test_note(n_subjects, st, Path(out_stats).name if out_stats else "")
    md, tex = render(table, "experiment", cols, {}, bold, marks, f"{caption} {flag_note}".strip(), flags)
    write_table(out_prefix, table, md, tex, f"{caption} Per-class Dice in the CSV"
                + (f", the tests in {Path(out_stats).name}" if out_stats else "") + f". {flag_note}".rstrip())
    return table


def complexity_table(rows: list[dict], out_prefix: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    cols = [(c, h) for c, h in (("params", "parameters"), ("gmacs", "GMACs"), ("cpu_latency_s", "CPU latency (s)"),
                                ("peak_memory_mb", "peak memory (MB)"), ("gpu_latency_s", "GPU latency (s)"))
            if c in df and df[c].notna().any()]
    shown = df.copy()
    shown["params"] = shown["params"].map(lambda v: f"{int(v):,}")
    digits = {"cpu_latency_s": 3, "peak_memory_mb": 0, "gpu_latency_s": 4}
    for c, d in digits.items():
        if c in shown:
            shown[c] = shown[c].map(lambda v, d=d: _fmt(v, d))
    if "gmacs" in shown:  # a small model's few MACs: two significant digits, not 0.00
        shown["gmacs"] = shown["gmacs"].map(lambda v: f"{v:.2g}" if isinstance(v, float) and 0 < v < 0.1 else _fmt(v, 2))
    uncounted = df["gmacs"].isna() if "gmacs" in df else pd.Series(False, index=df.index)
    shown.loc[uncounted, "gmacs"] = "n/a"
    na = " GMACs n/a: not a torch model (runs in numpy), no MAC count." if uncounted.any() else ""
    size = int(df["size"].iloc[0]) if "size" in df else 512
    caption = (f"Per {size}x{size} slice. Parameters: trainable ones only. GMACs: multiply-accumulates of one "
               "forward pass (convolutions and matrix products)")
    if "frozen_gmacs" in df and (df["frozen_gmacs"].fillna(0) > 0).any():
        caption += ", frozen parts included (" + "; ".join(
            f"{r.model}: {r.frozen_gmacs:.2f} of its {r.gmacs:.2f} are its frozen parts, whose parameters are not counted"
            for r in df.itertuples() if r.frozen_gmacs > 0) + ")"
    caption += "."
    if "cpu_latency_s" in df:
        runs = (f"median of {int(df['repeats'].iloc[0])} forward pass(es) after one warm-up, "
                f"{int(df['threads'].iloc[0])} thread(s)" if {"repeats", "threads"} <= set(df) else "median per slice")
        caption += (f" CPU latency: {runs}, without gradients; peak memory: the CPU process's peak resident set "
                    "during those passes, above its size before them (each model in its own process).")
    if "gpu_latency_s" in df and df["gpu_latency_s"].notna().any():
        caption += (" GPU latency: median of at least 10 passes, CUDA synchronised, in float32 without autocast "
                    "(convolutions in TF32 where the GPU has it, PyTorch's default; training and denoising on a "
                    "GPU use mixed precision, train.amp).")
    caption += na
    md, tex = render(shown.astype({c: str for c, _ in cols}), "model", cols, {}, {}, {}, caption)
    write_table(out_prefix, df, md, tex, caption)
    return df


DOSE_METRICS = [("psnr_brain", "PSNR [-40,120]"), ("ssim_brain", "SSIM [-40,120]")]


def dose_table(metric_files: dict[tuple[str, float], str | Path], out_prefix: str, training_dose: float,
               training: pd.DataFrame | None = None) -> pd.DataFrame:
    """Dose sweep: mean (and std over test slices) PSNR and SSIM in [-40, 120] HU against NDCT
    for every (experiment, dose fraction). The CSV has one row per pair; the Markdown and
    LaTeX versions put the doses side by side, the best unmarked row per column in bold
    (`training`: the convergence marks, ldct.budget.training_summary)."""
    read_scores(metric_files.values())  # whole, and every (experiment, dose) scoring the same slices
    rows = []
    for (exp, dose), path in metric_files.items():
        m = read_metrics([path])
        row = {"experiment": exp, "dose_fraction": float(dose), "training_dose": abs(dose - training_dose) < 1e-9,
               "slices": len(m), "subjects": m["subject"].nunique()}
        for c, _ in DOSE_METRICS + [("psnr_full", ""), ("ssim_full", "")]:
            row[c] = float(m[c].mean())
            row[f"{c}_std"] = float(m[c].std(ddof=0))
        rows.append(row)
    long = pd.DataFrame(rows)
    order = list(dict.fromkeys(long["experiment"]))
    doses = sorted(long["dose_fraction"].unique())
    wide = long.pivot(index="experiment", columns="dose_fraction", values=[c for c, _ in DOSE_METRICS]).reindex(order)
    shown = pd.DataFrame({"experiment": order})
    cols, digits = [], {}
    for c, head in DOSE_METRICS:
        for d in doses:
            key = f"{c}@{d:g}"
            shown[key] = wide[(c, d)].to_numpy()
            mark = " (train)" if abs(d - training_dose) < 1e-9 else ""
            cols.append((key, f"{head} {d * 100:g}%{mark}"))
            digits[key] = 2 if c.startswith("psnr") else 4
    flags, flag_note = row_flags(training)
    bold = {k: best_row(shown.set_index("experiment")[k], flags) for k, _ in cols}
    untested = "bold: the highest mean per column, not tested (Table 2 tests the rows at the training dose)"
    over = f"mean over {int(long['slices'].iloc[0])} test slices of {subjects(int(long['subjects'].iloc[0]))}"
    md, tex = render(shown, "experiment", cols, digits, bold, {},
                     "Dose sweep: mean PSNR and SSIM in [-40, 120] HU against NDCT at each dose fraction "
                     f"({over}); models trained at the dose marked (train); {untested}. {flag_note}".strip(), flags)
    note = (f"Models trained at {training_dose * 100:g}% dose and applied unchanged at every dose; {over}. "
            f"{untested[0].upper()}{untested[1:]}; per-slice standard deviations in the CSV. {flag_note}".strip())
    write_table(out_prefix, long, md, tex, note)
    return long


def anatomical_effect(metric_files: dict[str, str], dice_files: dict[str, str], out_prefix: str,
                      training: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's claim, per model trained with and without the anatomical loss (experiments
    `<model>_ana` and `<model>_l1`): the paired per-subject difference (ana - l1) of PSNR and
    SSIM in [-40, 120] HU and of Dice against the NDCT segmentation, with its 95 % t-interval
    and paired t-test p (ldct.stats.paired_difference); each run's convergence marks
    (`training`, row_flags) beside the model."""
    from ldct.stats import paired_difference

    pairs = [(e[:-4], e, e[:-4] + "_l1") for e in metric_files if e.endswith("_ana") and e[:-4] + "_l1" in metric_files]
    if not pairs:  # none in this run: a file left by an earlier config would show pairs no longer there
        for ext in (".csv", ".md"):
            Path(out_prefix + ext).unlink(missing_ok=True)
        return pd.DataFrame()
    names = [x for _, a, b in pairs for x in (a, b)]
    per_subject = read_scores(metric_files[e] for e in names).groupby(["experiment", "subject"])[
        ["psnr_brain", "ssim_brain"]].mean()
    dice = volume_dice(pd.concat([read_result_csv(dice_files[e]) for e in names]), "ndct")
    per_subject["dice_vs_ndct"] = dice.groupby(["experiment", "subject"])["dice"].mean()
    rows = []
    for model, ana, l1 in pairs:
        for metric in ("psnr_brain", "ssim_brain", "dice_vs_ndct"):
            diff = (per_subject.loc[ana, metric] - per_subject.loc[l1, metric]).dropna().to_numpy()
            rows.append({"model": model, "metric": metric, **paired_difference(diff)})
    table = pd.DataFrame(rows)
    flags, flag_note = row_flags(training, ranked=False)
    table["marks"] = [" ".join(f"{run}{flags[e]}" for run, e in (("ana", f"{m}_ana"), ("l1", f"{m}_l1")) if e in flags)
                      for m in table["model"]]
    lines = ["| model | metric | ana - l1 (mean) | 95 % CI | p | subjects |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        d = shown_digits(2 if r.metric.startswith("psnr") else 4, r.ci_low, r.ci_high)
        ci = ("n/a (all differences equal)" if r.ci_low == r.ci_high and r.n_subjects > 1 else "" if np.isnan(r.ci_low)
              else f"[{signed(r.ci_low, d)}, {signed(r.ci_high, d)}]")
        model = f"{r.model} ({r.marks})" if r.marks else r.model
        lines.append(f"| {model} | {r.metric} | {signed(r.mean_diff, d)} | {ci} | {r.p:.3g} | {r.n_subjects} |")
    marked = f"A pair with a marked run (ana or l1) is not evidence for or against the loss: {flag_note} " if flags else ""
    note = ("Effect of the anatomical perception loss: per test subject, the experiment trained with it minus the "
            "same model trained with L1 (PSNR and SSIM in [-40, 120] HU; Dice of the frozen segmenter against its "
            "NDCT segmentation, over each volume); mean, 95 % t-interval and two-sided paired t-test p over subjects "
            "(not corrected for the number of rows; the exact Wilcoxon signed-rank p, a check on the t-test's "
            f"normality, in the CSV). {pair_settings_note(pairs, training)}{marked}").rstrip()
    write_csv(out_prefix + ".csv", table)
    write_text(out_prefix + ".md", "\n".join(lines) + f"\n\n{note}\n\n{made_with()}\n")
    return table


def pair_settings_note(pairs: list[tuple[str, str, str]], training: pd.DataFrame | None) -> str:
    """What differs within an (ana, l1) pair besides the loss: each run's own learning rate (from
    its own sweep, or set for it) and the anatomical loss's compute, which the budget does not count."""
    text = ("Besides the loss, the two runs differ in the compute the loss itself spends: the budget counts the "
            "denoiser only, so the anatomical run also spends the frozen U-Net's passes in its loss (its forward "
            "on output and target, its backward)")
    lr = training.set_index("experiment")["lr"] if training is not None and "lr" in training else pd.Series(dtype=float)
    differ = [f"{m} {lr[a]:g} / {lr[b]:g}" for m, a, b in pairs if a in lr and b in lr and lr[a] != lr[b]]
    if differ:
        swept = "lr_source" in training and training["lr_source"].astype(str).str.startswith("sweep").all()
        text += (f"; and each run keeps its own learning rate ({'from its own sweep' if swept else 'swept or set'}), "
                 "which differs in " + ", ".join(differ) + " (ana / l1): those rows mix the loss with the rate")
    return text + ". "


def write_tables(rp, experiments: list[str], model_specs: dict, seed: int, train_cfg: dict | None = None,
                 own_train: dict[str, dict] | None = None) -> None:
    """Table 2 (against NDCT, and against the noiseless truth where the metrics have it), its
    statistics, the Dice table, and training.csv (each experiment's budget and convergence,
    ldct.budget.training_summary) of a results folder (`ldct tables`). `own_train`: the train
    keys experiments set for themselves, which the caption lists."""
    from ldct import budget

    metric_files = {e: rp.metrics(e) for e in experiments}
    read_scores(metric_files.values())  # every input whole before a table is written: not a half-updated set
    for e in experiments:
        read_result_csv(rp.dice(e))
    fidelity = departure_note(model_specs)
    trained = [e for e in experiments if rp.history(e).exists()]
    training, protocol = None, ""
    if train_cfg and trained:
        sweeps = {e: read_result_csv(rp.lr_sweep(e)) for e in trained if rp.lr_sweep(e).exists()}
        training = budget.training_summary({e: read_result_csv(rp.history(e)) for e in trained}, sweeps,
                                           train_cfg["budget"]["min_gain_db"])
        made = {e: trained_with(rp.model(e)) for e in training["experiment"]}
        training["trained_with"] = [made[e][0] for e in training["experiment"]]
        training["trained_on"] = [made[e][1] for e in training["experiment"]]
        write_csv(rp.table("training"), training)
        protocol = " ".join(x for x in (budget.describe(train_cfg), budget.spent_note(train_cfg, training),
                                        budget.own_settings_note(own_train), selection_note(rp.splits),
                                        trained_with_note(training)) if x)
    quantitative_table(metric_files, rp.table_prefix("table2_quantitative"), rp.table("stats"), seed=seed,
                       fidelity=fidelity, training=training, protocol=protocol)
    if "truth_psnr_full" in pd.read_csv(metric_files[experiments[0]], nrows=1):
        quantitative_table(metric_files, rp.table_prefix("table2_vs_truth"), rp.table("stats_vs_truth"),
                           seed=seed, reference="truth", fidelity=fidelity, training=training, protocol=protocol)
    dice_table({e: rp.dice(e) for e in experiments}, rp.table_prefix("table3_anatomical_dice"), training,
               rp.table("dice_stats"))
    anatomical_effect(metric_files, {e: rp.dice(e) for e in experiments}, rp.table_prefix("anatomical_effect"), training)


def trained_with(model_file: Path) -> tuple[str, str]:
    """The project version (commit) a model.pt was trained with and the machine it ran on, in
    words (a table's own "Made with" line names the commit that drew it, which may be later:
    training is not rerun for a change to ldct/); "" where the file does not record them."""
    from ldct.inference import load_checkpoint

    if not Path(model_file).is_file():
        return "", ""
    ck = load_checkpoint(model_file)  # a damaged file: its one-line error, not torch's traceback
    m = ck.get("machine") or {}
    where = m.get("gpu") or " ".join(x for x in (m.get("cpu", ""), f"({m['cpu_capability']})" if m.get("cpu_capability")
                                                  else "") if x)
    threads = f", {m['torch_threads']} threads" if m.get("torch_threads") and not m.get("gpu") else ""
    return str((ck.get("versions") or {}).get("ldct", "")), f"{where}{threads}" if where else ""


def trained_with_note(training: pd.DataFrame) -> str:
    """The caption's sentence on where the models come from: one commit and machine, or how many
    rows each (models of one table trained at several commits or on several machines)."""
    parts = []
    for col, what in (("trained_with", "ldct"), ("trained_on", "on")):
        values = training[col].fillna("").astype(str)
        counts, blank = values[values != ""].value_counts(), int((values == "").sum())
        if len(counts) == 1 and not blank:
            parts.append(f"{what} {counts.index[0]}")
        elif len(counts):  # several, or some rows whose model.pt does not record it
            parts.append(f"{what} " + ", ".join([f"{v} ({n} rows)" for v, n in counts.items()]
                                                 + ([f"not recorded ({blank} rows)"] if blank else [])))
    return f"Models trained with {' '.join(parts)} (training.csv)." if parts else ""


def selection_note(splits_file: Path) -> str:
    """A sentence for Table 2's caption when the test subjects are the validation subjects
    (split.val_as_test, the paper's protocol): the learning rate and the kept checkpoint were
    then chosen on the very subjects the table scores."""
    if not Path(splits_file).is_file():
        return ""
    split = json.loads(Path(splits_file).read_text())
    if not split.get("test") or set(split["test"]) != set(split.get("val", [])):
        return ""
    return ("The test subjects are the validation subjects (split.val_as_test, the paper's protocol): each row's "
            "learning rate and kept checkpoint were chosen on the subjects this table scores, which raises every "
            "row's numbers, the more so the noisier its validation curve.")


def _condition_name(c: dict) -> str:
    return f"{c['contrast_hu']:g} HU {c['diameter_mm']:g} mm"


def _best_dprime(results: dict[str, dict], compared: list[str], i: int, flags: dict[str, str]) -> str | None:
    """The row with the highest d' in condition i among the compared rows with no mark (best_row)."""
    return best_row(pd.Series({r: results[r]["conditions"][i]["dprime"] for r in compared}), flags)


def clinical_comparisons(results: dict[str, dict], compared: list[str], baseline: str, seed: int = 0,
                         n_resamples: int = 2000) -> pd.DataFrame:
    """Per lesion condition: every compared row other than `baseline` against the baseline (the
    LDCT input, chosen before the data: significantly lower ↓ or higher ↑ where Holm p < 0.05),
    by a paired bootstrap over the lesion sites, training and test, the templates learnt again
    in each replicate (ldct.stats.paired_dprime), Holm-corrected within each condition. No row is
    tested against the best: the best is chosen on the same sites, and the bootstrap's p cannot
    fall below 2 / (n_resamples + 1), too coarse for a correction over every pair of rows."""
    from ldct.stats import paired_dprime

    rows = []
    for i, cond in enumerate(results[compared[0]]["conditions"]):
        comps = [{"condition": _condition_name(cond), "contrast_hu": cond["contrast_hu"],
                  "diameter_mm": cond["diameter_mm"], "experiment": r, "reference": baseline,
                  **paired_dprime(results[r]["conditions"][i], results[baseline]["conditions"][i], seed, n_resamples)}
                 for r in compared if r != baseline]
        for c, padj in zip(comps, holm([c["p"] for c in comps]) if comps else []):
            c.update(p_holm=padj, significant=padj < ALPHA)
        rows += comps
    return pd.DataFrame(rows, columns=["condition", "contrast_hu", "diameter_mm", "experiment", "reference", "diff",
                                       "ci_low", "ci_high", "p", "p_holm", "significant"])


def _clinical_records(results: dict[str, dict], base: dict) -> pd.DataFrame:
    """One row per clinical result: d' (CIs), AUC, measured contrast and CNR (its standard error) per condition,
    NPS summary and its shift against `base`, the lesion ROIs' bias, f50 per insert and its interval."""
    records = []
    for row, res in results.items():
        rec = {"experiment": row}
        for i, c in enumerate(res["conditions"]):
            rec[f"dprime_{i}"] = c["dprime"]
            for k in ("dprime_ci_low", "dprime_ci_high", "auc", "auc_ci_low", "auc_ci_high"):
                rec[f"{k}_{i}"] = c.get(k, float("nan"))
            rec[f"measured_contrast_hu_{i}"] = c["measured_contrast_hu"]
            rec[f"cnr_{i}"] = c["cnr"]
            rec[f"cnr_se_{i}"] = c.get("cnr_se", float("nan"))
        rec["auc_hardest"], rec["cnr_hardest"] = res["conditions"][0]["auc"], res["conditions"][0]["cnr"]
        rec["cnr_hardest_se"] = rec["cnr_se_0"]
        rec["noise_sd"] = res["nps"]["noise_sd"]
        rec["nps_mean_frequency"] = res["nps"]["mean_frequency"]
        rec["nps_shift_pct"] = 100 * (res["nps"]["mean_frequency"] / base["nps"]["mean_frequency"] - 1)
        rec["roi_bias"] = res["roi"]["bias"]
        for t in res["ttf"]:
            rec[f"f50_{t['contrast_hu']:g}"] = t["f50"]
            for k in ("f50_ci_low", "f50_ci_high"):
                rec[f"{k}_{t['contrast_hu']:g}"] = t.get(k, float("nan"))
        records.append(rec)
    return pd.DataFrame(records)


def _undefined_as_na(table: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Table 5's display copy with "n/a" where a d' or f50 is NaN (undefined: a blank cell
    said nothing), and the rows that have one."""
    shown = table.copy()
    rows = []
    for c in columns:
        na = shown[c].isna()
        if na.any():
            shown[c] = shown[c].astype(object).where(~na, "n/a")
            rows += [r for r in shown.loc[na, "experiment"] if r not in rows]
    return shown, rows


def _clinical_caption(base: dict, table: pd.DataFrame, compared: list[str], references: list[str]) -> str:
    """Table 5's caption up to its convergence marks: the observer, its sites and tests, the
    reference rows, the NPS, the CNR (with its largest standard error among `compared`), f50."""
    sites = sorted({c["n_test"] // 2 for c in base["conditions"]})
    n_sites = f"{sites[0]}" if len(sites) == 1 else f"{sites[0]}-{sites[-1]}"
    names = base.get("subjects")
    scans = f" in the lesion-task scans of {subjects(len(names), 'test ')} ({', '.join(names)})" if names else ""
    width = base.get("channel_width_mm")
    channels = (f"{base.get('channels', '')} Laguerre-Gauss channels" +
                (f" of width {width:g} mm, cut to the {base['roi_px']}-pixel ROI: not orthonormal, the same for every row"
                 if width is not None and "roi_px" in base else ""))
    cnr_se = table.loc[table["experiment"].isin(compared), "cnr_hardest_se"].max()
    cnr_note = ("" if not np.isfinite(cnr_se) else
                f"; its standard error over the sites is up to {cnr_se:.2f} in the compared rows (cnr_se_* in the CSV), "
                "as the contrast is measured through the row's noise; CNR differences are not tested")
    return (f"Channelized Hotelling observer ({channels}) on a "
            f"background-known-exactly task{scans}: d′ per lesion contrast and diameter on "
            f"{n_sites} held-out lesion sites per condition (each read lesion-present and lesion-absent), its "
            "template trained on the other sites (a held-out d′ is biased low when it is small: about -20 % at 0.35). "
            "Highest in bold (not tested against the other rows); ↓ / ↑ significantly lower / higher than the LDCT "
            "input (paired bootstrap over the training and test sites, both templates learnt again in each "
            "replicate: a conservative test; Holm p < 0.05 over the rows within each condition, not across "
            "conditions; per-comparison 95 % CIs, not adjusted for the multiplicity, in clinical_stats.csv). "
            f"{', '.join(references)}: reference rows, not compared (the noiseless reconstruction has no noise: its d′ is "
            "unbounded and it has no NPS). Noise SD and mean frequency (TG-233's f_av) from the noise power spectrum in brain ROIs of "
            "noise-only images (difference method: the row's error in scan A less its error in scan B, over sqrt 2, "
            "so its error on the anatomy is not counted as noise); CNR: measured lesion contrast (disc minus ring, "
            "mean over the sites) over that noise SD" + cnr_note + "; f50 from the task-transfer function of the "
            "water QA phantom's inserts (AAPM TG-233; ∞: the TTF stays above "
            "0.5 up to the Nyquist frequency; 95 % bootstrap CIs over the QA noise realisations in the CSV: f50 "
            "differences inside them are noise); ROI bias: "
            "mean output minus truth in the lesion ROIs (HU). ")


def clinical_table(results: dict[str, dict], out_prefix: str, out_stats: str, baseline: str,
                   references: list[str], seed: int = 0, n_resamples: int = 2000,
                   training: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 5, clinical image quality per row (ldct.clinical.measure's results, in order), and
    its comparisons (clinical_comparisons, also written to `out_stats`): CHO d' per lesion condition (the highest compared row in bold,
    ↓/↑ significantly lower/higher than the `baseline` LDCT input), the AUC and CNR of the
    hardest condition, the NPS noise SD and mean frequency (and its shift against the input),
    f50 per QA insert and the HU bias in the lesion ROIs. `references` (NDCT, the noiseless
    reconstruction) are shown but not compared."""
    compared = [r for r in results if r not in references]
    base = results[baseline]
    conds = base["conditions"]
    table = _clinical_records(results, base)
    flags, flag_note = row_flags(training)
    stats_df = clinical_comparisons(results, compared, baseline, seed, n_resamples)
    write_csv(out_stats, stats_df)
    cols = [(f"dprime_{i}", f"d′ {_condition_name(c)}") for i, c in enumerate(conds)]
    cols += [("auc_hardest", f"AUC {_condition_name(conds[0])}"), ("cnr_hardest", f"CNR {_condition_name(conds[0])}"),
             ("noise_sd", "noise SD (HU)"), ("nps_mean_frequency", "NPS mean f (1/mm)"),
             ("nps_shift_pct", "mean f vs LDCT (%)")]
    cols += [(f"f50_{t['contrast_hu']:g}", f"f50 {t['contrast_hu']:g} HU (1/mm)") for t in base["ttf"]]
    cols += [("roi_bias", "ROI bias (HU)")]
    digits = {c: 2 for c, _ in cols}
    digits.update({"auc_hardest": 3, "nps_mean_frequency": 3, "nps_shift_pct": 1, "roi_bias": 2})
    digits.update({f"f50_{t['contrast_hu']:g}": 3 for t in base["ttf"]})
    index = {_condition_name(c): i for i, c in enumerate(conds)}
    marks = {(r.experiment, f"dprime_{index[r.condition]}"): "↓" if r.diff < 0 else "↑"
             for r in stats_df[stats_df["significant"]].itertuples()}
    bold = {f"dprime_{i}": _best_dprime(results, compared, i, flags) for i in range(len(conds))}
    what = _clinical_caption(base, table, compared, references) + flag_note
    shown, undefined = _undefined_as_na(table, [c for c, _ in cols if c.startswith(("dprime_", "f50_"))])
    if undefined:
        what += (" n/a: undefined for that row (" + ", ".join(undefined) + "): its lesion scores have no spread or "
                 "its QA inserts no edge, as a constant output gives.")
    md, tex = render(shown, "experiment", cols, digits, bold, marks, "Clinical image quality. " + what, flags)
    table["seed"] = seed  # the bootstrap's (the run's), as Table 2's CSV records its own
    write_table(out_prefix, table, md, tex, what)
    return table, stats_df
