"""`camlens explain` through the real command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.models import GapNet, Preprocess, save_checkpoint


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "camlens", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    save_checkpoint(
        root / "m.safetensors",
        GapNet(3).eval(),
        arch="gapnet",
        class_names=["ant", "bee", "cow"],
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(imgs / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8)).save(imgs / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8)).save(imgs / "rgba.png")
    (imgs / "truncated.jpg").write_bytes((imgs / "rgb.jpg").read_bytes()[:300])
    (imgs / "notes.png").write_text("just text")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(imgs / "huge.png")
    return root


def test_bad_inputs_are_one_line_each_and_the_rest_is_done(workspace):
    proc = _run(
        "explain",
        "imgs",
        "missing.jpg",
        "--checkpoint",
        "m.safetensors",
        "--topk",
        "2",
        "--max-pixels",
        "5000",
        "--out",
        "out",
        "--quiet",
        cwd=workspace,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("camlens:")]
    for name, reason in [
        ("truncated.jpg", "corrupt or truncated"),
        ("notes.png", "not an image"),
        ("huge.png", "over the limit"),
        ("missing.jpg", "no such file"),
    ]:
        assert any(name in line and reason in line for line in errors), (name, proc.stderr)
    assert "Traceback" not in proc.stderr
    summary = json.loads((workspace / "out" / "summary.json").read_text())
    done = {r["file"].split("/")[-1]: r for r in summary["images"]}
    assert set(done) == {"rgb.jpg", "gray.png", "rgba.png"}
    assert len(summary["errors"]) == 4
    rec = done["rgb.jpg"]
    assert [e["label"] for e in rec["explained"]] == [p["label"] for p in rec["predictions"][:2]]
    overlay = Image.open(workspace / "out" / rec["explained"][0]["overlay"])
    assert overlay.size == (60, 40)  # at the original image size
    csv_rows = (workspace / "out" / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 3 * 2


def test_explained_class_and_scores_match_the_library(workspace):
    from camlens.data.images import load_image
    from camlens.models import load_model

    proc = _run(
        "explain",
        "imgs/rgb.jpg",
        "--checkpoint",
        "m.safetensors",
        "--class",
        "2",
        "--figure",
        "--format",
        "jpg",
        "--out",
        "one",
        "--quiet",
        cwd=workspace,
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((workspace / "one" / "summary.json").read_text())["images"][0]
    loaded = load_model(workspace / "m.safetensors")
    with torch.no_grad():
        probs = loaded.model(loaded.preprocess(load_image(workspace / "imgs" / "rgb.jpg"))).softmax(-1)[0]
    assert rec["explained"][0]["class"] == 2 and rec["explained"][0]["label"] == "cow"
    assert rec["explained"][0]["score"] == pytest.approx(float(probs[2]), abs=1e-5)
    assert (workspace / "one" / rec["explained"][0]["figure"]).exists()
    assert Image.open(workspace / "one" / rec["explained"][0]["overlay"]).format == "JPEG"


def test_usage_errors_are_one_line_without_traceback(workspace):
    proc = _run("explain", "imgs/rgb.jpg", "--out", "x", cwd=workspace)
    assert proc.returncode == 2 and "give --checkpoint FILE or --arch NAME" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run(
        "explain", "imgs/rgb.jpg", "--arch", "vgg11", "--weights", "none", "--out", "x", "--quiet", cwd=workspace
    )
    assert proc.returncode == 2 and "GradCAM" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("--debug", "explain", "imgs/rgb.jpg", "--arch", "nope", "--out", "x", cwd=workspace)
    assert "Traceback" in proc.stderr


def test_fused_layers_are_the_fusion_rule_of_the_single_layer_maps(workspace):
    import camlens
    from camlens.cli import make_explainer
    from camlens.models import load_model

    loaded = load_model(workspace / "m.safetensors")
    x = torch.rand(2, 3, 32, 32)
    singles = []
    for layer in ("features.2", "features.6"):
        with make_explainer(loaded, "gradcam", [layer]) as one:
            singles.append(one(x, [0, 2]).maps)
    for rule in ("max", "mean"):
        with make_explainer(loaded, "grad-cam", ["features.2", "features.6"], rule) as both:
            torch.testing.assert_close(both(x, [0, 2]).maps, camlens.fuse(singles, rule))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'; choose from"),
        (["--method", "cam", "--layer", "features.2", "--layer", "features.6"], "fusing 2 layers needs"),
    ],
)
def test_bad_method_options_are_one_line_errors(workspace, args, message):
    proc = _run("explain", "imgs/rgb.jpg", "--checkpoint", "m.safetensors", *args, "--out", "o", cwd=workspace)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
