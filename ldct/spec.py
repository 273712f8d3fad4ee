"""One experiment, specified once.

An `ExperimentSpec` holds an experiment's settings as the config gives them, merged once
(the `train` defaults under the experiment's own overrides) with the seed and the network
scaling: everything that decides a trained model. The workflow's rules pass it to
`ldct train --spec` as JSON, config validation checks it, and the training engine and the
benchmarks build the model, loss, optimiser and schedule from it. Which constructor
arguments the engine injects (`INJECTED`) and whether the experiment needs the frozen
segmenter are decided here and nowhere else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import torch

from ldct.config import experiment_train
from ldct.errors import ConfigError

# Constructor arguments the engine supplies; a config that sets one is refused.
INJECTED = {"model": ("hu_range", "seg_width", "seg_norm", "seg_turns"), "loss": ("hu_range", "segmenter")}


def with_segmenter(model: dict, segmenter: dict) -> dict:
    """A model spec ({'name', **kwargs}) with the config's frozen segmenter (its `segmenter`
    section: base_width, norm) where the model runs one, as it is counted and timed before
    training (the budget, Table 1); the engine injects the same from segmenter.pt (build_model)."""
    import models

    out = dict(model)
    if models.needs_segmenter(out["name"]):
        out.update(seg_width=segmenter["base_width"], seg_norm=segmenter["norm"])
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    """A table row's model, loss and training settings ({'name': ..., **kwargs} each)."""

    name: str
    model: dict
    loss: dict
    train: dict
    seed: int = 42
    hu_range: tuple[float, float] = (-1024.0, 3072.0)
    budget: dict = field(default_factory=dict)  # the protocol's steps and compute (ldct.budget.resolve)

    @classmethod
    def from_config(cls, config: dict, name: str, resolve: bool = True) -> ExperimentSpec:
        """The experiment `name` of a validated config, its steps set by the budget protocol
        (unless not `resolve`: the settings as written, e.g. to check them first)."""
        from ldct import budget

        exp = config["experiments"][name]
        norm = config["normalization"]
        slice_size = config["synthetic"]["matrix"] if config["dataset"]["source"] == "synthetic" else 512
        train, spent = experiment_train(config, name), {}
        if resolve:
            try:
                train, spent = budget.resolve(train, exp["model"], config["segmenter"], slice_size)
            except ConfigError as err:
                raise ConfigError(f"config error at experiments.{name}.model: {err}") from None
        return cls(name=name, model=dict(exp["model"]), loss=dict(exp["loss"]), train=train, seed=config["seed"],
                   hu_range=(float(norm["hu_min"]), float(norm["hu_max"])), budget=spent)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentSpec:
        try:
            obj = json.loads(text)
            obj["hu_range"] = tuple(obj.get("hu_range", (-1024.0, 3072.0)))
            return cls(**obj)
        except (json.JSONDecodeError, TypeError, AttributeError, KeyError) as err:
            raise ConfigError(f"not an experiment spec ({', '.join(cls.__dataclass_fields__)}): {err}") from None

    @property
    def needs_segmenter(self) -> bool:
        import losses
        import models

        return models.needs_segmenter(self.model["name"]) or losses.needs_segmenter(self.loss["name"])

    def source_files(self) -> list[str]:
        """The model's and loss's code (and the segmenter's, where one is used): ldct.registry.source_files."""
        import losses
        import models
        from ldct.registry import source_files

        objs = [models.REGISTRY.get(self.model["name"]), losses.REGISTRY.get(self.loss["name"])]
        return source_files(*objs, *([models.REGISTRY.get("unet")] if self.needs_segmenter else []))

    def kwargs(self, part: str) -> dict:
        """The model's or loss's own constructor arguments (without its name)."""
        return {k: v for k, v in getattr(self, part).items() if k != "name"}

    def check(self) -> None:
        """Registered names, accepted and non-injected arguments, the loss's own checks."""
        import losses
        import models

        where = f"experiments.{self.name}"
        for part, reg in (("model", models.REGISTRY), ("loss", losses.REGISTRY)):
            name = getattr(self, part)["name"]
            if name not in reg.available():
                raise ConfigError(f"config error at {where}.{part}.name: {reg.unknown(name)}")
            takes = reg.arguments(name)  # None: any argument
            if takes is None and self.kwargs(part):  # **kwargs: a misspelled key would pass unseen
                logging.getLogger(__name__).warning(
                    "%s.%s: %s takes any keyword argument (**kwargs), so %s cannot be checked against it; "
                    "a misspelled one is silently ignored", where, part, name, ", ".join(map(repr, self.kwargs(part))))
            bad = [k for k in self.kwargs(part) if k in INJECTED[part] or (takes is not None and k not in takes)]
            if bad:
                own = [p for p in takes or [] if p not in INJECTED[part]]
                raise ConfigError(f"config error at {where}.{part}: {name} does not take "
                                  f"{', '.join(map(repr, bad))}; it takes: {', '.join(own) or 'nothing'}")
            wrong = reg.type_errors(name, self.kwargs(part))
            if wrong:
                raise ConfigError(f"config error at {where}.{part}: {name}: {'; '.join(wrong)}")
        check = getattr(losses.REGISTRY.get(self.loss["name"]), "check_config", None)
        if check is not None:  # a loss may need more than the schema can say (e.g. a weights file)
            try:
                check(self.kwargs("loss"))
            except ValueError as err:
                raise ConfigError(f"config error at {where}.loss: {err}") from None

    def build_model(self, seg_ck: dict | None = None) -> tuple[torch.nn.Module, dict]:
        """The model with its injected arguments (the segmenter's width and weights from a
        segmenter.pt dictionary where it takes one), and its spec as saved in model.pt."""
        import models

        name, saved = self.model["name"], dict(self.model)
        if models.needs_segmenter(name):
            saved.update(seg_width=seg_ck["base_width"], seg_norm=seg_ck.get("norm", "channel"),
                         seg_turns=seg_ck.get("turns", 0))
        if "hu_range" in (models.REGISTRY.arguments(name) or []):
            saved["hu_range"] = list(self.hu_range)
        net = models.build(name, **{k: v for k, v in saved.items() if k != "name"})
        if models.needs_segmenter(name):
            net.segmenter.load_state_dict(seg_ck["state_dict"])
        return net, saved

    def build_loss(self, segmenter: torch.nn.Module | None = None) -> torch.nn.Module:
        """The loss, given the frozen segmenter where it needs one."""
        import losses

        name, kwargs = self.loss["name"], self.kwargs("loss")
        if losses.needs_segmenter(name):
            kwargs["segmenter"] = segmenter
        if "hu_range" in (losses.REGISTRY.arguments(name) or []):
            kwargs.setdefault("hu_range", tuple(self.hu_range))
        return losses.build(name, **kwargs)
