"""Transformer-native methods, read from the attention probabilities of a ViT: attention rollout (Abnar &
Zuidema, 2020), Chefer et al.'s generic attention-model explainability (2021) and LeGrad (Bousselham et al., 2024).

timm and PyTorch run fused scaled-dot-product attention, which never materializes the probabilities
A = softmax(q k^T / sqrt(d)).  Hooks recompute A from the attention's own q and k during the call:

- timm ``Attention``: q and k from the ``q_norm`` / ``k_norm`` outputs, v from ``qkv``; the merged heads arrive at
  ``norm`` (an identity unless ``scale_norm``) before ``proj``;
- torchvision ``EncoderBlock.self_attention`` (``nn.MultiheadAttention``): with gradients, q, k, v as its fused
  attention saved them for backward; without (or on its no-grad fast path), ``in_proj`` applied to the block's
  normalized input; the output after ``out_proj``;
- Hugging Face ``transformers`` (>= 5) ViT/DeiT attention: q, k, v from the ``q_proj``/``k_proj``/``v_proj``
  outputs, the merged heads at ``o_proj``.

Gradient methods need d(score)/dA.  There the hook hands the network its own attention output, copied, through
an autograd function whose backward is that of the explicit e = A v (through ``out_proj`` for torchvision) with
respect to A and v: the logits do not change, and the gradient that reaches A is exactly d(score)/dA of
softmax(q k^T / sqrt(d)) v, without computing A v in the forward pass.  Hooks live for one call only: nothing
is left on the model afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..capture import output_logits
from ..errors import CamlensError
from ..tokens import token_layout
from .base import CAMResult, ClassSpec, Explainer, select_classes
from .layered import score_gradients

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass
class AttentionSite:
    """One self-attention module of a transformer, and the block around it (its output is the block's tokens)."""

    name: str
    module: nn.Module
    block: nn.Module
    kind: str  # "timm", "torchvision" or "hf"
    heads: int
    scale: float


def _is_timm_attention(module: nn.Module) -> bool:
    return (
        all(isinstance(getattr(module, a, None), nn.Module) for a in ("qkv", "q_norm", "k_norm", "norm", "proj"))
        and isinstance(getattr(module, "num_heads", None), int)
        and isinstance(getattr(module, "scale", None), float)
    )


def _is_hf_attention(module: nn.Module) -> bool:
    return all(
        isinstance(getattr(module, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj")
    ) and isinstance(getattr(module, "num_attention_heads", None), int)


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The self-attention modules of ``model`` in execution order (timm ``Attention``, ``nn.MultiheadAttention``
    inside torchvision's encoder blocks, Hugging Face ViT/DeiT attention).

    Args:
        model: a vision transformer.

    Returns:
        One :class:`AttentionSite` per block; empty for a model without such attention (a CNN).
    """
    parents = {name: module for name, module in model.named_modules()}
    sites = []
    for name, module in model.named_modules():
        if _is_timm_attention(module):
            kind, heads, scale = "timm", int(module.num_heads), float(module.scale)
        elif isinstance(module, nn.MultiheadAttention):
            if not module.batch_first or not module._qkv_same_embed_dim or module.bias_k is not None:
                continue
            kind, heads, scale = "torchvision", module.num_heads, module.head_dim**-0.5
        elif _is_hf_attention(module):
            head_dim = module.q_proj.out_features // int(module.num_attention_heads)
            scale = float(getattr(module, "scaling", head_dim**-0.5))
            kind, heads = "hf", int(module.num_attention_heads)
        else:
            continue
        block_name = name.rsplit(".", 1)[0] if "." in name else ""
        sites.append(AttentionSite(name, module, parents[block_name], kind, heads, scale))
    return sites


def no_attention_message(method: str, model: nn.Module) -> str:
    """The one-line refusal of an attention method on a model without self-attention."""
    return (
        f"method {method!r} needs a vision transformer's self-attention; {type(model).__name__} has none "
        "(a CNN?): use a layer method (gradcam, eigencam, cam) on it"
    )


def _attention_token_layout(model: nn.Module, x: Tensor) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, patch grid (h, w)) of a ViT for input ``x``, read by :func:`camlens.tokens.token_layout`."""
    layout = token_layout(model, tuple(x.shape[-2:]))
    if layout is None or layout.channels_last:
        raise CamlensError(
            f"cannot read the patch grid of {type(model).__name__}: attention methods support timm, torchvision and "
            "Hugging Face ViTs (patch_embed / patch_size / config.patch_size)"
        )
    return layout.prefix, layout.grid


def _score_projection(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """LeGrad's per-block scores: the model's final normalization and classifier applied to the mean of a block's
    tokens (B, N, C) -> (B, classes), as the paper's code and torchcam do."""
    vit: Any = model  # attributes read by name, per library
    if all(isinstance(getattr(model, a, None), nn.Module) for a in ("norm", "fc_norm", "head")):  # timm ViT
        return lambda z: vit.head(vit.fc_norm(vit.norm(z.mean(1))))
    encoder: Any = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "ln", None), nn.Module) and isinstance(getattr(model, "heads", None), nn.Module):
        return lambda z: vit.heads(encoder.ln(z.mean(1)))  # torchvision VisionTransformer
    base: Any = getattr(model, getattr(model, "base_model_prefix", "") or "-", None)
    if isinstance(getattr(base, "layernorm", None), nn.Module) and isinstance(
        getattr(model, "classifier", None), nn.Module
    ):
        return lambda z: vit.classifier(base.layernorm(z.mean(1)))  # Hugging Face *ForImageClassification
    raise CamlensError(
        f"LeGrad needs the final norm and classifier of {type(model).__name__} to score each block's tokens; "
        "pass score_projection=callable (tokens (B, N, C) -> logits (B, classes))"
    )


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """(B, N, H * d) -> (B, H, N, d)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> Tensor:
    return args[0] if args else kwargs[key]


class _AttentionGradient(torch.autograd.Function):
    """Value: the network's own attention output ``fused``, copied (so the logits do not change).  Gradient: that of
    the explicit e = merge_heads(A v) W^T with respect to A and v, exactly what autograd gives for e, without
    computing e in the forward pass.  ``weight``: torchvision's ``out_proj`` weight where the output is read after
    the output projection, None where it is read before (timm, Hugging Face).  ``fused`` gets no gradient."""

    @staticmethod
    def forward(fused: Tensor, attention: Tensor, v: Tensor, weight: Tensor | None) -> Tensor:
        return fused.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, attention, v, weight = inputs
        ctx.save_for_backward(attention, v, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, Tensor | None, None]:
        attention, v, weight = ctx.saved_tensors
        if weight is not None:
            grad = grad @ weight  # through out_proj: d(e W^T + b)/de
        heads, dim = v.shape[1], v.shape[-1]
        # (B, H, N, d); reshape, not unflatten: this runs under vmap for several explained classes at once
        g = grad.reshape(*grad.shape[:-1], heads, dim).transpose(-3, -2).contiguous()
        grad_attention = g @ v.transpose(-1, -2) if ctx.needs_input_grad[1] else None
        grad_v = attention.transpose(-1, -2) @ g if ctx.needs_input_grad[2] else None
        return None, grad_attention, grad_v, None


_RESHAPING = re.compile(
    r"(Transpose|Permute|View|UnsafeView|Reshape\w*|Clone|Squeeze\w*|Unsqueeze\w*|T|Addmm|Mm)Backward"
)


def _sdpa_node(output: Tensor) -> Any:
    """The autograd node of the fused scaled-dot-product attention that ``output`` was computed from, when it saved
    its query, key and value and ran without mask, dropout or causality; else None.  The search walks back only
    through reshaping nodes and the output projection, so it never reaches an earlier block's attention."""
    frontier: list[Any] = [output.grad_fn]
    seen: set[int] = set()
    while frontier:
        node = frontier.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        name = type(node).__name__
        if "ScaledDotProduct" in name and hasattr(node, "_saved_query"):
            plain = (
                getattr(node, "_saved_attn_mask", None) is None
                and not getattr(node, "_saved_dropout_p", 0.0)
                and not getattr(node, "_saved_is_causal", False)
            )
            return node if plain else None
        if _RESHAPING.match(name):
            frontier.extend(n for n, _ in node.next_functions)
    return None


class _Recorder:
    """The hooks of one call: per site, the attention probabilities (B, H, N, N), passed to ``keep`` (which returns
    what is stored), and optionally the block's output tokens.

    ``graph``: the attention is recomputed in the autograd graph and the network's attention output is replaced by
    :class:`_AttentionGradient` (value unchanged, see the module docstring).  ``stop``: sites whose attention is a
    leaf (computed without graph, then requiring grad) and whose v is detached: no gradient is wanted below them.
    ``cut``: sites whose block input is detached, so a score read above the block does not reach its attention
    through the residual stream.  ``last_rows``: the last site computes only its first ``last_rows`` query rows
    (all a rollout from the class token reads of it)."""

    def __init__(
        self,
        sites: Sequence[AttentionSite],
        *,
        graph: bool,
        stop: Sequence[int] = (),
        cut: Sequence[int] = (),
        keep: Callable[[Tensor], Tensor] = lambda a: a,
        block_outputs: bool = False,
        last_rows: int | None = None,
    ) -> None:
        self.graph, self.keep, self.stop = graph, keep, set(stop)
        self.rows: list[int | None] = [last_rows if i == len(sites) - 1 else None for i in range(len(sites))]
        self.attentions: list[Tensor | None] = [None] * len(sites)
        self.outputs: list[Tensor | None] = [None] * len(sites)
        self._qkv: list[dict[str, Tensor]] = [{} for _ in sites]
        self._handles: list[RemovableHandle] = []
        try:
            for i, site in enumerate(sites):
                self._hook(i, site)
                if i in cut:
                    self._handles.append(site.block.register_forward_pre_hook(self._cut, with_kwargs=True))
                if block_outputs:
                    self._handles.append(site.block.register_forward_hook(self._output_hook(i)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _cut(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (args[0].detach(), *args[1:]), kwargs
        key = next(k for k, v in kwargs.items() if isinstance(v, Tensor))
        return args, {**kwargs, key: kwargs[key].detach()}

    def _output_hook(self, i: int) -> Callable[..., None]:
        def hook(block: nn.Module, args: Any, output: Any) -> None:
            self.outputs[i] = output if isinstance(output, Tensor) else output[0]

        return hook

    def _store(self, i: int, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            self._qkv[i][name] = output

        return hook

    def _attention(self, i: int, q: Tensor, k: Tensor, scale: float) -> Tensor:
        """A = softmax(q k^T * scale) of site i (B, H, rows, N), recorded; in the graph unless site i stops it."""
        b, h, n, d = k.shape
        rows = self.rows[i] or q.shape[2]
        tracked = self.graph and i not in self.stop and torch.is_grad_enabled()
        with torch.set_grad_enabled(tracked):
            # contiguous (B H, rows, d) and (B H, N, d) operands (the second read transposed by the BLAS): CPU bmm is
            # several times faster on them than on timm's permuted views; scaling q rather than q k^T touches N/d
            # times fewer values
            qs = (q[:, :, :rows] * scale).reshape(b * h, rows, d)
            attention = torch.softmax(torch.bmm(qs, k.reshape(b * h, n, d).transpose(1, 2)), dim=-1)
            attention = attention.view(b, h, rows, n)
        if self.graph and not tracked:
            attention.requires_grad_()
        self.attentions[i] = self.keep(attention)
        return attention

    def _replace(self, i: int, fused: Tensor, attention: Tensor, v: Tensor, weight: Tensor | None = None) -> Tensor:
        """The network's attention output with the explicit path's gradient (:class:`_AttentionGradient`)."""
        if i in self.stop:
            v = v.detach()
        return _AttentionGradient.apply(fused.detach(), attention, v, None if weight is None else weight.detach())

    def _hook(self, i: int, site: AttentionSite) -> None:
        m: Any = site.module  # submodules read by name, per library
        add = self._handles.append
        if site.kind == "timm":
            add(m.q_norm.register_forward_hook(self._store(i, "q")))
            add(m.k_norm.register_forward_hook(self._store(i, "k")))
            add(m.qkv.register_forward_hook(self._store(i, "qkv")))

            def merged_timm(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
                s = self._qkv[i]
                attention = self._attention(i, s["q"], s["k"], site.scale)
                v = s["qkv"].unflatten(-1, (3, site.heads, -1))[:, :, 2].transpose(1, 2)
                s.clear()
                return (self._replace(i, args[0], attention, v), *args[1:]) if self.graph else None

            add(m.norm.register_forward_pre_hook(merged_timm))
        elif site.kind == "hf":
            for name in ("q", "k", "v"):
                add(getattr(m, f"{name}_proj").register_forward_hook(self._store(i, name)))

            def merged_hf(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
                s = self._qkv[i]
                q, k, v = (_split_heads(s[n], site.heads) for n in ("q", "k", "v"))
                attention = self._attention(i, q, k, site.scale)
                s.clear()
                return (self._replace(i, args[0], attention, v), *args[1:]) if self.graph else None

            add(m.o_proj.register_forward_pre_hook(merged_hf))
        else:

            def after_mha(
                module: nn.MultiheadAttention,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                output: tuple[Tensor, Tensor | None],
            ) -> tuple[Tensor, Tensor | None] | None:
                # with gradients the module's fused attention saved its q, k, v for backward: read them there
                # rather than recompute the input projection; its fast path (no grad) leaves no node to read
                node = _sdpa_node(output[0]) if self.graph and output[0].grad_fn is not None else None
                if node is not None:
                    q, k, v = node._saved_query, node._saved_key, node._saved_value
                    scale = site.scale if node._saved_scale is None else float(node._saved_scale)
                else:
                    query = _first_tensor(args, kwargs, "query")
                    with torch.set_grad_enabled(self.graph and i not in self.stop and torch.is_grad_enabled()):
                        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias).chunk(3, -1)
                    q, k, v = (_split_heads(t, site.heads) for t in qkv)
                    scale = site.scale
                attention = self._attention(i, q, k, scale)
                if not self.graph:
                    return None
                return self._replace(i, output[0], attention, v, module.out_proj.weight), output[1]

            add(m.register_forward_hook(after_mha, with_kwargs=True))


def fuse_heads(attention: Tensor, head_fusion: str = "mean") -> Tensor:
    """Attention (B, H, N, N) fused over heads by ``mean``, ``max`` or ``min`` (Abnar & Zuidema's head fusion).

    Args:
        attention: attention probabilities, heads on dim 1.
        head_fusion: "mean", "max" or "min".

    Returns:
        (B, N, N).
    """
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise CamlensError(f"head_fusion={head_fusion!r}: use one of {', '.join(HEAD_FUSIONS)}")


def rollout_matrix(attention: Tensor, discard_ratio: float = 0.0, prefix_tokens: int = 1) -> Tensor:
    """One layer's rollout factor from head-fused attention A (B, N, N): the ``discard_ratio`` fraction of the
    lowest entries set to 0 (entries attending to the prefix tokens are never dropped), then
    A_hat = rownorm(0.5 A + 0.5 I), the residual connection as an identity (Abnar & Zuidema, 2020, Sec. 3).

    Args:
        attention: head-fused attention (B, N, N), rows the query tokens.
        discard_ratio: fraction in [0, 1) of the non-prefix-column entries of each sample to zero.
        prefix_tokens: the class / distillation / register tokens at the start of the sequence.

    Returns:
        (B, N, N) row-stochastic.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise CamlensError(f"discard_ratio={discard_ratio}: use a fraction in [0, 1)")
    a = attention.float()
    if discard_ratio > 0:
        a = a.clone()
        cols = a[:, :, prefix_tokens:]
        flat = cols.reshape(a.shape[0], -1)
        drop = int(flat.shape[1] * discard_ratio)
        if drop:
            flat = flat.scatter(1, flat.topk(drop, dim=1, largest=False).indices, 0.0)
            a[:, :, prefix_tokens:] = flat.view_as(cols)
    a = 0.5 * a
    a.diagonal(dim1=-2, dim2=-1).add_(0.5)  # + 0.5 I
    return a / a.sum(-1, keepdim=True)


def _query_row(batch: int, tokens: int, prefix: int, device: torch.device) -> Tensor:
    """The row that reads a relevance matrix: the class token's (e_0) with prefix tokens, the mean over all tokens
    (1/N) without (a model pooling its patch tokens has no single token that carries the prediction)."""
    row = torch.zeros(batch, tokens, device=device)
    if prefix:
        row[:, 0] = 1.0
    else:
        row += 1.0 / tokens
    return row


def attention_rollout(
    attentions: Sequence[Tensor], *, head_fusion: str = "mean", discard_ratio: float = 0.0, prefix_tokens: int = 1
) -> Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    A_hat_l = rownorm(0.5 fuse_h(A_l) + 0.5 I);  R = A_hat_L ... A_hat_1;  relevance = R[cls, patches], or the mean
    of R's rows over patches for a model without prefix tokens.

    Args:
        attentions: per block in execution order, attention probabilities (B, H, N, N).
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: see :func:`rollout_matrix`.
        prefix_tokens: the class / distillation / register tokens at the start of the sequence.

    Returns:
        (B, N - prefix_tokens) relevance of each patch token.
    """
    first = attentions[0]
    row = _query_row(first.shape[0], first.shape[-1], prefix_tokens, first.device)
    return _roll_out(row, [fuse_heads(a, head_fusion) for a in attentions], discard_ratio, prefix_tokens)


def _roll_out(row: Tensor, fused: Sequence[Tensor], discard_ratio: float, prefix_tokens: int) -> Tensor:
    """row^T A_hat_L ... A_hat_1 from the left, vector times matrix, for head-fused attentions (B, N, N); the last
    may hold only its first query rows (those where ``row`` is nonzero).  Without discarding, row^T A_hat =
    0.5 (r^T A + r) with r = row / rowsum(0.5 A + 0.5 I): A_hat is never formed."""
    if not 0.0 <= discard_ratio < 1.0:
        raise CamlensError(f"discard_ratio={discard_ratio}: use a fraction in [0, 1)")
    for attention in reversed(fused):
        a = attention.float()
        r = row[:, : a.shape[-2]]
        if discard_ratio > 0:
            row = torch.einsum("bi,bij->bj", r, rollout_matrix(a, discard_ratio, prefix_tokens))
            continue
        r = r / (0.5 * a.sum(-1) + 0.5)
        row = 0.5 * torch.bmm(r[:, None], a)[:, 0]
        row[:, : r.shape[1]] += 0.5 * r
    return row[:, prefix_tokens:]


def _block_indices(blocks: int | Sequence[int] | None, count: int, default: int | None) -> list[int]:
    """Indices of the blocks used: None (the method's default: the last ``default`` blocks, all if None), an int
    k (the last k blocks) or explicit indices (negative counted from the end)."""
    if blocks is None:
        blocks = count if default is None else default
    if isinstance(blocks, int):
        if not 1 <= blocks <= count:
            raise CamlensError(f"blocks={blocks}: the model has {count} attention blocks; use 1..{count}")
        return list(range(count - blocks, count))
    out = sorted({b % count if -count <= b < count else count for b in blocks})
    if not out or out[-1] >= count:
        raise CamlensError(f"blocks={list(blocks)}: give block indices within 0..{count - 1}")
    return out


class AttentionExplainer(Explainer):
    """Base of the methods that read a transformer's attention.  ``blocks``: which attention blocks (None: the
    method's default; k: the last k; or a list of indices).  ``layer`` is not used (maps are at the patch grid)
    and must be None.  Maps are raw (B, N, h, w) on the patch grid, prefix tokens (class, distillation, registers)
    left out; every call places its hooks and removes them before returning."""

    needs_attention = True
    default_blocks: ClassVar[int | None] = None

    def __init__(self, model: nn.Module, layer: Any = None, *, blocks: int | Sequence[int] | None = None) -> None:
        """Args:
        model: a timm, torchvision or Hugging Face vision transformer (wrappers looked through).
        layer: must be None: these methods read the attention of blocks, not one layer.
        blocks: the blocks whose attention is read: the last k (an int), a list of indices, or None for the
            method's default.
        """
        super().__init__(model, None)
        if layer is not None:
            raise CamlensError(
                f"{self.name} reads the attention of transformer blocks, not a layer: pass blocks= (the last k blocks "
                "or a list of indices) instead of layer="
            )
        self.blocks = blocks
        self._sites: list[AttentionSite] | None = None
        self.sites()  # a model without self-attention is refused here, before any work

    def sites(self) -> list[AttentionSite]:
        """The attention sites this explainer reads, in execution order."""
        if self._sites is None:
            found = attention_sites(self.model)
            if not found:
                raise CamlensError(no_attention_message(self.name, self.model))
            self._sites = [found[i] for i in _block_indices(self.blocks, len(found), self.default_blocks)]
        return self._sites

    def _layer_name(self) -> str:
        sites = self.sites()
        return sites[0].name if len(sites) == 1 else f"{sites[0].name}..{sites[-1].name}"

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1) -> CAMResult:
        """Explain ``classes`` (see :func:`camlens.methods.base.select_classes`; default the ``topk`` best).

        Args:
            x: images (B, C, H, W) with H, W multiples of the patch size.
            classes: classes to explain, or None for the ``topk`` highest logits.
            topk: how many of the highest logits, when ``classes`` is None.

        Returns:
            :class:`CAMResult` with maps (B, N, h, w) on the patch grid.
        """
        if self.needs_gradients and torch.is_inference_mode_enabled():
            raise CamlensError(
                f"{type(self).__name__} needs gradients, which torch.inference_mode() forbids; call it outside "
                "inference_mode (torch.no_grad() is fine) or use attention rollout"
            )
        prefix, grid = _attention_token_layout(self.model, x)
        logits, chosen, relevance = self._relevance(x, classes, topk, prefix)
        if relevance.shape[-1] != grid[0] * grid[1]:
            raise CamlensError(
                f"{type(self.model).__name__} has {relevance.shape[-1] + prefix} tokens, not {prefix} prefix + "
                f"{grid[0]}x{grid[1]} patches for input {tuple(x.shape[-2:])}"
            )
        maps = relevance.reshape(*relevance.shape[:2], *grid)
        return CAMResult(logits=logits.detach(), classes=chosen, maps=maps.detach(), layer=self._layer_name())

    def _relevance(self, x: Tensor, classes: ClassSpec, topk: int, prefix: int) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (B, C), classes (B, N), relevance (B, N, patches))."""
        raise NotImplementedError


class AttentionRollout(AttentionExplainer):
    """Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    A_l = fuse_h softmax(q k^T / sqrt(d)) (head fusion ``mean``, ``max`` or ``min``), optionally with the lowest
    ``discard_ratio`` of each sample's entries set to 0 (never those attending to the class/prefix tokens, as in
    the common implementation of Gildenblat's vit-explain); A_hat_l = rownorm(0.5 A_l + 0.5 I) (the residual as
    an identity); R = A_hat_L ... A_hat_1; map = R[cls, patches].  A model without prefix tokens (patch tokens
    pooled) takes the mean of R's rows instead.

    Class-agnostic: every explained class gets the same map (``classes`` is still filled).  One forward pass with
    no gradients; the fused attention keeps running, q k^T is recomputed beside it.
    """

    name = "rollout"
    thread_safe = False

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        blocks: int | Sequence[int] | None = None,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
    ) -> None:
        """Args:
        model: a vision transformer.
        layer: must be None (see :class:`AttentionExplainer`).
        blocks: the blocks rolled out (default: all).
        head_fusion: how the heads' attentions are fused: ``mean``, ``max`` or ``min``.
        discard_ratio: the fraction of each fused attention's lowest entries set to zero (the class token's
            row and column kept), in [0, 1).
        """
        super().__init__(model, layer, blocks=blocks)
        if head_fusion not in HEAD_FUSIONS:
            raise CamlensError(f"head_fusion={head_fusion!r}: use one of {', '.join(HEAD_FUSIONS)}")
        if not 0.0 <= discard_ratio < 1.0:
            raise CamlensError(f"discard_ratio={discard_ratio}: use a fraction in [0, 1)")
        self.head_fusion, self.discard_ratio = head_fusion, discard_ratio

    def _relevance(self, x: Tensor, classes: ClassSpec, topk: int, prefix: int) -> tuple[Tensor, Tensor, Tensor]:
        def keep(attention: Tensor) -> Tensor:  # heads fused in the hook: (B, 1, N, N) stored, not (B, H, N, N)
            return fuse_heads(attention, self.head_fusion).unsqueeze(1)

        # the class token's row of the product reads only the last block's prefix rows (not with discarding,
        # whose threshold is over the whole matrix)
        rows = prefix if prefix and not self.discard_ratio else None
        with _Recorder(self.sites(), graph=False, keep=keep, last_rows=rows) as rec, torch.no_grad():
            output = self.model(x)
        logits = output_logits(output)
        chosen = select_classes(logits, classes, topk)
        fused = [a[:, 0] for a in rec.attentions if a is not None]
        row = _query_row(x.shape[0], fused[0].shape[-1], prefix, x.device)
        relevance = _roll_out(row, fused, self.discard_ratio, prefix)
        return logits, chosen, relevance[:, None].expand(-1, chosen.shape[1], -1)


class _GradientAttention(AttentionExplainer):
    needs_gradients = True
    thread_safe = False

    def _gradients(
        self,
        x: Tensor,
        classes: ClassSpec,
        topk: int,
        stop: Sequence[int],
        cut: Sequence[int],
        block_outputs: bool,
        scores: Callable[[Tensor, Tensor, _Recorder], Tensor],
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """One forward pass with the attention in the graph, then d scores / d A_l for every site from one backward
        (input gradients only: no parameter gradient is computed).  ``stop``, ``cut``: see :class:`_Recorder`.
        Returns logits, classes, attentions (B, H, N, N) and their gradients (B, N, H, N, N)."""
        sites = self.sites()
        # the whole pass in grad mode, as a plain model(x): torchvision's attention takes another kernel without
        # grad, so a pass that switched modes midway would not give the caller's logits bit for bit
        with (
            _Recorder(sites, graph=True, stop=stop, cut=cut, block_outputs=block_outputs) as rec,
            torch.enable_grad(),
        ):
            output = self.model(x)
        logits = output_logits(output)
        chosen = select_classes(logits.detach(), classes, topk)
        attentions = [a for a in rec.attentions if a is not None]
        with torch.enable_grad():
            grads = score_gradients(scores(logits, chosen, rec), attentions, [s.name for s in sites])
        return logits, chosen, attentions, grads


class GenericAttentionCAM(_GradientAttention):
    """Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
    Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"), for self-attention (their eq. 5-6).

    A_bar_l = E_h[(grad_l ⊙ A_l)^+] with grad_l = d y_c / d A_l;  R = I;  R <- R + A_bar_l R for l = 1..L;
    map = R[cls, patches] (the mean of R's rows for a model without prefix tokens).

    One forward pass with the attention in the autograd graph, one backward to the first block used (the whole
    network by default, as the paper does: ``blocks=k`` starts k blocks from the end, cheaper).
    """

    name = "gae"

    def _relevance(self, x: Tensor, classes: ClassSpec, topk: int, prefix: int) -> tuple[Tensor, Tensor, Tensor]:
        logits, chosen, attentions, grads = self._gradients(
            x,
            classes,
            topk,
            stop=[0],  # nothing below the first block's attention is needed
            cut=[],
            block_outputs=False,
            scores=lambda logits, chosen, rec: logits.gather(1, chosen),
        )
        b, count, heads, n = grads[0].shape[:4]
        row = _query_row(b, n, prefix, x.device)[:, None].expand(-1, count, -1)
        for attention, grad in zip(reversed(attentions), reversed(grads)):  # row^T (I + A_bar_L) ... (I + A_bar_1)
            # row^T A_bar = sum_{h, i} (row_i / H) (grad ⊙ A)^+_hij: one vector-matrix product over (h, i), the
            # head mean never formed; the gradients are this call's own, so the product is taken in place
            positive = grad.float().mul_(attention.detach().float()[:, None]).clamp_(min=0)
            weights = (row / heads)[:, :, None, :].expand(-1, -1, heads, -1).reshape(b * count, 1, heads * n)
            row = row + torch.bmm(weights, positive.reshape(b * count, heads * n, n)).view(b, count, n)
        return logits, chosen, row[..., prefix:]


class LeGrad(_GradientAttention):
    """LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, 2024, "LeGrad: An Explainability Method for
    Vision Transformers via Feature Formation Sensitivity").

    For each block l used: s_l = head(norm(mean_tokens Z_l)) (the model's final norm and classifier applied to the
    mean of block l's output tokens, as the paper's code and torchcam do); E_l = mean_{h, i} ReLU(d s_l,c / d A_l)
    over heads h and query tokens i; map = mean_l E_l[patches] (the paper sums, then min-max normalizes: the same
    map after :func:`camlens.normalize`).  Attention values are not multiplied in.

    ``blocks`` defaults to the last 2, the paper code's default (``layer_index=-2``).  Each block's input is
    detached and each A_l is a leaf, so one backward of sum_l s_l gives every d s_l / d A_l at once (s_l' for
    l' > l no longer reaches A_l) and never leaves the blocks used.
    Equal to torchcam 0.5.0's ``LeGrad`` on torchvision's ViT (unnormalized) with the same blocks; also timm and
    Hugging Face ViTs.  ``score_projection`` maps tokens (B, N, C) to logits for other models.
    """

    name = "legrad"
    default_blocks = 2

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        blocks: int | Sequence[int] | None = None,
        score_projection: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Args:
        model: a vision transformer.
        layer: must be None (see :class:`AttentionExplainer`).
        blocks: the blocks whose attention is read (default: the last two, as the paper's code).
        score_projection: a block's tokens (B, N, C) -> class scores (B, classes); default the model's final
            norm and head on the mean token, as the paper's code and torchcam.
        """
        super().__init__(model, layer, blocks=blocks)
        self.score_projection = score_projection

    def _relevance(self, x: Tensor, classes: ClassSpec, topk: int, prefix: int) -> tuple[Tensor, Tensor, Tensor]:
        project = self.score_projection or _score_projection(self.model)

        def scores(logits: Tensor, chosen: Tensor, rec: _Recorder) -> Tensor:
            tokens = [z for z in rec.outputs if z is not None]
            return torch.stack([project(z).gather(1, chosen) for z in tokens]).sum(0)

        every = range(len(self.sites()))
        logits, chosen, _, grads = self._gradients(
            x, classes, topk, stop=every, cut=every, block_outputs=True, scores=scores
        )
        per_block = [g.float().clamp_(min=0).mean((2, 3)) for g in grads]  # (B, N, keys)
        return logits, chosen, torch.stack(per_block).mean(0)[..., prefix:]


__all__: Sequence[str] = [
    "AttentionExplainer",
    "AttentionRollout",
    "AttentionSite",
    "GenericAttentionCAM",
    "LeGrad",
    "attention_rollout",
    "attention_sites",
    "fuse_heads",
    "no_attention_message",
    "rollout_matrix",
]
