"""One request model for `camlens explain` and `POST /api/explain` (camlens/request.py): the same bad field is the
same one-line error on both, each naming the field as its caller spells it (`--topk 0`, `topk=0`), and the same good
fields give the same checked request."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from camlens.cli import main
from camlens.models import GapNet, LoadedModel, Preprocess, load_model, save_checkpoint
from camlens.request import CLI, WEB, ExplainRequest, RequestError
from camlens.targets import TargetRecipe
from camlens.web import create_app

CLASSES = ["ant", "bee", "cow", "dog"]
LAYER_METHODS = "gradcam, hirescam, eigencam, scorecam..."
TARGET_KINDS = "logit[:C], softmax[:C], sigmoid[:C], labels[:T] (multi-label), regression[:I]"

# field values as both callers send them: (command-line flags, query string, the error with `{f}` and `{v}` for
# the caller's spelling of a field and of a field with its value)
BAD = {
    "topk zero": (["--topk", "0"], "topk=0", "{topk=0} must be between 1 and 4"),
    "topk over the classes": (["--topk", "5"], "topk=5", "{topk=5} must be between 1 and 4"),
    "class out of range": (["--class", "4"], "class=4", "{class=4} is out of range: the model has 4 classes (0..3)"),
    "class negative": (["--class", "-1"], "class=-1", "{class=-1} is out of range: the model has 4 classes (0..3)"),
    "unknown label": (["--class", "zebra"], "class=zebra", "{class='zebra'} is neither a class index nor a label"),
    "alpha": (["--alpha", "1.5"], "alpha=1.5", "{alpha='1.5'} must be a number between 0 and 1"),
    "unknown layer": (["--layer", "nope"], "layer=nope", "no layer named 'nope'"),
    "unknown method": (["--method", "nope"], "method=nope", "unknown method 'nope'; choose from ablationcam, "),
    "attention method on a CNN": (
        ["--method", "legrad"],
        "method=legrad",
        "method 'legrad' needs a vision transformer",
    ),
    "target of another task": (
        ["--method", "gradcam", "--target", "segment:1"],
        "method=gradcam&target=segment:1",
        f"{{target='segment:1'}} does not fit a classification model's output; use {TARGET_KINDS}",
    ),
    "unparseable target": (
        ["--method", "gradcam", "--target", "heatmap:3"],
        "method=gradcam&target=heatmap:3",
        "{target='heatmap:3'}: use one of",
    ),
    "target with CAM": (
        ["--method", "cam", "--target", "logit"],
        "method=cam&target=logit",
        f"{{method=cam}} explains classes ({{class}}, {{topk}}); {{target}} needs a layer method ({LAYER_METHODS})",
    ),
}


def _spelled(template: str, cli: bool) -> str:
    """``template`` with each ``{field=value}`` / ``{field}`` as the CLI (``--field value``) or the web API spells it."""
    out, rest = "", template
    while "{" in rest:
        before, _, tail = rest.partition("{")
        inner, _, rest = tail.partition("}")
        field, eq, value = inner.partition("=")
        out += before + (
            (f"--{field} {value}" if eq else f"--{field}") if cli else (f"{field}={value}" if eq else f"{field}=")
        )
    return out + rest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("request")
    torch.manual_seed(0)
    model = GapNet(len(CLASSES)).eval()
    save_checkpoint(
        root / "m.safetensors",
        model,
        arch="gapnet",
        class_names=CLASSES,
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    pixels = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "im.png")
    return root


@pytest.fixture(scope="module")
def loaded(workspace) -> LoadedModel:
    return load_model(workspace / "m.safetensors")


@pytest.fixture(scope="module")
def client(loaded):
    with TestClient(create_app(loaded, workers=1)) as c:
        yield c


def _cli(workspace, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.chdir(workspace)
    code = main(["explain", "im.png", "--checkpoint", "m.safetensors", "--quiet", "--out", "out", *args])
    return code, capsys.readouterr().err


def _web(client, query: str):
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (120, 80, 40)).save(buf, "PNG")
    return client.post(f"/api/explain?{query}", files={"file": ("x.png", buf.getvalue(), "image/png")})


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_field_is_the_same_one_line_error_on_the_command_line_and_the_web_api(
    workspace, client, monkeypatch, capsys, case
):
    flags, query, template = BAD[case]
    code, err = _cli(workspace, monkeypatch, capsys, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("camlens: error: " + _spelled(template, cli=True)), err
    res = _web(client, query)
    assert res.status_code == 400, res.text
    assert res.json()["error"].startswith(_spelled(template, cli=False)), res.json()["error"]


def test_each_caller_names_where_its_layers_and_labels_are_listed(loaded):
    for caller, layers, labels in ((CLI, "camlens layers", "--classes"), (WEB, "GET /api/info", "GET /api/info")):
        with pytest.raises(RequestError, match=layers) as bad_layer:
            ExplainRequest.parse(loaded, layers=["nope"], caller=caller)
        with pytest.raises(RequestError, match=labels) as bad_label:
            ExplainRequest.parse(loaded, category="zebra", caller=caller)
        assert (bad_layer.value.field, bad_label.value.field) == ("layer", "class")


def test_topk_with_a_target_is_refused_on_the_command_line_and_ignored_by_the_page(loaded):
    """The page sends its top-k box with every request; a flag given on the command line is meant."""
    with pytest.raises(RequestError, match=r"^--topk ranks classes; with --target one target is explained"):
        ExplainRequest.parse(loaded, method="gradcam", topk=3, target="labels", caller=CLI)
    request = ExplainRequest.parse(loaded, method="gradcam", topk="3", target="labels", caller=WEB)
    assert (request.topk, request.target) == (1, TargetRecipe("labels"))


def test_both_callers_check_good_fields_to_the_same_request(loaded):
    cli = ExplainRequest.parse(
        loaded, method="Grad-CAM++", layers=["features.6"], category=2, target="softmax", alpha=0.25, caller=CLI
    )
    web = ExplainRequest.parse(
        loaded,
        method="Grad-CAM++",
        layers=["features.6"],
        topk="1",
        category="cow",
        target="softmax",
        alpha="0.25",
        caller=WEB,
        offered=("cam", "gradcampp"),
    )
    assert cli == web == ExplainRequest("gradcampp", ("features.6",), 1, 2, TargetRecipe("softmax", 2), 0.25)
    assert web.layer == "features.6" and web.explains == TargetRecipe("softmax", 2)
    assert ExplainRequest.parse(loaded, topk="3", caller=WEB) == ExplainRequest(topk=3)
    with pytest.raises(RequestError, match="^method 'gradcam' is not offered by this server; choose from cam$"):
        ExplainRequest.parse(loaded, method="gradcam", caller=WEB, offered=("cam",))


def test_fusing_needs_a_method_that_fuses(loaded):
    with pytest.raises(RequestError, match="^--method cam explains one layer; fusing 2 layers needs a method"):
        ExplainRequest.parse(loaded, method="cam", layers=["features.2", "features.6"])
    fused = ExplainRequest.parse(loaded, method="gradcam", layers=["features.2", "features.6"])
    assert fused.layers == ("features.2", "features.6") and fused.layer is None


def test_the_command_line_takes_a_class_label_as_the_page_does(workspace, monkeypatch, capsys):
    runs = {}
    for spec in ("cow", "2"):
        code, err = _cli(workspace, monkeypatch, capsys, "--class", spec, "--out", f"by-{spec}")
        assert code == 0, err
        (record,) = json.loads((workspace / f"by-{spec}" / "summary.json").read_text())["images"]
        runs[spec] = record
        assert [e["class"] for e in record["explained"]] == [2]
    overlays = [(workspace / f"by-{s}" / runs[s]["explained"][0]["overlay"]).read_bytes() for s in runs]
    assert overlays[0] == overlays[1]
