"""The attention methods through the command line and `serve`: offered on transformers, refused with a one-line
reason elsewhere."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from fastapi.testclient import TestClient
from PIL import Image

from camlens import CamlensError
from camlens.methods import applicable_methods
from camlens.models import GapNet, LoadedModel, Preprocess
from camlens.web import create_app

ATTENTION = ["gae", "legrad", "rollout"]


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "camlens", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _png(h=40, w=56):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=4,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=24,
        num_heads=3,
    ).eval()
    return LoadedModel(model, list("abcd"), Preprocess((32, 32)), "timm:tiny-vit")


def _cnn():
    torch.manual_seed(0)
    return LoadedModel(GapNet(4, width=8).eval(), list("abcd"), Preprocess((32, 32)), "gapnet")


def test_cli_explains_a_timm_vit_by_name(tmp_path):
    # one method through the real command line (a process start is seconds); serve below runs all three
    (tmp_path / "a.png").write_bytes(_png())
    proc = _run(
        "explain",
        "a.png",
        "--arch",
        "timm:vit_tiny_patch16_224",
        "--weights",
        "none",
        "--method",
        "gae",
        "--topk",
        "2",
        "--out",
        "out",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    explained = json.loads((tmp_path / "out" / "summary.json").read_text())["images"][0]["explained"]
    assert len(explained) == 2 and Image.open(tmp_path / "out" / explained[0]["overlay"]).size == (56, 40)


def test_cli_refuses_rollout_on_a_cnn_in_one_line(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    proc = _run(
        "explain", "a.png", "--arch", "resnet18", "--weights", "none", "--method", "rollout", "--out", "o", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'rollout' needs a vision transformer" in lines[0] and "ResNet" in lines[0]


def test_serve_offers_attention_methods_on_a_vit_and_explains():
    loaded = _vit()
    assert set(ATTENTION) <= set(applicable_methods(loaded.model))
    with TestClient(create_app(loaded, workers=1)) as client:
        offered = [m["name"] for m in client.get("/api/info").json()["methods"]]
        assert set(ATTENTION) <= set(offered)
        for method in ATTENTION:
            res = client.post(f"/api/explain?method={method}&topk=2", files={"file": ("x", _png())})
            assert res.status_code == 200, res.text
            assert res.json()["method"] == method and len(res.json()["explained"]) == 2


def test_serve_refuses_attention_methods_on_a_cnn_with_the_reason():
    loaded = _cnn()
    with TestClient(create_app(loaded, workers=1)) as client:
        offered = [m["name"] for m in client.get("/api/info").json()["methods"]]
        assert not set(ATTENTION) & set(offered) and "gradcam" in offered
        res = client.post("/api/explain?method=legrad", files={"file": ("x", _png())})
        assert res.status_code == 400
        assert res.json()["error"] == (
            "method 'legrad' needs a vision transformer's self-attention; GapNet has none "
            "(a CNN?): use a layer method (gradcam, eigencam, cam) on it"
        )
    with pytest.raises(CamlensError, match="'rollout' needs a vision transformer"):
        create_app(loaded, methods=["gradcam", "rollout"])
