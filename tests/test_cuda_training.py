"""Training on a GPU, the half of benchmarks/gpu.sh that checks the loop (skipped where there is no CUDA device, as
in CI): on CUDA the loop follows the CPU run step for step, resumes bit for bit, learns under bfloat16 autocast in
channels-last, and the CLI's checkpoint trained and evaluated on the GPU gives the GPU's logits on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_setup import TinyCam
from camlens.models import GapNet, load_model
from camlens.training import TrainConfig, load_data, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU = "cuda"


@pytest.fixture(autouse=True)
def exact_kernels():
    """float32 without TF32 and deterministic cuDNN kernels, so that a GPU run is comparable and repeatable;
    restored after the test."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")
    flags += (torch.backends.cudnn, "deterministic"), (torch.backends.cudnn, "benchmark")
    saved = [getattr(owner, name) for owner, name in flags]
    for (owner, name), value in zip(flags, (False, False, True, False)):
        setattr(owner, name, value)
    yield
    for (owner, name), value in zip(flags, saved):
        setattr(owner, name, value)


@pytest.fixture(scope="module")
def data():
    return load_data("builtin", image_size=16, num_train=96, num_val=32)


class _Stop(Exception):
    pass


def run(out: Path, device: str, data, log=None, **settings):
    """Two epochs of a small BatchNorm CAM network from the same initialization (SGD: updates proportional to the
    gradients, so float rounding stays at its own scale; Adam's normalized steps would amplify it)."""
    torch.manual_seed(0)
    config = TrainConfig(
        out=str(out), epochs=2, batch_size=16, optimizer="sgd", lr=0.05, device=device, progress=False, **settings
    )
    return train(config, model=TinyCam(batchnorm=True), prepared=data, log=log)


def test_a_gpu_run_follows_the_cpu_run(tmp_path, data):
    cpu = run(tmp_path / "cpu", "cpu", data, channels_last=False)
    gpu = run(tmp_path / "gpu", GPU, data, channels_last=False)
    for a, b in zip(cpu.history, gpu.history):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4), (a, b)
        assert b.val_acc == pytest.approx(a.val_acc, abs=1 / 32), (a, b)  # at most one image flips
    want = load_file(str(tmp_path / "cpu" / "last.safetensors"))
    got = load_file(str(tmp_path / "gpu" / "last.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(got[key].float(), want[key].float(), rtol=1e-3, atol=1e-4), key


def test_an_interrupted_gpu_run_resumes_to_the_same_weights(tmp_path, data):
    run(tmp_path / "a", GPU, data)

    def stop_after_first(line: str) -> None:
        if line.startswith("epoch 1/2"):
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "b", GPU, data, log=stop_after_first)
    assert json.loads((tmp_path / "b" / "train_state.json").read_text())["epoch"] == 1
    resumed = run(tmp_path / "b", GPU, data, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2]
    a, b = load_file(str(tmp_path / "a" / "last.safetensors")), load_file(str(tmp_path / "b" / "last.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bfloat16_autocast_in_channels_last_learns_as_float32_does(tmp_path):
    """gapnet, the same 4 epochs on 3000 images of 32 px in float32 and with --amp --channels-last: the bfloat16
    run's validation accuracy is within 10 points of the float32 run's (one seed each), and both learn (chance:
    10%; the CPU run of this recipe reaches about 80%)."""
    data = load_data("builtin", image_size=32, num_train=3000, num_val=200)

    def accuracy(out: Path, **settings) -> float:
        torch.manual_seed(0)
        config = TrainConfig(out=str(out), epochs=4, batch_size=64, device=GPU, progress=False, **settings)
        return train(config, model=GapNet(10), prepared=data, log=None).best_val_acc

    exact = accuracy(tmp_path / "fp32", channels_last=False)
    mixed = accuracy(tmp_path / "amp", amp=True, channels_last=True)
    assert exact > 0.5 and mixed > 0.5, (exact, mixed)
    assert abs(mixed - exact) <= 0.10, (exact, mixed)


def camlens(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "camlens", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"camlens {' '.join(args)}: {done.stderr[-2000:]}"


def test_the_cli_trains_and_evaluates_on_the_gpu_and_its_checkpoint_runs_on_the_cpu(tmp_path):
    """`camlens train --device cuda --amp --channels-last` then `camlens evaluate --device cuda`: the metrics equal
    the same evaluation on the CPU (two flipped images at most), and the checkpoint's logits on the CPU equal the
    GPU's."""
    run_dir = tmp_path / "run"
    camlens(
        "train",
        "--data",
        "builtin",
        "--size",
        "32",
        "--num-train",
        "600",
        "--num-val",
        "100",
        "--epochs",
        "2",
        "--device",
        GPU,
        "--amp",
        "--channels-last",
        "--quiet",
        "--out",
        str(run_dir),
    )
    checkpoint = run_dir / "best.safetensors"
    metrics = {}
    for run_number, device in enumerate((GPU, "cpu")):
        path = tmp_path / f"metrics-{run_number}.json"
        camlens(
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            "builtin",
            "--num-images",
            "200",
            "--device",
            device,
            "--quiet",
            "--json",
            str(path),
        )
        metrics[device] = json.loads(path.read_text())
    for key in ("top1_cls", "gt_known_loc", "maxboxacc_v2", "pxap"):
        assert metrics[GPU][key] == pytest.approx(metrics["cpu"][key], abs=1.0), key  # 1 of 200 images is 0.5 points
    x = torch.randn(8, 3, 32, 32)
    on_cpu, on_gpu = load_model(checkpoint=checkpoint), load_model(checkpoint=checkpoint, device=GPU)
    with torch.no_grad():
        assert torch.allclose(on_gpu.model(x.to(GPU)).cpu(), on_cpu.model(x), rtol=1e-4, atol=1e-4)
