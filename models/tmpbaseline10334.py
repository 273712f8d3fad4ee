
import torch.nn as nn
from models import register


@register("tmpbaseline10334")
class TmpNet(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)
