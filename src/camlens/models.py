"""Getting a model from a string or a checkpoint, with its class names and its preprocessing.

One entry point, :func:`load_model`, serves the CLI, the web app and the library: ``--arch`` (torchvision names,
``timm:NAME``, or the small CPU network ``gapnet``) with ``--weights``, or ``--checkpoint`` (camlens safetensors
checkpoints describe themselves; plain ``.pt``/``.pth`` state dicts are read with ``weights_only=True``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import torch
from torch import Tensor, nn

from . import zoo
from .backbones import GapNet as GapNet  # its home before backbones.py
from .backbones import build_backbone, model_task, no_weights, torchvision_weights
from .capture import find_classifier, first_line
from .errors import CamlensError
from .networks import NETWORKS, build_network
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .wsolnet import attach_recorded, recorded_config

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def build_model(arch: str, num_classes: int | None = None, weights: str | None = None, **options: Any) -> nn.Module:
    """A model by name: a CAM network of :data:`camlens.networks.NETWORKS` (``vgg16-cam``, with its builder
    ``options``), or any name of :func:`camlens.backbones.build_backbone` (``gapnet``, ``resnet50``,
    ``timm:NAME``, ``efficientnet_lite0``).

    Args:
        arch: the name.
        num_classes: outputs of the classifier; None keeps the builder's (or the weights') count.
        weights: None/``"none"`` for random initialization; a torchvision weight name (``DEFAULT``,
            ``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``), or ``pretrained`` for timm.
        **options: a CAM network's builder options (none for other names).

    Returns:
        The model, in training mode, on the CPU.
    """
    if arch in NETWORKS:
        return build_network(arch, num_classes, weights, **options)
    if options:
        raise CamlensError(f"{arch} takes no builder options (given: {', '.join(options)})")
    return build_backbone(arch, num_classes, weights)


@dataclass
class LoadedModel:
    """A model in eval mode with what is needed to feed it and to name its outputs.

    Attributes:
        model: the network, in eval mode.
        class_names: one name per output class.
        preprocess: how images in [0, 1] become its input.
        arch: the architecture name it was built from.
        meta: the checkpoint's metadata (or ``{"task": ...}`` for torchvision detection / segmentation models).
    """

    model: nn.Module
    class_names: list[str]
    preprocess: Preprocess
    arch: str
    meta: dict = field(default_factory=dict)


def _task_setup(
    model: nn.Module, arch: str, weights: str | None, size: tuple[int, int] | None
) -> tuple[list, "Preprocess"]:
    """Class names and preprocessing of a segmentation, detection or video model.  Detectors normalize inside
    (their ``transform``), so they get [0, 1] images at ``size`` (default 800) and their internal resize is set
    to that size, so boxes are in the model input's pixels."""
    task = model_task(arch)
    enum = None if no_weights(weights) else torchvision_weights(arch, weights)
    m: Any = model  # torchvision's attributes (roi_heads, head, classifier) are not typed
    if task == "detection":
        head = getattr(m, "roi_heads", None)
        count = (
            head.box_predictor.cls_score.out_features if head is not None else m.head.classification_head.num_classes
        )
        side = size or (800, 800)
        m.transform.min_size, m.transform.max_size = (min(side),), max(side)
        preprocess = Preprocess(side, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    elif task == "segmentation":
        count = int(m.classifier[-1].out_channels)
        preprocess = Preprocess(size or (520, 520))
    else:
        classifier: Any = m.fc if hasattr(m, "fc") else find_classifier(model)[1]
        count = int(classifier.weight.shape[0])
        preprocess = Preprocess(size or (112, 112), (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
    names = list(enum.meta["categories"]) if enum is not None else [str(i) for i in range(count)]
    return names, preprocess


def read_class_names(spec: str | Sequence[str] | None, num_classes: int) -> list[str]:
    """Class names from a list, a built-in list (``imagenet``, ``stl10``), or a text file with one name a line."""
    if spec is None:
        return [str(i) for i in range(num_classes)]
    if not isinstance(spec, str):
        names = list(spec)
    elif spec == "stl10":
        names = list(STL10_CLASSES)
    elif spec == "imagenet":
        from torchvision.models import ResNet50_Weights

        names = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    else:
        path = Path(spec)
        if not path.is_file():
            raise CamlensError(f"--classes {spec!r}: not a file, nor one of the built-in lists imagenet, stl10")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise CamlensError(f"{len(names)} class names given for a model with {num_classes} classes")
    return names


def _num_classes_from_state(arch: str, state: dict[str, Tensor], options: dict | None = None) -> int:
    """The row count of the classifier's weight in ``state``; the classifier is :func:`camlens.capture.find_classifier`
    of the architecture (found on a default-sized instance, since state dict key order is not reliable)."""
    key = f"{find_classifier(build_model(arch, **(options or {})))[0]}.weight"
    if key not in state:
        keys = ", ".join(list(state)[:3]) or "none"
        raise CamlensError(
            f"the checkpoint has no classifier weight {key!r} for {arch} (its first keys: {keys}); it "
            "was saved from another architecture: pass the --arch it was trained as"
        )
    return int(state[key].shape[0])


def _read_state(path: Path) -> tuple[dict[str, Tensor], dict]:
    if not path.is_file():
        raise CamlensError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                recorded = json.loads((f.metadata() or {}).get("camlens", "{}"))
            return load_file(str(path)), recorded
        except Exception as err:  # safetensors raises its own error type (and OSError, JSON errors) for bad files
            raise CamlensError(
                f"cannot read checkpoint {str(path)!r}: not a valid .safetensors file "
                f"({first_line(err)}); it is damaged or truncated: copy or save it again"
            ) from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; weights_only refuses anything but tensors
        raise _weights_only_error(path, err) from err
    meta: dict = {}
    if isinstance(state, dict) and isinstance(state.get("architecture"), str):  # wsolevaluation's main.py
        meta["wsolevaluation"] = {"architecture": state["architecture"], "epoch": state.get("epoch")}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CamlensError(f"checkpoint {str(path)!r} is not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, meta


def _stated_options(
    meta: dict, source: str, wsol_method: str | None, large_feature_map: bool | None, wsol_params: dict[str, Any]
) -> dict:
    """The builder options of a checkpoint that is not wsolevaluation's, with the caller's ``large_feature_map``,
    ``wsol_method`` and ``wsol_params`` applied to ``meta`` where it records none and checked where it does."""
    options = dict(meta.get("arch_options") or {})
    if large_feature_map is not None:
        if options.get("large_feature_map", large_feature_map) != large_feature_map:
            raise CamlensError(
                f"{source} records large_feature_map={options['large_feature_map']}; drop the large-feature-map option"
            )
        options["large_feature_map"] = large_feature_map
    recorded = meta.get("wsol_method") or ({"name": "cam"} if meta.get("arch") else None)
    if wsol_method is not None and recorded is not None and recorded["name"] != wsol_method.lower():
        raise CamlensError(f"{source} records the WSOL method {recorded['name']}; drop --wsol-method {wsol_method}")
    if wsol_method is not None or wsol_params:
        name = (recorded or {}).get("name") or wsol_method or "cam"
        meta["wsol_method"] = recorded_config(name, wsol_params, recorded)  # checks the parameters
    return options


def _reference_model(
    state: dict[str, Tensor],
    meta: dict,
    source: str,
    arch: str | None,
    wsol_method: str | None,
    large_feature_map: bool | None,
    wsol_params: dict[str, Any],
) -> tuple[nn.Module, str, dict] | None:
    """The network of a wsolevaluation checkpoint with its weights (and its WSOL method attached), its camlens
    name and metadata; None when the keys are no wsolevaluation layout and nothing says they are."""
    from .networks import build_network
    from .networks._common import skeleton_only
    from .networks.wsolcheckpoint import BACKBONES, camlens_state, misfit, read_layout, resolve

    stated = next((b for b, name in BACKBONES.items() if arch is not None and arch.startswith(name)), None)
    architecture = (meta.get("wsolevaluation") or {}).get("architecture") or stated
    layout = read_layout(state, architecture)
    if layout is None:
        return None
    if arch is not None and arch not in NETWORKS:
        raise CamlensError(
            f"{source} is a wsolevaluation checkpoint of {layout.arch}; --arch {arch} would run it with "
            f"other strides and heads: drop --arch (or pass --arch {layout.arch})"
        )
    layout, method = resolve(layout, wsol_method, large_feature_map, source)
    if arch is not None and arch != layout.arch:
        raise CamlensError(
            f"{source} has wsolevaluation's {layout.layout} layout of {layout.backbone} "
            f"({layout.arch}), not {arch}: drop --arch"
        )
    with skeleton_only():  # every tensor comes from the file
        model = build_network(layout.arch, layout.num_classes, None, large_feature_map=layout.large_feature_map)
    state = camlens_state(state, layout)
    problem = misfit(model.state_dict(), state)
    if problem is not None:
        raise CamlensError(f"{source} does not fit {layout.arch} (wsolevaluation {layout.layout} layout): {problem}")
    model.load_state_dict(state, strict=True, assign=True)
    config = recorded_config(method, wsol_params)
    attach_recorded(model, config)  # after the weights: ADL's placement runs the network once
    info = {**(meta.get("wsolevaluation") or {}), "layout": layout.layout}
    meta = {
        "arch": layout.arch,
        "arch_options": dict(getattr(model, "arch_options", {})),
        "wsol_method": config,
        "wsolevaluation": info,
    }
    return model, layout.arch, meta


def _weights_only_error(path: Path, err: Exception) -> CamlensError:
    """One line for a ``.pt`` file that ``torch.load(weights_only=True)`` refuses: pickled Python objects (a whole
    model saved with ``torch.save(model)`` names its class), or not a PyTorch file at all."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return CamlensError(
            f"cannot read checkpoint {str(path)!r} as a weights-only state dict: it holds pickled Python objects "
            f"({found.group(1)}), which camlens never unpickles; if it is a whole model saved with "
            "torch.save(model), save its weights instead: torch.save(model.state_dict(), 'weights.pt'), then pass "
            "--arch (or use camlens.models.save_checkpoint)"
        )
    reason = re.search(r"WeightsUnpickler error: \s*(.+)", text)
    return CamlensError(
        f"cannot read checkpoint {str(path)!r} as a weights-only state dict: not a PyTorch weights "
        f"file ({reason.group(1).strip() if reason else first_line(text).split('. ')[0]}); give a .safetensors "
        "checkpoint or a file written by torch.save(model.state_dict(), ...)"
    )


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    class_names: Sequence[str],
    preprocess: Preprocess,
    extra: dict | None = None,
    arch_options: dict | None = None,
) -> Path:
    """Write ``model``'s weights as safetensors, with arch, class names and preprocessing in its metadata, so
    ``load_model(checkpoint=path)`` alone rebuilds it.  ``arch_options`` (default: ``model.arch_options``, set
    by the CAM network builders) are the builder options that rebuild the same network."""
    from safetensors.torch import save_model

    from .files import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": arch, "class_names": list(class_names), "preprocess": preprocess.to_json(), **(extra or {})}
    options = arch_options if arch_options is not None else getattr(model, "arch_options", None)
    if options:
        meta["arch_options"] = dict(options)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata={"camlens": json.dumps(meta)})
    return path


def load_model(
    checkpoint: str | Path | None = None,
    *,
    arch: str | None = None,
    weights: str | None = "DEFAULT",
    classes: str | Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    wsol_method: str | None = None,
    large_feature_map: bool | None = None,
    wsol_params: dict[str, Any] | None = None,
) -> LoadedModel:
    """A ready model (eval mode, on ``device``) with class names and preprocessing.

    Precedence: explicit arguments, then the checkpoint's metadata, then the pretrained weights' metadata,
    then ImageNet defaults at 224 px.  Checkpoints of Choe et al.'s wsolevaluation code load without ``arch``:
    their key layout names the network (:mod:`camlens.networks.wsolcheckpoint`); ``arch``, ``wsol_method`` and
    ``large_feature_map`` may state what the file cannot (HaS or CutMix, 28x28 maps of ResNet50 and InceptionV3),
    and a statement the file contradicts is an error; ``wsol_params`` are the method's parameters their file does
    not keep either (ACoL's ``threshold``, which its map depends on; default 0.7, theirs).

    Args:
        checkpoint: a camlens safetensors checkpoint (self-describing), or a ``.pt``/``.pth`` state dict (read with
            ``weights_only=True``; give ``arch``).
        arch: an architecture name of :func:`build_model`, when there is no checkpoint or it does not say.
        weights: the pretrained weights without a checkpoint (``DEFAULT``, a torchvision name, or ``none``).
        classes: class names: a list, ``imagenet``, ``stl10`` or a text file with one name a line.
        size: the input size (an int: square).
        mean: the normalization mean, per channel.
        std: the normalization standard deviation, per channel.
        device: where the model goes.
        wsol_method: the WSOL method of a checkpoint that does not record it (Choe et al.'s files).
        large_feature_map: whether a wsolevaluation checkpoint's network has 28 x 28 maps (their files do not say
            for ResNet50 and InceptionV3).
        wsol_params: the method's parameters a checkpoint does not record (ACoL's ``threshold``).

    Returns:
        The :class:`LoadedModel`.
    """
    meta: dict = {}
    if checkpoint is not None:
        state, meta = _read_state(Path(checkpoint))
        reference = (
            None
            if meta.get("arch")
            else _reference_model(state, meta, str(checkpoint), arch, wsol_method, large_feature_map, wsol_params or {})
        )
        if reference is not None:
            model, arch, meta = reference
            names = None
        else:
            arch = arch or meta.get("arch")
            if arch is None:
                raise CamlensError(
                    f"{checkpoint}: no architecture recorded in the checkpoint and its keys are no "
                    "wsolevaluation layout; pass --arch"
                )
            names = meta.get("class_names")
            options = _stated_options(meta, str(checkpoint), wsol_method, large_feature_map, wsol_params or {})
            model = build_model(arch, len(names) if names else _num_classes_from_state(arch, state, options), **options)
            if meta.get("wsol_method"):  # the training method's layers must exist before its weights are loaded
                attach_recorded(model, meta["wsol_method"])
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                first = str(err).strip().splitlines()
                raise CamlensError(
                    f"{checkpoint} does not fit {arch}: {first[1] if len(first) > 1 else first[0]}"
                ) from err
        base = Preprocess.from_json(meta["preprocess"]) if "preprocess" in meta else Preprocess()
    else:
        if arch is None:
            raise CamlensError("give --checkpoint FILE or --arch NAME")
        model = build_model(arch, None, weights)
        names, base = None, Preprocess()
        pretrained = not no_weights(weights)
        if zoo.is_zoo_arch(arch):
            names, base = ("imagenet" if pretrained else None), zoo.LITE_PREPROCESS
        elif pretrained and not arch.startswith("timm:") and arch != "gapnet" and arch not in NETWORKS:
            enum = torchvision_weights(arch, weights)
            names = list(enum.meta["categories"])
            crop = getattr(enum.transforms(), "crop_size", [224])
            base = Preprocess((crop[0], crop[0]))
        elif pretrained and arch.startswith("timm:"):
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            size_t = tuple(cfg.get("input_size", (3, 224, 224))[1:])
            base = Preprocess(size_t, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
            names = "imagenet" if cfg.get("num_classes") == 1000 else None
    if arch is not None and checkpoint is None and model_task(arch) != "classification":
        side = None if size is None else ((size, size) if isinstance(size, int) else (int(size[0]), int(size[-1])))
        names, base = _task_setup(model, arch, weights, side)
        meta = {"task": model_task(arch)}
    model.eval().to(device)
    num_classes = _output_classes(model, names)
    if classes is not None or not isinstance(names, list):
        names = read_class_names(classes if classes is not None else names, num_classes)
    if size is not None:
        size = (size, size) if isinstance(size, int) else cast(tuple[int, int], tuple(size))
    preprocess = Preprocess(
        size if size is not None else base.size,
        tuple(mean) if mean is not None else base.mean,
        tuple(std) if std is not None else base.std,
    )
    return LoadedModel(model, names, preprocess, arch, meta)


def _output_classes(model: nn.Module, names: object) -> int:
    if isinstance(names, list):
        return len(names)
    try:
        classifier = find_classifier(model)[1]
    except CamlensError:
        raise CamlensError("cannot tell the number of classes of this model; pass --classes FILE") from None
    return int(cast(Tensor, classifier.weight).shape[0])
