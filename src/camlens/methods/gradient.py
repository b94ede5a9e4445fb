"""The Grad-CAM family: maps from a layer's activations A (B, K, *S) and the gradients g = dy/dA of the
explained score y, for S = (L,), (h, w) or (d, h, w).

Gradients are computed from the target layer up only: the network before the layer runs without autograd, the
layer's output becomes a leaf, and ``torch.autograd.grad`` differentiates with respect to that leaf alone (so
parameters' ``.grad`` stay None and no graph outlives the call).  At the last layer this costs one forward pass
plus the backward of the head.  Formulas below write sums over positions (i, j) of the h x w grid, Z = h * w;
on 1-D and 3-D layers the sums run over the L or d x h x w positions alike.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .layered import LayerExplainer, Scorer, no_autocast, score_gradients


class _GradientMethod(LayerExplainer):
    needs_gradients = True
    thread_safe = True

    def _explain(self, x: Tensor, output: Any, acts: list[Tensor], scorer: Scorer) -> list[Tensor]:
        with torch.enable_grad():  # the caller may be inside torch.no_grad(); the graph itself is already recorded
            scores = scorer(output, torch.arange(x.shape[0], device=x.device))
            grads = score_gradients(scores, acts, self.layer_names)
        maps = []
        for act, grad in zip(acts, grads):
            a = self._spatial(act.detach(), x)
            g = self._spatial(grad.flatten(0, 1), x).unflatten(0, grad.shape[:2])
            if a.dtype in (torch.float16, torch.bfloat16):
                a, g = a.float(), g.float()
            with no_autocast(a):
                maps.append(self._maps(a, g.to(a.dtype), scores.detach()))
        return maps

    def _maps(self, a: Tensor, g: Tensor, scores: Tensor) -> Tensor:
        """Maps from activations, gradients and the explained scores (B, N); :meth:`_combine` for the methods whose
        formula takes the gradient of the score itself."""
        return self._combine(a, g)

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        """Maps (B, N, *S) from activations ``a`` (B, K, *S) and gradients ``g`` (B, N, K, *S)."""
        raise NotImplementedError


def _weighted_sum(weights: Tensor, a: Tensor) -> Tensor:
    """sum_k weights[b, n, k] * a[b, k] -> (B, N, *S)."""
    return torch.einsum("bnk,bk...->bn...", weights, a)


def _positions(t: Tensor, leading: int) -> tuple[int, ...]:
    """The spatial dimensions of ``t``: all after its first ``leading`` ones (B, K for A; B, N, K for g)."""
    return tuple(range(leading, t.ndim))


class GradCAM(_GradientMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017, "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization").

    alpha_k = (1/Z) sum_ij g_k(i, j);  M = ReLU(sum_k alpha_k A_k).  The ReLU is part of the paper's formula.
    On a GAP + linear network at the last layer, g_k = w_k / Z, so M = ReLU(CAM) / Z.
    One forward pass and one backward pass of the layers after the target layer.
    """

    name = "gradcam"

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        return F.relu(_weighted_sum(g.mean(_positions(g, 3)), a))


class GradCAMPlusPlus(_GradientMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, "Grad-CAM++: Generalized Gradient-based Visual Explanations for
    Deep Convolutional Networks"), with the closed form of its eq. 19 (exponential of the score, so higher
    derivatives are powers of g):

    alpha_k(i, j) = g_k(i,j)^2 / (2 g_k(i,j)^2 + sum_ab A_k(a, b) * g_k(i,j)^3),  0 where the denominator is 0;
    w_k = sum_ij alpha_k(i, j) ReLU(g_k(i, j));  M = ReLU(sum_k w_k A_k).

    The ReLU is part of the paper's formula; the positive factor exp(y) of dexp(y)/dA is left out (it scales
    each map only).  pytorch-grad-cam uses this version (plus 1e-6 in the denominator).  torchcam 0.5.0 writes the
    denominator with sum_ab A_k(a,b) g_k(a,b)^3 but divides a copy, so it computes w_k = sum_ij g^2 ReLU(g): the
    tests check both differences.
    """

    name = "gradcampp"

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        g2 = g * g
        total = a.sum(_positions(a, 2), keepdim=True)[:, None]  # (B, 1, K, 1...)
        denom = 2 * g2 + total * g2 * g
        alpha = torch.where(
            denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g)
        )
        return F.relu(_weighted_sum((alpha * F.relu(g)).sum(_positions(g, 3)), a))


class XGradCAM(_GradientMethod):
    """XGrad-CAM (Fu et al., BMVC 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
    CNNs").

    alpha_k = sum_ij (A_k(i, j) / sum_ab A_k(a, b)) g_k(i, j), 0 for a channel whose activations sum to 0;
    M = sum_k alpha_k A_k.  The paper's formula has no ReLU (both peers apply one, and add an eps of 1e-7 /
    1e-8 to the denominator instead of zeroing).
    """

    name = "xgradcam"

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        total = a.sum(_positions(a, 2))[:, None]  # (B, 1, K)
        numer = (g * a[:, None]).sum(_positions(g, 3))
        safe = torch.where(total != 0, total, torch.ones_like(total))
        return _weighted_sum(torch.where(total != 0, numer / safe, torch.zeros_like(numer)), a)


class LayerCAM(_GradientMethod):
    """Layer-CAM (Jiang et al., IEEE TIP 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization").

    M(i, j) = ReLU(sum_k ReLU(g_k(i, j)) A_k(i, j)).  Both ReLUs are part of the paper's formula (its extra
    tanh scaling applies only when fusing shallow layers and is not part of the map).
    """

    name = "layercam"

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        return F.relu((F.relu(g) * a[:, None]).sum(2))


class HiResCAM(_GradientMethod):
    """HiResCAM (Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks").

    M(i, j) = sum_k g_k(i, j) A_k(i, j).  No ReLU in the formula (pytorch-grad-cam applies one); on a GAP +
    linear network at the last layer M = CAM / Z exactly, signs included.
    """

    name = "hirescam"

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        return (g * a[:, None]).sum(2)


__all__: Sequence[str] = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "XGradCAM"]
