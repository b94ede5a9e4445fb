"""Any backbone in, a CAM network out: the CAM paper's conversion (Zhou et al., CVPR 2016, Section 3) as a function.

``gapify(model, cut="layer3", width=1024, num_classes=N)`` keeps the computation of ``model`` up to the output
of the module ``cut`` (traced with torch.fx, so any module graph works, not only Sequentials), drops the rest
and adds conv 3x3 (``width``) -> ReLU -> global average pooling -> linear.  A model that already ends in global
average pooling + a linear layer (recognized by camlens's own check, the one ``camlens.CAM`` uses) is returned
as is, with only its classifier replaced when ``num_classes`` differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..capture import locate_gap_head, output_logits, resolve_module
from ..errors import CamlensError
from ._common import ConvGapNet, materialize, meta_forward, replace_module


def gapify(
    model: nn.Module,
    cut: str | None = None,
    *,
    width: int = 1024,
    num_classes: int | None = None,
    groups: int = 1,
    input_size: int = 224,
) -> nn.Module:
    """A CAM network from ``model``.

    - ``cut`` given: the module graph up to and including module ``cut``, then conv 3x3 (``width``, ``groups``,
      He-initialized) -> ReLU -> GAP -> linear (N(0, 0.01)) with ``num_classes`` outputs: a
      :class:`ConvGapNet` whose ``features`` is the traced, cut graph (its layers, and so its parameters, are
      ``model``'s own, not copies).  Feature map: the resolution of ``cut``'s output (checked at ``input_size``
      px: it must be a spatial map larger than 1x1).  ``new_layers == ("conv", "fc")``.
    - ``cut`` None and ``model`` ends in GAP + linear: ``model`` itself; when ``num_classes`` differs from its
      classifier's outputs that classifier is replaced by a fresh one (``new_layers == (its name,)``, else ``()``).
    - ``cut`` None otherwise: ``model`` is taken as the whole backbone (e.g. an ``nn.Sequential`` cut by hand).

    Args:
        model: the backbone (any ``nn.Module``; torchvision and timm models are traced with torch.fx).
        cut: the qualified name of the last module kept, or None as above.
        width: output channels of the new 3x3 convolution.
        num_classes: outputs of the new classifier (None: keep a GAP classifier's own count).
        groups: groups of the new convolution.
        input_size: the side of the square input the cut's output is checked at.

    Returns:
        The CAM network (GAP + linear at the end), with ``new_layers`` set.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if cut is None:
        head = _gap_head(model, input_size, device)
        if head is not None:
            return _reclassified(model, head[0], head[1], num_classes)
        features: nn.Module = model
    else:
        features = _cut(model, cut)
    if num_classes is None:
        raise CamlensError("gapify adds a new classifier: give num_classes")
    channels = _check_spatial(features, cut, input_size)
    with torch.device("meta"):
        net = ConvGapNet(nn.Identity(), channels, width, num_classes, groups=groups)
    materialize(net, net, None, init="he")
    net.features = features
    return net.to(device)


def _gap_head(model: nn.Module, size: int, device: torch.device) -> tuple[str, nn.Module] | None:
    """(name, module) of the classifier when ``model`` is a GAP + linear classifier, else None."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            head = locate_gap_head(model, torch.zeros(1, 3, size, size, device=device))[0]
    except CamlensError:  # NotAGapClassifierError, or an output that holds no logits at all
        return None
    finally:
        model.train(was_training)
    return head.classifier_name, resolve_module(model, head.classifier_name)[1]


def _reclassified(model: nn.Module, name: str, old: nn.Module, num_classes: int | None) -> nn.Module:
    outputs = old.out_features if isinstance(old, nn.Linear) else int(getattr(old, "out_channels"))
    if num_classes is None or num_classes == outputs:
        setattr(model, "new_layers", ())
        return model
    weight = getattr(old, "weight")
    assert isinstance(weight, Tensor)
    has_bias = getattr(old, "bias", None) is not None
    with torch.device("meta"):
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=has_bias)
        else:
            new = nn.Conv2d(weight.shape[1], num_classes, 1, bias=has_bias)
    materialize(new, new, None, init="he")
    replace_module(model, name, new.to(weight.device, weight.dtype))
    setattr(model, "new_layers", (name,))
    return model


def _cut(model: nn.Module, cut: str) -> nn.Module:
    """The graph of ``model`` up to the output of module ``cut``, as a module that returns that tensor."""
    from torchvision.models.feature_extraction import create_feature_extractor

    resolve_module(model, cut)  # a one-line error naming close matches when there is no such layer
    try:
        traced = create_feature_extractor(model, return_nodes={cut: "features"})
    except Exception as err:  # tracing failures come as many exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CamlensError(
            f"cannot cut {type(model).__name__} at {cut!r}: torch.fx could not trace it ({first}); cut it by hand "
            "(an nn.Module returning that layer's output) and call gapify(backbone) without cut="
        ) from err
    graphs = {
        id(g): g for g in (getattr(traced, "train_graph", traced.graph), getattr(traced, "eval_graph", traced.graph))
    }
    for graph in graphs.values():
        output = next(node for node in graph.nodes if node.op == "output")
        output.args = (output.args[0]["features"],)
    traced.recompile()
    return traced


def _check_spatial(features: nn.Module, cut: str | None, size: int) -> int:
    """Channels of ``features``' output at ``size`` px, computed on the meta device; one-line errors when that
    output is not a (B, K, h, w) map or is 1x1."""
    where = f"the cut at {cut!r}" if cut is not None else f"the backbone {type(features).__name__}"
    was_training = features.training
    features.eval()
    try:
        out = meta_forward(features)(torch.empty(1, 3, size, size, device="meta"))
    except Exception as err:  # shape errors come as RuntimeError, ValueError...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CamlensError(f"{where}: the backbone fails on a {size}x{size} input: {first}") from err
    finally:
        features.train(was_training)
    if not isinstance(out, Tensor):
        try:
            out = output_logits(out)
        except CamlensError:
            raise CamlensError(f"{where} gives a {type(out).__name__}, not a feature map (B, K, h, w)") from None
    if out.ndim != 4:
        raise CamlensError(
            f"{where} has no spatial output: shape {tuple(out.shape)} at {size} px, not (B, K, h, w); "
            "cut at an earlier convolutional layer"
        )
    if out.shape[-2] * out.shape[-1] <= 1:
        raise CamlensError(
            f"{where} leaves a 1x1 map at {size} px: CAM needs h*w > 1; cut at an earlier layer "
            "(or use a larger input_size)"
        )
    return int(out.shape[1])
