"""Cancellation between passes (issue #16): under ``stop_when``, the perturbation methods check before every
masked or ablated pass, stop at the first check that says so, raising ``Cancelled``, and give the same maps as
without a check when it never does."""

from __future__ import annotations

import pytest
import torch

import camlens
from camlens import Cancelled, stop_when
from camlens.models import GapNet

EXPENSIVE = sorted(name for name, cls in camlens.METHODS.items() if cls.expensive)


def test_the_expensive_methods_are_the_perturbation_methods():
    assert EXPENSIVE == ["ablationcam", "iscam", "scorecam", "sscam"]


@pytest.mark.parametrize("name", EXPENSIVE)
def test_a_method_checks_before_every_pass_and_stops_at_the_first_check_that_says_so(name):
    model = GapNet(4, width=4).eval()
    x = torch.rand(1, 3, 32, 32)
    cls = camlens.get_method(name)
    options: dict = {"batch_size": 2}
    options |= {"optimize": False} if name != "ablationcam" else {}  # passes through the model, so a hook counts them
    options |= {"num_samples": 2} if name in ("sscam", "iscam") else {}
    generator = torch.Generator()
    options |= {"generator": generator} if cls.draws_noise else {}
    passes, checks = [], []
    handle = model.register_forward_hook(lambda *_: passes.append(1))
    with cls(model, layer="features.6", **options) as explainer:
        generator.manual_seed(0)
        plain = explainer(x)
        full = len(passes)
        passes.clear()
        generator.manual_seed(0)
        with stop_when(lambda: bool(checks.append(1))):  # counts, never stops
            again = explainer(x)
        assert len(passes) == full == 1 + len(checks), "one check before each pass after the first forward"
        let_through = len(checks) // 2
        passes.clear()
        checks.clear()
        with stop_when(lambda: len(checks.append(1) or checks) > let_through), pytest.raises(Cancelled):
            explainer(x)
        assert len(passes) == 1 + let_through
    handle.remove()
    torch.testing.assert_close(again.maps, plain.maps, rtol=0, atol=0)
