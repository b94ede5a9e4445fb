"""The GPU paths: every method on CUDA gives its CPU maps, CAM's identity holds there, a call keeps no graph or
memory behind, the opt-in bfloat16 Score-CAM stays within its stated error, and the CLI's evaluate (pinned-memory
loading, and torchrun with nccl) gives the CPU metrics.  Skipped where no CUDA device is present, as in CI; run
them on a GPU machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import camlens
from _cli_setup import checkpoint_and_images, free_port
from camlens import CAM, ScoreCAM
from camlens.data.samples import Sample
from camlens.methods.activation import pass_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU = torch.device("cuda")
METHODS = [
    "cam",
    "gradcam",
    "gradcampp",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
    "sscam",
    "iscam",
    "ablationcam",
    "eigencam",
]


@pytest.fixture(autouse=True)
def _float32_without_tf32():
    """GPU float32 against CPU float32: no TF32 rounding (PyTorch's default for cuDNN convolutions)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _resnet() -> torch.nn.Module:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=7).eval()
    torch.nn.init.uniform_(model.fc.bias, -1, 1)
    return model


def _options(name: str) -> dict:
    if name == "sscam":  # a CPU generator, so both devices draw the same noise
        return {"num_samples": 3, "generator": torch.Generator().manual_seed(0)}
    if name == "iscam":
        return {"num_samples": 3}
    return {}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_on_gpu_gives_the_cpu_maps(name):
    model, x = _resnet(), torch.randn(2, 3, 64, 64)
    layer = {} if name == "cam" else {"layer": "layer4"}
    with camlens.get_method(name)(model, **layer, **_options(name)) as explainer:
        on_cpu = explainer(x, topk=2)
    gpu_model = _resnet().to(GPU)
    with camlens.get_method(name)(gpu_model, **layer, **_options(name)) as explainer:
        on_gpu = explainer(x.to(GPU), topk=2)
    assert on_gpu.maps.device.type == "cuda" and torch.equal(on_gpu.classes.cpu(), on_cpu.classes)
    scale = on_cpu.maps.abs().amax().clamp_min(1e-12)
    diff = ((on_gpu.maps.cpu() - on_cpu.maps).abs().amax() / scale).item()
    assert diff < 1e-3, f"{name}: GPU maps differ from the CPU maps by {diff:.2e} of their largest value"


def test_cam_mean_plus_bias_equals_logit_on_gpu():
    model = _resnet().to(GPU)
    res = CAM(model)(torch.randn(3, 3, 64, 64, device=GPU), topk=3)
    explained = res.logits.gather(1, res.classes)
    torch.testing.assert_close(res.maps.mean((-2, -1)) + res.bias, explained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gradcam", "layercam", "scorecam", "ablationcam"])
def test_a_gpu_call_leaves_no_memory_graph_or_parameter_gradients_behind(name):
    model, x = _resnet().to(GPU), torch.randn(2, 3, 64, 64, device=GPU)
    with camlens.get_method(name)(model, layer="layer4") as explainer:
        explainer(x)  # warm-up: layer location, Score-CAM's pass copy
        gc.collect()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        res = explainer(x)
        del res
        gc.collect()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == before
    assert all(p.grad is None for p in model.parameters())


def test_score_cam_gpu_pass_copy_folds_batch_norms_and_reproduces_the_model():
    model, x = _resnet().to(GPU), torch.randn(2, 3, 64, 64, device=GPU)
    with torch.no_grad():
        output = model(x)
        fast = pass_model(model, x, output)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
        torch.testing.assert_close(fast(x), output, atol=1e-5, rtol=1e-5)
        torch.backends.cudnn.allow_tf32 = True  # rebuilt channels-last for TF32 kernels; the fixture resets it
        tf32 = pass_model(model, x, output)
        assert tf32 is not fast and tf32 is not model
        torch.testing.assert_close(tf32(x), output, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 5e-3), (torch.float16, 1e-4)])
def test_approximate_score_cam_on_gpu_stays_within_its_stated_error(dtype, bound):
    model, x = _resnet().to(GPU), torch.randn(2, 3, 224, 224, device=GPU)
    with ScoreCAM(model, layer="layer4") as exact, ScoreCAM(model, layer="layer4", approximate=dtype) as approx:
        want = exact(x)
        got = approx(x, classes=want.classes)
    diff = (camlens.normalize(got.maps) - camlens.normalize(want.maps)).abs().max().item()
    assert 0 < diff <= bound, f"{dtype} Score-CAM differs by {diff:.2e} (bound {bound}; 0: it did not run {dtype})"


def test_pinned_sample_keeps_its_values():
    sample = Sample("a", torch.randn(3, 8, 8), 1, torch.zeros(0, 4), None, None)
    pinned = sample.pin_memory()
    assert pinned.image.is_pinned() and torch.equal(pinned.image, sample.image)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_and_images(tmp_path_factory.mktemp("gpu"), 5)


EVALUATE = [
    "evaluate",
    "--checkpoint",
    "m.safetensors",
    "--num-images",
    "11",
    "--batch-size",
    "3",
    "--faithfulness",
    "--steps",
    "4",
    "--pointing-tolerance",
    "4",
    "--quiet",
]
STRICT_FP32 = """\
import runpy, sys, torch
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
runpy.run_module("camlens", run_name="__main__", alter_sys=True)
"""


def _camlens(*args, cwd, torchrun=False):
    """``python -m camlens ARGS`` (under torchrun with one process), float32 without TF32 as in these tests."""
    (cwd / "strict_fp32.py").write_text(STRICT_FP32)
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=1",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
        ]
        if torchrun
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*launcher, "strict_fp32.py", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _close(a, b, path=""):
    """Equal JSON values, floats to 1e-4 (GPU and CPU kernels round differently)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a} != {b}"


def test_evaluate_on_gpu_and_under_torchrun_with_nccl_gives_the_cpu_metrics(checkpoint):
    _camlens(*EVALUATE, "--json", "cpu.json", cwd=checkpoint)
    _camlens(*EVALUATE, "--device", "cuda", "--json", "gpu.json", cwd=checkpoint)
    _camlens(*EVALUATE, "--device", "cuda", "--json", "nccl.json", cwd=checkpoint, torchrun=True)
    cpu, gpu, nccl = (json.loads((checkpoint / f"{n}.json").read_text()) for n in ("cpu", "gpu", "nccl"))
    assert nccl == gpu  # one rank over nccl: the same batches as the single process
    gpu.pop("device", None), cpu.pop("device", None)
    _close(gpu, cpu)


def test_explain_on_gpu_gives_the_cpu_classes_and_boxes(checkpoint):
    args = ["explain", "imgs", "--checkpoint", "m.safetensors", "--topk", "2", "--quiet"]
    _camlens(*args, "--out", "cpu", cwd=checkpoint)
    _camlens(*args, "--device", "cuda", "--out", "gpu", cwd=checkpoint)
    cpu, gpu = (json.loads((checkpoint / n / "summary.json").read_text()) for n in ("cpu", "gpu"))
    gpu.pop("device", None), cpu.pop("device", None)
    _close(gpu, cpu)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("mode", ["autocast", "half_model"])
def test_float16_maps_on_gpu_are_float32_and_within_the_stated_bound(name, mode):
    """As tests/test_mixed_precision.py on CPU with bfloat16: float16 (11 significant bits) under autocast and on a
    float16 model, held to the bfloat16 bounds (a looser bound than float16 needs)."""
    from test_mixed_precision import bound, options, relative_error, small_net

    model, x = small_net().to(GPU), torch.randn(2, 3, 16, 16, device=GPU)
    with camlens.get_method(name)(model, **options(name)) as explainer:
        want = explainer(x, topk=2)
    if mode == "autocast":
        with camlens.get_method(name)(model, **options(name)) as explainer, torch.autocast("cuda", dtype=torch.float16):
            got = explainer(x, classes=want.classes)
    else:
        half = small_net().to(GPU)
        half.load_state_dict(model.state_dict())
        with camlens.get_method(name)(half.half(), **options(name)) as explainer:
            got = explainer(x.half(), classes=want.classes)
    assert got.maps.dtype == torch.float32
    err = relative_error(got, want)
    assert err <= bound(name), f"{name} {mode}: float16 maps differ by {err:.2e} of the map (bound {bound(name)})"
