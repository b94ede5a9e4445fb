"""Every setting of a training run, with its default, in one place: :class:`TrainConfig`; :data:`FLAGS` says how
each field reads on the command line (``camlens train`` generates its flags from both, so a default is written once).

The defaults that come from Choe et al. (CVPR 2020, wsolevaluation's ``config.py``) keep their names there:
``momentum`` 0.9, ``weight_decay`` 1e-4 with SGD, ``lr_decay_every`` (their ``lr_decay_frequency``) and the 10x
learning rate of new layers (their ``lr_classifier_ratio``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..backbones import no_weights
from ..errors import CamlensError
from ..reference import PROTOCOLS, REFERENCE, check_protocol

OPTIMIZERS = ("adamw", "sgd")
AUGMENTATIONS = ("auto", "shift", "crop", "none")
SELECT_BY = ("accuracy", "maxboxacc_v2", "maxboxacc", "gt_known_loc", "top1_loc", "pxap")


@dataclass
class TrainConfig:
    """One training run.

    Data: ``data`` is ``builtin``, ``stl10`` / ``stl10:ROOT``, an ImageFolder tree or a Choe et al. metadata
    folder (``images``: the root the image ids are relative to); see :func:`camlens.training.data.load_data`.

    Network: ``arch`` (``gapnet``, a CAM network of :data:`camlens.networks.NETWORKS` with its builder
    ``arch_options``, a torchvision name or ``timm:NAME``), from scratch or from pretrained ``weights``.

    Optimization: ``optimizer="adamw"`` (the default; ``"sgd"`` under ``protocol="wsolevaluation"``) is AdamW with a linear warm-up and a cosine decay over the whole run
    (``lr`` default 3e-3 from scratch, 3e-4 fine-tuning; ``weight_decay`` 5e-4); ``"sgd"`` is Choe et al.'s SGD
    with ``momentum`` and the learning rate times 0.1 every ``lr_decay_every`` epochs (``lr`` default 0.01,
    ``weight_decay`` 1e-4).  The network's new layers (its ``new_layers`` attribute, the layers a training method
    attaches, and a replaced classifier) train at ``new_layer_lr_mult`` times the rate (default 10 when
    fine-tuning pretrained ``weights``, as Choe et al.; 1 from scratch, where every layer is new).

    Augmentation: ``shift`` (random translation by up to ``max_shift`` pixels, default 1/16 of the size, and
    mirror flips where the classes allow: the built-in dataset's, whose digits must not be mirrored), ``crop``
    (Choe et al.'s for natural images: resize to ``resize_size`` x ``resize_size``, default 256/224 of the input
    size, random ``image_size`` crop, horizontal flip) or ``none``; ``auto``: ``shift`` for the built-in dataset,
    ``crop`` otherwise.  Validation images are resized to the input size, never cropped.

    Selection: ``select_by="accuracy"`` keeps the epoch with the best validation accuracy; a localization metric
    (``maxboxacc_v2``...) evaluates that metric on ``val_data`` (a split with boxes: Choe et al.'s train-fullsup;
    the built-in dataset's validation split by default for builtin data) after each epoch and keeps its best.

    ``channels_last`` (default: on for convolutional networks) and ``amp`` (bfloat16 autocast, CUDA only) are
    speed options.

    ``protocol="wsolevaluation"`` trains as Choe et al.'s reference code does (:mod:`camlens.reference`): SGD with
    Nesterov momentum (``optimizer`` must be ``sgd``), their two learning-rate groups by parameter name (new layers
    at 10x, from scratch too), the training method's reference variant (HaS's grid) and their networks' options
    (no dropout in InceptionV3 with ADL).
    """

    data: str = "builtin"
    images: str | None = None
    arch: str = "gapnet"
    arch_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = "none"
    out: str = "camlens-train"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str | None = None  # adamw; sgd under protocol wsolevaluation
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    lr_decay_every: int = 30
    new_layer_lr_mult: float | None = None
    augment: str = "auto"
    image_size: int | None = None
    resize_size: int | None = None
    max_shift: int | None = None
    num_train: int | None = None
    num_val: int | None = None
    val_fraction: float = 0.1
    select_by: str = "accuracy"
    val_data: str | None = None
    val_images: str | None = None
    mask_root: str | None = None
    seed: int = 0
    device: str = "cpu"
    channels_last: bool | None = None
    amp: bool = False
    workers: int = 0
    download: bool = False
    resume: bool = False
    overwrite: bool = False  # start afresh in an ``out`` that holds a run, replacing it
    progress: bool = True
    protocol: str = "camlens"

    def __post_init__(self) -> None:
        if self.optimizer is None:
            self.optimizer = "sgd" if self.protocol == REFERENCE else "adamw"
        for name, choices in (("optimizer", OPTIMIZERS), ("augment", AUGMENTATIONS), ("select_by", SELECT_BY)):
            if getattr(self, name) not in choices:
                raise CamlensError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "lr_decay_every"):
            if getattr(self, name) < 1:
                raise CamlensError(f"{name}={getattr(self, name)} must be at least 1")
        if self.lr is not None and not self.lr > 0:
            raise CamlensError(f"lr={self.lr} must be positive")
        if self.new_layer_lr_mult is not None and not self.new_layer_lr_mult > 0:
            raise CamlensError(f"new_layer_lr_mult={self.new_layer_lr_mult} must be positive")
        if check_protocol(self.protocol) == REFERENCE and self.optimizer != "sgd":
            raise CamlensError(
                "protocol wsolevaluation trains with the reference code's SGD (Nesterov momentum): "
                f"optimizer={self.optimizer!r} does not fit it"
            )

    @property
    def pretrained(self) -> bool:
        return not no_weights(self.weights)

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.optimizer == "sgd":
            return 0.01
        return 3e-4 if self.pretrained else 3e-3

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-4 if self.optimizer == "sgd" else 5e-4

    @property
    def lr_mult(self) -> float:
        if self.new_layer_lr_mult is not None:
            return self.new_layer_lr_mult
        return 10.0 if self.pretrained or self.protocol == REFERENCE else 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Flag:
    """How a :class:`TrainConfig` field reads on the command line.

    Attributes:
        help: the flag's help; a default other than None, a bool or a dict is appended as ``(default: X)``.
        name: the flag, where it is not the field's name in kebab case (``--size`` for ``image_size``; a bool
            field whose default is True is cleared by its flag: ``--quiet`` for ``progress``).
        choices: the values accepted, where they are few.
        metavar: the value's name in the help.
    """

    help: str
    name: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None


FLAGS: dict[str, Flag] = {
    "data": Flag(
        "builtin, stl10 (binary files under ./data), stl10:ROOT, an ImageFolder tree, or a WSOL metadata folder "
        "(Choe et al.: train/ and val/ with image_ids.txt, class_labels.txt)"
    ),
    "images": Flag("root folder the image ids of WSOL metadata are relative to"),
    "arch": Flag(
        "gapnet, a CAM network (vgg16-cam, wsol-resnet50, gapify ...), a torchvision name (resnet18) or timm:NAME"
    ),
    "arch_options": Flag(
        "a CAM network builder option, e.g. width=256, large_feature_map=true, backbone=resnet18 cut=layer2 for "
        "--arch gapify (repeat)",
        name="--arch-option",
        metavar="KEY=VALUE",
    ),
    "weights": Flag("pretrained weights to fine-tune from, e.g. DEFAULT"),
    "out": Flag("output folder"),
    "epochs": Flag("training epochs"),
    "batch_size": Flag("images per optimizer step (all ranks together under torchrun)"),
    "optimizer": Flag(
        "adamw: warm-up + cosine; sgd: momentum, lr x0.1 every --lr-decay-every epochs (Choe et al.) "
        "(default: adamw; sgd with --protocol wsolevaluation)",
        choices=OPTIMIZERS,
    ),
    "lr": Flag("peak learning rate (default: adamw 3e-3 from scratch, 3e-4 fine-tuning; sgd 0.01)"),
    "weight_decay": Flag("default: 5e-4 adamw, 1e-4 sgd"),
    "momentum": Flag("sgd momentum"),
    "lr_decay_every": Flag("sgd: epochs between x0.1 decays"),
    "new_layer_lr_mult": Flag("learning-rate multiple of the new layers (default: 10 fine-tuning, 1 from scratch)"),
    "augment": Flag(
        "shift: random shifts (+ flips); crop: resize, random crop, flip (Choe et al.); "
        "auto: shift for builtin, crop otherwise",
        choices=AUGMENTATIONS,
    ),
    "image_size": Flag(
        "training image size (default: 64 builtin, 96 stl10, 224 folders)", name="--size", metavar="SIZE"
    ),
    "resize_size": Flag("crop augmentation: resize to this before cropping (default: size x 256/224)"),
    "max_shift": Flag("shift augmentation: the largest shift in pixels (default: 1/16 of the size)"),
    "num_train": Flag("use this many training images"),
    "num_val": Flag("use this many validation images"),
    "val_fraction": Flag("held-out share of a single ImageFolder tree"),
    "select_by": Flag(
        "keep the epoch with the best validation accuracy, or the best localization metric on --val-data",
        choices=SELECT_BY,
    ),
    "val_data": Flag(
        "the split with boxes for --select-by (a WSOL metadata folder; default: builtin's val split, or the val/ "
        "split of WSOL --data)"
    ),
    "val_images": Flag("root folder of the --val-data images (default: --images)"),
    "mask_root": Flag("root folder of the mask files named in --val-data"),
    "seed": Flag("seed of the initialization, the data order and the augmentation"),
    "device": Flag("cpu, cuda, cuda:1, mps"),
    "channels_last": Flag("train in channels-last memory format (default: on for CPU conv nets)"),
    "amp": Flag("bfloat16 autocast (CUDA)"),
    "workers": Flag("image decoding processes for ImageFolder data"),
    "download": Flag("download STL-10 when no local copy is found"),
    "resume": Flag("continue the run recorded in --out"),
    "overwrite": Flag(
        "replace the run recorded in --out (its checkpoints and resume file) (default: keep them and stop)"
    ),
    "progress": Flag("no progress bars", name="--quiet"),
    "protocol": Flag(
        "wsolevaluation: train as Choe et al.'s reference code does (Nesterov SGD, their learning-rate groups and "
        "HaS grid; selection evaluated at the 224 input with bicubic maps, their threshold step)",
        choices=PROTOCOLS,
    ),
}
