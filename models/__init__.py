"""Denoisers and the segmentation U-Net, one architecture per file, built by name.

    import models
    net = models.build("featkpn", nf=16, nk=16)   # kwargs = the experiment's model keys
    models.available()                             # every registered name

Adding a baseline: drop a file in this folder whose class carries `@register("name")`.
Every denoiser maps (N, 1, H, W) HU scaled to [0, 1] by the configured window to the same
shape, for any H, W.
"""

from ldct.registry import Registry

REGISTRY = Registry("model")
register = REGISTRY.register


def build(name: str, **kwargs):
    return REGISTRY.build(name, **kwargs)


def available() -> list[str]:
    return REGISTRY.available()


def denoisers() -> list[str]:
    """Registered models that are denoisers (not the segmentation U-Net)."""
    return [n for n in available() if getattr(REGISTRY.get(n), "is_denoiser", True)]


def needs_segmenter(name: str) -> bool:
    """True for models fed by the frozen segmentation U-Net (the engine loads its weights)."""
    return bool(getattr(REGISTRY.get(name), "needs_segmenter", False))


def departures(name: str, kwargs: dict) -> dict:
    """The settings in `kwargs` that depart from the published method's (the class's
    `reference_settings`, e.g. Feat-KPN's near_identity_init=False, the U-Net's channel norm
    at base width 64): {key: value}. Empty for a model as published or without such settings."""
    ref = getattr(REGISTRY.get(name), "reference_settings", {})
    return {k: kwargs[k] for k in ref if k in kwargs and kwargs[k] != ref[k]}


def load_reference_weights(net, state: dict, strict: bool = True):
    """Load a state dict saved by the reference implementation (FeatKPN-LDCT-enhancement)
    into a project module. A model whose parameter names differ from the reference's maps
    them with a `reference_key(own_name) -> reference_name` static method; the U-Net already uses
    the reference's names. Missing or unexpected keys raise."""
    key = getattr(net, "reference_key", None)
    own = net.state_dict()
    names = {name: (key(name) if key else name) for name in own}
    missing = [ref for ref in names.values() if ref not in state]
    unexpected = sorted(set(state) - set(names.values()))
    if strict and (missing or unexpected):
        raise KeyError(f"reference state dict does not fit {type(net).__name__}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    return net.load_state_dict({name: state[ref] for name, ref in names.items() if ref in state}, strict=strict)


REGISTRY.import_all(__name__, __path__)
