"""Attention rollout, Chefer et al.'s GAE and LeGrad: hand-worked rollout cases, float64 references written from
the papers on timm, torchvision and Hugging Face ViTs (attention read from each library's explicit, non-fused
path), torchcam 0.5.0's LeGrad, logits unchanged and no hooks left, and the errors for bad input."""

import copy

import pytest
import timm
import torch
import torchvision
from torchcam import methods as tc

from camlens import CamlensError, get_method
from camlens.methods import AttentionRollout, GenericAttentionCAM, LeGrad
from camlens.methods.attention import _sdpa_node, attention_rollout

try:
    import transformers
except ImportError:  # the Hugging Face cases skip alone; timm and torchvision still run
    transformers = None


# ----- tiny models of the three families (random weights)
def timm_vit(**kw):
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=6,
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=24,
        num_heads=3,
        **kw,
    ).eval()


def tv_vit(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=6):
    model = torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero: no gradient
    return model


def hf_vit():
    if transformers is None:
        pytest.skip("transformers is not installed (pip install 'camlens[test]')")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=3,
        num_attention_heads=2,
        hidden_size=16,
        intermediate_size=32,
        num_labels=6,
    )
    return transformers.ViTForImageClassification(config).eval()


FAMILIES = {"timm": timm_vit, "torchvision": tv_vit, "hf": hf_vit}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ----- the float64 references: each library's explicit attention path, probabilities read where they are used
def reference_pass(model, x, family):
    """A float64 copy run through explicit softmax attention: (logits, attentions (B, H, N, N) in the graph,
    block output tokens)."""
    model = copy.deepcopy(model).double()
    attentions, outputs, handles = [], [], []
    if family == "timm":
        for block in model.blocks:
            block.attn.fused_attn = False
            handles.append(block.attn.attn_drop.register_forward_hook(lambda m, a, out: attentions.append(out)))
        blocks = list(model.blocks)
    elif family == "torchvision":
        blocks = list(model.encoder.layers)

        def replay_with_weights(m, args, out):
            # PyTorch returns a view of the probabilities made after their use: recompute the output from it
            weights = out[1]
            dim, heads = m.embed_dim, m.num_heads
            v = torch.nn.functional.linear(args[2], m.in_proj_weight[2 * dim :], m.in_proj_bias[2 * dim :])
            v = v.unflatten(-1, (heads, -1)).transpose(1, 2)
            attentions.append(weights)
            return m.out_proj((weights @ v).transpose(1, 2).flatten(2)), weights

        for block in blocks:

            def want_weights(m, args, kwargs):
                return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

            handles.append(block.self_attention.register_forward_pre_hook(want_weights, with_kwargs=True))
            handles.append(block.self_attention.register_forward_hook(replay_with_weights))
    else:
        model.set_attn_implementation("eager")
        blocks = list(model.vit.layers)
        for block in blocks:
            handles.append(block.attention.register_forward_hook(lambda m, a, out: attentions.append(out[1])))
    for block in blocks:
        handles.append(block.register_forward_hook(lambda m, a, out: outputs.append(out)))
    out = model(x.double())
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return model, logits, attentions, outputs


def ref_rollout(attentions, fusion="mean"):
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    r = eye.expand(attentions[0].shape[0], n, n)
    for a in attentions:
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[fusion].detach()
        a_hat = 0.5 * fused + 0.5 * eye
        r = (a_hat / a_hat.sum(-1, keepdim=True)) @ r  # R = A_L ... A_1
    return r[:, 0, 1:]


def ref_gae(logits, attentions, classes):
    maps = []
    for b in range(logits.shape[0]):
        per_class = []
        for c in classes[b]:
            grads = torch.autograd.grad(logits[b, c], attentions, retain_graph=True)
            r = torch.eye(attentions[0].shape[-1], dtype=torch.float64)
            for a, g in zip(attentions, grads):  # R += mean_h (grad * A)^+ R, first block to last
                r = r + (g[b] * a[b]).clamp(min=0).mean(0) @ r
            per_class.append(r[0, 1:])
        maps.append(torch.stack(per_class))
    return torch.stack(maps)


def ref_legrad(model, outputs, attentions, classes, family, blocks):
    if family == "timm":
        project = lambda z: model.head(model.fc_norm(model.norm(z.mean(1))))  # noqa: E731
    elif family == "torchvision":
        project = lambda z: model.heads(model.encoder.ln(z.mean(1)))  # noqa: E731
    else:
        project = lambda z: model.classifier(model.vit.layernorm(z.mean(1)))  # noqa: E731
    maps = []
    for b in range(classes.shape[0]):
        per_class = []
        for c in classes[b]:
            layer_maps = []
            for i in blocks:  # d s_l / d A_l, one block at a time
                (g,) = torch.autograd.grad(project(outputs[i])[b, c], attentions[i], retain_graph=True)
                layer_maps.append(g[b].clamp(min=0).mean((0, 1))[1:])
            per_class.append(torch.stack(layer_maps).mean(0))
        maps.append(torch.stack(per_class))
    return torch.stack(maps)


# ----- rollout by hand
def test_rollout_two_layers_by_hand():
    # A_hat_1 = rownorm(0.5 A1 + 0.5 I) = [[.5, .5, 0], [0, 1, 0], [0, 0, 1]];  A_hat_2 = [[.5, 0, .5], [.5, .5, 0],
    # [0, .5, .5]];  row cls of A_hat_2 A_hat_1 = .5 [.5, .5, 0] + .5 [0, 0, 1] = [.25, .25, .5]
    a1 = torch.tensor([[0.0, 1, 0], [0, 1, 0], [0, 0, 1]])
    a2 = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])
    out = attention_rollout([a1[None, None], a2[None, None]])
    assert torch.allclose(out, torch.tensor([[0.25, 0.5]]))


def test_rollout_head_fusion_by_hand():
    # heads I and a cyclic shift: max = [[1,1,0],[0,1,1],[1,0,1]], 0.5 A + 0.5 I = [[1,.5,0],...] / 1.5 per row,
    # so the cls row is [2/3, 1/3, 0]; min = 0, so A_hat = I and the cls row reaches no patch
    heads = torch.stack([torch.eye(3), torch.eye(3).roll(1, dims=1)])[None]
    assert torch.allclose(attention_rollout([heads], head_fusion="max"), torch.tensor([[1 / 3, 0.0]]))
    assert torch.allclose(attention_rollout([heads], head_fusion="min"), torch.zeros(1, 2))
    assert torch.allclose(attention_rollout([heads], head_fusion="mean"), torch.tensor([[0.25, 0.0]]))


def test_rollout_discard_ratio_by_hand():
    # patch-column entries .3 .5 / .6 .3 / .3 .4: a ratio of 0.5 drops the three .3s; the cls column is kept.
    # cls row: 0.5 [.2, 0, .5] + 0.5 [1, 0, 0] = [.6, 0, .25], normalized by .85
    a = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])[None, None]
    out = attention_rollout([a], discard_ratio=0.5)
    assert torch.allclose(out, torch.tensor([[0.0, 0.25 / 0.85]]))


# ----- float64 references from the papers, on the three families
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_matches_float64_reference(family, fusion):
    model = FAMILIES[family]()
    x = torch.randn(2, 3, 32, 32)
    _, _, attentions, _ = reference_pass(model, x, family)
    result = AttentionRollout(model, head_fusion=fusion)(x, topk=2)
    expected = ref_rollout(attentions, fusion).view(2, 1, 4, 4).expand(2, 2, 4, 4)
    assert result.maps.shape == (2, 2, 4, 4)
    torch.testing.assert_close(result.maps.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_gae_matches_float64_reference(family):
    model = FAMILIES[family]()
    x = torch.randn(2, 3, 32, 32)
    _, logits, attentions, _ = reference_pass(model, x, family)
    classes = torch.tensor([[1, 4], [5, 0]])
    result = GenericAttentionCAM(model)(x, classes)
    expected = ref_gae(logits, attentions, classes).view(2, 2, 4, 4)
    assert result.maps.abs().max() > 0
    torch.testing.assert_close(result.maps.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("blocks", [None, [0, 2]])
def test_legrad_matches_float64_reference(family, blocks):
    model = FAMILIES[family]()
    x = torch.randn(2, 3, 32, 32)
    model64, _, attentions, outputs = reference_pass(model, x, family)
    classes = torch.tensor([[2, 3], [1, 1]])
    result = LeGrad(model, blocks=blocks)(x, classes)
    expected = ref_legrad(model64, outputs, attentions, classes, family, [1, 2] if blocks is None else blocks)
    assert result.maps.abs().max() > 0
    torch.testing.assert_close(result.maps.double(), expected.view(2, 2, 4, 4), rtol=1e-4, atol=1e-7)


def test_rollout_without_class_token_reads_the_mean_row():
    model = timm_vit(class_token=False, global_pool="avg")
    x = torch.randn(2, 3, 32, 32)
    _, _, attentions, _ = reference_pass(model, x, "timm")
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    r = eye.expand(2, n, n)
    for a in attentions:
        a_hat = 0.5 * a.mean(1).detach() + 0.5 * eye
        r = (a_hat / a_hat.sum(-1, keepdim=True)) @ r
    result = AttentionRollout(model)(x)
    assert n == 16
    torch.testing.assert_close(result.maps.double().flatten(1), r.mean(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_with_discard_ratio_equals_the_matrix_product(family):
    # discarding needs each block's whole matrix (its threshold is over all entries): the explainer against the
    # public attention_rollout on the float64 reference attentions
    model = FAMILIES[family]()
    x = torch.randn(2, 3, 32, 32)
    _, _, attentions, _ = reference_pass(model, x, family)
    expected = attention_rollout([a.detach() for a in attentions], discard_ratio=0.3)
    result = AttentionRollout(model, discard_ratio=0.3)(x)
    torch.testing.assert_close(result.maps.double().flatten(1), expected.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [GenericAttentionCAM, LeGrad])
def test_torchvision_with_frozen_parameters_gives_the_same_maps(method):
    # frozen weights and an input without grad send nn.MultiheadAttention down its fast path, which saves no q, k, v
    # for backward: the hook recomputes them from in_proj there instead of reading the fused attention's node
    model = tv_vit()
    x = torch.randn(2, 3, 32, 32)
    classes = torch.tensor([[1, 4], [5, 0]])
    trainable = method(model, blocks=3)(x, classes).maps
    model.requires_grad_(False)
    frozen = method(model, blocks=3)(x, classes).maps
    assert trainable.abs().max() > 0
    torch.testing.assert_close(frozen, trainable, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", [GenericAttentionCAM, LeGrad])
def test_several_classes_take_one_batched_backward(family, method, monkeypatch):
    # the attention's backward must run under vmap (is_grads_batched): otherwise score_gradients falls back to one
    # backward pass per explained class, K times the cost, with the same maps
    model = FAMILIES[family]()
    calls = []
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    method(model)(torch.randn(2, 3, 32, 32), topk=3)
    assert calls == [True]


def test_torchvision_attention_node_holds_the_in_projection():
    # the gradient methods read q, k, v from the fused attention's autograd node; if torch renamed what that node
    # saves, they would silently fall back to recomputing the projection: this test says so instead
    attention = tv_vit().encoder.layers[0].self_attention
    tokens = torch.randn(2, 17, 16)
    out, _ = attention(tokens, tokens, tokens, need_weights=False)
    node = _sdpa_node(out)
    assert node is not None
    q, k, v = torch.nn.functional.linear(tokens, attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    for saved, recomputed in zip((node._saved_query, node._saved_key, node._saved_value), (q, k, v)):
        torch.testing.assert_close(saved, recomputed.unflatten(-1, (2, -1)).transpose(1, 2))
    # an attention that ran its explicit path (weights asked for) has no such node, and the search must not walk
    # back into the attention before it
    explicit, _ = attention(out, out, out, need_weights=True)
    assert _sdpa_node(explicit) is None


def test_legrad_equals_torchcam_on_torchvision_vit():
    model = tv_vit(image_size=64, patch_size=16, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
    x = torch.randn(3, 3, 64, 64)
    classes = [3, 7, 0]
    with tc.LeGrad(model, list(model.encoder.layers)[-3:]) as extractor:
        theirs = extractor(classes, model(x), normalized=False)[0]
    ours = LeGrad(model, blocks=3)(x, classes).maps[:, 0]
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))


# ----- the model is left as it was
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", [AttentionRollout, GenericAttentionCAM, LeGrad])
def test_logits_bit_identical_and_no_hooks_left(family, method):
    model = FAMILIES[family]()
    x = torch.randn(2, 3, 32, 32)
    before = _hooks(model)
    # in the autograd mode of the method's pass: none for rollout, grad for the others (torchvision's attention
    # takes a different fused kernel in each mode, so the two modes differ in the last bits by themselves)
    with torch.set_grad_enabled(method.needs_gradients):
        plain = model(x)
        plain = plain if isinstance(plain, torch.Tensor) else plain.logits
        result = method(model)(x)
        assert torch.equal(result.logits, plain)
        assert _hooks(model) == before
        again = model(x)
        assert torch.equal(again if isinstance(again, torch.Tensor) else again.logits, plain)
    assert all(p.grad is None for p in model.parameters())


def test_no_hooks_left_when_the_call_fails():
    model = timm_vit()
    with pytest.raises(CamlensError, match="out of range"):
        GenericAttentionCAM(model)(torch.randn(1, 3, 32, 32), classes=99)
    assert _hooks(model) == 0


def test_register_tokens_are_left_out_of_the_map():
    model = timm_vit(reg_tokens=2)
    x = torch.randn(1, 3, 32, 32)
    _, _, attentions, _ = reference_pass(model, x, "timm")
    n = attentions[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64)
    for a in attentions:
        a_hat = 0.5 * a.mean(1)[0].detach() + 0.5 * torch.eye(n, dtype=torch.float64)
        r = (a_hat / a_hat.sum(-1, keepdim=True)) @ r
    result = AttentionRollout(model)(x)
    assert n == 3 + 16
    torch.testing.assert_close(result.maps.double().flatten(), r[0, 3:], rtol=1e-5, atol=1e-7)


def test_batch_equals_samples_one_by_one():
    model = timm_vit()
    x = torch.randn(3, 3, 32, 32)
    explainer = GenericAttentionCAM(model)
    batch = explainer(x, [1, 2, 3])
    for i, c in enumerate([1, 2, 3]):
        single = explainer(x[i : i + 1], c)
        torch.testing.assert_close(batch.maps[i], single.maps[0], rtol=1e-4, atol=1e-7)


def test_registered_and_class_agnostic_rollout_fills_classes():
    assert get_method("rollout") is AttentionRollout
    assert get_method("GAE") is GenericAttentionCAM
    assert get_method("LeGrad") is LeGrad
    result = AttentionRollout(timm_vit())(torch.randn(2, 3, 32, 32), topk=3)
    assert result.classes.shape == (2, 3) and torch.equal(result.classes, result.logits.topk(3).indices)
    assert torch.equal(result.maps[:, 0], result.maps[:, 2])


# ----- bad input: one-line errors that say what to do
def test_cnn_asked_for_rollout():
    cnn = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.raises(CamlensError, match=r"'rollout' needs a vision transformer.*ResNet") as err:
        AttentionRollout(cnn)(torch.randn(1, 3, 32, 32))
    assert "\n" not in str(err.value)


def test_input_not_divisible_by_patch():
    model = timm_vit(dynamic_img_size=True)
    with pytest.raises(CamlensError, match=r"36x32 is not a multiple of the patch size 8x8"):
        LeGrad(model)(torch.randn(1, 3, 36, 32))


def test_layer_and_bad_options_rejected():
    model = timm_vit()
    with pytest.raises(CamlensError, match="pass blocks="):
        GenericAttentionCAM(model, layer="blocks.2")
    with pytest.raises(CamlensError, match="head_fusion"):
        AttentionRollout(model, head_fusion="median")
    with pytest.raises(CamlensError, match="blocks=9"):
        LeGrad(model, blocks=9)(torch.randn(1, 3, 32, 32))
    with pytest.raises(CamlensError, match="inference_mode"), torch.inference_mode():
        LeGrad(model)(torch.randn(1, 3, 32, 32))


def test_non_square_grid():
    model = timm_vit(dynamic_img_size=True)
    result = AttentionRollout(model)(torch.randn(1, 3, 32, 48))
    assert result.maps.shape == (1, 1, 4, 6)


def test_grid_that_cannot_be_read_is_named():
    class Tokens(torch.nn.Module):  # self-attention over patch tokens, but no patch size anywhere
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Conv2d(3, 8, 8, 8)
            self.block = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.block(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    with pytest.raises(CamlensError, match="cannot read the patch grid of Tokens"):
        AttentionRollout(Tokens().eval())(torch.randn(1, 3, 32, 32))
