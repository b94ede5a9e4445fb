"""Token models without configuration: the layout (prefix tokens, patch grid, channels-last stages, default layer)
read from timm, torchvision and Hugging Face models; every layer method against a float64 reference of its formula
on the token activations (laid out here by hand, independently of camlens.tokens) and against pytorch-grad-cam
with its documented reshape_transform; CAM exact on GAP-over-patch-token heads; the one-line errors."""

from __future__ import annotations

import functools
import subprocess
import sys
import warnings

import pytest
import timm
import torch
import transformers
from pytorch_grad_cam import GradCAM as PgcGradCAM
from pytorch_grad_cam import HiResCAM as PgcHiResCAM
from pytorch_grad_cam import LayerCAM as PgcLayerCAM
from pytorch_grad_cam import XGradCAM as PgcXGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer

import camlens
from _method_refs import GRADIENT_REFS, activations_and_grads, assert_close, ref_ablationcam, ref_eigencam, ref_scorecam
from camlens import CAM, CamlensError, GradCAM, HiResCAM, NotAGapClassifierError, normalize, token_layout, upsample
from camlens.networks import build_network

warnings.filterwarnings("ignore", module="transformers")
CLASSES = [[0, 3], [4, 1]]


class Logits(nn.Module):
    """A Hugging Face model's ``.logits``, for the references (which index plain tensors); layers are ``model.*``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def _hf(kind: str) -> nn.Module:
    vit = dict(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    if kind == "vit":
        return transformers.ViTForImageClassification(transformers.ViTConfig(**vit))
    if kind == "deit":  # class and distillation tokens, two heads averaged
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**vit))
    if kind == "swin":
        return transformers.SwinForImageClassification(
            transformers.SwinConfig(
                image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=5
            )
        )
    if kind == "convnext":
        return transformers.ConvNextForImageClassification(
            transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
        )
    return transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    )


def _vit(**options) -> nn.Module:
    return timm.create_model(
        "vit_small_patch16_224", pretrained=False, depth=2, embed_dim=16, num_heads=2, num_classes=5, **options
    )


# name -> (builder, input (H, W), default layer, (prefix, grid h, grid w, channels_last) of that layer)
FAMILIES = {
    "timm-vit-registers-nonsquare": (
        lambda: _vit(reg_tokens=4, dynamic_img_size=True),
        (48, 80),
        "blocks.1.norm1",
        (5, 3, 5, False),
    ),
    "timm-deit-distilled": (
        lambda: timm.create_model(
            "deit_tiny_distilled_patch16_224",
            pretrained=False,
            depth=2,
            embed_dim=16,
            num_heads=2,
            num_classes=5,
            img_size=64,
        ),
        (64, 64),
        "blocks.1.norm1",
        (2, 4, 4, False),
    ),
    "timm-swin": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            embed_dim=8,
            depths=(1, 1),
            num_heads=(1, 2),
            window_size=4,
            img_size=32,
            num_classes=5,
        ),
        (32, 32),
        "norm",
        (0, 4, 4, True),
    ),
    "torchvision-vit": (
        lambda: VisionTransformer(
            image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
        ),
        (64, 64),
        "encoder.layers.encoder_layer_1.ln_1",
        (1, 4, 4, False),
    ),
    "torchvision-swin": (
        lambda: SwinTransformer(
            patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=5
        ),
        (32, 32),
        "norm",
        (0, 4, 4, True),
    ),
    "hf-vit": (lambda: _hf("vit"), (32, 32), "vit.layers.1.layernorm_before", (1, 4, 4, False)),
    "hf-deit": (lambda: _hf("deit"), (32, 32), "deit.layers.1.layernorm_before", (2, 4, 4, False)),
    "hf-swin": (lambda: _hf("swin"), (32, 32), "swin.layernorm", (0, 4, 4, False)),
}
CONV_FAMILIES = {  # Hugging Face convolutional classifiers: no tokens, a ModelOutput
    "hf-convnext": (lambda: _hf("convnext"), (32, 32), "convnext.encoder.stages.1"),
    "hf-resnet": (lambda: _hf("resnet"), (32, 32), "resnet.encoder.stages.1"),
}


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(7)
    model = (FAMILIES.get(name) or CONV_FAMILIES[name])[0]().eval()
    if name == "torchvision-vit":  # torchvision initializes the head to zero: every gradient would be 0
        nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _by_hand(prefix: int, h: int, w: int, channels_last: bool):
    """The layer output as (B, C, h, w), written out for the test: drop the prefix tokens, rows of w tokens."""

    def reshape(t, size):
        if channels_last:
            return t.permute(0, 3, 1, 2)
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def _reference_model(name: str) -> tuple[nn.Module, str]:
    model, layer = _model(name), FAMILIES.get(name, CONV_FAMILIES.get(name))[2]
    return (Logits(model), f"model.{layer}") if name.startswith("hf-") else (model, layer)


def _input(name: str, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(11)
    return torch.randn(batch, 3, *(FAMILIES.get(name) or CONV_FAMILIES[name])[1])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_layout_and_default_layer_are_read_from_the_model(name):
    _, size, layer, (prefix, h, w, channels_last) = FAMILIES[name]
    layout = token_layout(_model(name), size)
    assert layout is not None and layout.layer == layer
    assert (layout.prefix, layout.channels_last) == (prefix, channels_last)
    assert (h, w) in layout.grids


@pytest.mark.parametrize("name", sorted(CONV_FAMILIES))
def test_convolutional_hugging_face_models_have_no_token_layout(name):
    assert token_layout(_model(name), (32, 32)) is None


def test_patch_tokens_are_laid_row_by_row_after_the_prefix():
    layout = token_layout(_vit(reg_tokens=4, dynamic_img_size=True), (48, 80))
    tokens = torch.arange(2 * 20 * 3, dtype=torch.float).view(2, 20, 3)  # 1 class + 4 registers + 3 x 5 patches
    grid = layout.to_grid(tokens)
    assert grid.shape == (2, 3, 3, 5)
    assert torch.equal(grid[1, :, 2, 1], tokens[1, 5 + 2 * 5 + 1])
    assert layout.channel_dim(tokens) == -1


# The perturbation references run one float64 pass per channel: on one model of each kind (prefix tokens on a
# non-square grid, channels-last stages, a Hugging Face ViT and a Hugging Face CNN) to keep the file fast.
PERTURBATION_FAMILIES = ["timm-vit-registers-nonsquare", "torchvision-swin", "hf-vit", "hf-resnet"]
CASES = [
    (method, name)
    for method in ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam"]
    for name in sorted(FAMILIES) + sorted(CONV_FAMILIES)
]
CASES += [(method, name) for method in ["scorecam", "ablationcam"] for name in PERTURBATION_FAMILIES]


@pytest.mark.parametrize("method,name", CASES)
def test_every_method_matches_its_float64_reference_without_configuration(method, name):
    model, x = _model(name), _input(name)
    with camlens.get_method(method)(model) as explainer:
        res = explainer(x, classes=CLASSES)
    ref_model, layer = _reference_model(name)
    assert res.layer == layer.removeprefix("model.")
    reshape = _by_hand(*FAMILIES[name][3]) if name in FAMILIES else None
    classes = torch.tensor(CLASSES)
    if method in GRADIENT_REFS:
        a, g = activations_and_grads(ref_model, layer, x, classes=classes, reshape=reshape)
        want = GRADIENT_REFS[method](a, g)
    elif method == "scorecam":
        want = ref_scorecam(ref_model, layer, x, classes, reshape=reshape)
    elif method == "ablationcam":
        want = ref_ablationcam(ref_model, layer, x, classes, reshape=reshape)
    else:
        want = ref_eigencam(ref_model, layer, x, reshape=reshape)[:, None].expand(-1, 2, -1, -1)
    assert res.maps.shape == want.shape and res.classes.tolist() == CLASSES
    assert want.abs().max() > 0, "degenerate case: the reference map is zero"
    assert_close(res.maps, want, rtol=1e-4, what=f"{method} on {name}")


def test_topk_per_sample_classes_and_batches_on_a_vit():
    model, x = _model("timm-vit-registers-nonsquare"), _input("timm-vit-registers-nonsquare", batch=3)
    with GradCAM(model) as explainer:
        top = explainer(x, topk=3)
        together = explainer(x, classes=[[2, 0], [1, 4], [0, 2]]).maps
        single = [explainer(x[i : i + 1], classes=[c]).maps[0] for i, c in enumerate([[2, 0], [1, 4], [0, 2]])]
    assert torch.equal(top.classes, top.logits.topk(3, 1).indices) and top.maps.shape == (3, 3, 3, 5)
    assert torch.allclose(top.logits, model(x), atol=1e-5)
    for i in range(3):
        assert torch.allclose(single[i], together[i], atol=1e-6)


def test_default_vit_layer_is_where_patch_tokens_still_reach_a_class_token_head():
    """At the last block's output the class-token head reads only the class token: the gradient is zero on every
    patch token, so any gradient map there is 0; the last block's first norm gives a map."""
    model, x = _model("timm-deit-distilled"), _input("timm-deit-distilled")
    with HiResCAM(model) as default, HiResCAM(model, layer="norm") as last:
        assert default(x).maps.abs().amax((-2, -1)).min() > 0
        assert last(x).maps.abs().max() == 0


def test_a_tensor_inside_the_attention_is_refused_not_mapped():
    """The old automatic choice on a timm ViT was a (B, heads, T, C/heads) tensor inside the attention."""
    with GradCAM(_model("timm-deit-distilled"), layer="blocks.1.attn.q_norm") as explainer:
        with pytest.raises(CamlensError, match=r"2 prefix token\(s\) \+ the 4x4 patch grid.*blocks.1.norm1"):
            explainer(_input("timm-deit-distilled"))


# Grad-CAM++ is left out: pytorch-grad-cam adds 1e-6 to its denominator 2 g^2 + sum(A) g^3, which is not
# negligible against these gradients (~1e-3); its formula is checked against the float64 reference above.
@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam", "hirescam"])
@pytest.mark.parametrize("name", ["timm-deit-distilled", "timm-swin", "hf-vit"])
def test_gradient_methods_match_pytorch_grad_cam_with_its_reshape_transform(method, name):
    peer_class = {"gradcam": PgcGradCAM, "xgradcam": PgcXGradCAM, "layercam": PgcLayerCAM, "hirescam": PgcHiResCAM}[
        method
    ]
    model, x = _model(name), _input(name)
    ref_model, layer = _reference_model(name)  # Hugging Face: its documented wrapper returning .logits

    # pytorch-grad-cam's tutorials: drop the class token (here two: class + distillation) and reshape the rest
    # to the grid; Swin's stages (channels-last in timm >= 0.9) are transposed to channels first
    def reshape_transform(tensor, prefix=FAMILIES[name][3][0], height=4, width=4):
        if tensor.ndim == 4:
            return tensor.transpose(2, 3).transpose(1, 2)
        result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    peer = peer_class(
        model=ref_model, target_layers=[dict(ref_model.named_modules())[layer]], reshape_transform=reshape_transform
    )
    try:
        theirs = torch.from_numpy(peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (1, 2)]))
    finally:
        peer.activations_and_grads.release()
    with camlens.get_method(method)(model) as explainer:
        ours = explainer(x, classes=[1, 2]).maps
    assert torch.allclose(normalize(upsample(torch.relu(ours), x.shape[-2:]))[:, 0], theirs, atol=1e-4)


def _gap_vit() -> nn.Module:
    torch.manual_seed(5)
    return _vit(reg_tokens=4, class_token=False, global_pool="avg", dynamic_img_size=True).eval()


def test_cam_on_a_vit_averaging_its_patch_tokens_is_exact_for_any_input_size():
    """logits = W LN(mean_p t_p) + b (timm global_pool="avg", registers left out): the map is
    M_c(p) = sum_k W_ck gamma_k (t_pk - mu) / sigma, with mean_p M_c + (W beta + b)_c = logit_c."""
    model = _gap_vit()
    with CAM(model) as cam:
        for size in ((48, 80), (64, 32)):
            x = torch.randn(2, 3, *size)
            res = cam(x, topk=2)
            assert res.layer == "blocks" and res.maps.shape == (2, 2, size[0] // 16, size[1] // 16)
            assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits.gather(1, res.classes).double(), rtol=1e-5)
            m64 = _gap_vit().double()
            store = {}
            m64.blocks.register_forward_hook(lambda mod, args, out, store=store: store.__setitem__("t", out))
            m64(x.double())
            patches = store["t"][:, 4:]  # (B, P, K): the 4 registers dropped (no class token)
            pooled = patches.mean(1)
            mu, sigma = pooled.mean(-1), (pooled.var(-1, unbiased=False) + m64.fc_norm.eps).sqrt()
            w = m64.head.weight[res.classes] * m64.fc_norm.weight / sigma[:, None, None]  # (B, N, K)
            want = torch.einsum("bnk,bpk->bnp", w, patches - mu[:, None, None]).view(res.maps.shape)
            assert_close(res.maps, want, rtol=1e-5, what="CAM on patch tokens")


@pytest.mark.parametrize("name", ["timm-swin", "torchvision-swin", "hf-swin"])
def test_cam_on_swin_is_exact(name):
    with CAM(_model(name)) as cam:
        res = cam(_input(name), topk=2)
    assert res.maps.shape[-2:] == (4, 4)
    assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits.gather(1, res.classes).double(), rtol=1e-5)


@pytest.mark.parametrize("name", ["timm-deit-distilled", "hf-vit", "torchvision-vit"])
def test_cam_refuses_a_class_token_head(name):
    with CAM(_model(name)) as cam, pytest.raises(NotAGapClassifierError, match="use GradCAM"):
        cam(_input(name))


def test_vit_tiny_gap_network_is_exactly_explained_by_cam():
    model = build_network("vit-tiny-gap", 4).eval()
    assert model.arch_options["patch_size"] == 8
    x = torch.randn(2, 3, 64, 64)
    with CAM(model) as cam, GradCAM(model) as gradcam:
        res = cam(x, topk=2)
        grad = gradcam(x, classes=res.classes)
    assert res.maps.shape == (2, 2, 8, 8) and grad.layer == "blocks.3.norm1"
    assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits.gather(1, res.classes).double(), rtol=1e-5)


# ----- errors: one line, naming what was wrong and what to do


def test_input_not_divided_by_the_patch_size_names_both_sizes():
    with GradCAM(_model("timm-vit-registers-nonsquare")) as explainer:
        with pytest.raises(CamlensError, match="input size 40x72 is not a multiple of the patch size 16x16") as err:
            explainer(torch.randn(1, 3, 40, 72))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["timm-deit-distilled", "torchvision-vit", "hf-vit"])
def test_input_other_than_a_fixed_image_size_is_refused_before_the_model_runs(name):
    size = FAMILIES[name][1]
    with GradCAM(_model(name)) as explainer, pytest.raises(CamlensError, match=f"fixed image size {size[0]}x{size[1]}"):
        explainer(torch.randn(1, 3, size[0] + 16, size[1]))


class _HandWrittenViT(nn.Module):
    """A token model whose layout nothing can read: no num_prefix_tokens, no patch_embed.patch_size."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.blocks(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1))
        return self.head(tokens[:, 0] + tokens[:, 1:].mean(1))


def test_token_model_without_a_readable_layout_says_what_to_pass():
    model = _HandWrittenViT().eval()
    with GradCAM(model, layer="blocks") as explainer:
        with pytest.raises(CamlensError, match="could not be read from the model.*reshape=") as err:
            explainer(torch.randn(1, 3, 32, 32))
    assert "\n" not in str(err.value)
    # the override works
    reshape = functools.partial(camlens.tokens_to_grid, prefix_tokens=1)
    with GradCAM(model, layer="blocks", reshape=reshape) as explainer:
        assert explainer(torch.randn(1, 3, 32, 32)).maps.shape == (1, 1, 4, 4)


# ----- the CLI, the web app and camlens.explain


def test_cli_explains_a_timm_vit_by_name_with_random_weights(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from camlens.cli import main

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save("a.jpg")
    assert (
        main(
            [
                "explain",
                "a.jpg",
                "--arch",
                "timm:vit_tiny_patch16_224",
                "--weights",
                "none",
                "--quiet",
                "--method",
                "gradcam",
                "--out",
                "grad",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "grad").glob("a_*.png"))) == 1


def test_hugging_face_vit_is_served_and_explained_through_the_python_api():
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from camlens.models import LoadedModel, Preprocess
    from camlens.web import create_app

    loaded = LoadedModel(_model("hf-vit"), list("abcde"), Preprocess((32, 32), (0.5,) * 3, (0.5,) * 3), "hf")
    explanation = camlens.explain(loaded, torch.rand(3, 40, 50), method="gradcam", topk=2)
    assert explanation.result.maps.shape == (1, 2, 4, 4) and explanation.overlay(1).size == (50, 40)
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(buffer, "PNG")
    with TestClient(create_app(loaded, workers=1)) as client:
        res = client.post("/api/explain?method=gradcam&topk=2", files={"file": ("x.png", buffer.getvalue())})
        assert res.status_code == 200, res.text
        assert [e["class"] for e in res.json()["explained"]] == [p["class"] for p in res.json()["predictions"][:2]]


def test_training_step_reads_the_logits_of_a_model_output():
    from camlens.training.wsol.base import TrainingMethod

    model, x = _model("hf-convnext"), _input("hf-convnext")
    loss, logits = TrainingMethod().loss(model, x, torch.tensor([1, 3]))
    assert torch.equal(logits, model(x).logits)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])))


def test_vit_tiny_gap_checkpoint_rebuilds_the_same_network(tmp_path):
    from camlens.models import Preprocess, load_model, save_checkpoint

    torch.manual_seed(0)
    model = build_network("vit-tiny-gap", 3, depth=1, embed_dim=16, num_heads=2).eval()
    path = save_checkpoint(
        tmp_path / "vit.safetensors",
        model,
        arch="vit-tiny-gap",
        class_names=["a", "b", "c"],
        preprocess=Preprocess((64, 64)),
    )
    loaded = load_model(path)
    x = torch.randn(2, 3, 64, 64)
    assert loaded.model.arch_options == model.arch_options and torch.equal(loaded.model(x), model(x))
    with pytest.raises(CamlensError, match="no pretrained weights"):
        build_network("vit-tiny-gap", 3, "DEFAULT")


def test_explaining_a_cnn_does_not_import_torchvision():
    """token_layout recognises torchvision's ViT and Swin without importing torchvision, which took a second or
    more on the first explanation of every other model (in `camlens serve`, before an expensive method's first
    stop check: SIGTERM waited for it)."""
    code = (
        "import sys, torch, camlens\n"
        "from torch import nn\n"
        "m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
        "for name in ('cam', 'gradcam', 'scorecam', 'sscam'):\n"
        "    camlens.get_method(name)(m.eval())(torch.rand(1, 3, 8, 8))\n"
        "assert 'torchvision' not in sys.modules, 'explaining a CNN imported torchvision'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
