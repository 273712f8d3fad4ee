"""Makes featkpn_grad.npz and unet_grad.npz: gradients through the reference implementation's
Feat-KPN (formula weights of featkpn.npz) and segmentation U-Net (the weights of
tests/golden.py's `random_weights`, on the HU of losses.npz's prediction), so the backward
passes are checked against the reference's own code, not only the forward values. The upstream
gradient of each output o is g = sin(0.11 * arange(n) + k) reshaped to o (k: the output's index;
loss = sum over outputs of sum(g * o)): smooth, unlike the anatomical loss's L1, whose sign flips
where a feature of the prediction and of the target agree to float32 noise. Not run by the tests:
it needs a checkout of the reference (FeatKPN-LDCT-enhancement) and imports its modules from there.

    python tests/data/golden/make_gradient_cases.py /path/to/FeatKPN-LDCT-enhancement
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, sys.argv[1])
for name in ("torchvision", "torchvision.models", "torchsummary"):  # imported, not used by these modules
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["torchsummary"].summary = None

from Model.Anatomical_Segmentation.torch_model import unet  # noqa: E402  (the reference's)
from Model.KPN.kpn_feat_model import KPNfeat  # noqa: E402

from tests.golden import GOLDEN, formula_weights, load, random_weights  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def upstream(shape, k: int = 0) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.sin(0.11 * np.arange(n) + k).reshape(shape).astype(np.float32))


g = load("featkpn")
net = KPNfeat(nf=16, nk=16, kpn_sz=5)
net.load_state_dict(formula_weights(g), strict=True)
net.eval()
x = torch.from_numpy(g["x"]).requires_grad_(True)
y = net(x)
(upstream(y.shape) * y).sum().backward()
grads = {f"grad:{k}": p.grad.numpy() for k, p in net.named_parameters() if p.grad is not None}
np.savez(GOLDEN / "featkpn_grad.npz", x=g["x"], y=y.detach().numpy(), dx=x.grad.numpy(), **grads)
print("featkpn: |dx| max", float(x.grad.abs().max()), "parameters with gradients", len(grads))

seg = unet(nb_classes=17, inter_feat=True)
seg.load_state_dict(random_weights(load("unet")), strict=True)
seg.eval()
x_hu = (torch.from_numpy(load("losses")["pred"]) * 4096 - 1024).requires_grad_(True)
outputs = seg(x_hu)  # f6, f7, f8, f9, logits
sum((upstream(o.shape, k) * o).sum() for k, o in enumerate(outputs)).backward()
np.savez(GOLDEN / "unet_grad.npz", x_hu=x_hu.detach().numpy(), dx=x_hu.grad.numpy())
print("unet: |dx| max", float(x_hu.grad.abs().max()))
