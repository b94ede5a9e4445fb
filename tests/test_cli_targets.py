"""`camlens explain --target ...`: multi-label classifiers, torchvision segmentation and detection models by name,
3-D volumes from .npy files, and one-line errors for what does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _cli_setup import checkpoint_and_images
from camlens.cli import main
from camlens.models import load_model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = checkpoint_and_images(tmp_path_factory.mktemp("targets"), 2)
    rng = np.random.default_rng(0)
    np.save(root / "vol.npy", rng.random((6, 24, 24)).astype(np.float32))
    np.save(root / "flat.npy", rng.integers(0, 255, (24, 30), dtype=np.uint8))
    return root


def _explain(workspace: Path, monkeypatch, capsys, *args: str) -> tuple[int, dict | None, str]:
    monkeypatch.chdir(workspace)
    torch.manual_seed(0)  # random-weight models are built alike by the test and the command
    code = main(["explain", *args, "--quiet", "--restart"])
    err = capsys.readouterr().err
    out = workspace / args[args.index("--out") + 1] / "summary.json"
    return code, json.loads(out.read_text()) if out.exists() else None, err


def _images(loaded, workspace: Path, *names: str) -> torch.Tensor:
    from camlens.data.images import load_image

    return torch.cat([loaded.preprocess(load_image(workspace / "imgs" / n)) for n in names])


def test_multilabel_target_writes_one_overlay_per_positive_label(workspace, monkeypatch, capsys):
    code, summary, err = _explain(
        workspace,
        monkeypatch,
        capsys,
        "imgs",
        "flat.npy",
        "--checkpoint",
        "m.safetensors",
        "--method",
        "gradcam",
        "--target",
        "labels:0.5",
        "--out",
        "ml",
    )
    assert code == 0, err
    loaded = load_model(workspace / "m.safetensors")
    with torch.no_grad():
        probs = loaded.model(_images(loaded, workspace, "im0.png", "im1.png")).sigmoid()
    for record, p in zip(summary["images"], probs):
        labels = [e["label"] for e in record["explained"]]
        assert labels == [loaded.class_names[c] for c in (p >= 0.5).nonzero()[:, 0].tolist()]
        for entry, c in zip(record["explained"], (p >= 0.5).nonzero()[:, 0].tolist()):
            assert abs(entry["score"] - float(p[c])) < 1e-5 and (workspace / "ml" / entry["overlay"]).is_file()
    assert [r["file"] for r in summary["images"]][-1] == "flat.npy"


def test_segmentation_model_by_name_explains_a_class_over_its_predicted_pixels(workspace, monkeypatch, capsys):
    args = [
        "imgs/im0.png",
        "--arch",
        "deeplabv3_mobilenet_v3_large",
        "--weights",
        "none",
        "--size",
        "48",
        "--method",
        "gradcam",
    ]
    torch.manual_seed(0)
    loaded = load_model(arch="deeplabv3_mobilenet_v3_large", weights="none", size=48)
    with torch.no_grad():
        out = loaded.model(_images(loaded, workspace, "im0.png"))["out"][0]
    category = int(out.argmax(0).flatten().mode().values)
    code, summary, err = _explain(
        workspace, monkeypatch, capsys, *args, "--target", f"segment:{category}", "--out", "seg"
    )
    assert code == 0, err
    (entry,) = summary["images"][0]["explained"]
    want = float(out[category][out.argmax(0) == category].sum())
    assert entry["class"] == category and abs(entry["score"] - want) <= 1e-4 * abs(want)
    assert summary["images"][0]["predictions"] == []


def test_detection_model_by_name_explains_the_box_that_matches_the_given_one(workspace, monkeypatch, capsys):
    args = [
        "imgs/im0.png",
        "imgs/im1.png",
        "--arch",
        "fasterrcnn_resnet50_fpn",
        "--weights",
        "none",
        "--size",
        "64",
        "--box-threshold",
        "0",
        "--method",
        "gradcam",
        "--batch-size",
        "1",
    ]
    torch.manual_seed(0)
    loaded = load_model(arch="fasterrcnn_resnet50_fpn", weights="none", size=64)
    loaded.model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        (found,) = loaded.model(_images(loaded, workspace, "im0.png"))
    j = int((found["boxes"][:, 2:] - found["boxes"][:, :2]).prod(1).argmax())
    height, width = 24, 30  # im0.png, fed to the model at 64 x 64
    box = (found["boxes"][j] / torch.tensor([64 / width, 64 / height] * 2)).tolist()
    spec = f"box:{int(found['labels'][j])}:" + ",".join(f"{v:.6f}" for v in box)
    code, summary, err = _explain(workspace, monkeypatch, capsys, *args, "--target", spec, "--out", "det")
    (record,) = [r for r in summary["images"] if r["file"].endswith("im0.png")]
    (entry,) = record["explained"]
    assert abs(entry["score"] - float(found["scores"][j])) < 1e-4 and entry["class"] == int(found["labels"][j])
    # im1.png is 25 px high: the same box fits it; a box beyond 30 px wide fits neither image, one line each
    code, summary, err = _explain(workspace, monkeypatch, capsys, *args, "--target", "box:1:0,0,31,10", "--out", "det2")
    assert code == 1 and summary["images"] == []
    lines = [line for line in err.splitlines() if "outside" in line]
    assert len(lines) == 2 and all("box [0.0, 0.0, 31.0, 10.0]" in line for line in lines)


def test_volume_from_npy_is_explained_by_a_3d_model_and_written_as_npy(workspace, monkeypatch, capsys):
    args = [
        "vol.npy",
        "flat.npy",
        "--arch",
        "r3d_18",
        "--weights",
        "none",
        "--size",
        "24",
        "--method",
        "gradcam",
        "--figure",
        "--out",
        "vol",
    ]
    code, summary, err = _explain(workspace, monkeypatch, capsys, *args)
    assert code == 1
    assert "flat.npy: an array of shape (24, 30) is not a volume" in err
    (record,) = summary["images"]
    (entry,) = record["explained"]
    saved = np.load(workspace / "vol" / entry["overlay"].replace(".png", ".npy"))
    assert saved.shape == (6, 24, 24) and (workspace / "vol" / entry["overlay"]).is_file()
    assert (workspace / "vol" / entry["figure"]).is_file()  # slices and the maximum-intensity projection


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--checkpoint", "m.safetensors", "--method", "gradcam", "--target", "segment:1"],
            "does not fit a classification",
        ),
        (["--checkpoint", "m.safetensors", "--method", "cam", "--target", "logit"], "--target needs a layer method"),
        (["--checkpoint", "m.safetensors", "--method", "gradcam", "--target", "box:1:0,0,5"], "box:C:x0,y0,x1,y1"),
        (
            ["--checkpoint", "m.safetensors", "--method", "gradcam", "--target", "softmax:zebra"],
            "neither a class index",
        ),
        (["--arch", "fcos_resnet50_fpn", "--weights", "none", "--size", "32"], "give --target box:C:x0,y0,x1,y1"),
    ],
)
def test_a_target_that_does_not_fit_is_a_one_line_error(workspace, monkeypatch, capsys, args, message):
    code, _, err = _explain(workspace, monkeypatch, capsys, "imgs/im0.png", *args, "--out", "bad")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _targets_page_commands() -> list[str]:
    """The ```bash block of docs/howto/targets.md (its ```python block runs in tests/test_docs.py)."""
    text = (Path(__file__).parent.parent / "docs" / "howto" / "targets.md").read_text()
    (block,) = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:]]
    return block.strip().splitlines()


def test_targets_page_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save("photo.png")
    np.save("scan.npy", rng.random((4, 32, 32)).astype(np.float32))
    for line in _targets_page_commands():
        argv = line.split()[1:]
        assert main([*argv, "--quiet", "--out", f"out{len(list(tmp_path.iterdir()))}"]) == 0, capsys.readouterr().err
