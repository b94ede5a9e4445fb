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
(8-connected) and the tree of the holes, the background sets ``{q <= L}`` (4-connected) that do not reach the
one-pixel padding ring (the outside), are built by union-find over the pixels in value order (Berger et al.,
ICIP 2007; one counting sort serves both, read forwards and backwards), with each node's box, first pixel and quad
weight summed along the way.  Nodes are made per (component, level run), not per pixel: a pixel whose neighbours
hang from one root joins that set's newest node, and pixels joining the outside get none.  A node is one
component at every level from its parent's value to its own; its parent region at each of those levels is the
node of the other tree just above its first pixel, found by walking up that tree (or the outside: then the
component is top-level), which nests components and holes at each level and gives filled areas by subtree sums.
Costs are two union-find passes over the pixels plus work proportional to the number of nodes and of (contour,
level) pairs, instead of 1000 contour searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from .constants import PAPER_THRESHOLD
from .errors import CamlensError

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


def boxes_are_2d(shape: Sequence[int], expected: str, what: str = "maps") -> CamlensError:
    """The one-line error for maps that are not 2-D where boxes (paper boxes, the WSOL sweep) need them."""
    return CamlensError(
        f"boxes are 2-D only: {what} must be {expected}, got shape {tuple(shape)}; 1-D signals and 3-D volumes "
        "have no boxes (use deletion, insertion or the pointing game with masks)"
    )


def _as_numpy_maps(maps: Tensor | np.ndarray, what: str = "maps", finite: bool = True) -> np.ndarray:
    arr = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if arr.ndim < 2:
        raise CamlensError(f"{what} must have shape (..., H, W); got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise CamlensError(f"{what} must be numeric; got dtype {arr.dtype}")
    if finite and arr.size and not np.isfinite(arr).all():
        raise CamlensError(
            f"{what} contain NaN or infinite values; fix the map (e.g. torch.nan_to_num) before boxing it"
        )
    if 0 in arr.shape[-2:]:
        raise CamlensError(f"{what} have an empty spatial size {tuple(arr.shape[-2:])}")
    return arr


# --------------------------------------------------------------------------------------------- paper protocol


def paper_boxes(
    maps: Tensor | np.ndarray,
    threshold: float = PAPER_THRESHOLD,
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
    if arr.ndim > 4:
        raise boxes_are_2d(arr.shape, "(h, w), (B, h, w) or (B, N, h, w)")
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
    arr = _as_numpy_maps(maps, what, finite=False)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    q = np.empty(arr.shape, np.uint8)
    if not _quantize_unit(arr.reshape(-1), q.reshape(-1)):
        _as_numpy_maps(arr, what)  # names NaN or infinity
        raise CamlensError(
            f"{what} must lie in [0, 1] for the WSOL protocol (found min {arr.min():.4g}, max {arr.max():.4g}); "
            "min-max normalize each map first (camlens.normalize)"
        )
    return q


@numba.njit(cache=True, nogil=True)
def _quantize_unit(x, out):
    """``out = uint8(float64(x) * 255)`` in one pass; False if a value is not in [0, 1] (NaN included)."""
    ok = True
    for i in range(x.shape[0]):
        y = np.float64(x[i])
        ok &= (y >= 0.0) & (y <= 1.0)
        out[i] = np.uint8(y * 255.0)
    return ok


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
    out = torch.stack(
        [b[:, 0] * w / big_w, b[:, 1] * h / big_h, (b[:, 2] - 1) * w / big_w, (b[:, 3] - 1) * h / big_h], 1
    )
    out = out.trunc()
    out[:, 2:] += 1
    return out


# --------------------------------------------------------------------------------------------- one-pass sweep
#
# Work rows of one (hp * wp) padded canvas, all int32: the canvas, the interior pixels in decreasing value, the
# quad weights, the pixels' columns and weights in that order, then the rows of the foreground tree and of the
# hole tree (_component_tree).  The canvas and the quad weights are kept apart: as adjacent rows (or arrays
# allocated back to back), _quad_weights ran at half speed (measured, 0.25 vs 0.12 ms at 226 x 226).
_TREE_ROWS = 13
_WORK_ROWS = 4 + 2 * _TREE_ROWS


@numba.njit(cache=True, nogil=True)
def _find(zpar, x):
    """Root of ``x`` in the union-find forest ``zpar``, halving the path on the way."""
    while zpar[x] != x:
        zpar[x] = zpar[zpar[x]]
        x = zpar[x]
    return x


@numba.njit(cache=True, nogil=True, inline="always")
def _node_at(lv, m, nn, level, parent, first, last, col0, col1, wsum):
    """Node ``m`` (a set's newest) if its level is ``lv``, else a new node ``nn`` at ``lv``, parent of ``m``;
    returns the node and the next free node number."""
    if level[m] == lv:
        return m, nn
    level[nn], parent[nn], parent[m] = lv, nn, nn
    first[nn], last[nn], col0[nn], col1[nn], wsum[nn] = first[m], last[m], col0[m], col1[m], wsum[m]
    return nn, nn + 1


@numba.njit(cache=True, nogil=True)
def _component_tree(wp, offsets, order, starts, colw, holes, rows):
    """Component tree by union-find over pixels in value order (Berger et al., ICIP 2007) on a padded canvas
    of width ``wp``: ``order`` holds its interior pixels by decreasing value, value ``255 - r`` at positions
    ``starts[r]:starts[r + 1]``, ``colw`` their column * 8 + quad weight, ``offsets`` the neighbours (8 or 4, a
    tuple so that the loop over them is unrolled).

    ``holes=False``: the foreground tree, of the 8-connected upper level sets ``{v > L}``, pixels in decreasing
    value, a node's level its value.  ``holes=True``: the hole tree, of the 4-connected background sets
    ``{v <= 254 - L}`` (i.e. ``{255 - v > L}``), pixels in increasing value, a node's level ``255 - v``; the
    padding ring starts as one set, the outside (union-find root 0), and no pixel joined to it gets a node, so
    the tree holds only the pixels of holes (most pixels of a smooth map never are in one).

    Nodes are numbered as made, so a parent comes after its children.  A pixel whose added neighbours all hang
    from one root (checked without a find) joins that set: into its newest node if that has the pixel's level,
    else into a new node, the newest's parent; that is most pixels, and a map has far fewer nodes than pixels.
    Otherwise the sets are merged by finds (each neighbour then points at its root, so that the pixels next to it
    take the first way again), the newest nodes of two sets under one node at the pixel's level (one of theirs if
    at that level, the younger).  Fills ``rows`` (13, n): per pixel its ``node_of`` (-1: none, e.g.
    the outside), the forest ``zpar`` with ``height`` and, per root, the ``latest`` node of its set; per node
    its ``level``, ``parent`` (-1: the outside), first/last pixel, column range and summed quad weight (over its
    subtree; all kept by the youngest node of a flat zone, the canonical one), and, per canonical node, ``base``
    and ``low``: it is the component of the set at levels ``[low, level)`` (``low``: its parent's level, or the
    level where it met the outside, 0 for a root), entries ``base + L - low``; ``base`` is -1 for the other
    nodes, whose ``parent`` then is their canonical node.  Returns the number of nodes and of entries."""
    (node_of, zpar, height, latest, level, parent, first, last, col0, col1, wsum, base, low) = (
        rows[0],
        rows[1],
        rows[2],
        rows[3],
        rows[4],
        rows[5],
        rows[6],
        rows[7],
        rows[8],
        rows[9],
        rows[10],
        rows[11],
        rows[12],
    )
    n = rows.shape[1]
    node_of[:] = -1
    zpar[:] = -1  # -1: not added yet
    if holes:
        zpar[:wp] = 0
        zpar[n - wp :] = 0
        zpar[wp - 1 : n - wp : wp] = 0
        zpar[wp : n - wp : wp] = 0
    nn = 0
    # indices known to be >= 0 are made unsigned on the hot path: numba checks signed ones for wraparound
    for i in range(255):  # the values 255..1 down, or 0..254 up
        r = 255 - i if holes else i
        lv = r if holes else 255 - r
        j0, j1, step = (starts[r + 1] - 1, starts[r] - 1, -1) if holes else (starts[r], starts[r + 1], 1)
        for j in range(j0, j1, step):
            ju = np.uint64(j)
            p = order[ju]
            zp, lo = -1, np.uint32(0xFFFFFFFF)  # lo: the least set, -1 (not added) being the largest as unsigned
            for d in offsets:
                zx = zpar[np.uint64(p + d)]
                zp, lo = max(zp, zx), min(lo, np.uint32(zx))
            if zp >= 0 and not (lo == zp and zpar[np.uint64(zp)] == zp):
                zp = -1  # neighbours in several sets, or not at the root
                for d in offsets:
                    zx = zpar[p + d]
                    if zx < 0 or zx == zp:
                        continue
                    zx = zpar[p + d] = _find(zpar, zx)
                    if zx == zp:
                        continue
                    if zp < 0:
                        zp = zx
                    elif zx == 0 or zp == 0:  # a hole meets the outside: it ends at this level
                        if zp == 0:
                            zp, zx = zx, zp
                        m = latest[zp]
                        parent[m], low[m] = -1, lv
                        zpar[zp] = 0
                        zp = 0
                    else:
                        a, nn = _node_at(lv, latest[zp], nn, level, parent, first, last, col0, col1, wsum)
                        a, b = min(a, latest[zx]), max(a, latest[zx])  # a newest node above level lv is older
                        parent[a] = b
                        first[b] = min(first[b], first[a])
                        last[b] = max(last[b], last[a])
                        col0[b] = min(col0[b], col0[a])
                        col1[b] = max(col1[b], col1[a])
                        wsum[b] += wsum[a]
                        if height[zp] < height[zx]:
                            zp, zx = zx, zp
                        zpar[zx] = zp
                        if height[zp] == height[zx]:
                            height[zp] += 1
                        latest[zp] = b
            c, wt = colw[ju] >> 3, colw[ju] & 7
            if zp < 0:  # no neighbour added yet: p starts a set
                level[nn], parent[nn] = lv, nn
                first[nn], last[nn], col0[nn], col1[nn], wsum[nn] = p, p, c, c, wt
                zpar[p], height[p], latest[p], node_of[p] = p, 0, nn, nn
                nn += 1
            elif zp > 0:  # p joins the set: its newest node, or a new one at p's level
                nd, nn = _node_at(lv, latest[np.uint64(zp)], nn, level, parent, first, last, col0, col1, wsum)
                k, pu = np.uint64(nd), np.uint64(p)
                first[k] = min(first[k], p)
                last[k] = max(last[k], p)
                col0[k] = min(col0[k], c)
                col1[k] = max(col1[k], c)
                wsum[k] += wt
                zpar[pu], latest[np.uint64(zp)], node_of[pu] = zp, nd, nd
            else:
                zpar[np.uint64(p)] = 0
    total = 0
    for i in range(nn - 1, -1, -1):  # parents first: canonical before their children look at them
        pa = parent[i]
        if pa >= 0:
            if parent[pa] >= 0 and level[parent[pa]] == level[pa]:
                pa = parent[i] = parent[pa]
            if pa != i and level[pa] == level[i]:
                base[i] = -1
                continue
            low[i] = level[pa] if pa != i else 0
        base[i] = total
        total += level[i] - low[i]
    return nn, total


@numba.njit(cache=True, nogil=True)
def _quad_weights(v, wp, k):
    """Into ``k``, per pixel of the flat (hp * wp) canvas ``v``: the number of 2x2 quads in which it is one of
    the two lowest corners (ties by corner order: top-left, top-right, bottom-left, bottom-right).

    A quad's share of a component's polygon area at level L is [its 3rd value > L] + [its 4th value > L]
    half-units, i.e. one half-unit per foreground pixel among its two lowest corners; below L, one half-unit per
    background pixel among them goes to that pixel's background region.  So summing these weights over a
    component's pixels gives twice its polygon area, at every level at once."""
    for r in range(1, v.shape[0] // wp - 1):
        a = v[(r - 1) * wp : (r + 2) * wp]  # rows r - 1, r, r + 1
        for c in range(1, wp - 1):
            x = a[wp + c]
            # each neighbour below p in the corner order's ties: before p (up, left) if <=, after it if <
            ul, u, ur = np.int32(a[c - 1] <= x), np.int32(a[c] <= x), np.int32(a[c + 1] <= x)
            le, ri = np.int32(a[wp + c - 1] <= x), np.int32(a[wp + c + 1] < x)
            dl, d, dr = np.int32(a[2 * wp + c - 1] < x), np.int32(a[2 * wp + c] < x), np.int32(a[2 * wp + c + 1] < x)
            k[r * wp + c] = (
                np.int32(ul + u + le <= 1)  # p is the quad's bottom-right
                + np.int32(u + ur + ri <= 1)  # bottom-left
                + np.int32(le + dl + d <= 1)  # top-right
                + np.int32(ri + d + dr <= 1)  # top-left
            )


@numba.njit(cache=True, nogil=True)
def _holder(parent, level, low, i, at):
    """The canonical node that holds node ``i``'s pixels at level ``at`` (``level[i] > at``); -1: the outside."""
    pa = parent[i]
    if pa >= 0 and pa != i and level[pa] == level[i]:
        i = pa
    while low[i] > at:
        i = parent[i]
        if i < 0:
            break
    return i


@numba.njit(cache=True, nogil=True)
def _sweep_map(q, work, at, largest):
    """Contours of ``q > L`` for every level L = 0..254 of one uint8 map (h, w), as OpenCV's RETR_TREE finds
    them.  Returns every contour's level and exact box (outer and hole borders) and fills ``largest`` (T, 4)
    with the exact box of the largest contour at each level of ``at`` (T,) (zeros: none)."""
    h, w = q.shape
    wp = w + 2
    n = (h + 2) * wp
    v, order, k, colw = work[0], work[1], work[2], work[3]
    count = np.zeros(256, np.int64)
    starts = np.empty(257, np.int64)
    v[:wp] = 0
    v[n - wp :] = 0
    for r in range(h):
        row = (r + 1) * wp
        v[row] = v[row + wp - 1] = 0
        for c in range(w):
            x = q[r, c]
            v[row + c + 1] = x
            count[255 - x] += 1
    starts[0] = 0
    for x in range(256):  # count becomes each value's first position in the order
        starts[x + 1] = starts[x] + count[x]
        count[x] = starts[x]
    _quad_weights(v, wp, k)
    for r in range(h):  # counting sort: highest value first, raster order within a value
        for c in range(w):
            x = 255 - q[r, c]
            p = (r + 1) * wp + c + 1
            order[count[x]], colw[count[x]] = p, (c + 1) * 8 + k[p]
            count[x] += 1
    frows, brows = work[4 : 4 + _TREE_ROWS], work[4 + _TREE_ROWS :]
    ring8 = (-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1)
    nfn, nf = _component_tree(wp, ring8, order, starts, colw, False, frows)
    nbn, nb = _component_tree(wp, (-wp, -1, 1, wp), order, starts, colw, True, brows)
    fnode, flevel, fpar, ffirst, flast, fcol0, fcol1, fw, fbase, flow = (
        frows[0],
        frows[4],
        frows[5],
        frows[6],
        frows[7],
        frows[8],
        frows[9],
        frows[10],
        frows[11],
        frows[12],
    )
    bnode, blevel, bpar, bfirst, blast, bcol0, bcol1, bw, bbase, blow = (
        brows[0],
        brows[4],
        brows[5],
        brows[6],
        brows[7],
        brows[8],
        brows[9],
        brows[10],
        brows[11],
        brows[12],
    )

    # nesting at each level: a component's parent is the hole just above its first pixel, a hole's parent the
    # component just above its first pixel; -1 for a component in the outside.  Entries 0..nf-1 are the
    # components', nf.. the holes'.
    up = np.empty(nf + nb, np.int32)
    filled = np.empty(nf + nb, np.int64)
    nodes = np.empty(nfn + nbn, np.int64)
    keys = np.empty(nfn + nbn, np.int64)
    m = 0
    for i in range(nfn):
        if fbase[i] < 0 or flevel[i] == flow[i]:
            continue
        x = bnode[ffirst[i] - wp]
        for lv in range(flow[i], flevel[i]):  # background level 254 - lv falls: its region grows
            if x >= 0:
                x = _holder(bpar, blevel, blow, x, 254 - lv)
            e = fbase[i] + lv - flow[i]
            up[e] = nf + bbase[x] + 254 - lv - blow[x] if x >= 0 else -1
            filled[e] = fw[i]
        nodes[m], keys[m] = i, -ffirst[i]
        m += 1
    for i in range(nbn):
        if bbase[i] < 0 or blevel[i] == blow[i]:
            continue
        e0 = nf + bbase[i] - blow[i]
        x = fnode[bfirst[i] - wp]
        for bl in range(blow[i], blevel[i]):  # foreground level 254 - bl falls: its component grows
            x = _holder(fpar, flevel, flow, x, 254 - bl)
            up[e0 + bl] = fbase[x] + 254 - bl - flow[x]
            filled[e0 + bl] = bw[i]
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
    levels = np.empty(nf + nb, np.int64)
    boxes = np.empty((nf + nb, 4), np.int64)
    best = np.full(NUM_LEVELS, -1, np.int64)
    best_first = np.zeros(NUM_LEVELS, np.int64)
    by_level = np.zeros((NUM_LEVELS, 4), np.int64)
    for i in range(nfn):
        if fbase[i] < 0 or flevel[i] == flow[i]:
            continue
        x0, y0, x1, y1 = fcol0[i] - 1, ffirst[i] // wp - 1, fcol1[i], flast[i] // wp
        for lv in range(flow[i], flevel[i]):
            e = fbase[i] + lv - flow[i]
            levels[e] = lv
            boxes[e, 0], boxes[e, 1], boxes[e, 2], boxes[e, 3] = x0, y0, x1, y1
            if up[e] < 0 and (filled[e] > best[lv] or (filled[e] == best[lv] and ffirst[i] > best_first[lv])):
                best[lv], best_first[lv] = filled[e], ffirst[i]
                by_level[lv, 0], by_level[lv, 1], by_level[lv, 2], by_level[lv, 3] = x0, y0, x1, y1
    for i in range(nbn):
        if bbase[i] < 0 or blevel[i] == blow[i]:
            continue
        x0, y0, x1, y1 = bcol0[i] - 2, bfirst[i] // wp - 2, bcol1[i] + 1, blast[i] // wp + 1  # grown by one
        e0 = nf + bbase[i] - blow[i]
        for bl in range(blow[i], blevel[i]):
            levels[e0 + bl] = 254 - bl
            boxes[e0 + bl, 0], boxes[e0 + bl, 1], boxes[e0 + bl, 2], boxes[e0 + bl, 3] = x0, y0, x1, y1
    for i in range(at.shape[0]):
        lv = at[i]
        largest[i, 0], largest[i, 1], largest[i, 2], largest[i, 3] = (
            by_level[lv, 0],
            by_level[lv, 1],
            by_level[lv, 2],
            by_level[lv, 3],
        )
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

    def best_iou_by_level(self, gt_boxes: Sequence[Tensor]) -> Tensor:
        """(B, 256) float64: at each level, the best IoU (:func:`paired_iou`, same arithmetic) of any contour of
        map b, in the protocol's convention (:func:`wsol_protocol_boxes`), with any of ``gt_boxes[b]`` (n_b, 4);
        0 where the level has no contour.  What MaxBoxAccV2 scores, in one pass over the contours."""
        gts, offsets = _gt_array(gt_boxes, self.levels.shape[0])
        out = np.zeros(self.levels.shape[0] * 256)
        _best_iou_by_level(
            self.boxes.numpy(), self.image.numpy(), self.level.numpy(), gts, offsets, self.size[0], self.size[1], out
        )
        return torch.from_numpy(out).view(-1, 256)

    def protocol_ious(self, gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """What MaxBoxAcc and MaxBoxAccV2 score at each threshold: the best IoU (:func:`paired_iou`, same
        arithmetic) with any of ``gt_boxes[b]`` (n_b, 4) of the largest contour (B, T), and of the best contour
        (B, T), in the protocol's convention (:func:`wsol_protocol_boxes`).  A map without any contour scores
        the protocol's fallback box (:meth:`protocol_largest`) in both."""
        bsz, t = self.levels.shape
        gts, offsets = _gt_array(gt_boxes, bsz)
        by_level = np.zeros(bsz * 256)
        _best_iou_by_level(
            self.boxes.numpy(),
            self.image.numpy(),
            self.level.numpy(),
            gts,
            offsets,
            self.size[0],
            self.size[1],
            by_level,
        )
        largest, best = np.empty((bsz, t)), np.empty((bsz, t))
        _protocol_ious(
            self.largest.numpy(),
            self.levels.numpy(),
            np.bincount(self.image.numpy(), minlength=bsz),
            by_level.reshape(bsz, 256),
            gts,
            offsets,
            self.size[0],
            self.size[1],
            largest,
            best,
        )
        return torch.from_numpy(largest), torch.from_numpy(best)


def _gt_array(gt_boxes: Sequence[Tensor], bsz: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth boxes of B maps as one (sum n_b, 4) float64 array, map b's at ``offsets[b]:offsets[b + 1]``."""
    if len(gt_boxes) != bsz:
        raise CamlensError(f"got {len(gt_boxes)} ground-truth box lists for {bsz} maps")
    gts = [torch.as_tensor(g, dtype=torch.float64).reshape(-1, 4) for g in gt_boxes]
    offsets = np.zeros(bsz + 1, np.int64)
    np.cumsum([g.shape[0] for g in gts], out=offsets[1:])
    return (torch.cat(gts) if gts else torch.zeros(0, 4, dtype=torch.float64)).numpy(), offsets


@numba.njit(cache=True, nogil=True, inline="always")
def _protocol_iou(box, gts, g0, g1, height, width):
    """Best :func:`paired_iou` of the exact box ``box`` (4,), made the protocol's (:func:`wsol_protocol_boxes`),
    with ``gts[g0:g1]``; 0 if that is empty."""
    x0, y0 = np.float64(box[0]), np.float64(box[1])
    x1, y1 = min(box[2], width - 1) + 1.0, min(box[3], height - 1) + 1.0
    area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    best = 0.0
    for g in range(g0, g1):
        gx0, gy0, gx1, gy1 = gts[g, 0], gts[g, 1], gts[g, 2], gts[g, 3]
        inter = max(min(x1, gx1) - max(x0, gx0), 0.0) * max(min(y1, gy1) - max(y0, gy0), 0.0)
        union = area + max(gx1 - gx0, 0.0) * max(gy1 - gy0, 0.0) - inter
        iou = inter / max(union, 1e-300) if union > 0 else 0.0
        if iou > best:
            best = iou
    return best


@numba.njit(cache=True, nogil=True)
def _best_iou_by_level(boxes, image, level, gts, offsets, height, width, out):
    for e in range(boxes.shape[0]):
        b = image[e]
        best = _protocol_iou(boxes[e], gts, offsets[b], offsets[b + 1], height, width)
        k = b * 256 + level[e]
        if best > out[k]:
            out[k] = best


@numba.njit(cache=True, nogil=True)
def _protocol_ious(largest, levels, contours, by_level, gts, offsets, height, width, out_largest, out_best):
    for b in range(largest.shape[0]):
        for i in range(largest.shape[1]):
            if i > 0 and levels[b, i] == levels[b, i - 1]:  # same level, same contours
                out_largest[b, i], out_best[b, i] = out_largest[b, i - 1], out_best[b, i - 1]
                continue
            out_largest[b, i] = _protocol_iou(largest[b, i], gts, offsets[b], offsets[b + 1], height, width)
            out_best[b, i] = by_level[b, min(levels[b, i], 255)] if contours[b] else out_largest[b, i]


def wsol_sweep(maps: Tensor | np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> ContourSweep:
    """Contour boxes of maps in [0, 1], shape (H, W) or (B, H, W), at every threshold (default
    ``arange(0, 1, 0.001)``), as Choe et al.'s per-threshold OpenCV sweep finds them, computed in one pass.

    Each map is quantized as the protocol does (:func:`wsol_quantize`); maps are not renormalized here
    (min-max normalize raw maps first, e.g. :func:`camlens.normalize`)."""
    q = wsol_quantize(maps)
    if q.ndim == 2:
        q = q[None]
    if q.ndim != 3:
        raise boxes_are_2d(q.shape, "(H, W) or (B, H, W)")
    t = wsol_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    levels = threshold_levels(q, t)
    bsz, h, w = q.shape
    n = (h + 2) * (w + 2)
    if n > 1 << 23:  # keeps pixel and (contour, level) indices within int32
        raise CamlensError(f"maps of {h}x{w} pixels are too large for the sweep (at most 2**23); downsample them first")
    work = np.empty((_WORK_ROWS, n), np.int32)  # shared by the maps: fresh memory per map costs page faults
    largest = np.empty((bsz, t.shape[0], 4), np.int64)
    at = np.minimum(levels, NUM_LEVELS - 1)  # an all-zero map cuts at level 0 and has no contour there
    parts = [_sweep_map(m, work, at[b], largest[b]) for b, m in enumerate(q)]
    return ContourSweep(
        thresholds=torch.from_numpy(t),
        size=(h, w),
        levels=torch.from_numpy(levels),
        largest=torch.from_numpy(largest),
        boxes=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        image=torch.from_numpy(np.repeat(np.arange(bsz), [p[0].shape[0] for p in parts])),
        level=torch.from_numpy(np.concatenate([p[0] for p in parts])),
    )
