"""Makes unet_random.npz, losses_random.npz and sgdnet_random.npz: the reference
implementation's U-Net, anatomical loss and SGDNet evaluated with the well-conditioned U-Net
weights of tests/golden.py (`random_weights`, with seeds from 2000 for SGDNet's own parameters, named as in
sgdnet.npz), on the inputs of unet.npz, losses.npz and sgdnet.npz. Not run by the tests: it needs
a checkout of the reference (FeatKPN-LDCT-enhancement) and imports its modules from there.

    python tests/data/golden/make_random_cases.py /path/to/FeatKPN-LDCT-enhancement
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, sys.argv[1])
sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # only its ResNet loss needs it

from Model.Anatomical_Segmentation.torch_model import unet  # noqa: E402  (the reference's)
from Model.loss import Anatomical_Loss  # noqa: E402
from Model.SGDNET.sgdnet import SGDNet  # noqa: E402

from tests.golden import GOLDEN, load, random_weights  # noqa: E402

torch.set_num_threads(1)
g = load("unet")
weights = random_weights(g)
net = unet(nb_classes=17, inter_feat=True)
net.load_state_dict(weights, strict=True)
net.eval()
with torch.no_grad():
    f6, f7, f8, f9, logits = net(torch.from_numpy(g["x_hu"]))
np.savez(GOLDEN / "unet_random.npz", names=g["names"], shapes=g["shapes"], x_hu=g["x_hu"],
         f6=f6.numpy(), f7=f7.numpy(), f8=f8.numpy(), f9=f9.numpy(), logits=logits.numpy())

lg = load("losses")
path = Path("/tmp/unet_random_weights.pth")
torch.save(weights, path)
loss = Anatomical_Loss(str(path))
pred, target = torch.from_numpy(lg["pred"]), torch.from_numpy(lg["target"])
with torch.no_grad():
    a = loss(pred, target, "l1_l1ana_1")
    total = 0.99 * torch.nn.functional.l1_loss(pred, target) + 0.01 * a
np.savez(GOLDEN / "losses_random.npz", pred=lg["pred"], target=lg["target"],
         anatomical_term=a.numpy(), l1_l1ana_1=total.numpy())
print("anatomical term", a.item(), "l1_l1ana_1", total.item())

sg = load("sgdnet")
model = SGDNet(net, out_ch=32)
model.load_state_dict({**random_weights(sg, seed0=2000), **{f"segmentation_model.{k}": v for k, v in weights.items()}},
                      strict=True)
model.eval()
with torch.no_grad():
    y = model(torch.from_numpy(sg["x"]))
np.savez(GOLDEN / "sgdnet_random.npz", names=sg["names"], shapes=sg["shapes"], x=sg["x"], y=y.numpy())
print("sgdnet output range", float(y.min()), float(y.max()))
