"""The training budget protocol: how many optimiser steps each experiment gets, and how its
training compute is counted, the same rule for every experiment (config `train.budget`).

Compute is counted from the model's own multiply-accumulates (torch's FLOP counter on the
meta device, so no machine enters the count): one step costs 3 x the forward MACs per pixel
x the pixels of a patch x the batch size (forward and backward), except that a frozen
submodule run without gradients (SGDNet's segmentation U-Net) counts once: it has no backward
pass. A model whose inference runs
several network passes (`inference_passes`, a diffusion sampler) trains on one pass per step,
so its step counts one pass. The loss's own cost (the frozen U-Net of the anatomical loss, an
adversarial loss's discriminator) is not counted.
"""

from __future__ import annotations

import functools
import json
import math

# Protocols under which an experiment may set its own epochs and steps per epoch.
OWN_STEPS = ("converged", "fixed")
# `iters_per_epoch: pass`: an epoch is one pass over the training slices (resolve_pass).
ONE_PASS = "pass"


def _probe(name: str, kwargs: dict, size: int, training: bool = True, batch: int = 2):
    """Model `name` built with `kwargs`, checked as the workflow needs it before any job runs:
    it builds, has something to train (or is calibrated), and maps a (1, 1, size, size) input
    to that shape in eval mode and (with `training`) in a training step of min(`batch`, 2)
    patches, whose output depends on its parameters (run on the meta device: no computation;
    complexity.dry_forward). A ConfigError says what is wrong, naming the model's file."""
    import torch

    import models
    from ldct.complexity import dry_forward
    from ldct.errors import ConfigError

    cls = models.REGISTRY.get(name) if name in models.available() else None
    where = f" ({cls.__module__.replace('.', '/')}.py)" if cls is not None else ""
    try:
        net = models.build(name, **kwargs)
    except ConfigError:
        raise
    except TypeError as err:  # the registry's message names the model and the arguments
        raise ConfigError(f"{err}{where}") from None
    except Exception as err:
        raise ConfigError(f"model {name!r}{where} cannot be built with {kwargs}: {type(err).__name__}: {err}") from None
    calibrated = getattr(cls, "calibrated", False)
    if not calibrated and not any(p.requires_grad for p in net.parameters()):
        raise ConfigError(f"model {name!r}{where} has no trainable parameters: a method with nothing to learn is a "
                          "calibrated row (set `calibrated = True` on its class, as models/bm3d.py does)")
    if calibrated:
        return net
    # a training step sees the run's batch, 2 at most here (BatchNorm after a global pooling needs
    # more than one value: it trains at batch 2, and is refused at the batch of 1 it would get)
    for train_pass, mode, n in ((False, "in eval mode", 1), (True, "in a training step", min(batch, 2)))[:1 + training]:
        shape = (n, 1, size, size)
        try:
            out = dry_forward(net, size, eval_mode=True, training=train_pass, batch=n, meta_only=not training)[0]
        except Exception as err:
            raise ConfigError(f"model {name!r}{where} fails on a {shape} input {mode}: {type(err).__name__}: {err}") \
                from None
        if out is None:  # the slice size's probe, of a model the meta device cannot run: not run on the CPU
            continue
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model {name!r}{where} returns {got} for a {shape} input {mode}; a denoiser returns "
                              "one image of its input's shape (README: Add a baseline)")
        if train_pass and not out.requires_grad:
            raise ConfigError(f"model {name!r}{where} returns, in a training step, an output that does not depend on "
                              "its trainable parameters, so no gradient would reach them (a forward that returns its "
                              "input?)")
    return net


def _probed(model_json: str, seg_json: str, size: int, training: bool = True, batch: int = 2):
    """`_probe` of a model spec as JSON (with the segmenter settings it is built with)."""
    from ldct.spec import with_segmenter

    kwargs = with_segmenter(json.loads(model_json), json.loads(seg_json))
    return _probe(kwargs.pop("name"), kwargs, size, training, batch)


@functools.lru_cache(maxsize=None)
def check_shapes(model_json: str, seg_json: str, size: int) -> None:
    """The model spec probed in eval mode (as `_probe`) at another size the run uses: whole
    slices, where validation and denoising run (training's patches are probed when its MACs
    are counted). On the meta device only: a model it cannot run (a value read out of a tensor)
    is not run at 512x512 on the CPU at every plan."""
    _probed(model_json, seg_json, size, training=False)


@functools.lru_cache(maxsize=None)
def _macs_per_pixel(model_json: str, seg_json: str, size: int, batch: int = 2) -> tuple[float, float]:
    from ldct.complexity import count_macs

    net = _probed(model_json, seg_json, size, batch=batch)
    if not getattr(net, "countable", True):  # calibrated, not trained (BM3D): no training compute
        return 0.0, 0.0
    total, frozen = count_macs(net, size, frozen=True)
    per = size**2 * getattr(net, "inference_passes", 1)
    return total / per, frozen / per


def _segmenter_json(segmenter: dict) -> str:
    """The segmenter settings a model built with it depends on (SGDNet's U-Net), as a cache key."""
    return json.dumps({k: segmenter.get(k) for k in ("base_width", "norm")}, sort_keys=True)


def macs_per_pixel(model: dict, segmenter: dict, size: int = 64, frozen: bool = False, batch: int = 2):
    """Forward MACs per pixel of one training pass of a model spec ({'name', **kwargs}),
    counted at size x size; with `frozen`, (all, the frozen submodules' share). `batch`: the
    run's, for the model's probe in a training step (_probe)."""
    both = _macs_per_pixel(json.dumps(model, sort_keys=True), _segmenter_json(segmenter), size, batch)
    return both if frozen else both[0]


def step_macs(model: dict, segmenter: dict, size: int, batch: int) -> float:
    """MACs of one training step on `batch` size x size patches: forward and backward (3 x) of
    the trained path, forward only (1 x) of the frozen submodules."""
    total, frozen = macs_per_pixel(model, segmenter, size, frozen=True, batch=batch)
    return (3.0 * (total - frozen) + frozen) * size**2 * batch


def _whole_rounds(steps: int, evaluations: int) -> tuple[int, int]:
    """(validation rounds, steps per round) for about `steps` steps in at most `evaluations`
    rounds: the nearest whole number of rounds' steps (rounding down cost a model with few,
    costly steps up to a sixth of its budget; Table 2 states the range spent, spent_note)."""
    rounds = min(evaluations, steps)
    return rounds, max(1, round(steps / rounds))


def _mac_steps(b: dict, macs_step: float) -> int:
    """The steps equal compute gives a model costing `macs_step` MACs per step, before the cap."""
    return max(1, round(b["tera_macs"] * 1e12 / macs_step))


def resolve(train: dict, model: dict, segmenter: dict, slice_size: int) -> tuple[dict, dict]:
    """The training settings with `epochs` and `iters_per_epoch` set by the protocol, and a
    record of the budget: {'protocol', 'steps', 'macs_per_step', 'tera_macs'} (steps and
    tera_macs None for `iters_per_epoch: pass` until the job counts its slices: resolve_pass)."""
    b = train["budget"]
    size = min(train["patch_size"] or slice_size, slice_size)  # the sampler's patches never exceed the slice
    macs_step = step_macs(model, segmenter, size, train["batch_size"])
    if size != slice_size:
        check_shapes(json.dumps(model, sort_keys=True), _segmenter_json(segmenter), slice_size)
    train = dict(train)
    if b["protocol"] in OWN_STEPS:  # one pass per epoch: the steps are known once the slices are counted
        steps = None if train["iters_per_epoch"] == ONE_PASS else train["epochs"] * train["iters_per_epoch"]
    else:
        steps = b["steps"]
        if b["protocol"] == "equal_macs" and macs_step > 0:
            steps = min(steps, _mac_steps(b, macs_step))
        train["epochs"], train["iters_per_epoch"] = _whole_rounds(steps, b["evaluations"])
        steps = train["epochs"] * train["iters_per_epoch"]
    return training_only(train, model), {"protocol": b["protocol"], "steps": steps, "macs_per_step": macs_step,
                                         "tera_macs": None if steps is None else steps * macs_step / 1e12}


def resolve_pass(spec, n_slices: int):
    """`spec` with `iters_per_epoch: pass` made the steps of one pass over `n_slices` training
    slices (rounded down to whole batches: the last short batch is dropped, as the reference's
    DataLoader(shuffle=True, drop_last=True) does), and its budget record's steps and compute
    filled in; any other spec as it is."""
    from dataclasses import replace

    from ldct.errors import ConfigError

    train = spec.train
    if train.get("iters_per_epoch") != ONE_PASS:
        return spec
    iters = n_slices // train["batch_size"]
    if iters < 1:
        raise ConfigError(f"experiments.{spec.name}.train.iters_per_epoch: pass: {n_slices} training slices "
                          f"do not fill one batch of {train['batch_size']}")
    steps = train["epochs"] * iters
    budget = {**spec.budget, "steps": steps, "tera_macs": steps * spec.budget.get("macs_per_step", 0.0) / 1e12}
    return replace(spec, train={**train, "iters_per_epoch": iters}, budget=budget)


def round_size(train: dict) -> str:
    """A validation round's length in words: its steps, or one pass over the training slices."""
    if train["iters_per_epoch"] == ONE_PASS:
        return f"one pass over the training slices (in batches of {train['batch_size']}, the last short one dropped)"
    return f"{train['iters_per_epoch']} steps"


def training_only(train: dict, model: dict | None = None) -> dict:
    """The settings without those this run never reads, so that changing one (a table's
    threshold, budget.min_gain_db; patience outside `converged`; the compute once turned into
    epochs; the sweep's grid when the rate is given, or for a calibrated model, which learns no
    rate; a crop's scale when nothing is cropped) neither reruns nor restarts a training: the
    spec is the training's rerun and resume key."""
    import models

    train = dict(train)
    calibrated = model is not None and getattr(models.REGISTRY.get(model["name"]), "calibrated", False)
    b = train["budget"]
    train["budget"] = {"protocol": b["protocol"], **({"patience": b["patience"]} if b["protocol"] == "converged" else {})}
    if train.get("lr") != "auto" or calibrated:
        train.pop("lr_sweep", None)
    elif not train["lr_sweep"].get("min_steps"):  # 0 changes no sweep: left out, as before the key existed
        train["lr_sweep"] = {k: v for k, v in train["lr_sweep"].items() if k != "min_steps"}
    if not train.get("crop_prob"):
        train.pop("crop_scale", None)
    return train


def _flat(d: dict, prefix: str = "") -> list[str]:
    """'key value' of every leaf of a nested settings dict ('lr_sweep.fraction 0.5')."""
    return [item for k, v in d.items()
            for item in (_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k} {v}"])]


def own_settings_note(own: dict[str, dict] | None) -> str:
    """The experiments' own training settings (experiment -> its `train` keys over the global
    ones), for Table 2's caption: `describe` states the global ones, which these rows do not share."""
    parts = [f"{e}: {', '.join(_flat(t))}" for e, t in (own or {}).items() if t]
    return f"Set per experiment: {'; '.join(parts)}." if parts else ""


def describe(train: dict) -> str:
    """One sentence for Table 2's caption: the protocol and its numbers (steps as run: whole
    validation rounds)."""
    b = train["budget"]
    size = f"{train['patch_size']}x{train['patch_size']} patches" if train["patch_size"] else "whole slices"
    common = f"batches of {train['batch_size']} {size}"
    if b["protocol"] in ("equal_macs", "equal_steps"):
        rounds, per_round = _whole_rounds(b["steps"], b["evaluations"])
        steps = rounds * per_round
    if b["protocol"] == "equal_macs":
        return (f"Training budget: equal compute, {b['tera_macs']:g} x 10^12 multiply-accumulates per experiment "
                f"(3 x the model's forward MACs per step, its frozen parts 1 x, a loss's own networks such as the "
                f"anatomical loss's U-Net not counted; rounded to whole validation rounds; at most "
                f"{steps} steps), {common}, validated at most {b['evaluations']} times.")
    if b["protocol"] == "equal_steps":
        return f"Training budget: equal steps, {steps} per experiment, {common}, validated {rounds} times."
    if b["protocol"] == "fixed":
        return ("Training budget: set per experiment (epochs, patch size and learning rate chosen by hand; the budgets "
                "differ, so the ranking reflects them too; steps and rates in the CSV).")
    if b["patience"] >= train["epochs"]:  # never stalled long enough to stop: the reference's protocol
        return (f"Training budget: {train['epochs']} rounds of {round_size(train)} for every experiment, "
                f"keeping the round with the lowest validation MSE [0, 80] HU (no early stop), {common}.")
    return (f"Training budget: until converged, validation MSE [0, 80] HU not improved for {b['patience']} rounds "
            f"of {round_size(train)} (at most {train['epochs']} rounds), {common}.")


def is_capped(b: dict, steps: int, tera_macs: float) -> bool:
    """Under equal compute: did the step cap, not the compute, end this run (training.csv's
    steps and tera_macs; a calibrated row, 0 steps, spent nothing and was not capped)."""
    if b["protocol"] != "equal_macs" or steps <= 0 or tera_macs <= 0:
        return False
    return _mac_steps(b, tera_macs * 1e12 / steps) > b["steps"]


def spent_note(train: dict, training) -> str:
    """Under equal compute: the range of compute the trained experiments really spent
    (training.csv's tera_macs), and apart from it that of the rows the step cap stopped first
    (cheap models: they spent less); calibrated rows (no training) left out."""
    b = train["budget"]
    if b["protocol"] != "equal_macs" or training is None or "tera_macs" not in training:
        return ""
    trained = training[training["steps"] > 0]
    capped = [is_capped(b, int(s), float(t)) for s, t in zip(trained["steps"], trained["tera_macs"])]
    full = trained["tera_macs"][[not c for c in capped]]
    low = trained["tera_macs"][capped]

    def span(x) -> str:  # one number where every row spent the same
        lo, hi = f"{x.min():.3g}", f"{x.max():.3g}"
        return lo if lo == hi else f"{lo}-{hi}"
    if full.empty:
        return ("" if low.empty else f"Compute spent: every experiment reached the step cap first and spent less than "
                f"the budget ({span(low)} x 10^12 MACs).")
    return (f"Compute spent: {span(full)} x 10^12 MACs"
            + (f"; {len(low)} experiment(s) reached the step cap first and spent less "
               f"({span(low)} x 10^12)." if len(low) else "."))


LATE_FRACTION = 0.25  # the last part of training whose progress decides "not converged"


def late_tolerance(min_gain_db: float) -> float:
    """How far the best validation score may still rise over the last quarter of a converged
    run: `min_gain_db` per tenth of training (0.1 dB -> 0.25 dB), the slope the earlier
    last-tenth rule allowed, now measured over a window long enough to span several
    validations."""
    return min_gain_db * LATE_FRACTION / 0.1


def late_gain(steps: list[float], scores: list[float]) -> float:
    """How much the best validation score so far rose over the last quarter of training: the
    best of all validations minus the best of those at or before 75 % of the steps (NaN with
    fewer than two validations, or none that early). The best so far, not the last score: a
    fall after the kept epoch (overfitting, or an unstable end) leaves the kept model the best
    on validation and is no sign that more training would help; a whole quarter, not a tenth:
    with 8-10 validations a tenth falls inside the last round, and one flat round after a
    steady climb read as converged. Non-finite scores (a validation whose predictions were
    not finite) are left out, wherever they fall."""
    if len(steps) < 2:
        return math.nan
    pairs = [(t, s) for t, s in zip(steps, scores) if math.isfinite(s)]
    early = [s for t, s in pairs if t <= (1 - LATE_FRACTION) * steps[-1]]
    if not early:
        return math.nan
    return float(max(s for _, s in pairs) - max(early))


def training_summary(histories: dict, sweeps: dict, min_gain_db: float):
    """Per experiment: steps and compute spent, the learning rate used (with `lr_at_edge`:
    "lowest" / "highest" where the sweep chose the lowest / highest rate it tried, and
    `lr_sweep_steps`, the steps each swept rate trained; 0 without a sweep), the kept epoch's
    validation PSNR [-40, 120] and the input's, the rise of its best over the last quarter of
    training (`late_gain`), and the two flags every table shows: `not_converged` (the best
    score still rising over the last quarter by more than `late_tolerance(min_gain_db)`) and
    `no_gain_over_input` (the kept model less than `min_gain_db` above its input on validation,
    or below it: a model that never left its near-identity start is not called converged).
    `min_gain_db` is recorded beside them, so the tables can state it."""
    import pandas as pd

    rows = []
    for exp, h in histories.items():
        kept = h[h["best"]].iloc[-1] if h["best"].any() else h.iloc[-1]
        gain = late_gain(h["step"].tolist(), h["val_psnr_brain"].tolist())
        sweep = sweeps.get(exp)
        lr = float(sweep.loc[sweep["chosen"], "lr"].iloc[0]) if sweep is not None else float(h["lr"].iloc[0])
        swept = sweep[sweep["source"].astype(str).str.startswith("sweep")] if sweep is not None else None
        edge, sweep_steps = "", 0
        if swept is not None and len(swept) > 1:  # a rate at the grid's edge: the best may lie beyond it
            edge = "lowest" if lr == swept["lr"].min() else "highest" if lr == swept["lr"].max() else ""
            sweep_steps = int(swept["steps"].max())
        over_input = float(kept["val_psnr_brain"] - h["val_psnr_brain_ldct"].iloc[0])
        rows.append({"experiment": exp, "steps": int(h["step"].iloc[-1]), "tera_macs": float(h["tera_macs"].iloc[-1]),
                     "lr": lr, "lr_source": sweep.loc[sweep["chosen"], "source"].iloc[0] if sweep is not None else "",
                     "lr_at_edge": edge, "lr_sweep_steps": sweep_steps,
                     "kept_epoch": int(kept["epoch"]), "val_psnr_brain": float(kept["val_psnr_brain"]),
                     "val_psnr_brain_ldct": float(h["val_psnr_brain_ldct"].iloc[0]),
                     "val_gain_last_quarter_db": gain,
                     # trained but validated too rarely to tell counts as not converged; a calibrated
                     # (untrained, step 0) row has nothing to converge
                     "not_converged": bool(h["step"].iloc[-1] > 0 and not gain <= late_tolerance(min_gain_db)),
                     "no_gain_over_input": bool(not over_input >= min_gain_db),  # NaN: flagged
                     "min_gain_db": float(min_gain_db)})
    return pd.DataFrame(rows)
