"""Boxes from maps: the CAM paper's protocol, and the threshold sweep of Choe et al.'s WSOL evaluation.

Box convention (the library's): ``[x0, y0, x1, y1]`` in pixel units with exclusive right/bottom edges, so a box
over pixel columns 2..5 is ``x0=2, x1=6``; IoU is the area IoU of those rectangles (:func:`box_iou`).

**Paper protocol** (Zhou et al., CVPR 2016, Sec. 3.1 "Weakly-supervised object localization"): keep the pixels
whose value is above ``threshold`` (default 20%) of the map's maximum, and take the tight box around the largest
connected component (by pixel count; 8-connected by default).

**WSOL sweep** (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization Methods Right", and
their ``wsolevaluation`` code).  A map in [0, 1] is quantized as ``q = uint8(map * 255)`` (truncation, float64);
for each threshold ``t`` of ``arange(0, 1, step)`` the foreground is ``q > int(t * max(q))``, OpenCV's
``findContours`` (``RETR_TREE``: outer borders of 8-connected components *and* borders of their 4-connected
holes) gives the contours, and each contour's box is ``cv2.boundingRect``.  MaxBoxAcc scores the contour of
largest ``cv2.contourArea``; MaxBoxAccV2 the best of all contours.  Their box then becomes
``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` and is compared with an IoU that counts ``x1 - x0 + 1`` pixels,
i.e. as an *inclusive* box; with no contour at all the box is ``(0, 0, 0, 0)``.  In camlens terms
(:func:`wsol_protocol_boxes`): the contour's exact bounding box ``[x, y, x + w, y + h]`` becomes
``[x, y, min(x + w, W - 1) + 1, min(y + h, H - 1) + 1]`` (one pixel wider and taller unless it touches the
border), and "no contour" becomes the single pixel ``[0, 0, 1, 1]``; the area IoU of camlens boxes then equals
their ``+1`` IoU exactly.

The sweep is computed for every threshold in one pass instead of one contour search per threshold
(:func:`wsol_sweep`).  Facts it relies on, each checked against OpenCV in the tests:

* the thresholded sets are nested, and ``q`` has at most 256 levels, so the 1000 thresholds cut at most 255
  distinct foregrounds;
* an outer contour's bounding rect is its 8-connected component's box; a hole contour's is the box of the
  4-connected background hole grown by one pixel on every side;
* ``contourArea`` of an outer contour is the area of the polygon through the border pixel centres, which equals
  ``#(2x2 quads with 4 pixels in F) + #(quads with 3) / 2`` for the component ``F`` with its holes filled; the
  largest is always an outer contour of a component not inside a hole, ties going to the component that starts
  last in raster order (OpenCV lists contours last-found first).

How (:func:`_sweep_map`, compiled with numba): the component tree of the upper level sets ``{q > L}``
(8-connected) and that of the background sets ``{q <= L}`` (4-connected, on the inverted map; the one-pixel
padding ring is the outside) are built by union-find over the pixels in value order (Berger et al., ICIP 2007),
with each node's box, first pixel and quad weight summed along the way.  A node is one component at every level
from its parent's value to its own; its parent region at each of those levels is the node of the other tree just
above its first pixel, found by walking up that tree, which nests components and holes at each level and gives
filled areas by subtree sums.  Costs are two union-find passes over the pixels plus work proportional to the
number of (contour, level) pairs, instead of 1000 contour searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from .capture import CamlensError

NUM_LEVELS = 255  # the levels L = 0..254 a threshold can cut at (foreground q > L; L = 255 leaves nothing)


# --------------------------------------------------------------------------------------------- box utilities


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """Area IoU of boxes ``a`` (..., 4) and ``b`` (..., 4) paired by broadcasting, exclusive edges:
    |A ∩ B| / |A ∪ B|; boxes with zero area give IoU 0 (also with themselves).  float64."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(union))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Area IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), exclusive edges: (N, M)."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)
    return paired_iou(a[:, None], b[None])


def scale_boxes(boxes: Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """Boxes measured on an (H, W) grid, mapped onto an (H', W') grid covering the same image (a resize without
    crop): x * W' / W and y * H' / H.  Exact for exclusive edges: pixel columns [x0, x1) of the small grid cover
    [x0 W'/W, x1 W'/W) of the large one."""
    h, w = from_size
    h2, w2 = to_size
    scale = torch.tensor([w2 / w, h2 / h, w2 / w, h2 / h], dtype=torch.float64)
    return torch.as_tensor(boxes, dtype=torch.float64) * scale


def _as_numpy_maps(maps: Tensor | np.ndarray, what: str = "maps") -> np.ndarray:
    arr = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if arr.ndim < 2:
        raise CamlensError(f"{what} must have shape (..., H, W); got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise CamlensError(f"{what} must be numeric; got dtype {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise CamlensError(f"{what} contain NaN or infinite values; fix the map (e.g. torch.nan_to_num) before boxing it")
    if 0 in arr.shape[-2:]:
        raise CamlensError(f"{what} have an empty spatial size {tuple(arr.shape[-2:])}")
    return arr


# --------------------------------------------------------------------------------------------- paper protocol


def paper_boxes(
    maps: Tensor | np.ndarray,
    threshold: float = 0.2,
    *,
    connectivity: int = 8,
    image_size: Sequence[int] | None = None,
) -> Tensor:
    """The CAM paper's boxes: for each map (..., h, w), the tight box around the largest connected component of
    ``{map > threshold * max(map)}`` (largest by pixel count; ties go to the component met first in raster
    order).  ``connectivity`` is 8 or 4.  An empty region (e.g. a map that is all zeros) gives the zero box
    ``[0, 0, 0, 0]``, whose IoU with anything is 0.

    ``image_size=(H, W)``: the map covers an image of that size (resized without crop, e.g. a map at the
    network's input size), and boxes are returned in that image's pixel coordinates (:func:`scale_boxes`).
    Returns float64 boxes of shape (..., 4).
    """
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise CamlensError(f"connectivity={connectivity} must be 4 or 8")
    arr = _as_numpy_maps(maps).astype(np.float64, copy=False)
    lead, (h, w) = arr.shape[:-2], arr.shape[-2:]
    flat = arr.reshape(-1, h, w)
    structure = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    out = np.zeros((flat.shape[0], 4), np.float64)
    for i, m in enumerate(flat):
        labels, count = ndimage.label(m > threshold * m.max(), structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
        out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    boxes = torch.from_numpy(out).reshape(*lead, 4)
    return scale_boxes(boxes, (h, w), image_size) if image_size is not None else boxes


# --------------------------------------------------------------------------------------------- WSOL quantization


def wsol_thresholds(step: float = 0.001) -> np.ndarray:
    """The protocol's thresholds ``numpy.arange(0, 1, step)`` (float64; 1000 values for the default step)."""
    if not 0 < step < 1:
        raise CamlensError(f"threshold step {step} must be in (0, 1)")
    return np.arange(0, 1, step)


def wsol_quantize(maps: Tensor | np.ndarray, what: str = "maps") -> np.ndarray:
    """``uint8(map * 255)`` in float64, as the protocol does, after checking that the maps are finite and in
    [0, 1] (normalize them first, e.g. with :func:`camlens.normalize`).  Shape (..., H, W) is kept."""
    arr = _as_numpy_maps(maps, what)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise CamlensError(
            f"{what} must lie in [0, 1] for the WSOL protocol (found min {lo:.4g}, max {hi:.4g}); "
            "min-max normalize each map first (camlens.normalize)"
        )
    return (arr.astype(np.float64, copy=False) * 255).astype(np.uint8)


def threshold_levels(q: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The uint8 level ``int(t * max(q))`` that each threshold cuts at, per map: (B, T) int64 for q (B, H, W).

    Foreground at threshold ``t`` is ``q > level``.  Thresholds must lie in [0, 1)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or t.min() < 0 or t.max() >= 1:
        raise CamlensError("thresholds must be a non-empty 1-D sequence of values in [0, 1)")
    peak = q.reshape(q.shape[0], -1).max(1).astype(np.float64)
    return (t[None, :] * peak[:, None]).astype(np.int64)


def wsol_resize_boxes(boxes: Tensor, image_size: Sequence[int], map_size: Sequence[int]) -> Tensor:
    """Ground-truth boxes of an image of ``image_size=(W, H)`` mapped onto a map of ``map_size=(h, w)`` the
    way Choe et al. do (``int(x * w / W)`` on their inclusive corners), in camlens' convention: for exclusive
    boxes, ``[int(x0 w/W), int(y0 h/H), int((x1 - 1) w/W) + 1, int((y1 - 1) h/H) + 1]``."""
    big_w, big_h = (float(v) for v in image_size)
    h, w = (float(v) for v in map_size)
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    out = torch.stack([b[:, 0] * w / big_w, b[:, 1] * h / big_h, (b[:, 2] - 1) * w / big_w, (b[:, 3] - 1) * h / big_h], 1)
    out = out.trunc()
    out[:, 2:] += 1
    return out


# --------------------------------------------------------------------------------------------- one-pass sweep
#
# Work rows of one (hp * wp) padded canvas, all int32: the canvas, its inverse and the quad weights, then the
# rows of the foreground tree and those of the background tree (see _max_tree), then the node order.
_TREE_ROWS = 14
_WORK_ROWS = 3 + 2 * _TREE_ROWS + 4


@numba.njit(cache=True, nogil=True)
def _find(zpar, x):
    """Root of ``x`` in the union-find forest ``zpar``, halving the path on the way."""
    while zpar[x] != x:
        zpar[x] = zpar[zpar[x]]
        x = zpar[x]
    return x


@numba.njit(cache=True, nogil=True)
def _max_tree(val, wp, conn8, weight, work):
    """Component tree of the upper level sets ``{val > L}`` of a flat (hp * wp) image with values 0..255,
    8- or 4-connected: union-find over the pixels in decreasing value (Berger et al., ICIP 2007), indexed by
    their rank in that order so that its bookkeeping is written sequentially.

    Fills the rows of ``work`` (14, n) and returns them: ``rank_of`` each pixel; per rank its ``level`` (value)
    and ``parent`` (the canonical rank of the node just above, i.e. of lower value; the root points to itself);
    per canonical rank (the last of a node's flat zone) its node's first/last pixel, column range and summed
    weight, and its ``base`` and ``low``: the node is the component of ``{val > L}`` for L in
    ``[low, level)`` (``low``: its parent's level; 0 for a root, a component of ``{val > 0}``), entries
    ``base + L - low`` (-1 elsewhere).
    The number of entries is returned last."""
    n = val.shape[0]
    (rank_of, pixel, level, parent, zpar, height, latest,
     first, last, col0, col1, wsum, base, low) = work[0], work[1], work[2], work[3], work[4], work[5], work[6], \
        work[7], work[8], work[9], work[10], work[11], work[12], work[13]
    start = np.zeros(257, np.int64)
    for p in range(n):
        start[256 - val[p]] += 1
    count = n - start[256]  # pixels of value 0 are in no set {val > L}: they are ranked last and left out
    for x in range(256):
        start[x + 1] += start[x]
    for p in range(n):  # highest value first, raster order within a value
        x = 255 - val[p]
        rank_of[p] = start[x]
        pixel[start[x]] = p
        start[x] += 1
    if conn8:
        offsets = np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], np.int32)
    else:
        offsets = np.array([-wp, -1, 1, wp], np.int32)
    # zpar: union-find forest (by height) over the pixels seen so far, kept in raster order so that a pixel's
    # neighbours are next to it in memory; latest: per union-find root, the latest rank of its set, which
    # holds the set's statistics and is where the set hangs in the tree
    for i in range(count):
        p = pixel[i]
        level[i] = val[p]
        parent[i] = i
        zpar[p] = p
        height[p] = 0
        latest[p] = i
        zp = p
        c = p % wp
        first[i] = last[i] = p
        col0[i] = col1[i] = c
        wsum[i] = weight[p]
        inner = wp <= p < n - wp and 0 < c < wp - 1
        for d in offsets:
            q = p + d
            if not inner and (q < 0 or q >= n or abs(q % wp - c) > 1):
                continue
            x = q if rank_of[q] < i else p  # a neighbour not seen (yet) stands for p itself (no branch)
            if zpar[x] == zp:
                continue
            zq = _find(zpar, x)
            if zq == zp:
                continue
            m = latest[zq]
            parent[m] = i
            first[i] = min(first[i], first[m])
            last[i] = max(last[i], last[m])
            col0[i] = min(col0[i], col0[m])
            col1[i] = max(col1[i], col1[m])
            wsum[i] += wsum[m]
            if height[zp] < height[zq]:
                zp, zq = zq, zp
            zpar[zq] = zp
            latest[zp] = i
            if height[zp] == height[zq]:
                height[zp] += 1
    base[count:] = -1
    total = 0
    for i in range(count - 1, -1, -1):  # roots first: parents are canonical before their children look at them
        q = parent[i]
        if level[parent[q]] == level[q]:
            parent[i] = parent[q]
        q = parent[i]
        if q == i or level[q] != level[i]:
            low[i] = level[q] if q != i else 0
            base[i] = total
            total += level[i] - low[i]
        else:
            base[i] = -1
    return rank_of, level, parent, first, last, col0, col1, wsum, base, low, total


@numba.njit(cache=True, nogil=True)
def _quad_weights(v, wp, k):
    """Into ``k``, per pixel of the flat (hp * wp) canvas ``v``: the number of 2x2 quads in which it is one of
    the two lowest corners (ties by corner order: top-left, top-right, bottom-left, bottom-right).

    A quad's share of a component's polygon area at level L is [its 3rd value > L] + [its 4th value > L]
    half-units, i.e. one half-unit per foreground pixel among its two lowest corners; below L, one half-unit per
    background pixel among them goes to that pixel's background region.  So summing these weights over a
    component's pixels gives twice its polygon area, at every level at once."""
    k[:] = 0  # the padding ring is never part of a component or a hole: its weights are not needed
    for r in range(1, v.shape[0] // wp - 1):
        for p in range(r * wp + 1, r * wp + wp - 1):
            x = v[p]
            k[p] = (
                ((v[p - wp - 1] <= x) + (v[p - wp] <= x) + (v[p - 1] <= x) <= 1)  # p is the quad's bottom-right
                + ((v[p - wp] <= x) + (v[p - wp + 1] <= x) + (v[p + 1] < x) <= 1)  # bottom-left
                + ((v[p - 1] <= x) + (v[p + wp - 1] < x) + (v[p + wp] < x) <= 1)  # top-right
                + ((v[p + 1] < x) + (v[p + wp] < x) + (v[p + wp + 1] < x) <= 1)  # top-left
            )


@numba.njit(cache=True, nogil=True)
def _holder(parent, level, i, at):
    """The canonical rank of the node that holds rank ``i`` at level ``at`` (``level[i] > at``)."""
    if parent[i] != i and level[parent[i]] == level[i]:
        i = parent[i]
    while parent[i] != i and level[parent[i]] > at:
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _sweep_map(q, work, largest):
    """Contours of ``q > L`` for every level L = 0..254 of one uint8 map (h, w), as OpenCV's RETR_TREE finds
    them.  Returns every contour's level and exact box (outer and hole borders) and fills ``largest`` (255, 4)
    with the exact box of the largest contour per level (zeros: none)."""
    h, w = q.shape
    wp = w + 2
    n = (h + 2) * wp
    v, u, k = work[0], work[1], work[2]
    v[:] = 0
    for r in range(h):
        for c in range(w):
            v[(r + 1) * wp + c + 1] = q[r, c]
    for p in range(n):
        u[p] = 255 - v[p]  # background {q <= L} is {255 - q > 254 - L}
    _quad_weights(v, wp, k)
    frank, flevel, fpar, ffirst, flast, fcol0, fcol1, fw, fbase, flow, nf = _max_tree(
        v, wp, True, k, work[3:3 + _TREE_ROWS])
    brank, blevel, bpar, bfirst, blast, bcol0, bcol1, bw, bbase, blow, nb = _max_tree(
        u, wp, False, k, work[3 + _TREE_ROWS:3 + 2 * _TREE_ROWS])
    nodes = work[3 + 2 * _TREE_ROWS:].ravel()[:2 * n]
    keys = work[3 + 2 * _TREE_ROWS:].ravel()[2 * n:]

    # nesting at each level: a component's parent is the background region just above its first pixel, a
    # hole's parent the component just above its first pixel; the outside (holding pixel 0) has none (-1).
    # Entries 0..nf-1 are the components', nf.. the background regions'.
    up = np.full(nf + nb, -1, np.int32)
    filled = np.empty(nf + nb, np.int64)
    top = np.zeros(nf, np.bool_)
    m = 0
    for i in range(n):
        if fbase[i] < 0 or flevel[i] == flow[i]:
            continue
        x = brank[ffirst[i] - wp]
        for lv in range(flow[i], flevel[i]):  # background level 254 - lv falls: its region grows
            x = _holder(bpar, blevel, x, 254 - lv)
            e = fbase[i] + lv - flow[i]
            up[e] = nf + bbase[x] + 254 - lv - blow[x]
            top[e] = bfirst[x] == 0
            filled[e] = fw[i]
        nodes[m], keys[m] = i, -ffirst[i]
        m += 1
    nholes = 0
    for i in range(n):
        if bbase[i] < 0 or blevel[i] == blow[i]:
            continue
        e0 = nf + bbase[i] - blow[i]
        filled[e0 + blow[i]:e0 + blevel[i]] = bw[i]
        if bfirst[i] != 0:
            x = frank[bfirst[i] - wp]
            for bl in range(blow[i], blevel[i]):  # foreground level 254 - bl falls: its component grows
                x = _holder(fpar, flevel, x, 254 - bl)
                up[e0 + bl] = fbase[x] + 254 - bl - flow[x]
            nholes += blevel[i] - blow[i]
        nodes[m], keys[m] = -1 - i, -bfirst[i]
        m += 1
    # filled areas by subtree sums: a parent starts strictly before its children, so take nodes last-first
    for j in np.argsort(keys[:m]):
        i = nodes[j]
        if i >= 0:
            e0, e1 = fbase[i], fbase[i] + flevel[i] - flow[i]
        else:
            i = -1 - i
            e0, e1 = nf + bbase[i], nf + bbase[i] + blevel[i] - blow[i]
        for e in range(e0, e1):
            if up[e] >= 0:
                filled[up[e]] += filled[e]

    # every contour's exact box with its level; per level, the largest top-level component (ties: last start)
    levels = np.empty(nf + nholes, np.int64)
    boxes = np.empty((nf + nholes, 4), np.int64)
    best = np.full(NUM_LEVELS, -1, np.int64)
    best_first = np.zeros(NUM_LEVELS, np.int64)
    largest[:] = 0
    for i in range(n):
        if fbase[i] < 0 or flevel[i] == flow[i]:
            continue
        x0, y0, x1, y1 = fcol0[i] - 1, ffirst[i] // wp - 1, fcol1[i], flast[i] // wp
        for lv in range(flow[i], flevel[i]):
            e = fbase[i] + lv - flow[i]
            levels[e] = lv
            boxes[e, 0], boxes[e, 1], boxes[e, 2], boxes[e, 3] = x0, y0, x1, y1
            if top[e] and (filled[e] > best[lv] or (filled[e] == best[lv] and ffirst[i] > best_first[lv])):
                best[lv], best_first[lv] = filled[e], ffirst[i]
                largest[lv, 0], largest[lv, 1], largest[lv, 2], largest[lv, 3] = x0, y0, x1, y1
    e = nf
    for i in range(n):
        if bbase[i] < 0 or blevel[i] == blow[i] or bfirst[i] == 0:
            continue
        x0, y0, x1, y1 = bcol0[i] - 2, bfirst[i] // wp - 2, bcol1[i] + 1, blast[i] // wp + 1  # grown by one
        for bl in range(blow[i], blevel[i]):
            levels[e] = 254 - bl
            boxes[e, 0], boxes[e, 1], boxes[e, 2], boxes[e, 3] = x0, y0, x1, y1
            e += 1
    return levels, boxes


# --------------------------------------------------------------------------------------------- public sweep


def wsol_protocol_boxes(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Exact contour boxes ``[x, y, x + w, y + h]`` as the WSOL protocol scores them, in camlens' convention:
    ``[x, y, min(x + w, W - 1) + 1, min(y + h, H - 1) + 1]`` for maps of ``size=(H, W)``; the zero box (no
    contour) becomes the pixel ``[0, 0, 1, 1]``.  See the module docstring."""
    h, w = size
    boxes = torch.as_tensor(boxes).clone()
    boxes[..., 2] = boxes[..., 2].clamp(max=w - 1) + 1
    boxes[..., 3] = boxes[..., 3].clamp(max=h - 1) + 1
    return boxes


@dataclass
class ContourSweep:
    """The contours of B maps (H, W) at every threshold of a WSOL sweep, from :func:`wsol_sweep`.

    ``levels`` (B, T): the uint8 level each threshold cuts at (foreground ``q > level``).
    ``largest`` (B, T, 4): exact bounding box ``[x, y, x + w, y + h]`` of the largest contour (largest
    ``cv2.contourArea``, ties to the component starting last in raster order, as OpenCV picks); zeros where the
    map has no contour (an all-zero map).
    ``boxes`` (E, 4) with ``image`` (E,) and ``level`` (E,): every contour, outer and hole borders, at every level;
    the contours at threshold i of map b are those with ``image == b`` and ``level == levels[b, i]``.
    Exact boxes, not the protocol's: use :func:`wsol_protocol_boxes` or :meth:`protocol_largest` to score.
    """

    thresholds: Tensor
    size: tuple[int, int]
    levels: Tensor
    largest: Tensor
    boxes: Tensor
    image: Tensor
    level: Tensor

    def protocol_largest(self) -> Tensor:
        """(B, T, 4) largest-contour boxes in the protocol's convention (what MaxBoxAcc scores)."""
        return wsol_protocol_boxes(self.largest, self.size)

    def contours(self, b: int, i: int) -> Tensor:
        """Exact boxes (n, 4) of all contours of map ``b`` at threshold index ``i``."""
        return self.boxes[(self.image == b) & (self.level == self.levels[b, i])]


def wsol_sweep(maps: Tensor | np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> ContourSweep:
    """Contour boxes of maps in [0, 1], shape (H, W) or (B, H, W), at every threshold (default
    ``arange(0, 1, 0.001)``), as Choe et al.'s per-threshold OpenCV sweep finds them, computed in one pass.

    Each map is quantized as the protocol does (:func:`wsol_quantize`); maps are not renormalized here
    (min-max normalize raw maps first, e.g. :func:`camlens.normalize`)."""
    q = wsol_quantize(maps)
    if q.ndim == 2:
        q = q[None]
    if q.ndim != 3:
        raise CamlensError(f"maps must be (H, W) or (B, H, W); got shape {tuple(q.shape)}")
    t = wsol_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    levels = threshold_levels(q, t)
    bsz, h, w = q.shape
    n = (h + 2) * (w + 2)
    if n > 1 << 23:  # keeps pixel and (contour, level) indices within int32
        raise CamlensError(f"maps of {h}x{w} pixels are too large for the sweep (at most 2**23); downsample them first")
    work = np.empty((_WORK_ROWS, n), np.int32)  # shared by the maps: fresh memory per map costs page faults
    per_level = np.zeros((bsz, NUM_LEVELS, 4), np.int64)
    parts = [_sweep_map(m, work, per_level[b]) for b, m in enumerate(q)]
    at = np.minimum(levels, NUM_LEVELS - 1)  # an all-zero map cuts at level 0 and has no contour there
    return ContourSweep(
        thresholds=torch.from_numpy(t),
        size=(h, w),
        levels=torch.from_numpy(levels),
        largest=torch.from_numpy(np.take_along_axis(per_level, at[:, :, None], axis=1)),
        boxes=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        image=torch.from_numpy(np.repeat(np.arange(bsz), [p[0].shape[0] for p in parts])),
        level=torch.from_numpy(np.concatenate([p[0] for p in parts])),
    )
