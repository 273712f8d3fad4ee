"""ImageNet feature networks for perceptual losses, and the compound perceptual loss
(`compound`, EDCNN's loss): MSE + w * mean MSE of ImageNet ResNet-50 features (layer1 ...
layer4) between prediction and target.

The ResNet-50 and VGG-19 trunks are defined here with torchvision's parameter names, so a
torchvision ImageNet state dict (e.g. resnet50-0676ba61.pth, vgg19-dcbb9e9d.pth, downloaded
once by the user) loads with strict key matching; no torchvision install and no download at
run time. Without a weights file the config is rejected at validation (the loss's
`resnet_weights` / `vgg_weights` names the file).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldct.errors import ConfigError
from losses import TermsLoss, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet50Features(nn.Module):
    """The ResNet-50 trunk; forward returns the outputs of layer1 ... layer4."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        c_in = 64
        for i, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            layers = []
            for b in range(blocks):
                layers.append(_Bottleneck(c_in, width, stride if b == 0 else 1))
                c_in = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


class VGG19Features(nn.Module):
    """torchvision's vgg19 `features` (no batch norm) up to conv5_4, before its ReLU (the first
    35 modules: the feature map WGAN-VGG compares); parameter names `features.<index>.*`."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG19_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers[:35])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def check_weights_file(path, key: str = "resnet_weights", what: str = "the compound loss needs torchvision's "
                       "ImageNet ResNet-50 weights (resnet50-*.pth)") -> None:
    """Raise ConfigError (a ValueError) unless `path` names an existing file (config validation)."""
    if not path:
        raise ConfigError(f"{what}, which cannot be downloaded at run time: give their path as `{key}`")
    if not Path(path).is_file():
        raise ConfigError(f"{key} {path}: file not found")


def load_frozen(net: nn.Module, path: str, keep, name: str) -> nn.Module:
    """`net` with the state dict in `path` (the entries `keep(key)` selects) loaded strictly,
    in eval mode and frozen; a file that does not fit raises ConfigError naming it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.get("state_dict", state).items() if keep(k)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{path}: not a torchvision {name} state dict: {err}") from err
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@register("compound")
class CompoundPerceptual(TermsLoss):
    def __init__(self, resnet_weights: str | None = None, feature_weight: float = 0.01):
        super().__init__()
        check_weights_file(resnet_weights)
        self.net = load_frozen(ResNet50Features(), resnet_weights, lambda k: not k.startswith("fc."), "ResNet-50")
        self.w = feature_weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @staticmethod
    def check_config(kwargs: dict) -> None:
        check_weights_file(kwargs.get("resnet_weights"))

    def train(self, mode: bool = True):  # the feature network stays in eval mode (frozen BatchNorm)
        super().train(mode)
        self.net.eval()
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net((x.expand(-1, 3, -1, -1) - self.mean) / self.std)

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t_feats = self._features(target)
        p_feats = self._features(pred)
        feat = torch.stack([F.mse_loss(a, b) for a, b in zip(p_feats, t_feats)]).mean()
        return {"mse": F.mse_loss(pred, target), "resnet_features": self.w * feat}
