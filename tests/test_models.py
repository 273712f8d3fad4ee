import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losses
import models
import models._kernel_ops as kernel_ops
from models._blocks import leaky_relu_mask, prelu_saving_output
from ldct.complexity import count_macs, count_params
from ldct.registry import Registry, RegistryError
from models._kernel_ops import kernel_filter, predicted_kernel_filter

DENOISERS = models.denoisers()
SMALL = {"featkpn": dict(nf=4, nk=4, kernel_size=3), "redcnn": dict(channels=8), "dncnn": dict(depth=4, channels=8),
         "edcnn": dict(channels=8, stages=3), "sgdnet": dict(width=8, seg_width=4), "kpn": dict(nf=8),
         "restormer": dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2)),
         "corediff": dict(width=8, steps=2)}


@pytest.mark.parametrize("name, kwargs, expected", [
    ("featkpn", {}, 1_001_511),
    ("featkpn", {"nf": 32, "nk": 32}, 3_995_207),
    ("redcnn", {}, 1_848_865),
    ("edcnn", {}, 80_961),  # + 288 fixed Sobel weights = the reference's 81,249
    ("unet", {}, 31_043_409),
    ("sgdnet", {}, 126_369),  # own parameters; the frozen U-Net is not counted
    ("gaussian", {}, 1),
])
def test_parameter_counts_match_reference(name, kwargs, expected):
    assert count_params(models.build(name, **kwargs)) == expected


def test_edcnn_counts_fixed_sobel_weights_like_reference():
    net = models.build("edcnn")
    assert count_params(net) + net.sobel.sobel_weight.numel() == 81_249


@pytest.mark.parametrize("name, ref_gmacs", [("featkpn", 38.97), ("redcnn", 458.40), ("edcnn", 21.16),
                                             ("unet", 218.41)])
def test_macs_at_512_within_3_percent(name, ref_gmacs):
    assert abs(count_macs(models.build(name), 512) / 1e9 - ref_gmacs) / ref_gmacs < 0.03


@pytest.mark.parametrize("name", DENOISERS)
def test_denoisers_keep_odd_shapes_and_train_every_parameter(name):
    torch.manual_seed(0)
    net = models.build(name, **SMALL.get(name, {}))
    x = torch.rand(2, 1, 61, 67)
    y = net(x)
    assert y.shape == x.shape
    if not any(p.requires_grad for p in net.parameters()):
        assert getattr(net, "calibrated", False), f"{name} has nothing to train and no calibration"
        return
    y.mean().backward()
    for pname, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", DENOISERS)
def test_same_seed_same_output(name):
    x = torch.rand(1, 1, 40, 44)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(models.build(name, **SMALL.get(name, {}))(x))
    tolerance = getattr(models.REGISTRY.get(name), "reproducible_to", 0.0)  # 0: bit for bit
    assert (outs[0] - outs[1]).abs().max() <= tolerance


def test_unet_shapes_and_reference_parameter_names():
    net = models.build("unet", base_width=4)
    logits, feats = net(torch.zeros(1, 1, 50, 70), return_features=True)
    assert logits.shape == (1, 17, 50, 70) and len(feats) == 4
    names = dict(models.build("unet").named_parameters())
    assert names["conv1A.weight"].shape == (64, 1, 3, 3)
    assert names["conv6A.weight"].shape == (512, 1024, 2, 2)
    assert names["layer_normalization.gamma"].shape == (64, 1, 1)
    assert names["layer_normalization_17.beta"].shape == (64, 1, 1)
    assert names["conv10.weight"].shape == (17, 64, 1, 1)


def unfold_oracle(feat, kernels, k):
    """The naive reference: materialise every k x k neighbourhood with unfold."""
    n, c, h, w = feat.shape
    pad = F.pad(feat, (k // 2,) * 4, mode="replicate")
    patches = F.unfold(pad, k).view(n, c, k * k, h, w)
    return (patches * kernels.view(n, c, k * k, h, w)).sum(2)


@pytest.mark.parametrize("k", [3, 5])
def test_kernel_filter_matches_unfold_oracle(k):
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 17, 19, dtype=torch.float64, requires_grad=True)
    ker = torch.randn(2, 3 * k * k, 17, 19, dtype=torch.float64, requires_grad=True)
    a = kernel_filter(feat, ker, k)
    b = unfold_oracle(feat, ker, k)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, (feat, ker), g)
    gb = torch.autograd.grad(b, (feat, ker), g)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2000, 1 << 22])  # one output row at a time, a few, all at once
@pytest.mark.parametrize("n, c, cin, h, w, k", [(2, 3, 4, 9, 11, 3), (1, 2, 5, 7, 6, 5)])
@pytest.mark.parametrize("slope", [0.2, -0.3])  # in-place backward; the general path
def test_fused_kernel_head_filter_equals_the_unfused_composition(monkeypatch, chunk, n, c, cin, h, w, k, slope):
    """Feat-KPN's fused op (kernels made per block of output rows, never stored) against the
    reference's order of operations: 1x1 conv, PReLU, then the filtering; outputs and the
    gradients of the features, the head's input, the conv and the PReLU slope."""
    monkeypatch.setattr(kernel_ops, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    conv, prelu = nn.Conv2d(cin, c * k * k, 1).double(), nn.PReLU(init=slope).double()
    feat = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(n, cin, h, w, dtype=torch.float64, requires_grad=True)
    fused = predicted_kernel_filter(feat, hidden, conv, prelu, k)
    plain = unfold_oracle(feat, prelu(conv(hidden)), k)
    assert torch.allclose(fused, plain, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(plain)
    params = (feat, hidden, conv.weight, conv.bias, prelu.weight)
    for a, b in zip(torch.autograd.grad(fused, params, g), torch.autograd.grad(plain, params, g)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="1x1 conv"):
        predicted_kernel_filter(feat, hidden, nn.Conv2d(cin, c * k * k, 3), prelu, k)


def test_registry_errors_list_what_exists():
    with pytest.raises(RegistryError, match="available: .*featkpn"):
        models.build("nope")
    with pytest.raises(RegistryError, match="available: .*l1"):
        losses.build("nope")
    reg = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("a")(float)


def test_losses_are_finite_and_zero_on_identical_inputs():
    x = torch.rand(2, 1, 32, 32)
    for name in ("l1", "mse", "l1_weighted"):
        loss = losses.build(name)
        assert loss(x, x).item() == 0.0
        assert loss(x, x.flip(-1)).item() > 0.0
    seg = models.build("unet", base_width=4)
    ana = losses.build("l1_l1ana_1", segmenter=seg, hu_range=(-1024.0, 3072.0), ana_weight=0.5)
    assert ana(x, x).item() == pytest.approx(0.0, abs=1e-7)
    pred = x.clone().requires_grad_(True)
    val = ana(pred, x + 0.01)
    val.backward()
    assert val.item() > 0 and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.parameters())  # the segmenter stays frozen
    sub = losses.build("l1_l1ana_2", segmenter=seg, hu_range=(-1024.0, 3072.0), classes=[1, 10])
    assert sub(x, x + 0.01).item() > 0


def test_ssim_l1_is_zero_on_identical_images_and_trains():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 1, 48, 48, generator=g)
    x = (y + 0.05 * torch.randn(2, 1, 48, 48, generator=g)).clamp(0, 1).requires_grad_(True)
    loss = losses.build("ssim_l1")
    assert loss(y, y).item() == pytest.approx(0.0, abs=1e-4)
    val = loss(x, y)
    val.backward()
    assert val.item() > 0 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)).shape == ()  # any size (zero padding)


def test_l1_weighted_is_the_reference_head_window_term():
    """L1 + (4096 / 80) * L1 over target pixels in [0, 80) HU, as the reference's solver."""
    to_u = lambda hu: (hu + 1024.0) / 4096.0  # noqa: E731
    target = to_u(torch.tensor([[-500.0, 0.0, 40.0, 80.0]]))
    pred = target + to_u(torch.tensor([[10.0, 8.0, 4.0, 2.0]])) - to_u(torch.tensor(0.0))
    d = (pred - target).abs()
    expected = d.mean() + 4096.0 / 80.0 * d[0, 1:3].mean()
    assert losses.build("l1_weighted")(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_compound_loss_needs_resnet50_weights_and_loads_torchvision_names(tmp_path):
    from ldct.config import ConfigError, validate_config
    from losses.perceptual import ResNet50Features

    cfg = {"experiments": {"edcnn_compound": {"model": {"name": "edcnn"}, "loss": {"name": "compound"}}}}
    with pytest.raises(ConfigError, match=r"experiments\.edcnn_compound\.loss: .*resnet_weights"):
        validate_config(cfg)
    cfg["experiments"]["edcnn_compound"]["loss"]["resnet_weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="missing.pth: file not found"):
        validate_config(cfg)
    net = ResNet50Features()
    assert sum(p.numel() for p in net.parameters()) == 23_508_032  # torchvision resnet50 without fc
    state = {**net.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet50.pth")
    cfg["experiments"]["edcnn_compound"]["loss"]["resnet_weights"] = str(tmp_path / "resnet50.pth")
    validate_config(cfg)
    loss = losses.build("compound", resnet_weights=str(tmp_path / "resnet50.pth"))
    x = torch.rand(1, 1, 64, 64)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-8)
    pred = (x + 0.05).requires_grad_(True)
    val = loss(pred, x)
    val.backward()
    assert val.item() > ((pred - x) ** 2).mean().item()  # the feature term adds to the MSE
    assert all(p.grad is None for p in loss.net.parameters())
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet-50"):
        losses.build("compound", resnet_weights=str(tmp_path / "bad.pth"))


def test_sgdnet_counts_only_its_own_parameters_and_keeps_the_segmenter_frozen():
    net = models.build("sgdnet")
    assert sum(p.numel() for p in net.segmenter.parameters()) == 31_043_409
    assert not any(p.requires_grad for p in net.segmenter.parameters())
    small = models.build("sgdnet", **SMALL["sgdnet"]).train()
    assert not small.segmenter.training


def test_gaussian_row_is_scipys_gaussian_filter():
    """The classical row: a normalised separable Gaussian, edges replicated, taps out to
    `radius` (scipy's gaussian_filter with mode 'nearest' and truncate = radius / sigma)."""
    from scipy.ndimage import gaussian_filter

    x = torch.rand(2, 1, 33, 29, dtype=torch.float64)
    for sigma, radius in ((0.8, 4), (1.7, 5)):
        net = models.build("gaussian", sigma=sigma, radius=radius)
        with torch.no_grad():
            y = net(x).numpy()
        for i in range(len(x)):
            want = gaussian_filter(x[i, 0].numpy(), sigma, mode="nearest", truncate=radius / sigma)
            assert abs(y[i, 0] - want).max() < 1e-6
    with torch.no_grad():
        assert torch.allclose(net(torch.full((1, 1, 9, 9), 0.3)), torch.full((1, 1, 9, 9), 0.3))


def test_dncnn_subtracts_the_noise_its_body_predicts():
    """DnCNN's output is the input minus the body's prediction: with the last conv giving a
    constant 0.1, the output is the input less 0.1 (neither the body alone nor input + body)."""
    net = models.build("dncnn", **SMALL["dncnn"]).eval()
    last = net.body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.1)
        x = torch.rand(2, 1, 20, 24)
        assert torch.allclose(net(x), x - 0.1, atol=1e-6)


def test_near_identity_init_is_an_option_and_the_reference_init_the_default():
    x = torch.rand(1, 1, 24, 28)
    torch.manual_seed(0)
    assert torch.allclose(models.build("kpn", **SMALL["kpn"])(x), x, atol=1e-6)
    torch.manual_seed(0)
    near = models.build("featkpn", near_identity_init=True)
    assert (near(x) - x).abs().mean() < 0.01  # tail scaled by 0.1: near, not at
    torch.manual_seed(0)
    ref = models.build("featkpn")
    assert not torch.equal(ref.tail[0].weight, near.tail[0].weight)
    assert ref.kern_head[0][1].weight.item() == pytest.approx(0.2)  # PReLU(init 0.2) as the reference
    assert models.departures("featkpn", {"near_identity_init": True}) == {"near_identity_init": True}
    assert models.departures("featkpn", {"nf": 8}) == {}
    assert models.departures("unet", {"base_width": 12, "norm": "instance"}) == {"base_width": 12, "norm": "instance"}


def test_unet_state_dict_round_trips_strictly(tmp_path):
    net = models.build("unet", base_width=4)
    torch.save(net.state_dict(), tmp_path / "model.pth")
    other = models.build("unet", base_width=4)
    other.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True), strict=True)
    keys = set(other.state_dict())
    expected = {f"conv{i}{p}.{t}" for i in range(1, 6) for p in "AB" for t in ("weight", "bias")}
    expected |= {f"conv{i}{p}.{t}" for i in range(6, 10) for p in "ABC" for t in ("weight", "bias")}
    expected |= {"conv10.weight", "conv10.bias"}
    expected |= {f"layer_normalization{'' if k == 0 else f'_{k}'}.{t}" for k in range(18) for t in ("gamma", "beta")}
    assert keys == expected


def test_unet_instance_norm_keeps_the_parameters_and_normalises_each_channel_over_the_slice():
    chan, inst = models.build("unet", base_width=4), models.build("unet", base_width=4, norm="instance")
    assert {k: v.shape for k, v in chan.state_dict().items()} == {k: v.shape for k, v in inst.state_dict().items()}
    inst.load_state_dict(chan.state_dict(), strict=True)
    x = torch.randn(2, 4, 8, 8) * 30 + 40
    y = inst.layer_normalization(x)
    assert torch.allclose(y.mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-4)
    assert torch.allclose(y.var(dim=(2, 3), unbiased=False), torch.ones(2, 4), atol=1e-3)
    z = chan.layer_normalization(x)  # the published norm: each pixel over the channels
    assert torch.allclose(z.mean(dim=1), torch.zeros(2, 8, 8), atol=1e-4)
    with pytest.raises(ValueError, match="unknown U-Net norm 'batch'"):
        models.build("unet", base_width=4, norm="batch")


def test_table2_caption_names_departures_from_the_reference():
    from ldct.tables import departure_note

    note = departure_note({"experiments": {"f_l1": {"name": "featkpn", "near_identity_init": True},
                                           "f_ana": {"name": "featkpn", "near_identity_init": True},
                                           "r": {"name": "redcnn"}},
                           "segmenter": {"base_width": 12, "norm": "instance", "orientation": "display"}})
    assert "featkpn near_identity_init=True (f_l1, f_ana)" in note
    assert ("segmenter base_width=12, norm=instance, orientation=display (published U-Net: base_width=64, "
            "norm=channel, orientation=dcm2niix)") in note
    assert departure_note({"experiments": {"r": {"name": "redcnn"}},
                           "segmenter": {"base_width": 64, "norm": "channel", "orientation": "dcm2niix"}}
                          ).startswith("Models, losses and metrics as")


def test_wgan_vgg_needs_vgg19_weights_and_its_critic_has_a_gradient_penalty(tmp_path):
    """WGAN-VGG: no weights file -> a config error naming `vgg_weights`; torchvision's VGG-19
    names load strictly; the critic loss includes WGAN-GP's penalty, which trains the critic."""
    from ldct.config import ConfigError, validate_config
    from losses.perceptual import VGG19Features

    cfg = {"experiments": {"gan": {"model": {"name": "redcnn"}, "loss": {"name": "wgan_vgg"}}}}
    with pytest.raises(ConfigError, match=r"experiments\.gan\.loss: WGAN-VGG needs .*VGG-19.*`vgg_weights`"):
        validate_config(cfg)
    vgg = VGG19Features()
    assert sum(p.numel() for p in vgg.parameters()) == 20_024_384  # torchvision vgg19's 16 convs
    state = {**vgg.state_dict(), "classifier.0.weight": torch.zeros(4096, 25088)}
    torch.save(state, tmp_path / "vgg19.pth")
    cfg["experiments"]["gan"]["loss"]["vgg_weights"] = str(tmp_path / "vgg19.pth")
    validate_config(cfg)
    torch.manual_seed(0)
    loss = losses.build("wgan_vgg", vgg_weights=str(tmp_path / "vgg19.pth"), d_width=4)
    real, fake = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    d_loss = loss.discriminator_loss(fake, real, fake)
    plain = loss.discriminator(fake).mean() - loss.discriminator(real).mean()
    assert d_loss.item() > plain.item()  # + 10 x the penalty, positive
    d_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in loss.discriminator.parameters())
    pred = fake.clone().requires_grad_(True)
    loss(pred, real).backward()
    assert set(loss.last_terms) == {"adversarial", "vgg"} and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.vgg.parameters())
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="not a torchvision VGG-19"):
        losses.build("wgan_vgg", vgg_weights=str(tmp_path / "bad.pth"))


@pytest.mark.parametrize("nf, nk", [(8, 8), (8, 12)])
def test_featkpn_paired_branches_equal_the_modules_one_by_one(nf, nk):
    """Feat-KPN runs its two branches' convolutions as grouped pairs (and the projection with
    the kernel head's first conv when nf == nk); the output and every gradient equal the
    modules applied one at a time, as the reference composes them (float64)."""
    from benchmarks.featkpn_speed import reference_forward
    torch.manual_seed(0)
    net = models.build("featkpn", nf=nf, nk=nk, kernel_size=3).double()
    x = torch.randn(2, 1, 21, 26, dtype=torch.float64)
    grads = []
    for fn in (net, lambda t: reference_forward(net, t)):
        net.zero_grad()
        y = fn(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    (y0, g0), (y1, g1) = grads
    assert torch.allclose(y0, y1, rtol=0, atol=1e-12)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("slope", [0.2, -0.3])  # the output-saving path; the general path
def test_memory_saving_activations_equal_torch(slope):
    """models._blocks' LeakyReLU (bool mask saved) and one-slope PReLU (output saved): the same
    values and gradients as torch's, input and slope included."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.full((1,), slope, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(x)
    for ours, theirs, params in ((leaky_relu_mask(x, slope), F.leaky_relu(x, slope), (x,)),
                                 (prelu_saving_output(x, alpha), F.prelu(x, alpha), (x, alpha))):
        assert torch.equal(ours, theirs)
        for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(theirs, params, g)):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # in place, on a fresh op's output (as Feat-KPN's decoder uses it): x's gradient through it
    fresh = x * 1.0
    out = leaky_relu_mask(fresh, slope, inplace=True)
    assert out.data_ptr() == fresh.data_ptr() and torch.equal(out, F.leaky_relu(x, slope))
    (grad,) = torch.autograd.grad(out, x, g)
    assert torch.allclose(grad, torch.autograd.grad(F.leaky_relu(x, slope), x, g)[0], rtol=1e-12, atol=1e-14)


def test_featkpn_runs_under_autocast():
    """Mixed precision through the fused op (CPU bfloat16 autocast: the same dtype handling as
    CUDA AMP, matrix products into reduced-precision buffers, gradients accumulated in fp32):
    the output stays near the float32 one and every parameter gets a finite gradient."""
    torch.manual_seed(0)
    net = models.build("featkpn")
    x = torch.rand(2, 1, 40, 44)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == ref.shape and (out.float() - ref).abs().max() < 1e-2
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_residual_block_sum_keeps_the_wider_dtype_under_autocast():
    """The in-place residual sum (into the conv's output) is used only where the dtypes agree:
    a float32 input under bfloat16 autocast gives a float32 sum, as x + y does."""
    from models._blocks import ResidualBlock

    torch.manual_seed(0)
    block, x = ResidualBlock(4), torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        y = block.conv2(block.act(block.conv1(x)))
    assert out.dtype == torch.float32 and torch.equal(out, x + y)
    plain = block(x)
    assert torch.equal(plain, x + block.conv2(block.act(block.conv1(x))))


def test_a_model_file_that_registers_nothing_is_named(tmp_path, monkeypatch):
    """A file named like the model without its @register: 'unknown model' alone left a newcomer
    to find out why."""
    from ldct.registry import Registry, RegistryError

    pkg = tmp_path / "zoo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mynet.py").write_text("class MyNet:\n    pass\n")
    (pkg / "_helpers.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("model")
    reg.import_all("zoo", [str(pkg)])
    with pytest.raises(RegistryError, match=r"unknown model 'mynet' \(.*mynet.py registers nothing: decorate its "
                                            r"class with @register\('mynet'\)\)"):
        reg.get("mynet")
    with pytest.raises(RegistryError) as err:  # no file of that name: no hint
        reg.get("other")
    assert "registers nothing" not in str(err.value)

    # the config's check, where a newcomer meets it, says the same
    import models
    from ldct.config import ConfigError, validate_config

    monkeypatch.setitem(models.REGISTRY._silent, "mynet", str(pkg / "mynet.py"))
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'mynet' \(.*mynet.py registers nothing"):
        validate_config({"experiments": {"mynet_l1": {"model": {"name": "mynet"}, "loss": {"name": "l1"}}}})
