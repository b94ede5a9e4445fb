"""Wrapped and frozen models: DataParallel and DistributedDataParallel are looked through (layer names inside
them, the whole batch explained by the inner module), frozen models work with every gradient method, and a call
leaves nothing on the model (hooks, gradients, requires_grad flags, training mode)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import camlens
from _method_refs import TinyNet
from camlens.capture import resolve_module

CHEAP = {
    "sscam": {"num_samples": 2, "optimize": False},
    "iscam": {"num_samples": 2, "optimize": False},
    "scorecam": {"optimize": False},
}  # the optimized copy is tested elsewhere; here it only costs time
# the attention methods read a transformer's attention: tests/test_attention_methods.py holds them to the same rules
CNN_METHODS = [name for name, cls in camlens.METHODS.items() if not cls.needs_attention]
GRADIENT_METHODS = [name for name in CNN_METHODS if camlens.METHODS[name].needs_gradients]


def _make(name, model, **kw):
    seeded = {"generator": torch.Generator().manual_seed(0)} if name == "sscam" else {}
    return camlens.get_method(name)(model, **{**CHEAP.get(name, {}), **seeded, **kw})


def _state(model: nn.Module) -> tuple:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    return (
        hooks,
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


@pytest.mark.parametrize("name", CNN_METHODS)
def test_data_parallel_is_explained_like_the_module_inside(name):
    model = TinyNet().eval()
    x = torch.randn(4, 3, 8, 8)
    wrapped = nn.DataParallel(model)
    want = _make(name, model)(x, topk=2)
    for layer in (None, "module.features"):
        with _make(name, wrapped, **({} if layer is None else {"layer": layer})) as explainer:
            got = explainer(x, topk=2)
        assert got.maps.shape[0] == 4 and torch.equal(got.classes, want.classes)
        assert torch.allclose(got.maps, want.maps, atol=1e-6), layer
        assert got.layer == want.layer == "features"


def test_layer_names_and_modules_resolve_through_wrappers():
    model = TinyNet()
    wrapped = nn.DataParallel(nn.DataParallel(model))
    assert camlens.layer_names(wrapped) == camlens.layer_names(model)
    assert resolve_module(wrapped, "module.module.features.0") == ("features.0", model.features[0])
    assert resolve_module(wrapped, model.features[2]) == ("features.2", model.features[2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_data_parallel_with_one_gloo_process_is_explained_like_the_module_inside():
    model = TinyNet().eval()
    x = torch.randn(3, 3, 8, 8)
    want = {name: _make(name, model, layer="features")(x) for name in ("gradcam", "scorecam", "cam")}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        for name, expected in want.items():
            with _make(name, wrapped, layer="module.features") as explainer:
                got = explainer(x)
            assert torch.allclose(got.maps, expected.maps, atol=1e-6), name
        assert all(p.grad is None for p in model.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_frozen_model_gives_the_maps_of_the_trainable_one_and_stays_frozen(name):
    model = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    want = _make(name, model)(x, topk=2).maps
    for p in model.parameters():
        p.requires_grad_(False)
    before = _state(model)
    with _make(name, model) as explainer:
        got = explainer(x, topk=2).maps
        with torch.no_grad():  # and inside the caller's no_grad block
            inside = explainer(x, topk=2).maps
    assert torch.equal(got, want) and torch.equal(inside, want)
    assert _state(model) == before


@pytest.mark.parametrize("name", CNN_METHODS)
def test_a_call_leaves_nothing_on_the_model(name):
    model = TinyNet().eval()
    model.fc.weight.requires_grad_(False)  # a partly frozen model keeps exactly its flags
    before = _state(model)
    with _make(name, model) as explainer:
        explainer(torch.randn(2, 3, 8, 8), topk=2)
    assert _state(model) == before
