"""The component trees behind the one-pass WSOL sweep (:func:`camlens.boxes.wsol_sweep`), compiled with numba.

How (:func:`_sweep_map`): the component tree of the upper level sets ``{q > L}``
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

Every jitted function here calls only jitted functions of this file: numba's cache is invalidated by the
timestamp of the file that holds the compiled function, not by those of the files it calls into.
"""

from __future__ import annotations

import numba
import numpy as np

from .protocol import NUM_LEVELS

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
