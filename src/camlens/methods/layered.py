"""Machinery shared by the methods that explain from one or more inner layers (Grad-CAM family, Score-CAM,
Ablation-CAM, Eigen-CAM): which layers, hooks that act only inside a call, the forward pass that starts autograd
at the layer, what is explained (classes or target callables), token reshapes and multi-layer fusion."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence, TypedDict, Union

import torch
from torch import Tensor

from ..capture import (
    HookSet,
    LayerSpec,
    ModelLike,
    _outermost_name,
    find_spatial_layer,
    output_logits,
    resolve_module,
    spatial_ranks,
    trace_calls,
)
from ..errors import CamlensError
from ..maps import fuse
from ..targets import Target, bind_targets
from ..tokens import TokenLayout, token_layout
from .base import CAMResult, ClassSpec, Explainer, select_classes

Reshape = Callable[..., Tensor]
TargetSpec = Union[None, Callable[..., Tensor], Sequence[Callable[..., Tensor]]]


class LayerOptions(TypedDict, total=False):
    """The keyword options of every layer method (see :class:`LayerExplainer`); subclasses take their own options
    and pass these on with ``**options``."""

    reshape: Reshape | None
    fuse: str


def _takes_rows(fn: Callable[..., Any]) -> bool:
    """Whether a target callable takes ``(output, rows)`` rather than ``(output)``: a built-in target, or a
    callable with two positional parameters without defaults (or one named ``rows``)."""
    if isinstance(fn, Target):
        return True
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
    return len(required) >= 2 or any(p.name == "rows" for p in params[1:2])


class Scorer:
    """The explained scores of a model output, (R, N): logit ``classes[rows[r], n]`` of row r, or target n.
    ``rows`` maps each output row to its source sample (perturbation methods run perturbed copies of several
    samples in one batch): built-in targets (:mod:`camlens.targets`) and callables taking ``(output, rows)``
    receive it, so per-image targets stay right; a callable taking ``(output)`` alone must act row by row."""

    def __init__(self, classes: Tensor | None = None, targets: Sequence[Callable[..., Tensor]] | None = None) -> None:
        self.classes, self.targets = classes, targets
        self._rows = [_takes_rows(t) for t in targets or ()]

    @property
    def count(self) -> int:
        """N, the explained scores per sample."""
        if self.targets is not None:
            return len(self.targets)
        assert self.classes is not None
        return self.classes.shape[1]

    def valid(self, batch: int, device: torch.device) -> Tensor | None:
        """(B, N) bool: False where a built-in target explains nothing for a sample; None when all do."""
        if self.targets is None:
            return None
        masks = [t.valid(batch, device) if isinstance(t, Target) else None for t in self.targets]
        if all(m is None for m in masks):
            return None
        full = torch.ones(batch, dtype=torch.bool, device=device)
        return torch.stack([full if m is None else m.to(device) for m in masks], 1)

    def __call__(self, output: Any, rows: Tensor) -> Tensor:
        if self.targets is None:
            assert self.classes is not None
            logits = output_logits(output)
            return logits.gather(1, self.classes.to(logits.device)[rows.to(logits.device)])
        values = []
        for target, takes_rows in zip(self.targets, self._rows):
            value = target(output, rows) if takes_rows else target(output)
            if not isinstance(value, Tensor) or value.shape != (len(rows),):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise CamlensError(
                    f"target must return one scalar per sample, shape ({len(rows)},); it returned {shape}"
                )
            values.append(value)
        return torch.stack(values, 1)


def no_autocast(t: Tensor) -> torch.autocast:
    """Map arithmetic (weights, einsums, projections) in float32 also inside the caller's ``torch.autocast``,
    which would otherwise round those matrix products to bfloat16/float16 a second time; the model's own passes
    keep running under the caller's autocast."""
    return torch.autocast(t.device.type, enabled=False)


def _reshape_takes_size(fn: Reshape) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class LayerExplainer(Explainer):
    """Base of the layer methods.  ``layer``: None (automatic: a token model's default layer, see
    :func:`camlens.tokens.token_layout`; otherwise :func:`camlens.capture.find_spatial_layer`; with ``reshape``,
    the last layer whose gradient reaches more than one token), a name, a module, or a list of them (maps fused by
    :func:`camlens.fuse` with ``fuse`` = "max" or "mean").  Token models known to
    :func:`camlens.tokens.token_layout` (timm, torchvision and Hugging Face ViT/DeiT/Swin) need no configuration:
    their (B, T, C) tokens and (B, h, w, C) stages are laid on the patch grid read from the model.
    ``reshape(output, input_size)`` (or ``reshape(output)``) overrides that and turns a layer's output into
    (B, K, h, w), e.g. :func:`camlens.tokens_to_grid`.  The result's ``maps`` are raw per the method's formula
    for one layer; fused maps are in [0, 1] by the fusion rule.

    Layers may be 1-D (B, K, L), 2-D (B, K, h, w) or 3-D (B, K, d, h, w): maps are (B, N, *S) at the layer's
    resolution S.  Subclasses implement ``_explain(x, output, acts, scorer)`` returning one (B, N, *S) map tensor
    per layer.
    """

    fuses_layers = True

    def __init__(
        self,
        model: ModelLike,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        reshape: Reshape | None = None,
        fuse: str = "max",
    ) -> None:
        """Args:
        model: the model (wrappers looked through, see :class:`~camlens.methods.base.Explainer`).
        layer: None (automatic), a layer name or module, or a list of them (maps fused).
        reshape: turns a layer's output into (B, K, h, w) (``reshape(output, input_size)`` or
            ``reshape(output)``), e.g. :func:`camlens.tokens_to_grid`; None for spatial layers.
        fuse: how the maps of several layers combine: ``"max"`` or ``"mean"``.
        """
        super().__init__(model, layer)
        if fuse not in ("max", "mean"):
            raise CamlensError(f"fuse={fuse!r}: use 'max' or 'mean'")
        self.reshape = reshape
        self.fuse = fuse
        self._reshape_size = reshape is not None and _reshape_takes_size(reshape)
        self._hooks: HookSet | None = None
        self.layer_names: list[str] = []
        self._layouts: dict[tuple[int, ...], TokenLayout | None] = {}

    # ----- layers and hooks
    def prepare(self, x: Tensor) -> None:
        self._ensure_hooks(x)

    def close(self) -> None:
        super().close()
        self._hooks = None

    def _ensure_hooks(self, x: Tensor) -> HookSet:
        hooks = self._hooks
        if hooks is not None:
            return hooks
        with self._setup_lock:
            if self._hooks is None:
                if not self.layer_names:
                    self.layer_names = self._choose_layers(x)
                modules = [resolve_module(self.model, name)[1] for name in self.layer_names]
                self._hooks = HookSet(modules)
                self._captures.append(self._hooks)
            return self._hooks

    def _choose_layers(self, x: Tensor) -> list[str]:
        if self.layer is None:
            if self.reshape is not None:
                return [self._probe_token_layer(x)]
            layout = self.token_layout(x)
            if layout is not None and layout.layer is not None:
                return [layout.layer]
            return [find_spatial_layer(self.model, x)]
        specs = list(self.layer) if isinstance(self.layer, (list, tuple)) else [self.layer]
        if not specs:
            raise CamlensError("layer=[] names no layer; give a name, a module, a list of them, or None")
        # a Sequence that is not a list/tuple is not a layer list: resolve_module refuses it with a clear error
        return [resolve_module(self.model, spec)[0] for spec in specs]

    def _probe_token_layer(self, x: Tensor) -> str:
        """For token models: the last module whose reshaped output is a spatial map with the input's aspect ratio
        and the channel width of the last such output (the residual stream), and whose gradient (of the top
        logit) reaches more than one position; after a ViT's last attention only the class token carries the
        prediction, so this is the last block's first normalization."""
        if torch.is_inference_mode_enabled():
            raise CamlensError(
                "choosing a token layer needs gradients; call outside torch.inference_mode() or give layer="
            )
        with torch.enable_grad():
            calls, output = trace_calls(self.model, x.detach().requires_grad_(), keep_last=10**6)
            candidates: list[Any] = []  # (call index, channels), then call indices
            for i, call in enumerate(calls):
                if isinstance(call.output, Tensor) and call.output.requires_grad:
                    try:
                        grid = self._spatial(call.output.detach(), x)
                    except (CamlensError, RuntimeError):
                        continue
                    h, w = grid.shape[-2:] if grid.ndim == 4 else (0, 0)
                    if h * w > 1 and h * x.shape[-1] == w * x.shape[-2]:
                        candidates.append((i, grid.shape[1]))
            if not candidates:
                raise CamlensError("no layer output becomes a spatial map with this reshape; give layer=")
            candidates = [i for i, width in candidates if width == candidates[-1][1]]
            score = output_logits(output).max(1).values.sum()
            grads = torch.autograd.grad(score, [calls[i].output for i in candidates], allow_unused=True)
        for i, grad in zip(reversed(candidates), reversed(grads)):
            if grad is not None and (self._spatial(grad, x).abs().sum(1) > 0).flatten(1).sum(1).min() > 1:
                return _outermost_name(calls[: i + 1], calls[i].output, calls[i].name)
        raise CamlensError("no token layer receives gradient at more than one position; give layer=")

    def token_layout(self, x: Tensor) -> TokenLayout | None:
        """The model's token layout for inputs like ``x`` (:func:`camlens.tokens.token_layout`, read once per input
        size); None with ``reshape`` (which overrides it) and for models without tokens."""
        if self.reshape is not None:
            return None
        size = tuple(x.shape[2:])
        if size not in self._layouts:
            self._layouts[size] = token_layout(self.model, size) if x.ndim == 4 else None
        return self._layouts[size]

    def _channel_dim(self, t: Tensor, x: Tensor) -> int:
        """The channel axis of layer output ``t`` as the model produces it (the output's last axis with ``reshape``,
        as for tokens and channels-last maps)."""
        if self.reshape is not None:
            return -1
        layout = self.token_layout(x)
        return 1 if layout is None else layout.channel_dim(t)

    def _spatial(self, t: Tensor, x: Tensor) -> Tensor:
        """A layer output (B, ...) as (B, K, *S) with S = (L,), (h, w) or (d, h, w): through ``reshape`` when
        given, else on a token model's patch grid (:meth:`token_layout`)."""
        if self.reshape is not None:
            t = self.reshape(t, tuple(x.shape[-2:])) if self._reshape_size else self.reshape(t)
        else:
            layout = self.token_layout(x)
            if layout is not None:
                return layout.to_grid(t)
            if t.ndim == 3 and t.ndim - 2 not in spatial_ranks(x):
                raise CamlensError(
                    f"the layer outputs tokens {tuple(t.shape)} for a {x.ndim - 2}-D input, and the token layout of "
                    f"{type(self.model).__name__} could not be read from the model (no timm num_prefix_tokens with "
                    "patch_embed.patch_size, nor a torchvision or Hugging Face ViT/Swin): pass reshape=, e.g. "
                    "functools.partial(camlens.tokens_to_grid, prefix_tokens=1) for one class token"
                )
        if not 3 <= t.ndim <= 5:
            raise CamlensError(
                f"layer output has shape {tuple(t.shape)}, not (B, K, L), (B, K, h, w) or (B, K, d, h, w); "
                "pass reshape= (camlens.tokens_to_grid for ViT/Swin tokens) or pick a convolutional layer"
            )
        return t

    # ----- the forward pass
    def _forward(self, x: Tensor, grad: bool) -> tuple[Any, list[Tensor]]:
        """One forward pass: the model output and each layer's output.  With ``grad``, everything before the
        first hooked layer to run goes without autograd; its output becomes a leaf that requires grad and
        autograd records from there on (the later layers' outputs are non-leaf tensors of that graph).  The
        network continues on a clone, so in-place ops after the layer (inplace ReLU) leave the capture intact."""
        hooks = self._ensure_hooks(x)
        store: dict[int, Tensor] = {}
        started = False

        def capture(index: int, output: Any) -> Tensor:
            nonlocal started
            if not isinstance(output, Tensor):
                raise CamlensError(
                    f"layer {self.layer_names[index]!r} returns {type(output).__name__}, not a tensor; pick a layer "
                    "whose output is a tensor"
                )
            if grad and not started:
                started = True
                torch.set_grad_enabled(True)  # undone when the surrounding no_grad block exits
                output = output.detach().requires_grad_()
            store[index] = output
            return output.clone()

        with hooks.active(capture), torch.no_grad():
            output = self.model(x)
        missing = [name for i, name in enumerate(self.layer_names) if i not in store]
        if missing:
            raise CamlensError(f"layer {missing[0]!r} did not run during the forward pass; check the layer name")
        return output, [store[i] for i in range(len(self.layer_names))]

    def _select(
        self, x: Tensor, output: Any, classes: ClassSpec, topk: int, target: TargetSpec
    ) -> tuple[Tensor, Tensor, Scorer]:
        batch = x.shape[0]
        if target is None:
            logits = output_logits(output)
            if logits.ndim != 2:
                raise CamlensError(
                    f"model output has shape {tuple(logits.shape)}, not (batch, classes); explain it with target=callable"
                )
            chosen = select_classes(logits.detach(), classes, topk)
            return logits, chosen, Scorer(classes=chosen)
        if classes is not None:
            raise CamlensError("give either classes or target, not both")
        targets = [target] if callable(target) else list(target)
        if not targets or not all(callable(t) for t in targets):
            raise CamlensError("target must be a callable (model output -> (B,) scores) or a list of them")
        bound = bind_targets(targets, output, x)
        scorer = Scorer(targets=bound)
        try:
            logits = output_logits(output)
        except CamlensError:
            with torch.no_grad():
                logits = scorer(output, torch.arange(batch, device=x.device))
        chosen = torch.stack(
            [
                t.classes(batch, x.device)
                if isinstance(t, Target)
                else torch.full((batch,), -1, dtype=torch.long, device=x.device)
                for t in bound
            ],
            1,
        )
        return logits, chosen, scorer

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1, target: TargetSpec = None) -> CAMResult:
        """Explain ``classes`` (see :func:`camlens.methods.base.select_classes`; default the ``topk`` best) or the
        scores of ``target``: a built-in target of :mod:`camlens.targets`, a callable (model output -> (B,), or
        ``(output, rows)`` -> (R,) with ``rows`` the source sample of each output row), or a list of them; maps
        (B, N, *S).  With targets, ``target_scores`` holds their scores on the input, NaN where a target explains
        nothing for a sample (its map is zero).

        Args:
            x: the preprocessed batch (B, C, *S) the model takes.
            classes: the classes to explain; None for the ``topk`` best (ignored when ``target`` is given).
            topk: how many of the best classes when ``classes`` is None.
            target: a built-in target, a callable, or a list of them, explained instead of classes.

        Returns:
            The :class:`~camlens.methods.base.CAMResult` with raw maps (B, N, *S) at the layer's resolution.
        """
        if self.needs_gradients and torch.is_inference_mode_enabled():
            raise CamlensError(
                f"{type(self).__name__} needs gradients, which torch.inference_mode() forbids; call it outside "
                "inference_mode (torch.no_grad() is fine) or use a gradient-free method (CAM, ScoreCAM, EigenCAM)"
            )
        output, acts = self._forward(x, self.needs_gradients)
        logits, chosen, scorer = self._select(x, output, classes, topk, target)
        per_layer = self._explain(x, output, acts, scorer)
        if len({m.ndim for m in per_layer}) > 1:
            raise CamlensError(
                f"layers {self.layer_names} give maps of different spatial ranks; fuse layers of one rank"
            )
        maps = per_layer[0] if len(per_layer) == 1 else fuse(per_layer, self.fuse, spatial_dims=per_layer[0].ndim - 2)
        values = None
        if scorer.targets is not None:
            with torch.no_grad():
                values = scorer(output, torch.arange(x.shape[0], device=x.device)).detach().float()
            valid = scorer.valid(x.shape[0], maps.device)
            if valid is not None:
                maps = torch.where(valid.view(*valid.shape, *[1] * (maps.ndim - 2)), maps, torch.zeros_like(maps))
                values = torch.where(valid.to(values.device), values, torch.full_like(values, float("nan")))
        return CAMResult(
            logits=logits.detach(),
            classes=chosen,
            maps=maps.detach(),
            layer="+".join(self.layer_names),
            target_scores=values,
        )

    def _explain(self, x: Tensor, output: Any, acts: list[Tensor], scorer: Scorer) -> list[Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, layer={self.layer!r})"


def score_gradients(scores: Tensor, inputs: Sequence[Tensor], names: Sequence[str]) -> list[Tensor]:
    """d scores[b, n] / d inputs[b], shaped (B, N, *input.shape[1:]) per input, from one backward pass.

    Samples are assumed independent (a model in eval mode), so the sum over the batch separates them; the N
    explained scores of a sample get one vector-Jacobian product each, batched with ``is_grads_batched``."""
    if not scores.requires_grad:
        raise CamlensError(
            f"the explained score does not depend on layer {names[0]!r} through autograd: the layer runs after "
            "the output, or the model detaches or disables gradients after it; pick a layer that feeds the output"
        )
    count = scores.shape[1]
    if count == 1:
        grads: Sequence[Tensor | None] = torch.autograd.grad(scores.sum(), list(inputs), allow_unused=True)
        grads = [None if g is None else g.unsqueeze(1) for g in grads]
    else:
        pick = torch.eye(count, dtype=scores.dtype, device=scores.device)[:, None, :].expand(count, *scores.shape)
        try:
            grads = torch.autograd.grad(
                scores, list(inputs), pick, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        except RuntimeError:  # a backward op without a batching rule: one product per explained score instead
            per_slot = [
                torch.autograd.grad(scores[:, n].sum(), list(inputs), retain_graph=n < count - 1, allow_unused=True)
                for n in range(count)
            ]
            grads = [None if slot[0] is None else torch.stack(slot, 0) for slot in zip(*per_slot)]
        grads = [None if g is None else g.movedim(0, 1) for g in grads]
    for grad, name in zip(grads, names):
        if grad is None:
            raise CamlensError(
                f"no gradient reaches layer {name!r} from the explained score; pick a layer that feeds the output"
            )
    return grads  # type: ignore[return-value]  # a None raised above
