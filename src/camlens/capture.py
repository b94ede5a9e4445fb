"""Finding layers and classifier weights, and capturing activations with hooks that never outlive their owner.

Everything here is model-agnostic: a GAP classifier is recognised by what its forward pass does (one traced
call, checked numerically), not by attribute names, so torchvision, timm and user models go through one path.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CamlensError, NotAGapClassifierError

LayerSpec = Union[str, nn.Module]


class GridLayout(Protocol):
    """What :func:`locate_gap_head` needs of a token model's layout (:class:`camlens.tokens.TokenLayout`): its
    family's name and how a layer output lies on the patch grid."""

    @property
    def family(self) -> str: ...

    def to_grid(self, t: Tensor) -> Tensor: ...


class CarriesModule(Protocol):
    """Anything holding its network in ``.model``, such as :class:`camlens.models.LoadedModel`."""

    model: nn.Module


ModelLike = Union[nn.Module, CarriesModule]


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error message, without terminal escape codes (PyTorch bolds some words)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err))
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)


def output_logits(output: Any) -> Tensor:
    """The (B, C) class scores inside a model's output: a tensor, the first tensor of a tuple or list,
    ``output["logits"]``/``output["out"]`` of a dict, or ``output.logits`` of an object."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict):
        for key in ("logits", "out"):
            if isinstance(output.get(key), Tensor):
                return output[key]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    raise CamlensError(
        f"cannot find class scores in the model output of type {type(output).__name__}; "
        "return a tensor, a tuple whose first item is the logits, a dict with 'logits', or pass target=callable"
    )


def as_module(model: ModelLike) -> nn.Module:
    """The ``nn.Module`` of ``model``: itself, or the network a :class:`camlens.LoadedModel` carries."""
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise CamlensError(f"expected a torch nn.Module or a camlens.load_model result, got {type(model).__name__}")


def unwrap_model(model: ModelLike) -> nn.Module:
    """The model inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers (any depth), and inside a
    :class:`camlens.LoadedModel`.

    Explainers run the inner module: DataParallel splits a batch over replicas in other threads, so hooks on the
    wrapped module would see one replica's share of the batch (pytorch-grad-cam's silently halved batches), and
    DistributedDataParallel's forward takes part in collective gradient synchronization."""
    from torch.nn.parallel import DistributedDataParallel

    module = as_module(model)
    while isinstance(module, (nn.DataParallel, DistributedDataParallel)):
        module = module.module
    return module


def _unwrapped_name(model: ModelLike, layer: str) -> str:
    """A layer name as seen through the wrappers of ``model`` (``module.layer4``) as a name inside it."""
    from torch.nn.parallel import DistributedDataParallel

    model = as_module(model)
    while isinstance(model, (nn.DataParallel, DistributedDataParallel)):
        model = model.module
        layer = layer.removeprefix("module.")
    return layer


def unwrapped_spec(model: ModelLike, spec: Any) -> Any:
    """A layer spec (a name, a module, a list of them, or None) with names seen through ``model``'s wrappers
    written as names inside them."""
    if isinstance(spec, str):
        return _unwrapped_name(model, spec)
    if isinstance(spec, (list, tuple)):
        return type(spec)(unwrapped_spec(model, item) for item in spec)
    return spec


def resolve_module(model: ModelLike, layer: LayerSpec) -> tuple[str, nn.Module]:
    """(qualified name, module) for a layer given by name (``"layer4"``, ``"features.7"``) or as the module itself.
    Data-parallel wrappers are looked through: names are those inside them (``module.layer4`` is read as
    ``layer4``)."""
    if isinstance(layer, str):
        layer = _unwrapped_name(model, layer)
    model = unwrap_model(model)
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise CamlensError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
    modules = dict(model.named_modules())
    if layer in modules:
        return layer, modules[layer]
    near = [n for n in modules if n and (layer in n or n.split(".")[-1] == layer.split(".")[-1])][:6]
    hint = f"; close names: {', '.join(near)}" if near else "; list them with camlens.layer_names(model)"
    raise CamlensError(f"no layer named {layer!r} in {type(model).__name__}{hint}")


def layer_names(model: ModelLike) -> list[str]:
    """Qualified names of every submodule, in definition order: what ``layer=`` accepts (inside data-parallel
    wrappers and :class:`camlens.LoadedModel`).

    Args:
        model: an ``nn.Module``, a wrapped one, or a :func:`camlens.load_model` result.

    Returns:
        The names, as ``layer=`` and ``--layer`` take them.
    """
    return [name for name, _ in unwrap_model(model).named_modules() if name]


class LayerCapture:
    """A forward hook on one module that keeps its latest output (or input) per thread.

    Storage is thread-local, so one capture serves concurrent forward passes; the hook is removed by ``close``
    (or the ``with`` block), also when the forward raised.  ``transform`` may replace the output seen by the rest
    of the network (used by gradient methods to start the autograd graph at this layer).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        where: Literal["output", "input"] = "output",
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self._local = threading.local()
        self._transform = transform
        if where == "output":
            self._handle = module.register_forward_hook(self._on_output)
        else:
            self._handle = module.register_forward_pre_hook(self._on_input)

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._transform is not None:
            output = self._transform(output)
        self._local.value = output
        return output

    def _on_input(self, module: nn.Module, args: tuple) -> None:
        self._local.value = args[0]

    def pop(self) -> Tensor:
        """The tensor captured by this thread's last forward pass; the reference is dropped so no graph lingers."""
        value = getattr(self._local, "value", None)
        if value is None:
            raise CamlensError("the target layer did not run during the forward pass; check the layer name")
        self._local.value = None
        return value

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "LayerCapture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Any
    output: Any


def trace_calls(
    model: nn.Module, x: Tensor, keep_last: int = 64, run: Callable | None = None
) -> tuple[list[_Call], Any]:
    """Run ``model(x)`` once with a hook on every submodule; return the last ``keep_last`` calls in completion
    order (a container completes after its children) and the model output.  Only that tail is kept alive."""
    calls: deque[_Call] = deque(maxlen=keep_last)
    handles = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            calls.append(_Call(name, module, args[0] if args else None, output))

        return record

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        output = run(x) if run is not None else model(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(calls), output


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_classifier(module: nn.Module, num_classes: int | None = None) -> bool:
    """The one rule for "this module can be the classifier": a Linear, or a 1x1 (1x1x1, 1) convolution of any
    spatial rank without groups (SqueezeNet's head), with ``num_classes`` outputs when that is given."""
    if isinstance(module, nn.Linear):
        outputs = module.out_features
    elif isinstance(module, _CONVS) and module.groups == 1 and all(k == 1 for k in module.kernel_size):
        outputs = module.out_channels
    else:
        return False
    return num_classes is None or outputs == num_classes


def find_classifier(model: nn.Module, num_classes: int | None = None) -> tuple[str, nn.Module]:
    """(qualified name, module) of the model's classifier found without running it: the last module in
    definition order for which :func:`is_classifier` holds.  Used to read and replace classifiers; the CAM
    head search (:func:`locate_gap_head`) applies the same rule to the modules in the order they run."""
    found = None
    for name, module in model.named_modules():
        if name and is_classifier(module, num_classes):
            found = name, module
    if found is None:
        outputs = f" with {num_classes} outputs" if num_classes is not None else ""
        raise CamlensError(f"{type(model).__name__}: no Linear or 1x1 convolution{outputs} to take as the classifier")
    return found


def layer_shapes(model: ModelLike, x: Tensor, *, maps_only: bool = True) -> dict[str, tuple[int, ...]]:
    """The output shape of each submodule for input ``x``, in definition order (one no-grad forward pass).

    Args:
        model: an ``nn.Module``, a wrapped one, or a :func:`camlens.load_model` result.
        x: a model input, (B, C, *S).
        maps_only: keep only the layers ``layer=`` can explain as they are: outputs that are spatial maps
            (B, K, *S) of the input's rank with more than one position; False: every tensor output.

    Returns:
        ``{layer name: output shape}``; a module called several times keeps its last shape.
    """
    network = unwrap_model(model)
    shapes: dict[str, tuple[int, ...]] = {}
    ranks = spatial_ranks(x)

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            passthrough = bool(args) and args[0] is output  # Identity, eval-mode dropout: the layer before it
            if isinstance(output, Tensor) and not passthrough and (not maps_only or _is_spatial(output, ranks)):
                shapes[name] = tuple(output.shape)

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in network.named_modules() if name]
    try:
        with torch.no_grad():
            network(x)
    finally:
        for handle in handles:
            handle.remove()
    order = {name: i for i, (name, _) in enumerate(network.named_modules())}
    return dict(sorted(shapes.items(), key=lambda item: order[item[0]]))


def spatial_ranks(x: Tensor) -> tuple[int, ...]:
    """The spatial ranks a layer output may have for input ``x``: its own (x is (B, C, *S) with len(S) in 1..3),
    or any of 1, 2, 3 for other inputs (e.g. a raw waveform (B, L) that the model unsqueezes)."""
    return (x.ndim - 2,) if 3 <= x.ndim <= 5 else (1, 2, 3)


def _is_spatial(t: Any, ranks: Sequence[int] = (2,)) -> bool:
    """A feature map (B, K, *S) of one of ``ranks`` with more than one position."""
    return isinstance(t, Tensor) and t.ndim - 2 in ranks and t.shape[2:].numel() > 1


def _outermost_name(calls: Sequence[_Call], tensor: Tensor, default: str) -> str:
    """Containers return their last child's tensor: name the outermost module that produced ``tensor``,
    passing over pass-through modules (eval-mode Dropout, Identity) that return their input unchanged."""
    passthrough = None
    for call in reversed(calls):
        if call.output is tensor:
            if call.input is not tensor:
                return call.name
            passthrough = passthrough or call.name
    return passthrough or default


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to the rounding of the lowest precision involved (fp32: 1e-4, fp16/bf16: 2e-2, relative)."""
    tol = 2e-2 if min(a.element_size(), b.element_size()) <= 2 else 1e-4
    a, b = a.double(), b.double()
    return bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)).item())


@dataclass(frozen=True)
class GapHead:
    """How a GAP classifier turns the feature map f (B, K, *S) into logits (B, C), found and checked by
    :func:`locate_gap_head`; S is (L,), (h, w) or (d, h, w) and mean_S the global average over it.  Four shapes
    are recognised (ReLU before pooling: DenseNet; LayerNorm after pooling: ConvNeXt; 1x1 conv classifier
    (Conv1d/2d/3d) before pooling, optionally with ReLU: SqueezeNet):

    - ``logits = W · mean_S(act(f)) + b``
    - ``logits = W · LN(mean_S(act(f))) + b``
    - ``logits = mean_S(cls_act(W f + b))`` when ``pooled_last``

    With ``tokens`` the layer's output is a token model's (B, T, C) tokens or (B, h, w, C) map, and f is that
    output on the patch grid (:meth:`camlens.tokens.TokenLayout.to_grid`): a ViT whose head averages the patch
    tokens (timm ``global_pool="avg"``), a Swin.
    """

    layer_name: str
    layer: nn.Module
    capture: Literal["output", "input"]
    classifier_name: str
    weight: Tensor  # (C, K)
    bias: Tensor  # (C,)
    feature_act: Literal["identity", "relu"] = "identity"
    norm: nn.LayerNorm | None = None
    pooled_last: bool = False
    class_act: Literal["identity", "relu"] = "identity"
    tokens: bool = False

    def class_maps(self, features: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """Maps M (B, N, *S) for ``classes`` (B, N) and offsets (B, N) with ``mean_S M + offset == logit``.

        The map is M_c = sum_k w_k^c f_k (Zhou et al., CVPR 2016).  With a LayerNorm after pooling the per-sample
        mean mu and deviation sigma of the pooled vector are folded in exactly:
        M_c = sum_k w_k^c gamma_k (f_k - mu) / sigma, offset_c = w^c · beta + b_c.
        """
        with torch.autocast(features.device.type, enabled=False):
            return self._class_maps(features, classes)

    def _class_maps(self, features: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        f = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
        if self.feature_act == "relu":
            f = F.relu(f)
        w = self.weight.to(f)[classes]  # (B, N, K)
        b = self.bias.to(f)[classes]  # (B, N)
        spatial = tuple(range(2, f.ndim))
        if self.pooled_last:
            maps = torch.einsum("bnk,bk...->bn...", w, f) + b.view(*b.shape, *(1 for _ in spatial))
            if self.class_act == "relu":
                maps = F.relu(maps)
            return maps, torch.zeros_like(b)
        if self.norm is not None:
            pooled = f.mean(spatial)
            mu = pooled.mean(-1)
            sigma = torch.sqrt(pooled.var(-1, unbiased=False) + self.norm.eps)
            gamma = self.norm.weight.to(f) if self.norm.weight is not None else torch.ones_like(pooled[0])
            beta = self.norm.bias.to(f) if self.norm.bias is not None else torch.zeros_like(pooled[0])
            b = b + w @ beta
            w = w * gamma / sigma[:, None, None]
            f = f - mu.view(-1, 1, *(1 for _ in spatial))
        return torch.einsum("bnk,bk...->bn...", w, f), b


def _classifier_weights(module: nn.Module) -> tuple[Tensor, Tensor]:
    weight = cast(Tensor, module.weight).detach().flatten(1)  # nn.Module's __getattr__ types it Tensor | Module
    bias = cast(Tensor, module.bias).detach() if module.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def locate_gap_head(
    model: nn.Module,
    x: Tensor,
    layer: LayerSpec | None = None,
    classifier: LayerSpec | None = None,
    tokens: GridLayout | None = None,
) -> tuple[GapHead, Tensor, Any]:
    """Find the final feature layer and the linear classifier of a GAP network from one forward pass on ``x``,
    and prove the head is GAP + linear by recomputing the classifier's input from the features.  With the token
    layout ``tokens`` of a token model, feature maps are layer outputs on its patch grid (tokens included).

    Returns the head, the captured features of this pass (as (B, K, *S)) and the model output, so the first call
    costs no extra forward pass.  Raises :class:`NotAGapClassifierError` with the reason otherwise.
    """
    layer_mod = resolve_module(model, layer)[1] if layer is not None else None
    cls_mod = resolve_module(model, classifier)[1] if classifier is not None else None
    calls, output = trace_calls(model, x, keep_last=10**6 if layer_mod is not None else 64)
    logits = output_logits(output)
    if logits.ndim != 2:
        raise NotAGapClassifierError(f"model output has shape {tuple(logits.shape)}, expected (batch, classes)")
    num_classes = logits.shape[1]

    cls_index = None
    for i in range(len(calls) - 1, -1, -1):
        if (cls_mod is not None and calls[i].module is cls_mod) or (
            cls_mod is None and is_classifier(calls[i].module, num_classes)
        ):
            cls_index = i
            break
    if cls_index is None:
        what = (
            "the given classifier did not run"
            if cls_mod is not None
            else (f"no Linear or 1x1 convolution with {num_classes} outputs runs at the end of the forward pass")
        )
        raise NotAGapClassifierError(f"{type(model).__name__}: {what}; CAM needs GAP + linear, use GradCAM instead")
    cls_call = calls[cls_index]
    weight, bias = _classifier_weights(cls_call.module)
    cls_input = cls_call.input

    ranks = spatial_ranks(x)
    if _is_spatial(cls_input, ranks) and isinstance(cls_call.module, _CONVS):
        # SqueezeNet: a 1x1 conv classifier on the spatial map, then (ReLU and) average pooling.
        feats = cls_input
        name = _outermost_name(calls[:cls_index], feats, cls_call.name)
        spatial = tuple(range(2, feats.ndim))
        # Recomputed rather than read from the call record: an in-place ReLU may already have changed that.
        class_maps = torch.einsum("ck,bk...->bc...", weight.to(feats), feats)
        class_maps = class_maps + bias.to(feats).view(-1, *(1 for _ in spatial))
        for class_act in ("identity", "relu"):
            pooled = (F.relu(class_maps) if class_act == "relu" else class_maps).mean(spatial)
            if _close(pooled, logits):
                head = GapHead(
                    name, cls_call.module, "input", cls_call.name, weight, bias, pooled_last=True, class_act=class_act
                )
                return head, feats, output
        raise NotAGapClassifierError(
            f"{type(model).__name__}: the 1x1 conv classifier {cls_call.name!r} is not followed by average pooling"
        )

    width = cls_input.flatten(1).shape[1] if isinstance(cls_input, Tensor) else None

    def as_map(t: Any) -> Tensor | None:
        """``t`` as a feature map (B, K, *S): on the patch grid of a token model with the classifier's input width
        (a (B, C, 1) pooled tensor with as many channels as patches is not tokens), else when it is spatial."""
        if tokens is not None and isinstance(t, Tensor):
            try:
                grid = tokens.to_grid(t)
            except CamlensError:
                return None
            return grid if grid.shape[1] == width else None
        return t if _is_spatial(t, ranks) else None

    if layer_mod is not None:
        feat_index = next((i for i in range(cls_index - 1, -1, -1) if calls[i].module is layer_mod), None)
        if feat_index is None:
            raise CamlensError(f"layer {layer!r} did not run before the classifier {cls_call.name!r}")
    else:
        feat_index = next((i for i in range(cls_index - 1, -1, -1) if as_map(calls[i].output) is not None), None)
        if feat_index is None:
            raise NotAGapClassifierError(
                f"{type(model).__name__}: no spatial feature map (B, K, *S) of the input's rank with more than one "
                f"position before {cls_call.name!r}; use a larger input or give layer="
            )
    raw = calls[feat_index].output
    name = (
        calls[feat_index].name
        if layer_mod is not None
        else _outermost_name(calls[:cls_index], raw, calls[feat_index].name)
    )
    feats = raw
    if tokens is not None and isinstance(raw, Tensor):
        feats = as_map(raw)
        if feats is None:
            raise NotAGapClassifierError(
                f"layer {name!r} outputs {tuple(raw.shape)}, not features of the classifier's width {width} on the "
                f"patch grid of {tokens.family}; give a layer of the token sequence"
            )
    between = calls[feat_index + 1 : cls_index]
    z = cls_input.flatten(1) if isinstance(cls_input, Tensor) else None
    if z is None or not isinstance(feats, Tensor) or not 3 <= feats.ndim <= 5 or feats.shape[1] != z.shape[1]:
        found = ", ".join(f"{c.name} ({type(c.module).__name__})" for c in between[-8:]) or "nothing"
        raise NotAGapClassifierError(
            f"{type(model).__name__} is not a GAP + linear classifier: between the feature map of {name!r} "
            f"({tuple(feats.shape)}) and {cls_call.name!r} ({tuple(weight.shape)}) it runs {found}. "
            "CAM applies only to GAP + one linear layer; use GradCAM (or another gradient method) for this model"
        )
    norms = [c.module for c in between if isinstance(c.module, nn.LayerNorm)]
    norm = norms[-1] if len(norms) == 1 else None
    for feature_act in ("identity", "relu"):
        f = feats.to(torch.promote_types(feats.dtype, torch.float32))
        pooled = (F.relu(f) if feature_act == "relu" else f).mean(tuple(range(2, f.ndim)))
        if norm is not None:
            w, b = (None if t is None else t.to(pooled) for t in (norm.weight, norm.bias))
            pooled = F.layer_norm(pooled, pooled.shape[-1:], w, b, norm.eps)
        if _close(pooled, z):
            head = GapHead(
                name,
                calls[feat_index].module,
                "output",
                cls_call.name,
                weight,
                bias,
                feature_act=feature_act,
                norm=norm,
                tokens=tokens is not None and feats is not raw,
            )
            return head, feats, output
    found = ", ".join(f"{c.name} ({type(c.module).__name__})" for c in between[-8:]) or "only functional ops"
    raise NotAGapClassifierError(
        f"{type(model).__name__}: the input of {cls_call.name!r} is not the global average of {name!r} "
        f"(between them: {found}); CAM needs GAP + linear, use GradCAM for this model "
        "(and call model.eval() first: dropout in training mode breaks the check)"
    )


def _output_tensors(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _output_tensors(item)]
    logits = getattr(output, "logits", None)
    return [logits] if isinstance(logits, Tensor) else []


def find_spatial_layer(model: nn.Module, x: Tensor, keep_last: int = 256) -> str:
    """Name of the layer chosen when none is given: the module that runs last (in completion order) among those
    whose output is a spatial map (B, K, *S) of the input's rank (:func:`spatial_ranks`) with more than one
    position and is not itself the model output; of nested modules returning the same tensor, the outermost is
    named (``layer4`` rather than ``layer4.1.relu``).

    Token models (ViT, Swin) have no such layer near their end: the layer methods take theirs from
    :func:`camlens.tokens.token_layout`.
    """
    with torch.no_grad():
        calls, output = trace_calls(model, x, keep_last=keep_last)
    finals = _output_tensors(output)
    ranks = spatial_ranks(x)
    for i in range(len(calls) - 1, -1, -1):
        out = calls[i].output
        if _is_spatial(out, ranks) and not any(out is t for t in finals):
            return _outermost_name(calls[: i + 1], out, calls[i].name)
    raise CamlensError(
        f"{type(model).__name__}: no module among the last {keep_last} calls outputs a spatial map (B, K, *S); "
        "give layer= (see camlens.layer_names(model)), with reshape= for token models"
    )


class _Hook:
    """One module's forward hook of a :class:`HookSet`; copying a model (``copy.deepcopy``) keeps it shared."""

    def __init__(self, owner: "HookSet", index: int) -> None:
        self.owner, self.index = owner, index

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return self.owner._dispatch(self.index, output)

    def __deepcopy__(self, memo: dict) -> "_Hook":
        return self


class HookSet:
    """Forward hooks on several modules that act only inside :meth:`active` in the calling thread.

    Outside it (another thread, or the user's own forward passes) the hooks return the output untouched, so an
    explainer can keep its hooks for its lifetime without changing the model.  Inside, ``fn(index, output)``
    sees each hooked module's output (``index`` into ``modules``) and may return a replacement.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self._local = threading.local()
        self._handles = [module.register_forward_hook(_Hook(self, i)) for i, module in enumerate(modules)]

    def _dispatch(self, index: int, output: Any) -> Any:
        fn = getattr(self._local, "fn", None)
        return None if fn is None else fn(index, output)

    def active(self, fn: Callable[[int, Any], Any]) -> "_Active":
        return _Active(self._local, fn)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _Active:
    def __init__(self, local: threading.local, fn: Callable) -> None:
        self._local, self._fn = local, fn

    def __enter__(self) -> None:
        self._previous = getattr(self._local, "fn", None)
        self._local.fn = self._fn

    def __exit__(self, *exc: object) -> None:
        self._local.fn = self._previous
