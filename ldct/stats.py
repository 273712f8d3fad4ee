"""Subject-level paired statistics of the tables: every pair of rows, per metric.

Two-sided paired t-tests (scipy) on the per-subject means, their t-based 95 % confidence
intervals of the mean difference, and Holm's step-down correction over *every pair of rows* of
one metric. A table marks a row against its bold row, which it picks as the best on the same
test subjects; a correction over the bold row's comparisons alone does not cover that choice
(with 12 rows that differ in nothing, about 14 % of tables showed a spurious mark at 10
subjects), one over every pair does, as the bold row's comparisons are among them. The t-test,
not the exact Wilcoxon signed-rank test: with n subjects the signed-rank p cannot fall below
2 / 2^n (0.00195 at 10), so no difference among 12 rows could pass Holm over their 66 pairs; the
per-subject means average a subject's slices, which makes their differences close to normal.
The Wilcoxon p stays in the CSVs as a check on that (`p_wilcoxon`, not used for any mark).

The clinical table's detectability (d' of an observer scored on the same lesion sites in every
row) is compared by a paired bootstrap over those sites instead, the observers' templates learnt
again in each replicate (`paired_dprime`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from ldct.observer import dprime_rows

ALPHA = 0.05  # every mark's family-wise error rate (Holm) and 1 - every interval's level


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1) over the finite p-values; a
    NaN stays NaN (never significant) and does not count as a comparison."""
    p = np.asarray(pvalues, dtype=float)
    adj = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, (len(finite) - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj.tolist()


def paired_difference(diff: np.ndarray) -> dict:
    """Mean of paired differences (one per subject), its t-based 95 % CI, the two-sided paired
    t-test's p (`p`; where every difference is the same nonzero shift, its limit 0) and, as a check
    on the t-test's normality, the exact Wilcoxon signed-rank p; with fewer than two subjects no
    CI and no p (NaN: Holm leaves it out, it is never marked)."""
    n = len(diff)
    nan = float("nan")
    out = {"n_subjects": n, "mean_diff": float(diff.mean()) if n else nan, "ci_low": nan, "ci_high": nan,
           "p": nan, "p_wilcoxon": nan}
    if n < 2:
        return out
    out["p_wilcoxon"] = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    if np.ptp(diff) == 0:  # no spread: t is 0/0 (no difference: p 1) or unbounded (the limit of the t-test's p: 0)
        out.update(ci_low=out["mean_diff"], ci_high=out["mean_diff"], p=1.0 if out["mean_diff"] == 0 else 0.0)
        return out
    test = stats.ttest_1samp(diff, 0.0)
    ci = test.confidence_interval(1 - ALPHA)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(test.pvalue))
    return out


def compare_pairs(per_subject: pd.DataFrame, metrics: list[str], best: dict[str, str] | None = None) -> pd.DataFrame:
    """per_subject: rows (experiment, subject) with metric columns (higher is better). Every
    pair of experiments per metric, on the subjects both have finite values for, Holm-corrected
    over the metric's pairs (`comparisons` of them). A pair with the metric's best row
    (`best[metric]`, the row a table shows in bold; by default the highest mean over subjects)
    is oriented experiment minus best (`against_best`), any other pair later minus earlier
    experiment by name. `significant`: Holm-adjusted p < 0.05; against the best and below it, that is a
    table's † (significantly worse), above it (a row a table does not rank) its *."""
    rows = []
    for metric in metrics:
        wide = per_subject.pivot(index="subject", columns="experiment", values=metric)
        top = (best or {}).get(metric) or wide.mean().idxmax()
        comps = []
        for first, second in itertools.combinations(wide.columns, 2):
            exp, against = (first, second) if second == top else (second, first)
            diff = (wide[exp] - wide[against]).to_numpy(dtype=float)
            comps.append({"metric": metric, "experiment": exp, "against": against, "against_best": against == top,
                          **paired_difference(diff[np.isfinite(diff)])})
        finite = sum(np.isfinite(c["p"]) for c in comps)
        for c, padj in zip(comps, holm([c["p"] for c in comps])):
            c.update(p_holm=padj, comparisons=finite, significant=bool(padj < ALPHA))
        rows += comps
    return pd.DataFrame(rows, columns=["metric", "experiment", "against", "against_best", "n_subjects", "mean_diff",
                                       "ci_low", "ci_high", "p", "p_wilcoxon", "p_holm", "comparisons",
                                       "significant"])


def paired_dprime(a: dict, b: dict, seed: int = 0, n_resamples: int = 2000) -> dict:
    """d'(a) - d'(b) of two channelized Hotelling observers on the same lesion sites, its
    bootstrap 95 % CI and two-sided p-value (NaN where either d' is not finite: nothing to test).

    a, b: what ldct.observer.cho returns with scores=True (the channel outputs of every site's
    lesion-present and lesion-absent ROI, training sites first, and the split); site i is the
    same in both. Each replicate resamples the training sites and the test sites (a site's two
    ROIs together, the same sites for both observers) and learns both templates again, so the
    templates' estimation error is part of the interval (with the templates held fixed, a
    simulated null was rejected in 7-10 % of runs at the 5 % level; learnt again, in 1-2.5 %: the
    test is conservative)."""
    from ldct.observer import bootstrap_indices, hold_out_scores

    v = [np.asarray(o[k], dtype=float) for o in (a, b) for k in ("channels_present", "channels_absent")]
    n, h = len(v[0]), a["n_train_present"]
    if any(len(x) != n for x in v) or any(o[k] != h for o in (a, b) for k in ("n_train_present", "n_train_absent")):
        raise ValueError(f"paired d': both observers need the same sites and split, got "
                         f"{[len(x) for x in v]} sites, training {[o[k] for o in (a, b) for k in ('n_train_present', 'n_train_absent')]}")
    if min(h, n - h) < 3:
        raise ValueError(f"paired d': {n} sites, {h} to train: each half needs at least 3")
    tr, te = bootstrap_indices(np.random.default_rng(seed), n_resamples, n, h)
    idx = (tr, tr, te, te)
    diff = dprime_rows(*hold_out_scores(v[0], v[1], h, h, idx)) - dprime_rows(*hold_out_scores(v[2], v[3], h, h, idx))
    diff = diff[np.isfinite(diff)]
    observed = float(dprime_rows(*hold_out_scores(v[0], v[1], h, h)) - dprime_rows(*hold_out_scores(v[2], v[3], h, h)))
    if not np.isfinite(observed) or not len(diff):  # a d' with no spread to measure (a constant output): no test
        return {"diff": observed, "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan")}
    tail = min((diff <= 0).sum(), (diff >= 0).sum())
    return {"diff": observed, "ci_low": float(np.percentile(diff, 2.5)), "ci_high": float(np.percentile(diff, 97.5)),
            "p": float(min(1.0, 2 * (tail + 1) / (len(diff) + 1)))}
