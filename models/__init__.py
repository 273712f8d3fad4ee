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


REGISTRY.import_all(__name__, __path__)
