"""Issue #16, item 5: explainers made and closed in a loop on one model (what a server, a notebook or a script
does) leave nothing behind: no hooks, no reference cycles (freed at once, not at a later full collection), one
Score-CAM inference copy per model, no torch.fx source added after the first.  (torch's own pytree helpers
leave a few small cycles of functions, with no tensors, in calls that batch gradients; those are not counted.)"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.fx import graph_module

import camlens
from camlens.methods import activation
from camlens.models import GapNet

LOOPS = 4
CHEAP = {"sscam": {"num_samples": 2}, "iscam": {"num_samples": 2}}


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", sorted(n for n, cls in camlens.METHODS.items() if not cls.needs_attention))
def test_explainers_made_and_closed_in_a_loop_leave_no_garbage_hooks_or_copies(name):
    model = GapNet(4, width=4).eval()
    x = torch.rand(1, 3, 32, 32)
    cls = camlens.get_method(name)
    layer = "features.6" if cls.fuses_layers else None
    with cls(model, layer=layer, **CHEAP.get(name, {})) as first:  # builds what is kept per model
        first(x)
    fx_sources = len(graph_module._loader.eval_cache)
    gc.collect()
    refs = []
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(LOOPS):
            with cls(model, layer=layer, **CHEAP.get(name, {})) as explainer:
                explainer(x, topk=2)
            refs.append(weakref.ref(explainer))
            del explainer
        alive = sum(ref() is not None for ref in refs)
        gc.collect()
        heavy = [
            type(o).__name__ for o in gc.garbage if isinstance(o, (torch.Tensor, torch.nn.Module, camlens.Explainer))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert alive == 0, f"{alive} of {LOOPS} closed explainers still alive before a garbage collection"
    assert not heavy, f"the loop left tensors, modules or explainers in reference cycles: {heavy[:10]}"
    assert _hooks(model) == 0
    assert len(graph_module._loader.eval_cache) == fx_sources, "torch.fx built again for the same model"
    assert len(activation._copies.get(model, {})) <= 1
