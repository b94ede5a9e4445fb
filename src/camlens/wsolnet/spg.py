"""The modules SPG (Zhang et al., ECCV 2018) adds to a network: its side branches, which a checkpoint holds."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..capture import GapHead
from ..errors import CamlensError
from .placement import probe, require_linear_head, spg_branch_points

BRANCHES = ("spg_b1", "spg_b2", "spg_shared", "spg_c")


def has_reference_branches(model: nn.Module) -> bool:
    """Whether ``model`` is one of Choe et al.'s SPG networks (:class:`camlens.networks.wsolref.SPGNet`, whose
    ``SPG_B_*`` and ``SPG_C`` branches are its own), told by its modules."""
    return isinstance(getattr(model, "SPG_B_shared", None), nn.Module) and callable(getattr(model, "spg_outputs", None))


def _conv_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


def attach_recorded_branches(model: nn.Module, branches: Sequence[str] | None) -> None:
    """What an SPG checkpoint needs before its weights load: nothing on Choe et al.'s SPG networks (their branches
    are theirs; they keep their side outputs for the loss), :func:`add_branches` on any other network."""
    if has_reference_branches(model):
        setattr(model, "keep_outputs", True)
    else:
        add_branches(model, branches)


def add_branches(model: nn.Module, branches: Sequence[str] | None) -> tuple[GapHead, str, str]:
    """Add SPG's side branches (:data:`BRANCHES`) to ``model`` in place: B1 and B2 read the layers ``branches``
    (or :func:`~camlens.wsolnet.placement.spg_branch_points`), each through its own 3x3 conv + ReLU and then a
    shared 3x3 conv + ReLU + 1x1 conv to one channel; C reads the CAM feature map through a 3x3 conv + ReLU + 1x1
    conv.  Branch widths follow Choe et al. (the B channels equal those of the B2 input, C's hidden width
    min(512, K)).  Returns the network's GAP head and the names of the B1 and B2 layers."""
    head = probe(model).head
    require_linear_head("SPG", head)
    b1, b2 = branches if branches is not None else spg_branch_points(model, head)
    shapes = probe(model, [b1, b2]).shapes
    for name in (b1, b2):
        if name not in shapes:
            raise CamlensError(
                f"SPG: layer {name!r} does not run as a module in the forward pass (a traced "
                "backbone runs only its leaf layers); give branches=(LAYER1, LAYER2)"
            )
        if len(shapes[name]) != 4:
            raise CamlensError(f"SPG: layer {name!r} gives no (B, C, h, w) feature map; give other branches=")
    c1, c2, k = shapes[b1][1], shapes[b2][1], head.weight.shape[1]
    hidden = min(512, k)
    ref = next(model.parameters())
    modules = {
        "spg_b1": nn.Sequential(*_conv_relu(c1, c2)),
        "spg_b2": nn.Sequential(*_conv_relu(c2, c2)),
        "spg_shared": nn.Sequential(*_conv_relu(c2, c2), nn.Conv2d(c2, 1, 1)),
        "spg_c": nn.Sequential(*_conv_relu(k, hidden), nn.Conv2d(hidden, 1, 1)),
    }
    for name, module in modules.items():
        model.add_module(name, module.to(ref.device))
    return head, b1, b2
