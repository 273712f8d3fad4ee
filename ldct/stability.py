"""Seed stability: the whole benchmark repeated for several seeds (data, split and
initialisation all follow the seed), then per experiment and metric the mean and SD across
seeds, and Kendall's tau between every two seeds' rankings of the experiments.

`python -m ldct seeds --seeds 42 43 44` runs the workflow once per seed (results of seed s in
results/{dataset}_seed{s}, the config's own seed in results/{dataset}) and writes
results/{dataset}_stability/: stability.csv / .md (mean +- SD), ranks.csv (each seed's rank
of each experiment), tau.csv (Kendall's tau per pair of seeds and metric) and
fig_seed_ranks.png.
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

from ldct.errors import DataError
from ldct.io import write_csv, write_text
from ldct.provenance import made_with

# Fewest rows shared by two seeds for which their Kendall's tau is reported in the caption: with
# 2 rows tau can only be +-1, with 3 only +-1 or +-1/3 (p >= 0.33): it would say nothing.
MIN_TAU_ROWS = 4
METRICS = [("psnr_brain", "PSNR [-40,120]"), ("ssim_brain", "SSIM [-40,120]"), ("psnr_full", "PSNR [-1024,3072]"),
           ("ssim_full", "SSIM [-1024,3072]")]


def seed_root(results: Path, dataset: str, seed: int, config_seed: int) -> Path:
    return results / (dataset if seed == config_seed else f"{dataset}_seed{seed}")


# Snakemake's options (their argparse names) that plan, list, mark or clean instead of running the
# workflow: with one of them there is nothing new to report.
NOT_A_RUN = ("dryrun", "dag", "rulegraph", "filegraph", "d3dag", "summary", "detailed_summary", "lint",
             "list_rules", "list_target_rules", "list_changes", "touch", "unlock", "cleanup_metadata",
             "delete_all_output", "delete_temp_output", "report", "archive", "containerize", "export_cwl")


def is_dry_run(snakemake_args: list[str]) -> bool:
    """Whether the Snakemake options do not run the workflow (`-n`, `-np`, `--executor dryrun`,
    `--dag`, `--touch`, ...), read by Snakemake's own parser: a report of the results already
    there would replace the last one, and nothing new was made."""
    from snakemake.cli import get_argument_parser

    try:
        args, _ = get_argument_parser().parse_known_args(snakemake_args)
    except SystemExit:  # options Snakemake will refuse itself, with its own message
        return False
    return getattr(args, "executor", None) == "dryrun" or any(getattr(args, k, None) for k in NOT_A_RUN)


def check_seed_args(seeds: list[int], snakemake_args: list[str], threads: int | None) -> None:
    """`ldct seeds`'s arguments: seeds distinct and at least two, no --configfile among the
    Snakemake options (the config names each seed's folder: one given after `--` ran one config
    while the report read another's folders), no --threads (Snakemake's --cores sets them)."""
    from ldct.errors import UsageError

    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise UsageError(f"--seeds: {', '.join(map(str, twice))} given twice")
    if len(seeds) < 2:
        raise UsageError(f"--seeds {' '.join(map(str, seeds))}: give at least two different seeds "
                         "(stability is the spread across seeds and the agreement of their rankings)")
    if any(x.split("=")[0] in ("--configfile", "--configfiles") for x in snakemake_args):
        raise UsageError("give --configfile before `--`: ldct seeds reads the config to name each seed's results "
                         "folder, and passes it on to Snakemake")
    if threads:
        raise UsageError("--threads is not used by seeds: Snakemake's --cores sets each job's threads")


def split_config_args(args: list[str]) -> tuple[list[str], dict]:
    """Snakemake options without their `--config KEY=VALUE ...` items, and those items read as
    Snakemake reads them (each VALUE as YAML): `ldct seeds` adds its own --config, and of
    several, Snakemake keeps only the last."""
    import yaml

    from ldct.errors import UsageError

    rest, items, taking = [], {}, False
    for arg in args:
        if arg in ("--config", "-C"):
            taking = True
        elif arg.startswith("--config="):  # the attached form holds one item, as argparse reads it
            item = arg.removeprefix("--config=")
            if "=" not in item:
                raise UsageError(f"{arg}: give --config KEY=VALUE")
            key, value = item.split("=", 1)
            items[key] = yaml.safe_load(value)
            taking = False
        elif taking and "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            items[key] = yaml.safe_load(value)
        else:
            taking = False
            rest.append(arg)
    return rest, items


def run_seed(seed: int, dataset: str, config_seed: int, snakemake_args: list[str], overrides: dict | None = None) -> None:
    """The whole workflow for one seed (the config's own seed keeps its results folder), with
    the user's --config `overrides` merged into the seed's own."""
    import yaml

    from ldct.config import merge

    items = {**(overrides or {}), "seed": seed}
    if seed != config_seed:
        items["dataset"] = merge(items.get("dataset") or {}, {"name": f"{dataset}_seed{seed}"})
    flow = [f"{k}={yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
            for k, v in items.items()]
    cmd = [sys.executable, "-m", "snakemake", *snakemake_args, "--config", *flow]
    print("running:", " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    child = subprocess.Popen(cmd)
    try:
        rc = child.wait()
    except KeyboardInterrupt:  # Snakemake has the Ctrl-C too: let it cancel its jobs and unlock
        child.wait()  # (subprocess.run killed it after 0.25 s, leaving its lock and incomplete markers)
        raise
    if rc != 0:
        raise DataError(f"the workflow for seed {seed} failed (Snakemake exit code {rc}; its messages are above, "
                        "after the `running:` line)")


def gather(roots: dict[int, Path]) -> pd.DataFrame:
    """Table 2 of every seed in one long frame: seed, experiment, metric columns."""
    frames = []
    for seed, root in roots.items():
        path = root / "tables" / "table2_quantitative.csv"
        if not path.exists():
            raise DataError(f"{path}: not found; run the workflow for seed {seed} first")
        table = pd.read_csv(path)
        made = set(table["seed"].dropna().astype(int)) if "seed" in table else {seed}
        if made != {seed}:
            raise DataError(f"{path}: made with seed {', '.join(map(str, sorted(made)))}, not {seed}; "
                            f"run the workflow for seed {seed} (without --no-run)")
        frames.append(table.assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


MARKS = ("not_converged", "no_gain_over_input")  # Table 2's convergence marks (ldct.budget.training_summary)


def _marked(long: pd.DataFrame) -> pd.DataFrame:
    """(experiment x seed) True where the row carries a convergence mark in that seed's Table 2."""
    flags = [c for c in MARKS if c in long]
    marked = long[flags].fillna(False).astype(bool).any(axis=1) if flags else pd.Series(False, index=long.index)
    return long.assign(marked=marked).pivot(index="experiment", columns="seed", values="marked").fillna(False)


def summarize(long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, SD and n (the seeds where it is defined) per experiment and metric, each seed's
    ranks, Kendall's tau per seed pair: over every row, and over the rows with no convergence
    mark in either seed, which the tables rank)."""
    cols = [c for c, _ in METRICS if c in long]
    order = list(dict.fromkeys(long["experiment"]))
    g = long.groupby("experiment", sort=False)[cols]
    table = (g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_sd")).join(g.count().add_suffix("_n"))
             .reindex(order).reset_index())
    table["seeds"] = long.groupby("experiment")["seed"].nunique().reindex(order).to_numpy()
    ranks = long.assign(**{f"rank_{c}": long.groupby("seed")[c].rank(ascending=False, method="min") for c in cols})
    marked = _marked(long)
    ranks = ranks[["seed", "experiment"] + [f"rank_{c}" for c in cols]]
    ranks = ranks.assign(marked=[bool(marked.loc[e, s]) for e, s in zip(ranks["experiment"], ranks["seed"])])
    taus = []
    for c in cols:
        wide = long.pivot(index="experiment", columns="seed", values=c)
        for a, b in itertools.combinations(wide.columns, 2):
            both = wide[[a, b]].dropna()
            unmarked = both[~(marked.loc[both.index, a] | marked.loc[both.index, b]).astype(bool)]
            for rows, sub in (("all", both), ("unmarked", unmarked)):
                # a pair sharing fewer than 2 rows has no tau, but it stays listed, so that the
                # caption's mean over seed pairs is not taken over the other pairs only
                tau = stats.kendalltau(sub[a], sub[b]) if len(sub) >= 2 else None
                taus.append({"metric": c, "rows": rows, "n_rows": len(sub), "seed_a": a, "seed_b": b,
                             "tau": float(tau.statistic) if tau else float("nan"),
                             "p": float(tau.pvalue) if tau else float("nan"),
                             "swapped_pairs": ", ".join(swaps(sub[a], sub[b]))})
    return table, ranks, pd.DataFrame(taus)


def swaps(a: pd.Series, b: pd.Series) -> list[str]:
    """Pairs of experiments ordered one way by `a` and the other way by `b`."""
    out = []
    for x, y in itertools.combinations(a.index, 2):
        if (a[x] - a[y]) * (b[x] - b[y]) < 0:
            out.append(f"{x}/{y}")
    return out


def tau_summary(taus: pd.DataFrame, rows: str) -> str:
    """Each metric's mean tau over the seed pairs and how many rows the pairs share; n/a where a
    pair shares fewer than MIN_TAU_ROWS rows (tau of 2 or 3 rows says nothing) or has no tau (a
    seed whose values all tie)."""
    parts = []
    for metric, sel in taus[taus["rows"] == rows].groupby("metric", sort=False):
        n = sel["n_rows"]
        span = f"{n.min()} row" if n.min() == n.max() == 1 else (
            f"{n.min()} rows" if n.min() == n.max() else f"{n.min()}-{n.max()} rows")
        if n.min() < MIN_TAU_ROWS:
            parts.append(f"{metric} n/a ({span} shared: too few)")
        elif sel["tau"].isna().any():  # a seed whose rows all tie has no ranking to compare
            parts.append(f"{metric} n/a ({span}: a seed's values all tie)")
        else:
            parts.append(f"{metric} {sel['tau'].mean():.2f} ({span})")
    return ", ".join(parts) or "n/a (no seed pair)"


def _cell(r: pd.Series, c: str, digits: int) -> str:
    """One metric's "mean ± SD" for one row, naming its n where the metric is undefined (NaN)
    in some of the row's seeds."""
    sd = "–" if pd.isna(r[c + "_sd"]) else f"{r[c + '_sd']:.{digits}f}"
    n = int(r[c + "_n"])
    if n == 0:
        return "n/a"
    return f"{r[c + '_mean']:.{digits}f} ± {sd}" + (f" (n = {n})" if n < r["seeds"] else "")


def report(roots: dict[int, Path], out_dir: Path) -> pd.DataFrame:
    """stability.csv/.md, ranks.csv, tau.csv and fig_seed_ranks.png in `out_dir`."""
    from ldct import figures

    table, ranks, taus = summarize(gather(roots))
    if taus.empty:
        raise DataError(f"seed stability needs results of at least two seeds, got {', '.join(map(str, roots))}")
    write_csv(out_dir / "stability.csv", table)
    write_csv(out_dir / "ranks.csv", ranks)
    write_csv(out_dir / "tau.csv", taus)
    cols = [c for c, _ in METRICS if f"{c}_mean" in table]
    md = ["| experiment | " + " | ".join(h for c, h in METRICS if c in cols) + " |", "|---|" + "---|" * len(cols)]
    marked = ranks.groupby("experiment")["marked"].sum()  # seeds whose Table 2 marks the row
    for _, r in table.iterrows():
        digits = lambda c: 2 if c.startswith("psnr") else 4  # noqa: E731
        fewer = f" (n = {int(r['seeds'])})" if r["seeds"] < len(roots) else ""
        k = int(marked.get(r["experiment"], 0))
        mark = f" (‡/§ in {k} of {int(r['seeds'])})" if k else ""
        md.append(f"| {r['experiment']}{fewer}{mark} | " + " | ".join(_cell(r, c, digits(c)) for c in cols) + " |")
    fewer = table[table["seeds"] < len(roots)]
    undefined = any((table[f"{c}_n"] < table["seeds"]).any() for c in cols)
    note = (f"Mean ± SD (n - 1) across {len(roots)} seeds ({', '.join(map(str, roots))}; data, split and "
            "initialisation follow the seed)"
            + (f"; rows in fewer seeds say n (no SD with one)" if len(fewer) else "")
            + ("; a value undefined in some seeds (NaN) is averaged over the others, which its cell names"
               if undefined else "")
            + (". (‡/§ in k of n): the row carries a convergence mark in k of its n seeds' Table 2, which do not rank "
               "it there" if marked.any() else "")
            + ". Kendall's tau between the seeds' rankings "
            "(mean over seed pairs), every row: " + tau_summary(taus, "all") + "; the rows with no convergence mark "
            "(‡, §) in either seed, which the tables rank: " + tau_summary(taus, "unmarked")
            + ". Per pair, with p and the pairs that swap places: tau.csv.")
    made = made_with()
    write_text(out_dir / "stability.md", "\n".join(md) + f"\n\n{note}\n\n{made}\n")
    figures.seed_ranks(ranks, out_dir / "fig_seed_ranks.png")
    return table
