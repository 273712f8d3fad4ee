"""Table 5 (clinical image quality) and its figures from the rows' measurements
(ldct.clinical.measure's JSON files): `ldct clinical-report`. Apart from ldct.clinical so that
redrawing does not invalidate the measurements."""

from __future__ import annotations

import json

from ldct import figures
from ldct.errors import DataError
from ldct.paths import LDCT, NDCT, NOISELESS
from ldct.tables import clinical_table, read_result_csv, read_scores, row_flags


def report(rp, rows: list[str], seed: int = 0, n_resamples: int = 2000) -> None:
    """table5_clinical, clinical_stats.csv and the NPS, TTF and detectability figures of a
    results folder from its rows' clinical JSON files (`ldct clinical-report`); the PSNR gains
    come from the rows' metrics.csv, the convergence marks from tables/training.csv."""
    results = {}
    for r in rows:
        path = rp.clinical(r)
        if not path.is_file():
            raise DataError(f"{path}: clinical measurements of row {r!r} not found (`ldct clinical-measure`)")
        results[r] = json.loads(path.read_text())
    training = read_result_csv(rp.table("training")) if rp.table("training").is_file() else None
    _, stats_df = clinical_table(results, rp.table_prefix("table5_clinical"), rp.table("clinical_stats"), LDCT,
                                 [r for r in (NDCT, NOISELESS) if r in results], seed, n_resamples, training)
    psnr = {r: read_scores([rp.metrics(r)])["psnr_brain"].mean() for r in rows if rp.metrics(r).is_file()}
    gain = {r: v - psnr[LDCT] for r, v in psnr.items()} if LDCT in psnr else {}
    marks = row_flags(training)[0]
    figures.nps_curves(results, rp.figure("fig_nps"), marks)
    figures.ttf_curves(results, rp.figure("fig_ttf"), marks)
    first = results[LDCT]["conditions"][0]  # the hardest lesion
    hardest = stats_df[(stats_df["contrast_hu"] == first["contrast_hu"]) & (stats_df["diameter_mm"] == first["diameter_mm"])]
    changes = {r.experiment: (r.diff, r.ci_low, r.ci_high) for r in hardest.itertuples()}
    figures.detectability(results, gain, rp.figure("fig_detectability"), changes, marks)
