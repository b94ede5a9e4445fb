"""BagCAMs (Zhu et al., ECCV 2022) against float64 references written from the paper and the authors' code."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.capture import CamlensError
from camlens.models import GapNet


def reference_bagcams(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """M(x) = sum_k ReLU((1 + mean_m g_k(m) f_k(m)) g_k(x) f_k(x)) for one map: f, g (K, h, w)."""
    local = g * f
    return F.relu((1 + local.mean((1, 2), keepdim=True)) * local).sum(0)


def test_bagcams_at_the_feature_layer_is_the_formula_on_log_logit_gradients():
    torch.manual_seed(0)
    model = GapNet(4).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with camlens.BagCAMs(model) as bag:
        res = bag(x, topk=2)
    layer = dict(model.named_modules())[res.layer]
    feats = {}
    handle = layer.register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
    logits = model(x)
    handle.remove()
    f = feats["f"]
    for b in range(3):
        for slot in range(2):
            c = int(res.classes[b, slot])
            if logits[b, c] <= 0:
                assert not res.maps[b, slot].any()
                continue
            (g,) = torch.autograd.grad(torch.log(logits[b, c]), f, retain_graph=True)
            torch.testing.assert_close(res.maps[b, slot], reference_bagcams(f[b], g[b]), rtol=1e-9, atol=1e-12)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean((2, 3)))


def test_bagcams_rectifies_gradients_at_relu_modules_after_an_intermediate_layer():
    """The authors' backward hook returns ReLU(grad_in) at every nn.ReLU: the gradient reaching conv1's output
    is computed here step by step, rectified before each ReLU's own backward."""
    torch.manual_seed(1)
    model = Small().double().eval()
    with torch.no_grad():
        model.fc.bias.fill_(3.0)  # positive logits: log defined
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with camlens.BagCAMs(model, layer="conv1") as bag:
        res = bag(x, classes=[0, 2])
    z1 = model.conv1(x).detach().requires_grad_()
    r1 = F.relu(z1).detach().requires_grad_()
    z2 = model.conv2(r1)
    r2 = F.relu(z2).detach().requires_grad_()
    logits = model.fc(r2.mean((2, 3)))
    plain = []
    for b, c in enumerate([0, 2]):
        (g_r2,) = torch.autograd.grad(torch.log(logits[b, c]), r2, retain_graph=True)
        g_z2 = F.relu(g_r2) * (z2 > 0)
        (g_r1,) = torch.autograd.grad(z2, r1, g_z2, retain_graph=True)
        g_z1 = F.relu(g_r1) * (z1 > 0)
        torch.testing.assert_close(res.maps[b, 0], reference_bagcams(z1[b].detach(), g_z1[b]), rtol=1e-9, atol=1e-12)
        full = model.fc(F.relu(model.conv2(F.relu(z1))).mean((2, 3)))
        (g_plain,) = torch.autograd.grad(torch.log(full[b, c]), z1)
        plain.append(reference_bagcams(z1[b].detach(), g_plain[b]))
    assert not torch.allclose(res.maps[:, 0], torch.stack(plain))  # the rectification changes the map
    assert not any(m._forward_hooks for m in model.modules())  # nothing left on the model


def test_bagcams_leaves_the_logits_unchanged_and_zeroes_maps_of_non_positive_scores():
    torch.manual_seed(2)
    model = Small().double().eval()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([5.0, -50.0, 5.0], dtype=torch.float64))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with camlens.BagCAMs(model) as bag:
        res = bag(x, classes=[1, 0])
    assert torch.equal(res.logits, model(x))
    assert not res.maps[0].any() and res.maps[1].any()


def test_bagcams_on_a_network_without_a_gap_head_is_one_line():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)
    ).eval()
    with camlens.BagCAMs(model) as bag, pytest.raises(CamlensError, match="GAP classifier") as err:
        bag(torch.randn(1, 3, 8, 8))
    assert "\n" not in str(err.value)
    assert camlens.get_method("BagCAMs") is camlens.BagCAMs
