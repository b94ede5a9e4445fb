"""Float64 reference implementations of the CAM-family formulas, written independently of camlens: full autograd
through a float64 copy of the model, one backward pass per explained score, and plain loops over channels and
positions.  Shared by tests/test_methods*.py."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """conv-ReLU-conv-ReLU (``features``, stride 1, so maps have the input's size) - GAP - linear."""

    def __init__(self, classes: int = 5, channels: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((-2, -1)))


def module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def activations_and_grads(model, layer, x, classes=None, target=None, reshape=None):
    """A (B, K, h, w) and G (B, N, K, h, w) in float64: d score[b, n] / d A[b], one backward per (b, n)."""
    m64 = copy.deepcopy(model).double()
    store = {}

    def hook(mod, args, out):
        store["a"] = out
        return out.clone()

    handle = module(m64, layer).register_forward_hook(hook)
    try:
        out = m64(x.double())
    finally:
        handle.remove()
    a = store["a"]
    scores = target(out)[:, None] if target is not None else out.gather(1, torch.as_tensor(classes))
    grads = []
    for b in range(scores.shape[0]):
        row = []
        for n in range(scores.shape[1]):
            (g,) = torch.autograd.grad(scores[b, n], a, retain_graph=True)
            row.append(g[b])
        grads.append(torch.stack(row))
    grads = torch.stack(grads)
    spatial = (lambda t: t) if reshape is None else (lambda t: reshape(t, tuple(x.shape[-2:])))
    a_sp = spatial(a.detach())
    g_sp = spatial(grads.flatten(0, 1)).unflatten(0, grads.shape[:2])
    return a_sp, g_sp


def _loops(a, g, rule):
    """Apply ``rule(A, G, K, h, w) -> map (list of lists)`` per (b, n) on nested Python lists."""
    batch, count = g.shape[:2]
    K, h, w = a.shape[1:]
    out = torch.zeros(batch, count, h, w, dtype=torch.float64)
    for b in range(batch):
        A = a[b].tolist()
        for n in range(count):
            out[b, n] = torch.tensor(rule(A, g[b, n].tolist(), K, h, w), dtype=torch.float64)
    return out


def _combine(A, wts, K, h, w, relu):
    m = [[sum(wts[k] * A[k][i][j] for k in range(K)) for j in range(w)] for i in range(h)]
    return [[max(v, 0.0) for v in row] for row in m] if relu else m


def ref_gradcam(a, g):
    def rule(A, G, K, h, w):
        wts = [sum(G[k][i][j] for i in range(h) for j in range(w)) / (h * w) for k in range(K)]
        return _combine(A, wts, K, h, w, relu=True)

    return _loops(a, g, rule)


def ref_gradcampp(a, g):
    def rule(A, G, K, h, w):
        wts = []
        for k in range(K):
            s = sum(A[k][i][j] for i in range(h) for j in range(w))
            total = 0.0
            for i in range(h):
                for j in range(w):
                    gv = G[k][i][j]
                    den = 2 * gv**2 + s * gv**3
                    alpha = gv**2 / den if den != 0 else 0.0
                    total += alpha * max(gv, 0.0)
            wts.append(total)
        return _combine(A, wts, K, h, w, relu=True)

    return _loops(a, g, rule)


def ref_xgradcam(a, g):
    def rule(A, G, K, h, w):
        wts = []
        for k in range(K):
            s = sum(A[k][i][j] for i in range(h) for j in range(w))
            num = sum(A[k][i][j] * G[k][i][j] for i in range(h) for j in range(w))
            wts.append(num / s if s != 0 else 0.0)
        return _combine(A, wts, K, h, w, relu=False)

    return _loops(a, g, rule)


def ref_layercam(a, g):
    def rule(A, G, K, h, w):
        return [
            [max(0.0, sum(max(G[k][i][j], 0.0) * A[k][i][j] for k in range(K))) for j in range(w)] for i in range(h)
        ]

    return _loops(a, g, rule)


def ref_hirescam(a, g):
    def rule(A, G, K, h, w):
        return [[sum(G[k][i][j] * A[k][i][j] for k in range(K)) for j in range(w)] for i in range(h)]

    return _loops(a, g, rule)


GRADIENT_REFS = {
    "gradcam": ref_gradcam,
    "gradcampp": ref_gradcampp,
    "xgradcam": ref_xgradcam,
    "layercam": ref_layercam,
    "hirescam": ref_hirescam,
}


def layer_output(model, layer, x):
    m64 = copy.deepcopy(model).double()
    store = {}
    handle = module(m64, layer).register_forward_hook(lambda mod, args, out: store.__setitem__("a", out.clone()))
    with torch.no_grad():
        out = m64(x.double())
    handle.remove()
    return m64, out, store["a"]


def ref_channel_mask(ak, size, mode):
    """Score-CAM's mask of one channel: s(A_k), the min-max over all its positions (zero for a constant channel),
    upsampled with ``mode`` (align_corners=False) to ``size``, as a (1, 1, *size) float64 tensor."""
    lo, hi = ak.min().item(), ak.max().item()
    norm = (ak - lo) / (hi - lo) if hi > lo else torch.zeros_like(ak)
    return F.interpolate(norm[None, None], size=size, mode=mode, align_corners=False)


def ref_scorecam(model, layer, x, classes, reshape=None):
    """One masked forward per channel; s(A) at layer resolution, bilinear Up (align_corners=False), softmax over
    channels of the class logits, ReLU of the weighted sum.  ``reshape(A, input_size)``: a token layer's output
    as (B, K, h, w)."""
    m64, _, a = layer_output(model, layer, x)
    a = a if reshape is None else reshape(a, tuple(x.shape[-2:]))
    batch, K, h, w = a.shape
    out = torch.zeros(batch, classes.shape[1], h, w, dtype=torch.float64)
    with torch.no_grad():
        for b in range(batch):
            scores = []
            for k in range(K):
                mask = ref_channel_mask(a[b, k], x.shape[-2:], "bilinear")
                scores.append(m64(x[b : b + 1].double() * mask)[0])
            scores = torch.stack(scores)  # (K, C)
            for n in range(classes.shape[1]):
                s = scores[:, classes[b, n]].tolist()
                top = max(s)
                e = [np.exp(v - top) for v in s]
                alpha = [v / sum(e) for v in e]
                out[b, n] = torch.tensor(_combine(a[b].tolist(), alpha, K, h, w, relu=True))
    return out


def ref_ablationcam(model, layer, x, classes, reshape=None):
    """One forward per ablated channel (channel set to 0), w_k = (y - y_k) / y, ReLU of the weighted sum.  With
    ``reshape`` (token layers) the channel is the output's last axis, zeroed for every token."""
    m64, out, a = layer_output(model, layer, x)
    raw_ndim = a.ndim
    a = a if reshape is None else reshape(a, tuple(x.shape[-2:]))
    batch, K, h, w = a.shape
    result = torch.zeros(batch, classes.shape[1], h, w, dtype=torch.float64)
    with torch.no_grad():
        for b in range(batch):
            ablated = []
            for k in range(K):

                def zero(mod, args, o, k=k):
                    o = o.clone()
                    if reshape is None:
                        o[:, k] = 0
                    else:
                        o[(slice(None),) * (raw_ndim - 1) + (k,)] = 0
                    return o

                handle = module(m64, layer).register_forward_hook(zero)
                ablated.append(m64(x[b : b + 1].double())[0])
                handle.remove()
            for n in range(classes.shape[1]):
                c = int(classes[b, n])
                y = out[b, c].item()
                wts = [(y - ablated[k][c].item()) / y for k in range(K)]
                result[b, n] = torch.tensor(_combine(a[b].tolist(), wts, K, h, w, relu=True))
    return result


def ref_eigencam(model, layer, x, center=False, reshape=None):
    _, _, a = layer_output(model, layer, x)
    a = a if reshape is None else reshape(a, tuple(x.shape[-2:]))
    maps = []
    for b in range(a.shape[0]):
        mat = a[b].flatten(1).T.numpy()  # (hw, K)
        if center:
            mat = mat - mat.mean(0)
        _, _, vt = np.linalg.svd(mat, full_matrices=False)
        proj = mat @ vt[0]
        if abs(proj.min()) > abs(proj.max()):
            proj = -proj
        maps.append(torch.from_numpy(proj).view(a.shape[-2:]))
    return torch.stack(maps)


def assert_close(got, want, rtol=1e-4, what=""):
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"
