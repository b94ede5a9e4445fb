"""The bfloat16 capability check: Score-CAM's approximate mode falls back to exact on CPUs without bfloat16 units,
with a one-line warning, and runs bfloat16 where they exist (the check stubbed both ways); and the allocator
setting that lets repeated passes reuse freed memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch

from _method_refs import TinyNet
from camlens import ScoreCAM, hardware, normalize
from camlens.methods import activation


def _stub_flags(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))


def _maps(approximate: bool, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    model = TinyNet(classes=4, channels=8).eval()
    with ScoreCAM(model, layer="features", approximate=approximate) as explainer:
        return explainer(x, classes=[1, 3]).maps


def test_bfloat16_on_a_cpu_without_units_runs_the_exact_mode_with_one_warning(monkeypatch):
    _stub_flags(monkeypatch, {"avx2", "avx512f"})
    asked = []
    real_pass_model = activation.pass_model
    monkeypatch.setattr(
        activation,
        "pass_model",
        lambda m, x, out, approx=False: asked.append(approx) or real_pass_model(m, x, out, approx),
    )
    x = torch.rand(2, 3, 10, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _maps(True, x)
    lines = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(lines) == 1 and "lacks" in lines[0] and "exact float32 mode" in lines[0] and "\n" not in lines[0]
    assert asked == [False]  # the masked passes went through the exact copy, not a bfloat16 one
    assert torch.equal(got, _maps(False, x))


def test_bfloat16_runs_where_the_cpu_has_units(monkeypatch):
    _stub_flags(monkeypatch, {"avx512_bf16"})
    x = torch.rand(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        got = _maps(True, x)
    want = _maps(False, x)
    err = (normalize(got) - normalize(want)).abs().max().item()
    assert 0 < err <= 5e-3, f"the bfloat16 passes should differ from exact by rounding only, got {err:.3g}"


@pytest.mark.parametrize("flags, bf16", [({"amx_bf16"}, True), ({"bf16"}, True), ({"avx512_fp16", "avx2"}, False)])
def test_which_flags_count_as_bfloat16_units(monkeypatch, flags, bf16):
    _stub_flags(monkeypatch, flags)
    assert hardware.cpu_has_bf16() is bf16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert hardware.usable_approximation(True, torch.device("cpu")) is (True if bf16 else False)
    # other devices and modes are left as asked: GPUs have their own units, float16 is a GPU mode
    assert hardware.usable_approximation(True, torch.device("cuda")) is True
    assert hardware.usable_approximation(torch.float16, torch.device("cpu")) is torch.float16
    assert hardware.usable_approximation(False, torch.device("cpu")) is False


def test_the_description_says_which_relevant_units_the_cpu_has_and_lacks(monkeypatch):
    _stub_flags(monkeypatch, {"avx2", "avx512f"})
    assert hardware.cpu_description().endswith(" threads; avx2 avx512f")
    _stub_flags(monkeypatch, {"avx2"})
    assert hardware.cpu_description().endswith(" threads; avx2 (no AVX-512)")
    _stub_flags(monkeypatch, set())
    assert hardware.cpu_description().endswith(" threads; no AVX2/AVX-512/AMX (no AVX-512)")


def test_the_real_flags_agree_with_torch_on_avx512_bf16():
    assert ("avx512_bf16" in hardware.cpu_flags()) is torch.cpu._is_avx512_bf16_supported()


_PASSES = """
import json, resource, sys, torch
from camlens.hardware import retain_freed_memory
kept = retain_freed_memory() if sys.argv[1] == "retain" else None
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU()).eval()
x = torch.rand(8, 3, 224, 224)  # a 51 MiB activation: above glibc's largest mmap threshold
with torch.no_grad():
    net(x); net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        net(x)
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _passes(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", _PASSES, mode],
        capture_output=True,
        text=True,
        env={**clean, "OMP_NUM_THREADS": "1", **env},
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_retained_memory_lets_repeated_passes_run_without_page_faults():
    """Four passes of a conv layer at 224 px fault in their 51 MiB activations every time under glibc's defaults
    (13,000 faults per activation at 4 KiB pages; 150,000 measured over the four passes) and not at all once freed
    memory is retained (0 measured)."""
    default = _passes("default")
    retained = _passes("retain")
    assert retained["kept"] is True
    # (with transparent huge pages backing the mapped blocks the default count can be far lower than here)
    assert retained["faults"] < min(200, default["faults"]), (default, retained)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_a_users_own_malloc_settings_are_left_alone():
    assert _passes("retain", MALLOC_TRIM_THRESHOLD_="131072")["kept"] is False
