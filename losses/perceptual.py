"""Compound perceptual loss (`compound`, EDCNN's loss): MSE + w * mean MSE of ImageNet
ResNet-50 features (layer1 ... layer4) between prediction and target.

The ResNet-50 trunk is defined here with torchvision's parameter names, so a torchvision
`resnet50` ImageNet state dict (e.g. resnet50-0676ba61.pth, downloaded once by the user)
loads with strict key matching; no torchvision install and no download at run time. Without
a weights file the config is rejected at validation (`resnet_weights` names the file).
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


def check_weights_file(path) -> None:
    """Raise ValueError unless `path` names an existing file (used by config validation)."""
    if not path:
        raise ConfigError("the compound loss needs `resnet_weights`: the path of torchvision's ImageNet ResNet-50 "
                         "weights (resnet50-*.pth), which cannot be downloaded at run time")
    if not Path(path).is_file():
        raise ConfigError(f"resnet_weights {path}: file not found")


@register("compound")
class CompoundPerceptual(TermsLoss):
    def __init__(self, resnet_weights: str | None = None, feature_weight: float = 0.01):
        super().__init__()
        check_weights_file(resnet_weights)
        self.net = ResNet50Features()
        state = torch.load(resnet_weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.get("state_dict", state).items() if not k.startswith("fc.")}
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ConfigError(f"{resnet_weights}: not a torchvision ResNet-50 state dict: {err}") from err
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
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
