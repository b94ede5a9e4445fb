"""What the builders share: torchvision skeletons built on the meta device, pretrained tensors moved onto the
modules that were kept, fresh initialization of the rest, and the conv + ReLU + GAP + linear head."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence, TypeVar

import torch
from torch import Tensor, nn

from ..backbones import download_error, no_weights, torchvision_weights
from ..capture import _is_spatial, _output_tensors, trace_calls
from ..errors import CamlensError

Init = Literal["he", "xavier", "gauss"]
M = TypeVar("M", bound=nn.Module)
_SKELETON_ONLY: ContextVar[bool] = ContextVar("camlens_skeleton_only", default=False)


@contextmanager
def skeleton_only() -> Iterator[None]:
    """Builders called inside leave every tensor on the meta device (no pretrained weights, no random
    initialization), for a caller that assigns all of them from a checkpoint (``load_state_dict(assign=True)``)."""
    token = _SKELETON_ONLY.set(True)
    try:
        yield
    finally:
        _SKELETON_ONLY.reset(token)


def torchvision_skeleton(arch: str, **kwargs: Any) -> Any:
    """torchvision's ``arch`` with every tensor on the meta device: free to build (VGG16's 100M-weight fully
    connected layers are never allocated), :func:`materialize` gives real storage to what a builder keeps."""
    import torchvision.models as tvm

    with torch.device("meta"):
        return tvm.get_model(arch, weights=None, **kwargs)


def pretrained_state(arch: str, weights: str | None) -> dict[str, Tensor] | None:
    """The state dict of torchvision's ``weights`` for ``arch`` (downloaded once into torch's hub cache), or
    None for random initialization (``weights`` None or ``"none"``)."""
    if no_weights(weights):
        return None
    enum = torchvision_weights(arch, weights)
    try:
        return enum.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise download_error(enum, err) from err


def materialize(
    model: M,
    skeleton: nn.Module,
    state: Mapping[str, Tensor] | None,
    *,
    init: Init,
    head: Sequence[str] = (),
    head_init: Init | None = None,
) -> M:
    """Give every tensor of ``model`` still on the meta device real (CPU) storage.

    A module taken over from ``skeleton`` receives the tensor that ``state`` (a torchvision state dict) holds
    under its name in the skeleton, whatever name it has in ``model`` (modules are matched by identity, so
    re-indexed Sequentials and moved blocks need no key table).  Every other module is initialized afresh as
    in Choe et al.'s ``initialize_weights``: convolutions ``he`` (Kaiming normal, fan-out) or ``xavier``
    (uniform), or ``gauss`` (N(0, 0.01), the CAM paper's Caffe filler), biases 0; BatchNorm weight 1, bias 0;
    linear N(0, 0.01), bias 0.  Modules under ``head`` use ``head_init``.  Inside :func:`skeleton_only` it does
    nothing.
    """
    if _SKELETON_ONLY.get():
        return model
    if state is not None:
        origin = {id(m): name for name, m in skeleton.named_modules()}
        picked: dict[str, Tensor] = {}
        for name, module in model.named_modules():
            source = origin.get(id(module))
            if source is None:
                continue
            for key, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                src = f"{source}.{key}" if source else key
                if src in state:
                    picked[f"{name}.{key}" if name else key] = state[src]
        model.load_state_dict(picked, strict=False, assign=True)
    for name, module in model.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        meta = [key for key, t in own if t.is_meta]
        if not meta:
            continue
        if len(meta) < len(own):  # a buffer an older checkpoint lacks: BatchNorm's num_batches_tracked
            for key in meta:
                module._buffers[key] = torch.zeros_like(module._buffers[key], device="cpu")
            continue
        module.to_empty(device="cpu", recurse=False)
        in_head = any(name == h or name.startswith(h + ".") for h in head)
        _initialize(module, head_init if in_head and head_init else init)
    return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (a qualified name) is."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _initialize(module: nn.Module, mode: Init) -> None:
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            if mode == "he":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif mode == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
        else:
            raise CamlensError(f"cannot initialize a {type(module).__name__}")  # not reached by the builders


class ConvGapNet(nn.Module):
    """The CAM paper's conversion: ``features`` -> 3x3 conv (``width`` channels, ``groups``) -> ReLU -> global
    average pooling -> (dropout) -> linear, so logit_c = mean_xy(sum_k w_k^c f_k) + b_c (Zhou et al., CVPR 2016).

    ``new_layers`` names the layers the conversion adds (``conv``, ``fc``): they train at the higher rate.
    """

    def __init__(
        self, features: nn.Module, channels: int, width: int, num_classes: int, *, groups: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_head(channels, width, num_classes, groups, dropout)
        self.features = features
        self.conv = nn.Conv2d(channels, width, 3, padding=1, groups=groups)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        self.new_layers: tuple[str, ...] = ("conv", "fc")

    def forward(self, x: Tensor) -> Tensor:
        f = self.relu(self.conv(self.features(x)))
        return self.fc(self.dropout(self.avgpool(f).flatten(1)))


def check_head(channels: int, width: int, num_classes: int, groups: int = 1, dropout: float = 0.0) -> None:
    """One-line errors for head options that cannot build."""
    if width < 1 or num_classes < 1:
        raise CamlensError(f"width={width} and num_classes={num_classes} must be positive")
    if groups < 1 or channels % groups or width % groups:
        raise CamlensError(f"groups={groups} must divide both the {channels} input channels and width={width}")
    if not 0.0 <= dropout < 1.0:
        raise CamlensError(f"dropout={dropout} must be in [0, 1)")


def meta_forward(model: nn.Module) -> Callable[[Tensor], Any]:
    """``x -> model(x)`` with every parameter and buffer swapped for a meta-device twin (through
    ``torch.func.functional_call``): output shapes without copying the model or doing any arithmetic."""
    from torch.func import functional_call

    ghosts = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    return lambda x: functional_call(model, ghosts, (x,))


def feature_resolution(model: nn.Module, size: int | tuple[int, int] = 224, in_channels: int = 3) -> tuple[int, int]:
    """(h, w) of the maps :class:`camlens.CAM` gives ``model`` for a ``size`` input: the spatial size of the last
    module output that is a map (B, K, h, w) with h*w > 1 and not the model output (the layer CAM finds, or the
    1x1-conv class maps computed from it, of the same size), from one pass on the meta device."""
    h, w = (size, size) if isinstance(size, int) else size
    was_training = model.training
    model.eval()
    try:
        calls, output = trace_calls(
            model, torch.empty(1, in_channels, h, w, device="meta"), keep_last=256, run=meta_forward(model)
        )
    finally:
        model.train(was_training)
    finals = _output_tensors(output)
    for call in reversed(calls):
        out = call.output
        if _is_spatial(out) and not any(out is t for t in finals):
            return int(out.shape[-2]), int(out.shape[-1])
    raise CamlensError(f"{type(model).__name__}: no spatial feature map at {h}x{w} px")
