"""Restormer (Zamir et al., CVPR 2022): size, cost and structure against the paper."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import models
from ldct.complexity import count_macs, count_params
from ldct.errors import ConfigError
from models.restormer import MDTA, ChannelLayerNorm

SMALL = {"dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "heads": (1, 1, 2, 2)}
# Extra weights of the paper's 3-channel model: patch embedding 3x3 conv 3->48 instead of 1->48,
# output 3x3 conv 96->3 instead of 96->1 (both bias-free).
THREE_CHANNEL_EXTRA = 2 * 9 * 48 + 2 * 9 * 96


def test_published_size_parameter_count():
    # Found 26,124,052 for the 1-channel model; + 2,592 = 26,126,644 for 3 channels = the paper's 26.13 M.
    n = count_params(models.build("restormer"))
    assert n == 26_124_052
    assert abs(n - 26.13e6) / 26.13e6 < 0.01
    assert round((n + THREE_CHANNEL_EXTRA) / 1e6, 2) == 26.13


def test_published_size_conv_macs_match_the_papers_flops_at_256():
    """The paper's 140.99 G "FLOPs" at 256 x 256 (3 channels) are the conv multiply-accumulates;
    the attention matmuls (linear in pixels) come on top and are counted by count_macs."""
    net = models.build("restormer").to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 1, 256, 256, device="meta"))
    counts = fc.get_flop_counts()["Global"]
    conv = counts[torch.ops.aten.convolution] / 2 + THREE_CHANNEL_EXTRA * 256 * 256
    assert abs(conv / 1e9 - 140.99) < 0.01
    assert counts[torch.ops.aten.bmm] > 0


@pytest.mark.parametrize("shape", [(1, 1, 61, 67), (2, 1, 16, 24)])
def test_odd_shapes_kept(shape):
    torch.manual_seed(0)
    x = torch.rand(*shape)
    assert models.build("restormer", **SMALL)(x).shape == x.shape


def test_global_residual_is_the_input():
    """With the output conv zeroed the network is exactly the identity (input added back, cropped)."""
    torch.manual_seed(0)
    net = models.build("restormer", **SMALL)
    torch.nn.init.zeros_(net.output.weight)
    x = torch.rand(1, 1, 61, 67)
    assert torch.equal(net(x), x)
    torch.manual_seed(0)
    assert not torch.equal(models.build("restormer", **SMALL)(x), x)


def test_macs_positive_and_linear_in_pixels():
    net = models.build("restormer", **SMALL)
    m64, m128 = count_macs(net, 64), count_macs(net, 128)
    assert m64 > 0
    assert abs(m128 / m64 - 4.0) / 4.0 < 0.05  # channel-wise attention: no HW x HW map
    assert count_macs(net, 61) == m64  # padded to a multiple of 8 before any layer


def test_attention_has_a_learnable_temperature_per_head():
    net = models.build("restormer", dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 4, 8))
    heads = {m.heads: m.temperature for m in net.modules() if isinstance(m, MDTA)}
    assert set(heads) == {1, 2, 4, 8}
    for h, t in heads.items():
        assert t.shape == (h, 1, 1) and t.requires_grad and torch.equal(t, torch.ones(h, 1, 1))


def test_attention_map_is_channels_by_channels_and_rows_sum_to_one(monkeypatch):
    torch.manual_seed(0)
    seen, softmax = [], torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda t, dim: seen.append(softmax(t, dim)) or seen[-1])
    MDTA(8, 2, bias=False)(torch.rand(3, 8, 9, 11))
    (a,) = seen
    assert a.shape == (3, 2, 4, 4)  # per head (C / heads) x (C / heads), not pixels x pixels
    assert torch.allclose(a.sum(-1), torch.ones(3, 2, 4))


def test_layer_norm_is_over_the_channels_of_each_pixel():
    x = torch.randn(2, 6, 5, 7) * 3 + 2
    y = ChannelLayerNorm(6)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 5, 7), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 5, 7), atol=1e-3)


def test_level_widths_and_gdfn_hidden_size():
    net = models.build("restormer")
    assert net.patch_embed.in_channels == 1 and net.output.out_channels == 1
    assert (net.reduce3.in_channels, net.reduce3.out_channels) == (384, 192)
    assert (net.reduce2.in_channels, net.reduce2.out_channels) == (192, 96)
    assert not hasattr(net, "reduce1")  # level-1 decoder keeps the concatenated 2 dim = 96 channels
    assert net.decoder1[0].norm1.weight.shape == (96,) and net.refinement[0].norm1.weight.shape == (96,)
    assert net.output.in_channels == 96
    assert [len(s) for s in (net.encoder1, net.encoder2, net.encoder3, net.latent)] == [4, 6, 6, 8]
    assert [len(s) for s in (net.decoder3, net.decoder2, net.decoder1, net.refinement)] == [6, 6, 4, 4]
    assert net.latent[0].ffn.project_in.out_channels == 2 * int(384 * 2.66)


def test_lists_from_yaml_and_bad_head_counts():
    a = models.build("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
    assert count_params(a) == count_params(models.build("restormer", **SMALL))
    with pytest.raises(ConfigError, match="heads"):
        models.build("restormer", dim=8, heads=(3, 1, 1, 1))
    with pytest.raises(ConfigError, match="4 entries"):
        models.build("restormer", num_blocks=(1, 1, 1))
