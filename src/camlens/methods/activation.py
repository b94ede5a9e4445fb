"""Methods that weight activations without gradients: CAM, and the perturbation methods Score-CAM (with its
smoothed SS-CAM and integrated IS-CAM variants) and Ablation-CAM."""

from __future__ import annotations

import threading
import warnings
import weakref
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import (
    GapHead,
    LayerCapture,
    LayerSpec,
    ModelLike,
    locate_gap_head,
    output_logits,
    unwrapped_spec,
)
from ..errors import CamlensError
from ..hardware import usable_approximation
from ..maps import normalize, upsample
from ..tokens import token_layout
from .base import CAMResult, ClassSpec, Explainer, check_stop, select_classes
from .layered import LayerExplainer, LayerOptions, Scorer, no_autocast

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class CAM(Explainer):
    """Class Activation Mapping (Zhou et al., CVPR 2016, "Learning Deep Features for Discriminative Localization").

    For a network ending in global average pooling and a linear classifier,
    M_c(x, y) = sum_k w_k^c f_k(x, y), so that mean_xy M_c + b_c = logit_c exactly.

    The feature layer and classifier are found on the first call from that call's own forward pass and checked
    numerically (DenseNet's functional ReLU, ConvNeXt's LayerNorm after pooling and SqueezeNet's 1x1 conv
    classifier are folded in exactly); ``layer`` and ``classifier`` override the search.  On token models
    (:func:`camlens.tokens.token_layout`) the features may be tokens: a ViT whose head averages its patch tokens
    (timm ``global_pool="avg"``; prefix tokens left out, as timm's pooling does) or a Swin gets the exact CAM on
    the patch grid; a class-token head is not GAP + linear and is refused.  One forward pass per batch, no
    gradients.
    """

    name = "cam"
    thread_safe = True

    def __init__(self, model: ModelLike, layer: LayerSpec | None = None, classifier: LayerSpec | None = None) -> None:
        """Args:
        model: a network (or a :func:`camlens.load_model` result) ending in global average pooling and a linear (or 1x1 convolution) classifier.
        layer: the feature layer before the pooling (name or module); None to find it.
        classifier: the classifier (name or module); None to find it.
        """
        super().__init__(model, layer)
        self.classifier = unwrapped_spec(model, classifier)
        self.head: GapHead | None = None
        self._capture: LayerCapture | None = None

    def _locate(self, x: Tensor) -> tuple[Tensor, object]:
        layout = token_layout(self.model, x.shape) if x.ndim == 4 else None
        head, features, output = locate_gap_head(self.model, x, self.layer, self.classifier, layout)
        self.head = head
        self._capture = LayerCapture(head.layer, where=head.capture)
        self._captures.append(self._capture)
        return features, output

    def _run(self, x: Tensor) -> tuple[Any, Tensor]:
        """The model output and the features of one pass (on the patch grid of this input for token features)."""
        output = self.model(x)
        features = cast(LayerCapture, self._capture).pop()
        if cast(GapHead, self.head).tokens:
            layout = token_layout(self.model, x.shape)
            assert layout is not None  # the head was found with this model's layout
            features = layout.to_grid(features)
        return output, features

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1) -> CAMResult:
        """The CAMs of ``classes`` for the batch ``x``, from one forward pass.

        Args:
            x: the preprocessed batch (B, C, *S).
            classes: the classes to explain (see :func:`~camlens.methods.base.select_classes`); None for the
                ``topk`` best.
            topk: how many of the best classes when ``classes`` is None.

        Returns:
            The :class:`~camlens.methods.base.CAMResult`, with ``bias`` such that the mean of each map plus its
            bias is the explained logit.
        """
        grad_ctx = torch.no_grad() if not torch.is_inference_mode_enabled() else torch.inference_mode()
        with grad_ctx:
            if self._capture is None:
                with self._setup_lock:
                    if self._capture is None:
                        features, output = self._locate(x)
                    else:
                        output, features = self._run(x)
            else:
                output, features = self._run(x)
            logits = output_logits(output)
            chosen = select_classes(logits, classes, topk)
            head = cast(GapHead, self.head)  # set by _locate on the first call
            maps, bias = head.class_maps(features, chosen)
        return CAMResult(logits=logits, classes=chosen, maps=maps, layer=head.layer_name, bias=bias)


PassModel = Callable[[Tensor], Any]


Progress = Union[bool, Callable[[int, int], None]]


class ScoreOptions(LayerOptions, total=False):
    """The keyword options of :class:`ScoreCAM`, passed on by its variants."""

    batch_size: int | None
    progress: Progress
    optimize: bool
    approximate: bool | torch.dtype


_copies: weakref.WeakKeyDictionary[nn.Module, dict[bool | torch.dtype, tuple[tuple, PassModel | None]]] = (
    weakref.WeakKeyDictionary()
)
_copies_lock = threading.Lock()


def pass_model(model: nn.Module, x: Tensor, output: Any, approximate: bool | torch.dtype = False) -> PassModel:
    """What the many masked passes of Score-CAM run through.

    Exact (``approximate=False``): for a float32 model, an inference-optimized copy, used only after it
    reproduced the model's output on the unperturbed batch ``x`` (max abs difference <= 1e-4 * max(1, max |y|) on
    CPU, 1e-2 on GPU); otherwise the model itself.  On CPU the copy has its convolutions and batch norms folded
    and runs in oneDNN's layout (``torch.fx.experimental.optimization.optimize_for_inference``); on GPU they are
    folded too, in channels-last layout while cuDNN may use TF32 (see ``_gpu_copy``).  Approximate: a copy with
    batch norms folded, in channels-last layout and in bfloat16 (``approximate=True``; AMX / AVX512-BF16 matrix
    units on CPU, tensor cores on GPU) or the dtype given (``torch.float16``: tensor cores on GPU), inputs cast
    to it.  A copy is kept per model and mode while the model lives and rebuilt when one of its parameters or
    buffers changed (in place, moved or replaced), the input's device or dtype did, or cuDNN's TF32 setting,
    so explainers made per call share it."""
    tensors = [*model.parameters(), *model.buffers()]
    layout = torch.backends.cudnn.allow_tf32 if x.is_cuda else None
    key = (x.device, x.dtype, layout, *((id(t), t._version, t.data_ptr(), t.dtype) for t in tensors))
    with _copies_lock:
        built = _copies.setdefault(model, {}).get(approximate)
        if built is None or built[0] != key:
            built = (
                key,
                _low_precision_copy(model, x, torch.bfloat16 if approximate is True else approximate)
                if approximate
                else _optimized_copy(model, x, output, tensors),
            )
            _copies[model][approximate] = built
    return built[1] or model


def _optimized_copy(model: nn.Module, x: Tensor, output: Any, tensors: list[Tensor]) -> PassModel | None:
    on_cpu = x.device.type == "cpu"
    if (
        x.dtype != torch.float32
        or (not on_cpu and x.ndim != 4)
        or any(t.device != x.device or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors)
    ):
        return None
    from torch.fx.experimental.optimization import optimize_for_inference

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            fast = optimize_for_inference(model) if on_cpu else _gpu_copy(model)
            expected = output_logits(output).float()
            got = output_logits(fast(x)).float()
    except Exception:  # not traceable by torch.fx, unsupported op, odd output: run the model itself
        return None
    # the check is for rewrites that change the function (those err by order 1), not for rounding: GPU
    # convolutions round to TF32's 10 bits by PyTorch's default, differently for each layout
    tolerance = 1e-4 if on_cpu else 1e-2
    if got.shape != expected.shape or (got - expected).abs().max() > tolerance * max(1.0, expected.abs().max().item()):
        return None
    return fast


def _folded_copy(model: nn.Module) -> nn.Module:
    """A copy with each batch norm folded into the convolution before it, when torch.fx can trace the model."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model)
    except Exception:  # not traceable: keep the batch norms
        return deepcopy(model)


def _gpu_copy(model: nn.Module) -> PassModel:
    """Batch norms folded, in channels-last layout when cuDNN may round to TF32 (its tensor-core kernels read that
    layout; in plain float32 the default layout ran 1.1x faster on an H200)."""
    copy = _folded_copy(model)
    if not torch.backends.cudnn.allow_tf32:
        return copy
    copy = copy.to(memory_format=torch.channels_last)
    return lambda images: copy(images.contiguous(memory_format=torch.channels_last))


def _low_precision_copy(model: nn.Module, x: Tensor, dtype: torch.dtype) -> PassModel:
    layout = torch.channels_last if x.ndim == 4 else torch.contiguous_format
    # folded in float32, then rounded once; Module.to takes memory_format, which torch's stubs omit
    copy = _folded_copy(model).to(dtype, memory_format=layout)  # type: ignore[call-overload]
    return lambda images: copy(images.to(dtype, memory_format=layout))


class _PerturbationMethod(LayerExplainer):
    """M = ReLU(sum_k w_k A_k) (A: (B, K, *S), any spatial rank) with channel weights w_k (B, N, K) measured by
    extra passes of perturbed copies of each image, ``batch_size`` rows a pass; subclasses say how the weights
    are computed (``_weights``).  Between passes they call :func:`camlens.methods.base.check_stop`, so a caller
    can stop them, and report their progress: ``progress=True`` shows a tqdm bar on stderr (rate and time
    left), a callable is called as ``progress(done, total)`` with the masked rows (one image each) of the call
    run so far and in all, once before the first pass and after each pass."""

    expensive = True

    def __init__(
        self,
        model: ModelLike,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        batch_size: int | None = 64,
        progress: Progress = False,
        **options: Unpack[LayerOptions],
    ) -> None:
        """Args:
        model: the model (wrappers looked through, see :class:`~camlens.methods.base.Explainer`).
        layer: None (automatic), a layer name or module, or a list of them (maps fused).
        batch_size: rows of perturbed copies per pass.
        **options: the options of every layer method: ``reshape`` (a layer output -> (B, K, h, w), e.g.
            :func:`camlens.tokens_to_grid`) and ``fuse`` (``"max"`` or ``"mean"``, for several layers).
        """
        super().__init__(model, layer, **options)
        if batch_size is not None and batch_size < 1:
            raise CamlensError(f"batch_size={batch_size} must be at least 1")
        self.batch_size = batch_size
        self.progress = progress
        self._meter = _PassMeter(False, "")

    def _explain(self, x: Tensor, output: Any, acts: list[Tensor], scorer: Scorer) -> list[Tensor]:
        if self.model.training:
            raise CamlensError(
                f"{type(self).__name__} runs perturbed copies of each image in one batch; in training mode batch "
                "statistics and dropout would mix them: call model.eval() first"
            )
        maps = []
        self._meter = _PassMeter(self.progress, self.name)
        with torch.no_grad(), self._meter:
            for index, act in enumerate(acts):
                a = self._spatial(act, x)
                weights = self._weights(x, output, index, act, a, scorer)
                with no_autocast(a):
                    maps.append(F.relu(torch.einsum("bnk,bk...->bn...", weights.float(), a.float())))
        return maps

    def _weights(self, x: Tensor, output: Any, index: int, act: Tensor, a: Tensor, scorer: Scorer) -> Tensor:
        """w (B, N, K) for layer ``index``, whose output is ``act`` ((B, K, *S) as ``a``)."""
        raise NotImplementedError


class ScoreCAM(_PerturbationMethod):
    """Score-CAM (Wang et al., CVPR Workshops 2020, "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks").

    H_k = Up(s(A_k)) with s(A) = (A - min A) / (max A - min A) taken at the layer's resolution (H_k = 0 for a
    constant A_k) and Up the upsampling to the input size (align_corners=False, :func:`camlens.upsample`: linear
    for 1-D signals, bilinear for images, trilinear for volumes; the layer has the input's rank);
    y_k = y(X * H_k), the explained score of the input masked by H_k;
    alpha_k = softmax_k(y_k - y(X_b)), with the baseline X_b = 0 = X * 0 (softmax over channels, so the baseline
    cancels);  M = ReLU(sum_k alpha_k A_k).  The ReLU is part of the paper's formula.

    This is torchcam's version (normalize, then upsample).  pytorch-grad-cam upsamples with align_corners=True and
    normalizes at input resolution, so its masks differ slightly; the official code weights by class
    probabilities instead of a softmax over channels.  Identical masks give identical scores, so each distinct
    mask of an image is scored once: all constant channels share the baseline pass.  Masked passes run in
    batches of ``batch_size`` rows (None: 16 on CPU, where a pass's activations then stay in cache, resnet18 at
    224 px running 10-15% faster per image than with 64 rows; 256 on GPU, 1.1x faster than 64 on an H200, halved
    while the GPU runs out of memory) through :func:`pass_model` (an inference-optimized copy of the model when
    ``optimize``); a target callable sees batches of masked copies and must act row by row.  Passes per image: 1 + distinct masks (<= K).

    ``approximate`` (opt-in) runs the masked passes in lower precision, through a copy with batch norms folded:
    ``True`` in bfloat16 (8 significant bits), ``torch.float16`` in half precision (11 bits).  Each y_k is then off
    by about 2^-bits |y_k| (rounding accumulates over the layers), which scales alpha_k by exp(that error), so the
    error grows with the magnitude of the scores.  Measured max abs difference of the normalized map from the
    exact one on resnet18 at 224 px (random weights, benchmarks/bench_methods.py): bfloat16 2e-4 to 7e-4 (tests
    bound it at 5e-3), float16 4e-5 to 1e-4 (GPU tests bound it at 1e-4).  Faster only where matrix units for the
    type exist: bfloat16 on AMX / AVX512-BF16 CPUs and GPU tensor cores, float16 on GPU tensor cores (2.6x the
    faster peer on an H200, against 1.8x exact).  On a CPU without bfloat16 units ``True`` runs the exact mode
    instead, with a warning (:func:`camlens.hardware.usable_approximation`).
    """

    name = "scorecam"
    exclusive_setup = True  # the inference copy is made by torch.fx tracing, which patches nn.Module.__call__
    dedupe = True  # identical masks are scored once
    variants = 1  # masked passes per mask, averaged (SS-CAM's noise draws, IS-CAM's integration steps)

    def __init__(
        self,
        model: ModelLike,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        batch_size: int | None = None,
        optimize: bool = True,
        approximate: bool | torch.dtype = False,
        progress: Progress = False,
        **options: Unpack[LayerOptions],
    ) -> None:
        """Args:
        model: the model (wrappers looked through, see :class:`~camlens.methods.base.Explainer`).
        layer: None (automatic), a layer name or module, or a list of them (maps fused).
        batch_size: rows of masked copies per pass; None for 16 on CPU, 256 on GPU.
        optimize: run the masked passes through an inference-optimized copy (:func:`pass_model`).
        approximate: False (exact), True (bfloat16) or ``torch.float16`` for the masked passes.
        progress: True for a progress bar with the time left, or a callback(done, total) per masked pass.
        **options: the options of every layer method: ``reshape`` (a layer output -> (B, K, h, w), e.g.
            :func:`camlens.tokens_to_grid`) and ``fuse`` (``"max"`` or ``"mean"``, for several layers).
        """
        super().__init__(model, layer, batch_size=batch_size, progress=progress, **options)
        if approximate not in (False, True, torch.bfloat16, torch.float16):
            raise CamlensError(f"approximate={approximate!r}: use False, True (bfloat16) or torch.float16")
        self.optimize = optimize
        self.approximate = approximate

    def prepare(self, x: Tensor) -> None:
        self._ensure_hooks(x)
        approximate = usable_approximation(self.approximate, x.device)
        if self.optimize or approximate:
            with torch.no_grad():
                pass_model(self.model, x, self.model(x), approximate)

    def _weights(self, x: Tensor, output: Any, index: int, act: Tensor, a: Tensor, scorer: Scorer) -> Tensor:
        if a.ndim != x.ndim:
            raise CamlensError(
                f"{type(self).__name__} masks the input with the layer's maps: layer output {tuple(a.shape)} and "
                f"input {tuple(x.shape)} must have the same spatial rank; pick a layer of the input's rank"
            )
        approximate = usable_approximation(self.approximate, x.device)  # bfloat16 only where the CPU has the units
        fast = self.optimize or approximate
        forward = pass_model(self.model, x, output, approximate) if fast else self.model
        masks = normalize(a.float(), spatial_dims=a.ndim - 2)
        return self._channel_scores(x, masks, scorer, forward).softmax(1).transpose(1, 2)

    def _channel_scores(self, x: Tensor, masks: Tensor, scorer: Scorer, forward: PassModel) -> Tensor:
        """The mean explained scores of x * Up(masks) (B, K, N), each distinct mask of an image scored once."""
        batch, channels = masks.shape[:2]
        if not self.dedupe:
            every = torch.arange(batch, device=x.device).repeat_interleave(channels)
            return self._score_masks(x, masks.flatten(0, 1), every, scorer, forward).view(batch, channels, -1)
        distinct: list[Tensor] = []
        rows: list[Tensor] = []
        index: list[Tensor] = []
        offset = 0
        for b in range(batch):
            unique, inverse = torch.unique(masks[b].flatten(1), dim=0, return_inverse=True)
            distinct.append(unique)
            rows.append(torch.full((len(unique),), b, dtype=torch.long, device=x.device))
            index.append(inverse + offset)
            offset += len(unique)
        unique_masks = torch.cat(distinct).view(-1, *masks.shape[2:])
        scores = self._score_masks(x, unique_masks, torch.cat(rows), scorer, forward)
        return scores[torch.cat(index)].view(batch, channels, -1)

    def _score_masks(self, x: Tensor, masks: Tensor, rows: Tensor, scorer: Scorer, forward: PassModel) -> Tensor:
        """Mean over the method's mask variants of the explained scores of x[rows[j]] * Up(masks[j]): (J, N)."""
        rows_per_pass = self.batch_size or (16 if x.device.type == "cpu" else 256)
        self._meter.expect(len(masks) * self.variants)
        total = None
        for variant in range(self.variants):
            noise = self._noise(len(masks), x)
            scores, start = [], 0
            while start < len(masks):
                check_stop()
                part = slice(start, start + rows_per_pass)
                up = self._vary(upsample(masks[part][:, None], x.shape[2:]).to(x.dtype), variant)
                if noise is not None:
                    up = up + noise[part].to(x.device)
                try:
                    y = scorer(forward(x[rows[part]] * up), rows[part]).float()
                except torch.OutOfMemoryError:
                    if self.batch_size is not None or rows_per_pass == 1:
                        raise
                    y = None
                if y is None:  # outside the except block, whose traceback holds the failed pass's tensors
                    rows_per_pass //= 2  # the default is sized for common GPUs: halve it on smaller ones
                    torch.cuda.empty_cache()
                    continue
                scores.append(y)
                self._meter.advance(len(y))
                start += rows_per_pass
            y = torch.cat(scores)
            total = y if total is None else total + y
        return cast(Tensor, total) / self.variants  # variants >= 1 passes ran

    def _vary(self, mask: Tensor, variant: int) -> Tensor:
        return mask

    def _noise(self, count: int, x: Tensor) -> Tensor | None:
        """Noise added to the ``count`` upsampled masks of one variant, (count, 1, *input size), or None."""
        return None


class SSCAM(ScoreCAM):
    """SS-CAM (Wang, Naidu et al., 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization"),
    smoothing on the masks as torchcam 0.5.0 does:

    y_k = (1/n) sum_i y(X * (H_k + delta_i)), delta_i ~ N(0, std^2) per input position, drawn from ``generator``;
    alpha_k = softmax_k(y_k - y(X_b));  M = ReLU(sum_k alpha_k A_k)  (ReLU in the formula).
    Every channel is scored (the noise makes masks distinct).  Passes per image: 1 + n * K.  The noise of each
    draw is taken for all masks at once (K * H * W values per image: 100 MB for 512 channels at 224 px), so that
    with one ``generator`` seed the maps do not depend on ``batch_size`` or the device.  Other options as
    :class:`ScoreCAM`.
    """

    name = "sscam"
    draws_noise = True
    dedupe = False

    def __init__(
        self,
        model: ModelLike,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        num_samples: int = 35,
        std: float = 2.0,
        generator: torch.Generator | None = None,
        **options: Unpack[ScoreOptions],
    ) -> None:
        """Args:
        model: the model (wrappers looked through, see :class:`~camlens.methods.base.Explainer`).
        layer: None (automatic), a layer name or module, or a list of them (maps fused).
        num_samples: noise draws n per mask.
        std: the noise's standard deviation.
        generator: where the noise is drawn from (None: torch's global generator).
        **options: :class:`ScoreCAM`'s options (``batch_size``, ``optimize``, ``approximate``, ``reshape``,
            ``fuse``).
        """
        super().__init__(model, layer, **options)
        self.variants = num_samples
        self.std = std
        self.generator = generator

    def _noise(self, count: int, x: Tensor) -> Tensor:
        # drawn where the generator lives, so that one seed gives the same noise on every device
        device = self.generator.device if self.generator is not None else x.device
        shape = (count, 1, *x.shape[2:])
        return self.std * torch.randn(shape, generator=self.generator, dtype=x.dtype, device=device)


class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al., 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations"), with the
    accumulated mask schedule of torchcam 0.5.0 (M <- M + (i/n) H_k at step i):

    y_k = (1/n) sum_{i=1..n} y(X * c_i H_k), c_i = sum_{j=1..i} j/n = i(i+1)/(2n);
    alpha_k = softmax_k(y_k - y(X_b));  M = ReLU(sum_k alpha_k A_k)  (ReLU in the formula).
    Identical masks are scored once, as in Score-CAM.  Passes per image: 1 + n * distinct masks.  Other options
    as :class:`ScoreCAM`.
    """

    name = "iscam"

    def __init__(
        self,
        model: ModelLike,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        num_samples: int = 10,
        **options: Unpack[ScoreOptions],
    ) -> None:
        """Args:
        model: the model (wrappers looked through, see :class:`~camlens.methods.base.Explainer`).
        layer: None (automatic), a layer name or module, or a list of them (maps fused).
        num_samples: integration steps n per mask.
        **options: :class:`ScoreCAM`'s options (``batch_size``, ``optimize``, ``approximate``, ``reshape``,
            ``fuse``).
        """
        super().__init__(model, layer, **options)
        self.variants = num_samples

    def _vary(self, mask: Tensor, variant: int) -> Tensor:
        i = variant + 1
        return mask * (i * (i + 1) / (2 * self.variants))


ABLATION_ELEMENTS = 2**25  # ablated activation values per pass (128 MiB in float32)


class AblationCAM(_PerturbationMethod):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization").

    y_k = the explained score with channel k of the layer's output set to 0 (for every position or token,
    prefix tokens included; the channel is the output's last dim for tokens and channels-last maps);
    w_k = (y - y_k) / y  (y - y_k where y == 0);  M = ReLU(sum_k w_k A_k).  The ReLU is part of the paper's
    formula.  pytorch-grad-cam ablates with min(A) - 1e7 instead of 0 when the layer's minimum is not 0.

    Only the layers after the target layer are re-run: the ablated copies replace the layer's output inside one
    pass on the original batch (when the rest of the network mixes the layer's output with earlier tensors of
    the original batch size, the input is repeated instead).  Passes per image: 1 + K tail passes, batched as
    many copies a pass as :data:`ABLATION_ELEMENTS` activation values allow.
    """

    name = "ablationcam"
    _repeat_input = False  # set once the tail pass on the original batch failed

    def _weights(self, x: Tensor, output: Any, index: int, act: Tensor, a: Tensor, scorer: Scorer) -> Tensor:
        base = scorer(output, torch.arange(x.shape[0], device=x.device)).float()[:, :, None]  # (B, N, 1)
        diff = base - self._ablated_scores(x, index, act, scorer)
        safe = torch.where(base != 0, base, torch.ones_like(base))
        return torch.where(base != 0, diff / safe, diff)

    def _ablated_scores(self, x: Tensor, index: int, act: Tensor, scorer: Scorer) -> Tensor:
        """The explained scores with each channel of ``act`` zeroed in turn, (B, N, K)."""
        batch = x.shape[0]
        channel_dim = self._channel_dim(act, x)
        channels = act.shape[channel_dim]
        # every pass re-runs the layers before the target on the original batch, so take as many ablated copies a
        # pass as ABLATION_ELEMENTS activation values allow (at least batch_size rows)
        per_pass = min(channels, max(1, (self.batch_size or 64) // batch, ABLATION_ELEMENTS // act.numel()))
        self._meter.expect(channels * batch)
        scores = []
        for start in range(0, channels, per_pass):
            check_stop()
            ks = torch.arange(start, min(start + per_pass, channels), device=act.device)
            copies = act.unsqueeze(0).repeat(len(ks), *([1] * act.ndim))  # (M, B, ...) ablation-major
            keep = torch.ones(len(ks), channels, dtype=act.dtype, device=act.device)
            keep[torch.arange(len(ks)), ks] = 0
            shape = [len(ks)] + [1] * act.ndim
            shape[channel_dim if channel_dim < 0 else channel_dim + 1] = channels
            ablated = (copies * keep.view(shape)).flatten(0, 1)
            rows = torch.arange(batch, device=x.device).repeat(len(ks))
            out = self._run_ablated(x, index, ablated, len(ks))
            scores.append(scorer(out, rows).float().view(len(ks), batch, -1))
            self._meter.advance(len(rows))
        return torch.cat(scores).permute(1, 2, 0)

    def _run_ablated(self, x: Tensor, index: int, ablated: Tensor, copies: int) -> Any:
        replace = lambda i, output: ablated if i == index else None  # noqa: E731
        hooks = self._ensure_hooks(x)
        if not self._repeat_input:
            try:
                with hooks.active(replace):
                    out = self.model(x)
                if _output_rows(out) == len(ablated):
                    return out
            except RuntimeError:  # the tail mixes the layer with earlier tensors of the original batch size
                pass
            self._repeat_input = True
        with hooks.active(replace):
            return self.model(x.repeat(copies, *([1] * (x.ndim - 1))))


class _PassMeter:
    """Counts the masked rows of one call for ``progress``: a tqdm bar on stderr (True), a ``(done, total)``
    callback, or nothing (False)."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.done = self.total = 0
        self._callback = progress if callable(progress) else None
        self._bar: Any = None
        if progress is True:
            import sys

            from tqdm import tqdm

            self._bar = tqdm(total=0, unit="pass", desc=name, file=sys.stderr, leave=False)

    def expect(self, rows: int) -> None:
        self.total += rows
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()
        if self._callback is not None:
            self._callback(self.done, self.total)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(rows)
        if self._callback is not None:
            self._callback(self.done, self.total)

    def __enter__(self) -> "_PassMeter":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _output_rows(output: Any) -> int:
    """Rows of the first tensor in a model output (its batch size); a list of per-image results (detectors)
    counts its items."""
    if isinstance(output, (list, tuple)) and output and not isinstance(output[0], Tensor):
        return len(output)
    try:
        return output_logits(output).shape[0]
    except CamlensError:
        return -1


__all__: Sequence[str] = ["AblationCAM", "CAM", "ISCAM", "SSCAM", "ScoreCAM"]
