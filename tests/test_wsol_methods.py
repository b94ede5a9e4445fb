"""WSOL training methods: each mechanism on small hand-worked cases, the maps they read at inference, their
placement on the benchmark backbones, checkpoints that rebuild them, bad input, and a short training run of every
method that beats an untrained network."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import CAM, CamlensError, normalize
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, GapNet, Preprocess, load_model, save_checkpoint
from camlens.training.wsol import (
    ADL,
    SPG,
    WSOL_METHODS,
    ACoL,
    ACoLCAM,
    ADLMethod,
    CutMix,
    HaS,
    get_wsol_method,
    method_explainer,
    wsol_method_from_config,
)
from camlens.training.wsol.acol import erased_features
from camlens.training.wsol.cutmix import MixedTargets, cutmix_box
from camlens.training.wsol.has import hidden_pixels
from camlens.training.wsol.spg import IGNORE, masked_bce, pseudo_mask
from camlens.wsolnet import CHECKPOINT_MODULES
from camlens.wsolnet.placement import adl_positions, probe, spg_branch_points

# ---------------------------------------------------------------- HaS


def test_has_hides_exactly_the_patches_its_generator_draws():
    """5x5 images, 2 px patches: a 3x3 grid whose last row and column are 1 px; patch (i, j) of image b is hidden
    iff the generator's u[b, i, j] < drop_rate, every pixel of a hidden patch is 0 and every other pixel kept."""
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5) + 1
    out, labels = HaS(patch_size=2, drop_rate=0.5).batch(images, torch.tensor([3, 4]), torch.Generator().manual_seed(7))
    u = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(7))
    for b in range(2):
        for y in range(5):
            for x in range(5):
                hidden = bool(u[b, y // 2, x // 2] < 0.5)
                expected = torch.zeros(3) if hidden else images[b, :, y, x]
                assert torch.equal(out[b, :, y, x], expected), (b, y, x)
    assert labels.tolist() == [3, 4]
    assert 0 < int((out == 0).all(1).sum()) < 50  # this seed hides some patches and keeps others


def test_has_drop_rate_zero_keeps_all_and_one_hides_all():
    g = torch.Generator().manual_seed(0)
    assert not hidden_pixels(3, 8, 6, 4, 0.0, g).any()
    assert hidden_pixels(3, 8, 6, 4, 1.0, g).all()


def test_has_leaves_inference_to_cam():
    net = GapNet(3).eval()
    assert isinstance(HaS().explainer(net), CAM)


# ---------------------------------------------------------------- ACoL


def test_acol_erases_where_the_normalized_map_reaches_the_threshold():
    """Map [[0, 1], [2, 4]] normalizes to [[0, .25], [.5, 1]]: at threshold 0.5 the bottom row is erased."""
    features = torch.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    out = erased_features(features, maps, 0.5)
    assert torch.equal(out[0, :, 0], features[0, :, 0])
    assert torch.equal(out[0, :, 1], torch.zeros(2, 2))
    assert torch.equal(erased_features(features, maps, 0.2), features * torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def _acol_net() -> tuple[nn.Module, ACoL]:
    torch.manual_seed(1)
    net = GapNet(4)
    method = ACoL(threshold=0.6)
    assert method.attach(net) == ("acol_classifier",)
    return net.eval(), method


def test_acol_map_is_max_of_normalized_branch_maps_float64():
    """ACoLCAM equals max(normalize(M_A), normalize(M_B on f erased by M_A)), recomputed in float64."""
    net, method = _acol_net()
    x = torch.randn(3, 3, 32, 32)
    res = method.explainer(net)(x, [0, 2, 3])
    assert isinstance(method.explainer(net), ACoLCAM)
    with torch.no_grad():
        f = net.features(x).double()
    wa, ba = net.fc.weight.double(), net.fc.bias.double()
    wb, bb = net.acol_classifier.weight.double(), net.acol_classifier.bias.double()
    for i, c in enumerate([0, 2, 3]):
        ma = torch.einsum("k,khw->hw", wa[c], f[i]) + ba[c]
        keep = (normalize(ma) < 0.6).double()
        mb = torch.einsum("k,khw->hw", wb[c], f[i] * keep) + bb[c]
        expected = torch.maximum(normalize(ma), normalize(mb))
        assert torch.allclose(res.maps[i, 0].double(), expected, atol=1e-5)
    assert torch.equal(res.logits, net(x))  # the logits are branch A's, the network's own


def test_acol_loss_is_the_sum_of_both_branch_losses():
    net, method = _acol_net()
    net.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, logits = method.loss(net, x, y)
    f = net.features(x)  # train mode again: batch statistics, so the same features
    with torch.no_grad():
        maps = torch.einsum("bk,bkhw->bhw", net.fc.weight[y], f) + net.fc.bias[y][:, None, None]
    logits_b = net.acol_classifier((f * (normalize(maps) < 0.6)[:, None]).mean((-2, -1)))
    expected = F.cross_entropy(net.fc(f.mean((-2, -1))), y) + F.cross_entropy(logits_b, y)
    assert torch.allclose(loss, expected, atol=1e-5)


# ---------------------------------------------------------------- SPG


def test_spg_pseudo_mask_marks_foreground_background_and_ignores_the_rest():
    """high 0.7, low 0.1: > 0.7 is 1, < 0.1 is 0, the uncertain band [0.1, 0.7] is ignored."""
    att = torch.tensor([[[0.05, 0.1, 0.5], [0.7, 0.71, 0.95], [0.0, 0.3, 1.0]]])
    mask = pseudo_mask(att, high=0.7, low=0.1, min_foreground=1)
    assert mask.tolist() == [[[0, IGNORE, IGNORE], [IGNORE, 1, 1], [0, IGNORE, 1]]]


def test_spg_pseudo_mask_falls_back_to_70_percent_of_the_max_for_small_foregrounds():
    """Fewer than 30 pixels above ``high`` (here none above 0.9): foreground is > 0.7 * max = 0.56."""
    att = torch.zeros(1, 8, 8)
    att[0, 0, :4] = torch.tensor([0.8, 0.6, 0.5, 0.3])
    mask = pseudo_mask(att, high=0.9, low=0.2)
    assert mask[0, 0, :4].tolist() == [1, 1, IGNORE, IGNORE]
    assert (mask[0, 1:] == 0).all()


def test_spg_masked_bce_leaves_out_ignored_pixels():
    logits = torch.tensor([[2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 0, IGNORE]])
    expected = (F.softplus(-torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0))) / 2
    assert torch.allclose(masked_bce(logits, mask), expected)
    assert masked_bce(logits, torch.full_like(mask, IGNORE)) == 0


def test_spg_branches_on_gapnet_and_its_map_is_the_cam_of_the_classifier():
    net = GapNet(5)
    method = SPG()
    assert method.attach(net) == ("spg_b1", "spg_b2", "spg_shared", "spg_c")
    assert spg_branch_points(net, probe(net).head) == ("features.4", "features.5")
    net.train()
    loss, logits = method.loss(net, torch.randn(2, 3, 32, 32), torch.tensor([1, 4]))
    loss.backward()
    assert all(
        p.grad is not None
        for n in ("spg_b1", "spg_b2", "spg_shared", "spg_c")
        for p in net.get_submodule(n).parameters()
    )
    assert isinstance(method.explainer(net.eval()), CAM)


# ---------------------------------------------------------------- ADL


def _adl_input() -> torch.Tensor:
    # channel mean: [[2, 2], [2, 6]]
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[3.0, 2.0], [1.0, 8.0]]]])


def test_adl_drop_mask_hides_the_peak_region():
    """threshold 0.9 of max 6 is 5.4: only the peak pixel (1, 1) is dropped."""
    x = _adl_input()
    layer = ADL(drop_rate=1.0, threshold=0.9).train()
    assert torch.equal(layer(x), x * torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def test_adl_importance_map_is_sigmoid_of_the_channel_mean():
    x = _adl_input()
    layer = ADL(drop_rate=0.0, threshold=0.9).train()
    assert torch.allclose(layer(x), x * torch.sigmoid(torch.tensor([[2.0, 2.0], [2.0, 6.0]])))


def test_adl_draws_its_branch_per_pass_from_the_generator():
    layer = ADL(drop_rate=0.5).train()
    layer.generator = torch.Generator().manual_seed(3)
    draws = torch.rand(20, generator=torch.Generator().manual_seed(3)) < 0.5
    x = _adl_input()
    for drop in draws:
        expected = layer.drop_mask(layer.attention(x)) if drop else torch.sigmoid(layer.attention(x))
        assert torch.equal(layer(x), x * expected)


def test_adl_is_the_identity_at_evaluation():
    x = _adl_input()
    assert ADL().eval()(x) is x
    torch.manual_seed(2)
    plain = GapNet(3).eval()
    attached = GapNet(3)
    attached.load_state_dict(plain.state_dict())
    ADLMethod().attach(attached)
    y = torch.randn(2, 3, 32, 32)
    assert torch.equal(attached.eval()(y), plain(y))


def test_adl_changes_the_hooked_blocks_in_training():
    """gapnet: ADL after its last two blocks; with drop_rate 1 the next block receives the raw output times
    the drop mask of its channel mean."""
    net = GapNet(3)
    seen = {}
    net.features[5].register_forward_hook(lambda m, a, out: seen.update(raw=out.detach().clone()))  # before ADL's
    method = ADLMethod(drop_rate=1.0, threshold=0.5)
    method.attach(net)
    assert adl_positions(net) == ["features.5", "features.6"]
    net.features[6].register_forward_pre_hook(lambda m, a: seen.update(inp=a[0]))
    net.train()(torch.randn(2, 3, 32, 32))
    att = seen["raw"].mean(1, keepdim=True)
    keep = (att < 0.5 * att.amax((-2, -1), keepdim=True)).float()
    assert torch.equal(seen["inp"], seen["raw"] * keep)
    assert 0 < keep.mean() < 1


# ---------------------------------------------------------------- CutMix


def test_cutmix_box_hand_worked():
    """lam 0.64 on 10x10: sides 6, half 3; centred at (2, 2) the box is clipped to rows and columns 0..4."""
    assert cutmix_box(10, 10, 0.64, 2, 2) == (0, 5, 0, 5)
    assert cutmix_box(10, 10, 0.64, 5, 5) == (2, 8, 2, 8)
    assert cutmix_box(8, 12, 1.0, 3, 3) == (3, 3, 3, 3)  # lam 1: nothing pasted


def test_cutmix_pastes_one_box_and_weights_labels_by_its_area():
    """Image i filled with the value i: the pixels of image i carrying another image's value are exactly one box,
    taken from image order[i], and the label weight is 1 - box area / image area."""
    b, h, w = 6, 12, 10
    images = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 3, h, w).contiguous()
    labels = torch.tensor([10, 11, 12, 13, 14, 15])
    for seed in range(5):
        mixed, targets = CutMix(beta=1.0, prob=1.0).batch(images, labels, torch.Generator().manual_seed(seed))
        assert isinstance(targets, MixedTargets)
        sources = mixed[:, 0]
        pasted = sources != torch.arange(b, dtype=torch.float32)[:, None, None]
        moved = [i for i in range(b) if (targets.pasted[i] != labels[i])]
        area = int(pasted[moved[0]].sum()) if moved else 0
        if area:
            rows, cols = pasted[moved[0]].any(1).nonzero(), pasted[moved[0]].any(0).nonzero()
            assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a full rectangle
        for i in range(b):
            src = int(targets.pasted[i]) - 10
            inside = sources[i][pasted[moved[0]]] if moved else sources[i][:0]
            assert (inside == src).all()
        assert math.isclose(targets.weight, 1 - area / (h * w), rel_tol=0, abs_tol=1e-12)
        assert torch.equal(targets.labels, labels)


def test_cutmix_loss_mixes_the_two_cross_entropies():
    net = GapNet(4).eval()
    x = torch.randn(3, 3, 16, 16)
    t = MixedTargets(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 0]), 0.25)
    loss, logits = CutMix().loss(net, x, t)
    expected = 0.25 * F.cross_entropy(logits, t.labels) + 0.75 * F.cross_entropy(logits, t.pasted)
    assert torch.allclose(loss, expected)


def test_cutmix_prob_zero_leaves_the_batch_alone():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    out, targets = CutMix(prob=0.0).batch(x, y, torch.Generator())
    assert out is x and targets is y


# ---------------------------------------------------------------- placement on the benchmark backbones


def test_placement_on_torchvision_resnet50_and_vgg16_follows_choe_et_al():
    """ResNet50: ADL after layer3.0, layer4.0, layer4.2; SPG taps layer3.0 and layer3.  VGG16: ADL after pool3,
    conv4_3's ReLU and the last layer of features; SPG taps pool4 and the end of features."""
    import torchvision

    with torch.device("meta"):
        resnet = torchvision.models.resnet50(num_classes=3)
        vgg = torchvision.models.vgg16(num_classes=3)
    assert adl_positions(resnet) == ["layer3.0", "layer4.0", "layer4.2"]
    assert adl_positions(vgg) == ["features.16", "features.22", "features.30"]
    head = probe(GapNet(3)).head  # spg_branch_points reads only the head's layer name off non-generic nets
    assert spg_branch_points(resnet, head) == ("layer3.0", "layer3")
    assert spg_branch_points(vgg, head) == ("features.23", "features.30")


# ---------------------------------------------------------------- checkpoints and explainers


@pytest.mark.parametrize("name", sorted(WSOL_METHODS))
def test_checkpoint_rebuilds_the_method_and_its_explainer(tmp_path, name):
    """Saved with its config, the checkpoint loads into a network with the method attached, the same weights and
    the same maps as the trained one."""
    torch.manual_seed(0)
    net = GapNet(4)
    method = get_wsol_method(name)
    method.attach(net)
    net.eval()
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        net,
        arch="gapnet",
        class_names=list("abcd"),
        preprocess=Preprocess((32, 32)),
        extra={"wsol_method": method.config()},
    )
    loaded = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    expected = method.explainer(net)(x)
    got = method_explainer(loaded.model)
    assert type(got) is type(expected_explainer := method.explainer(net))
    assert torch.allclose(got(x).maps, expected.maps, atol=1e-6)
    assert wsol_method_from_config(method.config()).config() == method.config()
    expected_explainer.close()


def test_every_training_method_says_what_its_checkpoints_need_below_training():
    """A method added to training/wsol must register the modules its checkpoints hold in camlens.wsolnet, or
    load_model could not rebuild its networks."""
    assert set(CHECKPOINT_MODULES) == set(WSOL_METHODS)


def test_an_acol_checkpoint_loads_and_explains_without_importing_training(tmp_path):
    """The inference side lives below training/: loading and explaining an ACoL checkpoint runs no module of
    camlens.training (checked in a fresh interpreter)."""
    torch.manual_seed(0)
    net = GapNet(4)
    method = get_wsol_method("acol")
    method.attach(net)
    path = save_checkpoint(
        tmp_path / "acol.safetensors",
        net.eval(),
        arch="gapnet",
        class_names=list("abcd"),
        preprocess=Preprocess((32, 32)),
        extra={"wsol_method": method.config()},
    )
    code = (
        "import sys, torch\n"
        "from camlens import build_explainer, load_model\n"
        f"loaded = load_model({str(path)!r})\n"
        "with build_explainer(loaded.model) as explainer:\n"
        "    assert type(explainer).__name__ == 'ACoLCAM', explainer\n"
        "    explainer(torch.randn(1, 3, 32, 32))\n"
        "assert not [m for m in sys.modules if m.startswith('camlens.training')], 'camlens.training was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(camlens.__file__).parents[1])},
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ACoL(threshold=1.5), "ACoL: threshold=1.5 is outside [0, 1]"),
        (lambda: ADLMethod(threshold=-0.1), "ADL: threshold=-0.1 is outside [0, 1]"),
        (lambda: SPG(threshold_2l=0.6), "SPG: threshold_2l=0.6 is above threshold_2h=0.5"),
        (lambda: HaS(drop_rate=2), "HaS: drop_rate=2 is outside [0, 1]"),
        (lambda: HaS(patch_size=0), "HaS: patch_size=0 must be a positive number of pixels"),
        (lambda: CutMix(prob=1.2), "CutMix: prob=1.2 is outside [0, 1]"),
        (lambda: get_wsol_method("has", grid=3), "WSOL method has: unknown parameter(s) grid"),
        (lambda: get_wsol_method("nope"), "unknown WSOL method 'nope'"),
    ],
)
def test_parameters_out_of_range_are_one_line_errors(build, message):
    with pytest.raises(CamlensError) as err:
        build()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_has_patch_larger_than_the_image_is_a_one_line_error():
    with pytest.raises(CamlensError, match=r"HaS: patch_size=40 is larger than the 32x32 input"):
        HaS(patch_size=40).check_input((32, 32))
    with pytest.raises(CamlensError, match="larger than the 16x16 input"):
        HaS(patch_size=20).batch(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long), torch.Generator())


class _NoFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((-2, -1)))


def test_methods_that_do_not_fit_the_backbone_say_so_in_one_line():
    import torchvision

    with pytest.raises(CamlensError, match="SPG does not know where to place its side branches on _NoFeatures"):
        SPG().attach(_NoFeatures())
    with pytest.raises(CamlensError, match="ADL: layer4 of ResNet has 2 blocks"):
        ADLMethod().attach(torchvision.models.resnet18(num_classes=2))
    with pytest.raises(CamlensError, match="ACoL needs a network ending in GAP \\+ one linear classifier"):
        ACoL().attach(torchvision.models.squeezenet1_1(num_classes=2))


# ---------------------------------------------------------------- a short training run of every method


@pytest.fixture(scope="module")
def zeros_and_ones():
    """The built-in dataset's zeros and ones at 32 px: 448 training images, the validation split's as held out."""
    from camlens.data.builtin import BuiltinDataset

    def take(split, n):
        t = BuiltinDataset(split, num_images=n, image_size=32).tensors()
        keep = t["labels"] < 2
        return t["images"][keep], t["labels"][keep]

    return take("train", 2240), take("val", 1000)


@pytest.fixture
def one_thread():
    """Small convolutions run as fast on one thread, and two threads spin against each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(WSOL_METHODS))
def test_two_epochs_of_every_method_beat_an_untrained_network(zeros_and_ones, one_thread, name):
    """gapnet, 2 classes, 2 epochs through the method's hooks (attach, batch, loss): held-out accuracy >= 60%
    where the untrained network scores 50%."""
    (xt, yt), (xv, yv) = zeros_and_ones
    pre = Preprocess((32, 32), IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    net = GapNet(2)
    method = get_wsol_method(name)
    method.attach(net)

    def accuracy() -> float:
        with torch.no_grad():
            return float((net.eval()(pre(xv)).argmax(1) == yv).float().mean())

    untrained = accuracy()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for epoch in range(2):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(yt), generator=g)
        net.train()
        for i in range(0, len(yt), 32):
            idx = order[i : i + 32]
            x, targets = method.batch(pre(xt[idx]), yt[idx], g)
            loss, _ = method.loss(net, x, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    trained = accuracy()
    assert untrained <= 0.55 and trained >= 0.60, (untrained, trained)


def test_the_inference_side_knows_every_parameter_of_every_method():
    """wsolnet checks a checkpoint's record without importing training: its list of each method's parameters
    must be the training dataclass's fields."""
    import dataclasses

    from camlens.wsolnet import CHECKPOINT_MODULES, PARAMETERS

    for name, cls in WSOL_METHODS.items():
        fields = tuple(f.name for f in dataclasses.fields(cls) if f.init)
        assert PARAMETERS[name] == fields, name
        assert name in CHECKPOINT_MODULES
