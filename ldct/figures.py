"""The paper's figures and the diagnostics a reader would rather look at than read.

All CT is shown in named HU windows (ldct.hu.WINDOWS); segmentation maps use the class
colours of ldct.classes. Every figure is written as PNG and PDF.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from ldct.classes import CLASS_COLORS, CLASS_NAMES, NUM_CLASSES  # noqa: E402
from ldct.hu import WINDOWS, window_name_label  # noqa: E402
from ldct.io import atomic_path  # noqa: E402

CLASS_CMAP = ListedColormap(CLASS_COLORS)
MARKS = {"‡": "not converged", "§": "no better than its input"}  # the tables' row marks (ldct.tables.FLAGS), in short


def save(fig: plt.Figure, path: str | Path) -> None:
    """Write the figure as PNG at `path` and as PDF beside it (both atomically), each naming
    the versions and commit it was made with; the PDF without a creation date, so the same
    figure is the same bytes."""
    from ldct.provenance import made_with

    path = Path(path)
    meta = {"png": {"Software": made_with()}, "pdf": {"Creator": made_with(), "CreationDate": None}}
    for target, fmt in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=fmt, metadata=meta[fmt])
    plt.close(fig)


def pick_slice(full: np.ndarray) -> int:
    """The slice with the most brain-window tissue (a mid-ventricular level on head CT)."""
    lo, hi = WINDOWS["brain"]
    return int(np.argmax(((full > lo) & (full < hi)).sum(axis=(1, 2))))


def zoom_box(img: np.ndarray, frac: float = 0.3) -> tuple[int, int, int]:
    """A square (top, left, size) around the image centre of brain tissue."""
    h, w = img.shape
    size = max(8, int(min(h, w) * frac))
    lo, hi = WINDOWS["brain"]
    ys, xs = np.nonzero((img > lo) & (img < hi))
    cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (h // 2, w // 2)
    top = int(np.clip(cy - size // 2, 0, h - size))
    left = int(np.clip(cx - size // 2, 0, w - size))
    return top, left, size


def qualitative_grid(images: dict[str, np.ndarray], reference: np.ndarray, out: str, title: str = "") -> None:
    """Columns: LDCT, each output, NDCT. Rows: brain window, zoom, error against NDCT."""
    names = list(images) + ["NDCT"]
    imgs = list(images.values()) + [reference]
    lo, hi = WINDOWS["brain"]
    top, left, size = zoom_box(reference)
    # one narrow extra column holds the error maps' colour bar, so every panel has the same width
    # and each error map stays under its own column's title
    fig, ax = plt.subplots(3, len(names) + 1, figsize=(2.3 * len(names) + 0.6, 7.2), squeeze=False,
                           gridspec_kw={"width_ratios": [1.0] * len(names) + [0.08]})
    for j, (n, im) in enumerate(zip(names, imgs)):
        ax[0, j].imshow(im, cmap="gray", vmin=lo, vmax=hi)
        ax[0, j].add_patch(Rectangle((left, top), size, size, fill=False, ec="yellow", lw=1))
        ax[0, j].set_title(n, fontsize=9)
        ax[1, j].imshow(im[top:top + size, left:left + size], cmap="gray", vmin=lo, vmax=hi)
        err = ax[2, j].imshow(im - reference, cmap="RdBu_r", vmin=-40, vmax=40)
        for a in ax[:, j]:
            a.set_xticks([])
            a.set_yticks([])
    ax[2, len(names) - 1].text(0.5, 0.5, "(the reference)", ha="center", va="center", fontsize=8, color="0.4",
                               transform=ax[2, len(names) - 1].transAxes)
    ax[0, 0].set_ylabel(f"brain window\n{window_name_label('brain')}", fontsize=8)
    ax[1, 0].set_ylabel("zoom", fontsize=8)
    ax[2, 0].set_ylabel("output - NDCT (HU)", fontsize=8)
    ax[0, -1].axis("off")
    ax[1, -1].axis("off")
    fig.colorbar(err, cax=ax[2, -1], label="HU (clipped at ±40)", extend="both")
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, out)


def segmentation_maps(maps: dict[str, np.ndarray], out: str, title: str = "") -> None:
    """Figure 2: the frozen segmenter's maps on LDCT, each output and NDCT, one colour per class."""
    ncol = min(len(maps), 7)  # wrap many experiments into rows so each map stays readable
    nrow = -(-len(maps) // ncol)
    fig, ax = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.4 * nrow + 0.4), squeeze=False)
    for a in ax.ravel():
        a.axis("off")
    for j, (n, m) in enumerate(maps.items()):
        a = ax[j // ncol, j % ncol]
        a.imshow(m, cmap=CLASS_CMAP, vmin=-0.5, vmax=NUM_CLASSES - 0.5, interpolation="nearest")
        a.set_title(n, fontsize=9)
    present = sorted(set(np.unique(np.concatenate([m.ravel() for m in maps.values()]))) - {0})
    handles = [Patch(color=CLASS_COLORS[c], label=f"{c} {CLASS_NAMES[c]}") for c in present]
    fig.legend(handles=handles, loc="upper center", ncol=min(6, max(1, len(handles))), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.02))
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, out)


def radial_noise(diff: np.ndarray, mask: np.ndarray, pixel_mm: float, ring_mm: float = 5.0):
    """Std of `diff` (S, H, W) in rings around the centre of `mask`: (ring centres mm, stds HU)."""
    ys, xs = np.nonzero(mask.any(axis=0))
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[: mask.shape[1], : mask.shape[2]]
    r = np.hypot(yy - cy, xx - cx) * pixel_mm
    mids, stds = [], []
    for a in np.arange(0, r.max(), ring_mm):
        sel = mask & ((r >= a) & (r < a + ring_mm))[None]
        if sel.sum() > 50:
            mids.append(a + ring_mm / 2)
            stds.append(float(diff[sel].std()))
    return mids, stds


SKULL_HU = 300  # bone: the skull that `intracranial` fills


def intracranial(reference: np.ndarray) -> tuple[np.ndarray, str]:
    """Brain-range voxels inside the skull (bone > SKULL_HU, filled slice by slice), and the
    words for them: scalp, head holder and pads are brain-range too, and outside the skull
    their edges (partial volume, blur) are not brain noise. A slice whose skull is not closed
    (skull base) adds nothing; where none is closed, the whole head's brain-range voxels."""
    from scipy.ndimage import binary_fill_holes

    lo, hi = WINDOWS["brain"]
    brain = (reference > lo) & (reference < hi)
    inside = brain & np.stack([binary_fill_holes(b) for b in reference > SKULL_HU])
    if inside.any():
        return inside, "brain-range tissue inside the skull"
    return brain, "brain-range tissue (no closed skull: whole head)"


def noise_vs_radius(images: dict[str, np.ndarray], reference: np.ndarray, pixel_mm: float, out: str,
                    reference_name: str = "NDCT", title: str = "", marks: dict[str, str] | None = None) -> None:
    """Std of (image - reference) in rings around the head centre, in brain-range tissue
    inside the skull (`intracranial`): the non-uniform noise the paper motivates, and what each
    model leaves of it (its error against the reference: noise and any bias or blur). `marks`
    as in nps_curves."""
    mask, region = intracranial(reference)
    styles = _row_styles(list(images))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for n, im in images.items():
        mids, stds = radial_noise(im - reference, mask, pixel_mm)
        ax.plot(mids, stds, label=n + (marks or {}).get(n, ""), **{"marker": "o", "ms": 3, **styles[n]})
    ax.set_xlabel("distance from head centre (mm)")
    ax.set_ylabel(f"std of (image - {reference_name}) (HU)\nnoise and error, {region}", fontsize=8)
    ax.set_title(title or f"error against the {reference_name} by distance from the head centre", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save(fig, out)


def loss_index(names: list[str]) -> dict[str, int]:
    """Each experiment's place among those of its model (`{model}_{loss}`: featkpn_l1 0,
    featkpn_ana 1), which tells rows of one model apart."""
    seen: dict[str, int] = {}
    out = {}
    for n in names:
        g = n.split("_", 1)[0]
        out[n] = seen[g] = seen.get(g, -1) + 1
    return out


def experiment_styles(names: list[str]) -> dict[str, dict]:
    """Line style per experiment named `{model}_{loss}`: one colour per model (featkpn_l1 and
    featkpn_ana share one), one dash pattern per loss within it, then markers, so rows stay
    tellable apart where matplotlib's default cycle would repeat after 10."""
    groups = list(dict.fromkeys(n.split("_", 1)[0] for n in names))
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    dashes, markers = ["-", "--", "-.", ":"], [None, "o", "s", "^", "x", "D"]
    cycles = -(-len(groups) // cmap.N)  # colour cycles: the marker tells them apart, then the loss
    styles = {}
    for n, k in loss_index(names).items():
        gi = groups.index(n.split("_", 1)[0])
        styles[n] = {"color": cmap(gi % cmap.N), "ls": dashes[k % len(dashes)],
                     "marker": markers[(gi // cmap.N + cycles * (k // len(dashes))) % len(markers)], "ms": 3}
    return styles


def training_curves(histories: dict[str, pd.DataFrame], out: str, marks: dict[str, str] | None = None) -> None:
    """Training loss and the checkpoint score per epoch (validation round; steps per round
    differ between models under equal compute); with an adversarial experiment (a
    `loss_discriminator` column) a third panel shows its discriminator's loss and the
    generator's adversarial terms, where a GAN's balance (or collapse) shows. `marks` as in
    learning_curves."""
    marks = marks or {}
    gans = {n: h for n, h in histories.items() if "loss_discriminator" in h}
    fig, ax = plt.subplots(1, 3 if gans else 2, figsize=(15 if gans else 10, 3.8))
    styles = experiment_styles(list(histories))
    for n, h in histories.items():
        ax[0].plot(h["epoch"], h["train_loss"], label=n, **styles[n])
        score = "" if h.get("target", pd.Series(["ndct"])).iloc[0] == "ndct" else " (vs its repeat scan)"
        ax[1].plot(h["epoch"], h["val_mse_head"], label=n + marks.get(n, "") + score, **styles[n])
    ax[0].set_title("training loss")
    ax[0].set_ylabel("training loss (the experiment's own; log)")
    ax[1].set_title("validation MSE in [0, 80] HU (picks the checkpoint)", fontsize=9)
    ax[1].set_ylabel("MSE (HU$^2$, log)")
    for n, h in gans.items():
        terms = ["loss_discriminator"] + [c for c in h if c.startswith("loss_adv")]
        for term, ls in zip(terms, ("-", "--", ":", "-.")):
            ax[2].plot(h["epoch"], h[term].abs(), ls=ls, color=styles[n].get("color"),
                       label=f"{n}: {term.removeprefix('loss_')}")
    if gans:
        ax[2].set_title("GAN: discriminator loss, generator's adversarial terms (|value|)", fontsize=9)
        ax[2].add_artist(ax[2].legend(fontsize=7))  # kept when the experiments' legend takes the axes' slot
    for a in ax:
        a.set_xlabel("epoch (validation round; its steps: training.csv)")
        a.set_yscale("log")  # losses and MSEs span decades between models and epochs
        a.grid(alpha=0.3)
    # the experiments' legend right of the last panel (right of the validation panel it covered the GAN one)
    ax[-1].legend(*ax[1].get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save(fig, out)


def _final_compute(histories: dict[str, pd.DataFrame]) -> np.ndarray:
    return np.array([h["tera_macs"].iloc[-1] for h in histories.values()
                     if "val_psnr_brain" in h and len(h) and h["tera_macs"].iloc[-1] > 0])


def compute_scale(histories: dict[str, pd.DataFrame]) -> str:
    """The learning curves' compute axis: linear where the rows' final compute spans less than
    10x (an equal-compute budget; a row that spent almost nothing, a Gaussian filter's, is left
    out of the span and sits at 0), else logarithmic (symlog, 0 shown), as under equal passes,
    where the models' costs per step differ by orders of magnitude."""
    final = _final_compute(histories)
    if not len(final):
        return "linear"
    main = final[final >= np.median(final) / 30]
    return "linear" if main.max() <= 10 * main.min() else "symlog"


def _linthresh(histories: dict[str, pd.DataFrame]) -> float:
    spent = [h["tera_macs"][h["tera_macs"] > 0] for h in histories.values() if "val_psnr_brain" in h]
    return float(pd.concat(spent).min())


def learning_curves(histories: dict[str, pd.DataFrame], out: str, marks: dict[str, str] | None = None) -> None:
    """Validation PSNR in [-40, 120] HU against training compute, every experiment in one plot,
    the validation input's (LDCT) level as a line; a dot marks each kept (best) epoch. `marks`:
    experiment -> its convergence marks, as the tables show them (ldct.tables.row_flags)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    styles = experiment_styles(list(histories))
    ldct = None
    for n, h in histories.items():
        if "val_psnr_brain" not in h:
            continue
        x = h["tera_macs"] if h["tera_macs"].max() > 0 else h["step"]
        label = n + (marks or {}).get(n, "")
        ax.plot(x, h["val_psnr_brain"], label=label, **styles[n])
        best = h[h["best"]].iloc[-1] if h["best"].any() else h.iloc[-1]
        ax.plot(best["tera_macs"] if h["tera_macs"].max() > 0 else best["step"], best["val_psnr_brain"], "o",
                color=styles[n].get("color"), ms=4, clip_on=False)  # a calibrated row's dot sits on x = 0
        ldct = h["val_psnr_brain_ldct"].iloc[0]
    if ldct is not None:
        ax.axhline(ldct, color="k", ls=":", lw=1.2, label="LDCT (validation input)")
    ax.set_xlabel("training compute (10^12 multiply-accumulates: 3 x forward, frozen parts 1 x)")
    ax.set_ylabel("validation PSNR [-40, 120] HU (dB)")
    ax.set_title("learning curves (dot: the kept epoch, lowest validation MSE [0, 80]; "
                 + ", ".join(f"{m} {w}" for m, w in MARKS.items()) + ")", fontsize=9)
    scale = compute_scale(histories)
    ax.set_xscale(scale, **({"linthresh": _linthresh(histories)} if scale == "symlog" else {}))
    ax.set_xlim(left=0)  # compute is never negative: no mirrored decades left of 0
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save(fig, out)


def seed_ranks(ranks: pd.DataFrame, out: str | Path) -> None:
    """Each experiment's rank per seed (1 = best), for PSNR and SSIM in [-40, 120] HU: lines
    that cross are experiments whose order depends on the seed; a hollow point is a seed where
    the row carries a convergence mark (ranks.csv's `marked`)."""
    cols = [(c, h) for c, h in (("rank_psnr_brain", "PSNR [-40,120]"), ("rank_ssim_brain", "SSIM [-40,120]"))
            if c in ranks]
    seeds = sorted(ranks["seed"].unique())
    names = list(dict.fromkeys(ranks["experiment"]))
    styles = _row_styles(names)  # LDCT in its fixed style: the models keep the other figures' colours
    fig, ax = plt.subplots(1, len(cols), figsize=(5.2 * len(cols), 0.35 * len(names) + 2.5), squeeze=False)
    for a, (c, head) in zip(ax[0], cols):
        for n in names:
            rows = ranks[ranks["experiment"] == n].set_index("seed").reindex(seeds)
            r = rows[c]
            line = a.plot(range(len(seeds)), r.to_numpy(), marker="o", ms=6, label=n,  # filled and hollow alike
                          **{k: v for k, v in styles[n].items() if k not in ("marker", "ms")})[0]
            if "marked" in rows:  # a seed where the row carries ‡ or §: a hollow point (its tables do not rank it)
                hollow = rows["marked"].fillna(False).astype(bool).to_numpy()
                a.plot([i for i in range(len(seeds)) if hollow[i]], r.to_numpy()[hollow], "o", ms=6,
                       markerfacecolor="white", markeredgecolor=line.get_color())
            last = r.last_valid_index()  # a row missing from the last seed is named at its own last point
            if last is not None:
                a.annotate(n, (seeds.index(last), r[last]), xytext=(6, 0), textcoords="offset points", fontsize=7,
                           va="center")
        a.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
        a.set_ylim(len(names) + 0.5, 0.5)
        a.set_yticks(range(1, len(names) + 1, 1 if len(names) <= 20 else 5))  # every rank, 1 included
        a.set_ylabel("rank (1 = best)")
        a.set_title(f"rank by {head} across seeds", fontsize=9)
        a.set_xlim(-0.3, len(seeds) - 0.2 + 0.9)
        a.grid(alpha=0.3)
    fig.suptitle("hollow point: the row carries ‡ or § in that seed (its tables do not rank it)", fontsize=8, y=0.995)
    save(fig, str(out))


def metric_distributions(metrics: pd.DataFrame, out: str, marks: dict[str, str] | None = None) -> None:
    """Box plots of the per-slice metrics, one row per experiment (shared), in the tables' order,
    each named with its convergence marks (`marks`, ldct.tables.row_flags) as in the tables."""
    cols = [("psnr_brain", "PSNR [-40,120] (dB)"), ("ssim_brain", "SSIM [-40,120]"), ("psnr_full", "PSNR [-1024,3072] (dB)")]
    order = list(dict.fromkeys(metrics["experiment"]))
    fig, ax = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.8 + 0.1 * len(order)), sharey=True)
    for a, (c, label) in zip(ax, cols):
        a.boxplot([metrics.loc[metrics["experiment"] == e, c].to_numpy() for e in order], vert=False, showfliers=True)
        a.set_xlabel(label)
        a.grid(alpha=0.3, axis="x")
    ax[0].set_yticks(range(1, len(order) + 1), [e + (marks or {}).get(e, "") for e in order], fontsize=7)
    ax[0].invert_yaxis()  # the tables' order, top to bottom
    fig.suptitle("per-slice metrics on the test set", fontsize=10)
    save(fig, out)


def phantom_overview(phantom: np.ndarray, truth: np.ndarray, full: np.ndarray, low: np.ndarray, labels: np.ndarray,
                     pixel_mm: float, out: str, title: str = "") -> None:
    """One synthetic subject: phantom, NDCT, LDCT, LDCT - NDCT, labels, and the noise std of
    NDCT and LDCT against the noiseless reconstruction (`truth`) vs radius."""
    s = pick_slice(full)
    lo, hi = WINDOWS["brain"]
    fig, ax = plt.subplots(1, 6, figsize=(20, 3.6), gridspec_kw={"wspace": 0.35})
    for a, im, t in zip(ax[:3], (phantom[s], full[s], low[s]), ("phantom", "NDCT", "LDCT")):
        a.imshow(im, cmap="gray", vmin=lo, vmax=hi)
        a.set_title(f"{t} {window_name_label('brain')}", fontsize=9)
    d = ax[3].imshow(low[s] - full[s], cmap="RdBu_r", vmin=-50, vmax=50)
    ax[3].set_title("LDCT - NDCT (HU)", fontsize=9)
    fig.colorbar(d, ax=ax[3], shrink=0.8)
    ax[4].imshow(labels[s], cmap=CLASS_CMAP, vmin=-0.5, vmax=NUM_CLASSES - 0.5, interpolation="nearest")
    ax[4].set_title("labels", fontsize=9)
    for a in ax[:5]:
        a.axis("off")
    mask, region = intracranial(truth)
    for name, im in (("LDCT", low), ("NDCT", full)):
        ax[5].plot(*radial_noise(im - truth, mask, pixel_mm), marker="o", ms=3, label=name, **REFERENCE_STYLES[name])
    ax[5].set_xlabel("distance from centre (mm)")
    ax[5].set_ylabel(f"noise std vs noiseless recon (HU)\n{region}", fontsize=8)
    ax[5].legend(fontsize=7)
    ax[5].grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, out)


def dose_sweep(table: pd.DataFrame, out: str, marks: dict[str, str] | None = None) -> None:
    """PSNR and SSIM in [-40, 120] HU against NDCT versus dose fraction, one line per experiment
    (the LDCT input in black, dashed); the dotted vertical line marks the dose the models were trained at.
    `table` is the long dose table (ldct.tables.dose_table): experiment, dose_fraction, ...;
    `marks` as in learning_curves."""
    panels = [("psnr_brain", f"PSNR {window_name_label('brain')} (dB)"), ("ssim_brain", f"SSIM {window_name_label('brain')}")]
    doses = sorted(table["dose_fraction"].unique())
    trained = table.loc[table["training_dose"].astype(bool), "dose_fraction"].unique()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    styles = experiment_styles([e for e in dict.fromkeys(table["experiment"]) if e != "LDCT"])
    styles["LDCT"] = {"color": "black", "ls": "--", "lw": 2.2, "zorder": 3}
    for a, (c, label) in zip(ax, panels):
        for exp, t in table.groupby("experiment", sort=False):
            t = t.sort_values("dose_fraction")
            kw = {"lw": 1.3, "zorder": 2, **styles[exp]}
            kw.update(marker=kw.get("marker") or "o", ms=4)  # a point at every dose
            a.plot(t["dose_fraction"], t[c], label=exp + (marks or {}).get(exp, ""), **kw)
        for d in trained:
            a.axvline(d, color="grey", ls=":", lw=1)
        a.set_xscale("log")
        a.set_xticks(doses, [f"{d * 100:g}%" for d in doses])
        a.minorticks_off()
        a.set_xlabel("dose fraction (of full dose)")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
    shown = "".join((marks or {}).get(e, "") for e in table["experiment"].unique())
    said = [f"{m} {w}" for m, w in MARKS.items() if m in shown]
    ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="; ".join(said) or None,
                 title_fontsize=7)  # the marks said where they are drawn, as Table 4's caption does
    if len(trained):
        fig.suptitle(f"dose sweep: models trained at {', '.join(f'{d * 100:g}%' for d in trained)} dose "
                     "(dotted line), applied at every dose", fontsize=10)
    save(fig, out)


def draw_all(rp, experiments: list[str]) -> None:
    """Every figure of a results folder (`ldct figures`): the first test subject's middle
    slice, noise against radius, segmentation maps, training and learning curves (marked as
    tables/training.csv says), metric distributions and, for synthetic data, the phantom overview."""
    import torch

    from ldct.data import load_subject, to_slices
    from ldct.paths import LDCT
    from ldct.tables import read_result_csv, read_scores, row_flags
    from ldct.inference import load_segmenter, segment
    from ldct.io import read_nifti

    splits = json.loads(rp.splits.read_text())
    subject = splits["test"][0]
    sv = load_subject(rp.nifti(), subject)
    s = pick_slice(sv.full)
    trained = [e for e in experiments if e != LDCT]
    vols = {LDCT: sv.low}
    for e in trained:
        vols[e] = to_slices(read_nifti(rp.denoised(e, subject))[0])
    pixel = float(abs(sv.affine[0, 0]))
    marks = row_flags(read_result_csv(rp.table("training")))[0] if rp.table("training").is_file() else {}
    qualitative_grid({k + marks.get(k, ""): v[s] for k, v in vols.items()}, sv.full[s], rp.figure("fig_qualitative"),
                     f"{subject}, slice {s}")
    reference, ref_name = (sv.truth, "noiseless recon") if sv.truth is not None else (sv.full, "NDCT")
    noise_vs_radius(vols, reference, pixel, rp.figure("fig_noise_radius"), ref_name,
                    f"{subject}: error against the {ref_name} by distance from the head centre", marks)
    seg = load_segmenter(rp.segmenter, torch.device("cpu"))
    maps = {k + marks.get(k, ""): segment(seg, v[s:s + 1], torch.device("cpu"))[0] for k, v in vols.items()}
    maps["NDCT"] = segment(seg, sv.full[s:s + 1], torch.device("cpu"))[0]
    if sv.labels is not None:
        maps["true labels"] = sv.labels[s].astype(np.uint8)
    segmentation_maps(maps, rp.figure("fig_segmentation"), f"frozen segmenter on {subject}, slice {s}")
    histories = {e: read_result_csv(rp.history(e)) for e in trained}
    training_curves(histories, rp.figure("fig_training_curves"), marks)
    learning_curves(histories, rp.figure("fig_learning_curves"), marks)
    metrics = read_scores(rp.metrics(e) for e in experiments)
    metric_distributions(metrics, rp.figure("fig_metric_distributions"), marks)
    if sv.truth is not None and sv.labels is not None:
        phantom = to_slices(read_nifti(rp.phantom(subject) / "phantom.nii.gz")[0])
        phantom_overview(phantom, sv.truth, sv.full, sv.low, sv.labels, pixel, rp.figure("fig_phantom"),
                         f"synthetic subject {subject}")


# zorder: the reference rows drawn above the experiments (LDCT, the baseline, was hidden under the
# rows that learned nothing, whose curves are its own)
REFERENCE_STYLES = {"LDCT": {"color": "black", "ls": "-", "lw": 1.4, "zorder": 3},
                    "NDCT": {"color": "0.45", "ls": "--", "lw": 1.6, "zorder": 3},
                    "noiseless": {"color": "0.7", "ls": ":", "lw": 1.6, "zorder": 3}}


def point_markers(rows: list[str]) -> dict[str, str]:
    """A marker per row for plots of points, where a line's dash cannot tell two rows apart:
    one per loss within a model (featkpn_l1 o, featkpn_ana s), the reference rows their own."""
    fixed = {"LDCT": "o", "NDCT": "P", "noiseless": "*"}
    index = loss_index([r for r in rows if r not in fixed])
    return {r: fixed[r] if r in fixed else ("o", "s", "^", "D", "v", "X")[index[r] % 6] for r in rows}


def _row_styles(rows: list[str]) -> dict[str, dict]:
    """The experiments' styles (experiment_styles) and fixed ones for the LDCT, NDCT and noiseless rows."""
    styles = experiment_styles([r for r in rows if r not in REFERENCE_STYLES])
    return {r: REFERENCE_STYLES.get(r) or styles[r] for r in rows}


def nps_curves(results: dict[str, dict], out: str | Path, marks: dict[str, str] | None = None) -> None:
    """Radially averaged noise power spectrum of each row's noise-only images (the difference
    method of ldct.clinical.noise_rois): absolute
    (log scale: how much noise) and normalised to unit area (where it sits: the texture).
    `marks`: row -> its convergence marks (ldct.tables.row_flags), shown after its name."""
    marks = marks or {}
    rows = [r for r, res in results.items() if res["nps"]["noise_sd"] > 0]
    styles = _row_styles(rows)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        f, curve = np.asarray(results[r]["nps"]["frequency"]), np.asarray(results[r]["nps"]["curve"])  # DC already out
        ax[0].plot(f, curve, label=f"{r}{marks.get(r, '')} (SD {results[r]['nps']['noise_sd']:.1f} HU)", **styles[r])
        ax[1].plot(f, curve / np.trapezoid(curve, f), label=r + marks.get(r, ""), **styles[r])
    ax[0].set_yscale("log")
    ax[0].set_ylabel("NPS (HU$^2$ mm$^2$)")
    ax[0].set_title("noise power: how much")
    ax[1].set_ylabel("NPS / its area (mm)")
    ax[1].set_title("normalised: where (lower = blotchier, 'plastic' texture)")
    for a in ax:
        a.set_xlabel("spatial frequency (1/mm)")
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=6, ncol=5, loc="upper center", bbox_to_anchor=(1.1, -0.14))
    fig.suptitle("noise power spectrum in brain ROIs (difference of two scans' errors / sqrt 2: noise only)", fontsize=10)
    save(fig, out)


def ttf_curves(results: dict[str, dict], out: str | Path, marks: dict[str, str] | None = None) -> None:
    """Task-transfer function of each water-phantom insert (one panel per contrast) per row, f50 in the legend
    (`marks` as in nps_curves)."""
    marks = marks or {}
    rows = list(results)
    styles = _row_styles(rows)
    inserts = results[rows[0]]["ttf"]
    fig, ax = plt.subplots(1, len(inserts), figsize=(4.2 * len(inserts), 4.2), squeeze=False)
    for j, ins in enumerate(inserts):
        a = ax[0, j]
        for r in rows:
            t = results[r]["ttf"][j]
            a.plot(t["frequency"], t["curve"], label=f"{r}{marks.get(r, '')} ({t['f50']:.3f})", **styles[r])
        a.axhline(0.5, color="0.6", lw=0.8)
        a.set_title(f"insert +{ins['contrast_hu']:g} HU")
        a.set_xlabel("spatial frequency (1/mm)")
        a.set_ylim(0, 1.1)
        a.grid(alpha=0.3)
        a.legend(fontsize=5.5, title="row (f50, 1/mm)", title_fontsize=6)
    ax[0, 0].set_ylabel("TTF")
    fig.suptitle("resolution: task-transfer function of the QA phantom's inserts (AAPM TG-233)", fontsize=10)
    save(fig, out)


def detectability(results: dict[str, dict], psnr_gain: dict[str, float], out: str | Path,
                  changes: dict[str, tuple[float, float, float]] | None = None,
                  marks: dict[str, str] | None = None) -> None:
    """Left: the observer's d' (95 % CI) per lesion condition and row. Right, for the hardest
    condition: each row's d' change against the LDCT input (`changes`: paired difference and
    its 95 % CI, ldct.tables.clinical_comparisons; else the plain difference) against its PSNR
    gain over the input; the shaded quadrant gains PSNR and loses detectability. `marks` as in
    nps_curves. A row with no finite d' in any condition (the noiseless reconstruction: d' = ∞)
    is not drawn, and the figure says so; one undefined in some conditions keeps the others.
    The right panel's points are hollow: rows that learned nothing sit on one another at (0, 0)."""
    marks = marks or {}
    rows = [r for r in results if any(np.isfinite(c["dprime"]) for c in results[r]["conditions"])]
    left_out = [r for r in results if r not in rows]
    styles = _row_styles(rows)
    points = point_markers(rows)
    conds = results[rows[0]]["conditions"]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.4, 1]})
    width = 0.8 / len(rows)
    for k, r in enumerate(rows):
        d = np.array([c["dprime"] for c in results[r]["conditions"]])
        lo = np.array([c["dprime_ci_low"] for c in results[r]["conditions"]])
        hi = np.array([c["dprime_ci_high"] for c in results[r]["conditions"]])
        x = np.arange(len(conds)) - 0.4 + (k + 0.5) * width
        st = styles[r]
        ax[0].errorbar(x, d, yerr=np.maximum([d - lo, hi - d], 0), fmt=points[r], color=st["color"], ms=4,
                       capsize=1.5, lw=1, label=r + marks.get(r, ""))
    ax[0].set_xticks(range(len(conds)), [f"{c['contrast_hu']:g} HU\n{c['diameter_mm']:g} mm" for c in conds])
    ax[0].set_ylabel("d′ (channelized Hotelling observer)")
    ax[0].set_title("lesion detectability (95 % CI)")
    ax[0].grid(alpha=0.3, axis="y")
    title = "rows (both panels; right: d′ change, paired 95 % CI)"
    if left_out:  # in the legend's title: a note of its own overlapped the tick labels
        title += "\nnot drawn: " + ", ".join(left_out) + " (d′ = ∞ or undefined in every condition)"
    ax[0].legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.85, -0.16), title=title, title_fontsize=7)
    hard = f"{conds[0]['contrast_hu']:g} HU, {conds[0]['diameter_mm']:g} mm"
    if "LDCT" in results:
        base = results["LDCT"]["conditions"][0]["dprime"]
        for r in rows:
            if r not in psnr_gain or r == "LDCT":
                continue
            dd, lo, hi = (changes or {}).get(r) or (results[r]["conditions"][0]["dprime"] - base,) * 3
            st = styles[r]
            ax[1].errorbar(psnr_gain[r], dd, yerr=[[dd - lo], [hi - dd]], fmt=points[r], color=st["color"],
                           ms=6, capsize=2, lw=1, mfc="none", mew=1.3)
        ax[1].axhline(0, color="0.5", lw=0.8)
        ax[1].axvline(0, color="0.5", lw=0.8)
        x0, x1 = ax[1].get_xlim()
        y0, y1 = ax[1].get_ylim()
        ax[1].fill_between([0, max(x1, 0)], min(y0, 0), 0, color="firebrick", alpha=0.07, lw=0)
        ax[1].set_xlim(x0, x1)
        ax[1].set_ylim(y0, y1)
        ax[1].text(0.02, 0.98, "shaded: gains PSNR, loses detectability\nbars: paired 95 % CI (bootstrap over the lesion sites)",
                   transform=ax[1].transAxes, ha="left", va="top", fontsize=7, color="firebrick")
    ax[1].set_xlabel("PSNR gain over LDCT, [-40,120] (dB)")
    ax[1].set_ylabel(f"d′ change over LDCT ({hard})")
    ax[1].set_title(f"hardest lesion ({hard}): detectability vs PSNR")
    ax[1].grid(alpha=0.3)
    save(fig, out)
