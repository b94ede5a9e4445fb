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

How: every pixel points to its highest neighbour (ties by index), so each tree of that forest has its pixels
above any level connected; trees that are never a component of their own (their saddle with a neighbour equals
their own peak, e.g. plateau pieces) are folded into that neighbour; per-(tree, value) statistics cumulated over
values give each tree's box, first pixel and area at every level; a Kruskal pass over the tree-to-tree saddles
(highest first) says which trees form one component at each level.  Holes are the same construction on the
inverted map with 4-connectivity (the padding ring is the outside).  A component's parent region is the one just
above its first pixel, which nests components and holes at each level and gives filled areas by subtree sums.
Costs are a few dozen vectorized passes over the pixels plus work proportional to the number of
(component, level) pairs, instead of 1000 contour searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .capture import CamlensError

NUM_LEVELS = 255  # the levels L = 0..254 a threshold can cut at (foreground q > L; L = 255 leaves nothing)
_IDX_BITS = 24
_IDX_MASK = (1 << _IDX_BITS) - 1


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


@dataclass
class _Components:
    """Components of the upper level sets ``{v > L}``, L = 0..254, of a 2-D integer image ``v``.

    Each entry is one component at one level: its level, first/last pixel in raster order (flat indices), column
    range and summed pixel weight.  ``entry_at(levels, pixels)`` finds the entry holding a pixel at a level."""

    level: np.ndarray
    first: np.ndarray
    last: np.ndarray
    col0: np.ndarray
    col1: np.ndarray
    weight: np.ndarray
    tree: np.ndarray  # (N,) tree of each pixel
    label: np.ndarray  # (255, M) the representative tree of each tree's component, per level
    entry_of: np.ndarray  # (255, M) entry of each representative tree, per level (-1: none)

    def entry_at(self, levels: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        return self.entry_of[levels, self.label[levels, self.tree[pixels]]]


def _neighbour_max(key: np.ndarray, conn8: bool) -> np.ndarray:
    """Max of each element and its 8 (or 4) neighbours; the border counts as 0."""
    best = key.copy()
    np.maximum(best[:, 1:], key[:, :-1], out=best[:, 1:])
    np.maximum(best[:, :-1], key[:, 1:], out=best[:, :-1])
    src = best.copy() if conn8 else key  # 8: separable 3x3 max; 4: the cross
    np.maximum(best[1:], src[:-1], out=best[1:])
    np.maximum(best[:-1], src[1:], out=best[:-1])
    return best


def _kruskal_labels(pairs: np.ndarray, saddles: np.ndarray, vmax: np.ndarray) -> np.ndarray:
    """Trees joined across saddles, as a (255, M) table: at level L, each tree's representative when only the
    saddles above L count (Kruskal, highest saddle first).  The representative is the member with the highest
    peak, so it is itself non-empty at every level where its component exists."""
    rep = np.arange(vmax.shape[0])
    members: dict[int, list[int]] = {}
    states, cut = [rep.copy()], []
    order = np.argsort(-saddles, kind="stable")
    ws = saddles[order].tolist()
    for i, ((a, b), w) in enumerate(zip(pairs[order].tolist(), ws)):
        ra, rb = int(rep[a]), int(rep[b])
        if ra != rb:
            keep, drop = (ra, rb) if (vmax[ra], -ra) > (vmax[rb], -rb) else (rb, ra)
            moved = members.pop(drop, [drop])
            rep[moved] = keep
            members.setdefault(keep, [keep]).extend(moved)
        if i + 1 == len(ws) or ws[i + 1] != w:
            states.append(rep.copy())
            cut.append(w)
    # level L sees the merges at saddles >= L + 1
    which = np.searchsorted(-np.asarray(cut, dtype=np.int64), -np.arange(1, NUM_LEVELS + 1), side="right")
    return np.stack(states)[which]


def _saddles(tree: np.ndarray, v: np.ndarray, conn8: bool, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of neighbouring trees (K, 2) and their saddle: the highest min(v_p, v_q) over adjacent pixels
    p, q of the two trees (pairs whose saddle is 0 are dropped: they never meet above a level)."""
    shifts = [((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
              ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))]
    if conn8:
        shifts += [((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
                   ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)))]
    codes = []
    for sa, sb in shifts:
        ta, tb = tree[sa], tree[sb]
        cross = ta != tb
        a, b = ta[cross].astype(np.int64), tb[cross].astype(np.int64)
        codes.append((np.minimum(a, b) * m + np.maximum(a, b)) * 256 + np.minimum(v[sa][cross], v[sb][cross]))
    return _top_saddles(np.concatenate(codes), m)


def _top_saddles(code: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(lo * m + hi) * 256 + saddle`` codes into pairs and the highest saddle of each pair."""
    code = np.sort(code)
    pair = code >> 8
    top = np.ones(pair.shape, bool)
    top[:-1] = pair[1:] != pair[:-1]
    code = code[top & (code & 255 > 0)]
    return np.stack([(code >> 8) // m, (code >> 8) % m], axis=1), code & 255


def _absorb(pairs: np.ndarray, saddles: np.ndarray, vmax: np.ndarray) -> np.ndarray:
    """Merge every tree that is never a component of its own: one whose saddle with a neighbour equals its own
    peak is joined to that neighbour at every level where it is non-empty.  Each such tree is folded into its
    highest such neighbour (by peak, then index), repeatedly, so plateaus split by the index tie-break become
    one tree.  Returns the new compact tree id of every old tree."""
    m = vmax.shape[0]
    mapping = np.arange(m)
    while True:
        a, b = pairs[:, 0], pairs[:, 1]
        trivial = saddles == np.minimum(vmax[a], vmax[b])
        if not trivial.any():
            return mapping
        key = vmax * m + np.arange(m)
        a, b = a[trivial], b[trivial]
        src, dst = np.where(key[a] < key[b], a, b), np.where(key[a] < key[b], b, a)
        best = key.copy()
        np.maximum.at(best, src, key[dst])
        target = best % m
        while True:
            nxt = target[target]
            if np.array_equal(nxt, target):
                break
            target = nxt
        is_root = target == np.arange(m)
        new = (np.cumsum(is_root) - 1)[target]
        mapping, vmax, m = new[mapping], vmax[is_root], int(is_root.sum())
        lo, hi = np.minimum(new[pairs[:, 0]], new[pairs[:, 1]]), np.maximum(new[pairs[:, 0]], new[pairs[:, 1]])
        keep = lo != hi
        pairs, saddles = _top_saddles((lo[keep] * m + hi[keep]) * 256 + saddles[keep], m)


def _level_components(v: np.ndarray, conn8: bool, weight: np.ndarray) -> _Components:
    """All components of ``{v > L}`` for L = 0..254 (8- or 4-connected) of a 2-D uint8 image whose border
    pixels are 0, with the per-pixel ``weight`` summed over each component."""
    h, w = v.shape
    n = h * w
    if n > _IDX_MASK:
        raise CamlensError(f"map canvas of {n} pixels is too large for one sweep; use fewer or smaller maps per call")
    idx = np.arange(n, dtype=np.int32)
    key = (v.astype(np.uint32) << _IDX_BITS) | idx.reshape(h, w).view(np.uint32)
    # steepest ascent: each pixel points to its highest neighbour (ties by index); the roots are the peaks
    parent = (_neighbour_max(key, conn8).ravel() & _IDX_MASK).view(np.int32)
    root = parent
    while True:
        nxt = np.take(root, root)
        if np.array_equal(nxt, root):
            break
        root = nxt
    is_root = parent == idx
    tree = np.take(np.cumsum(is_root, dtype=np.int32) - 1, root)
    flat_v = v.ravel()
    vmax = flat_v[is_root].astype(np.int64)
    pairs, saddles = _saddles(tree.reshape(h, w), v, conn8, vmax.shape[0])
    mapping = _absorb(pairs, saddles, vmax)
    m = int(mapping.max()) + 1
    tree = np.take(mapping.astype(np.int32), tree)
    peak = np.zeros(m, np.int64)
    np.maximum.at(peak, mapping, vmax)
    lo, hi = np.minimum(mapping[pairs[:, 0]], mapping[pairs[:, 1]]), np.maximum(mapping[pairs[:, 0]], mapping[pairs[:, 1]])
    keep = lo != hi
    pairs, saddles = _top_saddles((lo[keep] * m + hi[keep]) * 256 + saddles[keep], m)
    label = _kruskal_labels(pairs, saddles, peak)

    # per (tree, value) bins, then cumulated from the top value down: column j covers pixels with v >= j
    g = torch.from_numpy((tree * np.int32(256) + flat_v).astype(np.int64))
    t_idx, t_cols = torch.from_numpy(idx), torch.from_numpy(idx % np.int32(w))
    tables = []
    for src, how, init, acc in ((t_idx, "amin", n, np.minimum), (t_idx, "amax", -1, np.maximum),
                                (t_cols, "amin", w, np.minimum), (t_cols, "amax", -1, np.maximum)):
        binned = torch.full((m * 256,), init, dtype=torch.int32).scatter_reduce_(0, g, src, how).numpy()
        tables.append(acc.accumulate(binned.reshape(m, 256)[:, ::-1], axis=1)[:, ::-1])
    wsum = np.bincount(g.numpy(), weights=weight, minlength=m * 256)
    tables.append(np.cumsum(wsum.reshape(m, 256)[:, ::-1], axis=1)[:, ::-1].astype(np.int64))

    # entries: (level, representative) for every representative that is non-empty at that level
    lv = np.arange(NUM_LEVELS)[:, None]
    alive = peak[None, :] > lv
    is_entry = (label == np.arange(m)[None, :]) & alive
    entry_of = np.full((NUM_LEVELS, m), -1, np.int64)
    e_level, e_tree = np.nonzero(is_entry)
    entry_of[e_level, e_tree] = np.arange(e_level.shape[0])
    # an entry's statistics are its representative's, combined with those of the other trees it holds
    p_level, p_tree = np.nonzero(alive & ~is_entry)
    target = torch.from_numpy(entry_of[p_level, label[p_level, p_tree]])
    stats = []
    for table, how in zip(tables, ("amin", "amax", "amin", "amax", "sum")):
        out = torch.from_numpy(table[e_tree, e_level + 1].astype(np.int64))
        out.scatter_reduce_(0, target, torch.from_numpy(table[p_tree, p_level + 1].astype(np.int64)), how)
        stats.append(out.numpy())
    return _Components(e_level, *stats, tree=tree, label=label, entry_of=entry_of)


def _quad_weights(c: np.ndarray) -> np.ndarray:
    """Per pixel, the number of 2x2 quads in which it is one of the two lowest corners (ties by position).

    A quad's share of a component's polygon area at level L is [its 3rd value > L] + [its 4th value > L]
    half-units, i.e. one half-unit per foreground pixel among its two lowest corners; below L, one half-unit per
    background pixel among them goes to that pixel's background region.  So summing these weights over a
    component's pixels gives twice its polygon area, at every level at once."""
    v = c.astype(np.int16)
    a, b, d, e = v[:-1, :-1], v[:-1, 1:], v[1:, :-1], v[1:, 1:]  # corner order: a < b < d < e on ties
    low_a = (b < a).astype(np.int8) + (d < a) + (e < a) <= 1
    low_b = (a <= b).astype(np.int8) + (d < b) + (e < b) <= 1
    low_d = (a <= d).astype(np.int8) + (b <= d) + (e < d) <= 1
    low_e = (a <= e).astype(np.int8) + (b <= e) + (d <= e) <= 1
    k = np.zeros(c.shape, np.int64)
    k[:-1, :-1] += low_a
    k[:-1, 1:] += low_b
    k[1:, :-1] += low_d
    k[1:, 1:] += low_e
    return k.ravel()


@dataclass
class _CanvasSweep:
    """Per-level results for B stacked maps: the largest contour's exact box (B, 255, 4) (zeros: no contour), and
    every contour's exact box with its map and level."""

    largest: np.ndarray
    image: np.ndarray
    level: np.ndarray
    boxes: np.ndarray


def _sweep_canvas(q: np.ndarray) -> _CanvasSweep:
    """Contours of ``q > L`` for every level L = 0..254 of B uint8 maps (B, H, W), as OpenCV's RETR_TREE finds
    them: exact bounding boxes of all outer and hole contours, and of the largest contour by contourArea."""
    bsz, h, w = q.shape
    hp, wp = h + 2, w + 2
    canvas = np.zeros((bsz, hp, wp), np.uint8)
    canvas[:, 1:-1, 1:-1] = q
    canvas = canvas.reshape(bsz * hp, wp)
    k = _quad_weights(canvas)
    fg = _level_components(canvas, True, k)
    bg = _level_components(255 - canvas, False, k)  # background {q <= L} is {255 - q > 254 - L}
    nf = fg.level.shape[0]
    outside = bg.first == 0  # the background component holding the padding

    # nesting at each level: a component's parent is the background region just above its first pixel, a
    # hole's parent the component just above its first pixel
    parent = np.full(nf + bg.level.shape[0], -1, np.int64)
    parent[:nf] = nf + bg.entry_at(NUM_LEVELS - 1 - fg.level, fg.first - wp)
    holes = np.flatnonzero(~outside)
    parent[nf + holes] = fg.entry_at(NUM_LEVELS - 1 - bg.level[holes], bg.first[holes] - wp)
    filled = np.concatenate([fg.weight, bg.weight])
    _add_subtrees(filled, parent)

    # the largest contour per (map, level): top-level components, by filled area, then last raster start
    top = np.flatnonzero(outside[parent[:nf] - nf])
    img = fg.first[top] // wp // hp
    group = img * NUM_LEVELS + fg.level[top]
    order = np.lexsort((fg.first[top], filled[top], group))
    last_of_group = np.ones(order.shape, bool)
    last_of_group[:-1] = group[order][1:] != group[order][:-1]
    win = top[order[last_of_group]]
    largest = np.zeros((bsz, NUM_LEVELS, 4), np.int64)
    largest[fg.first[win] // wp // hp, fg.level[win]] = _entry_boxes(fg, win, wp, hp, 0)

    boxes = np.concatenate([_entry_boxes(fg, np.arange(nf), wp, hp, 0), _entry_boxes(bg, holes, wp, hp, 1)])
    image = np.concatenate([fg.first // wp // hp, bg.first[holes] // wp // hp])
    level = np.concatenate([fg.level, NUM_LEVELS - 1 - bg.level[holes]])
    return _CanvasSweep(largest, image, level, boxes)


def _entry_boxes(c: _Components, sel: np.ndarray, wp: int, hp: int, grow: int) -> np.ndarray:
    """Exclusive-edge boxes in map coordinates of the entries ``sel``, grown by ``grow`` pixels per side."""
    r0, r1 = c.first[sel] // wp, c.last[sel] // wp
    off = r0 // hp * hp + 1  # first map row on the canvas
    return np.stack([c.col0[sel] - 1 - grow, r0 - off - grow, c.col1[sel] + grow, r1 - off + 1 + grow], axis=1)


def _add_subtrees(values: np.ndarray, parent: np.ndarray) -> None:
    """In place: each node's value becomes the sum over its subtree (parent -1 marks roots)."""
    n = parent.shape[0]
    up = np.where(parent >= 0, parent, np.arange(n))
    depth = (parent >= 0).astype(np.int64)
    while True:
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        depth = depth + depth[up]
        up = nxt
    for d in range(int(depth.max(initial=0)), 0, -1):
        at = np.flatnonzero(depth == d)
        np.add.at(values, parent[at], values[at])


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


_CANVAS_PIXELS = 1 << 16  # maps per canvas: enough to amortize call overhead, small enough to stay in cache


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
    per = max(1, _CANVAS_PIXELS // ((h + 2) * (w + 2)))
    largest, boxes, image, level = [], [], [], []
    for start in range(0, bsz, per):
        part = _sweep_canvas(q[start : start + per])
        largest.append(part.largest)
        boxes.append(part.boxes)
        image.append(part.image + start)
        level.append(part.level)
    per_level = np.concatenate(largest)  # (B, 255, 4)
    at = np.minimum(levels, NUM_LEVELS - 1)  # an all-zero map cuts at level 0 and has no contour there
    return ContourSweep(
        thresholds=torch.from_numpy(t),
        size=(h, w),
        levels=torch.from_numpy(levels),
        largest=torch.from_numpy(np.take_along_axis(per_level, at[:, :, None], axis=1)),
        boxes=torch.from_numpy(np.concatenate(boxes)),
        image=torch.from_numpy(np.concatenate(image)),
        level=torch.from_numpy(np.concatenate(level)),
    )
