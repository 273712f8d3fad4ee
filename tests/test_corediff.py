"""CoreDiff-style cold diffusion (models/corediff.py): the schedule's end points, the sampler's
shapes, determinism and cost per step, the random training step, and that it learns."""

import pytest
import torch
import torch.nn.functional as F

import models
from ldct.complexity import count_macs

SMALL = {"width": 8, "steps": 2}


def test_forward_keeps_odd_shapes_and_is_deterministic():
    torch.manual_seed(0)
    net = models.build("corediff", **SMALL)
    x = torch.rand(1, 1, 61, 67)
    out = net(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out, net(x))
    assert net.inference_passes == 2


def test_training_forward_draws_its_step_from_the_global_rng():
    torch.manual_seed(0)
    net = models.build("corediff", width=8, steps=10)
    x, y = torch.rand(4, 1, 33, 35), torch.rand(4, 1, 33, 35)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(net.training_forward(x, y))
    assert outs[0].shape == x.shape
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_sampling_cost_grows_with_the_number_of_steps():
    macs = {s: count_macs(models.build("corediff", width=8, steps=s), 64) for s in (1, 2, 4)}
    assert macs[4] / macs[2] == pytest.approx(2.0, rel=0.01)
    assert macs[2] / macs[1] == pytest.approx(2.0, rel=0.01)


def test_schedule_runs_from_the_normal_dose_to_the_low_dose_image():
    net = models.build("corediff", width=8, steps=5, noise=0.05)
    g = torch.Generator().manual_seed(0)
    x, y, eps = (torch.rand(2, 1, 8, 8, generator=g) for _ in range(3))
    assert torch.equal(net.degrade(x, y, 5, eps), x)  # t = T: the LDCT, no noise
    assert torch.equal(net.degrade(x, y, 0, eps), y)  # t = 0: the NDCT, no noise
    mid = net.degrade(x, y, torch.tensor([2, 3]), eps)
    a = torch.tensor([0.6, 0.4]).view(2, 1, 1, 1)
    assert torch.allclose(net.degrade(x, y, torch.tensor([2, 3])), a * y + (1 - a) * x)
    assert not torch.allclose(mid, a * y + (1 - a) * x)  # noise in between
    a_t, b_t = net.schedule(torch.arange(6))
    assert torch.all(a_t[1:] < a_t[:-1]) and b_t[0] == 0 and b_t[-1] == 0 and b_t.max() <= 0.05 + 1e-7


def _chain_mse(net, x, y) -> float:
    """MSE of x0_hat at every step t = 1..T on the noiseless chain."""
    with torch.no_grad():
        return sum(F.mse_loss(net.predict(net.degrade(x, y, t), t, x), y).item()
                   for t in range(1, net.steps + 1)) / net.steps


def test_overfits_one_pair():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    y = (0.3 + 0.4 * torch.outer(ramp, ramp)).view(1, 1, 32, 32)
    x = 0.5 * y + 0.4 + 0.02 * torch.randn(1, 1, 32, 32, generator=g)  # contrast loss, offset, noise
    net = models.build("corediff", **SMALL)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = _chain_mse(net, x, y)
    for _ in range(30):
        loss = F.mse_loss(net.training_forward(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _chain_mse(net, x, y)
    assert after < 0.5 * before and after < 0.5 * F.mse_loss(x, y).item()
