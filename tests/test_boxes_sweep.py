"""The one-pass WSOL sweep (camlens.boxes.sweep and .trees) against OpenCV's per-threshold contour search (the
protocol's own definition), on random maps and on hand-made ones, and its IoU scoring against paired_iou."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camlens.boxes import paired_iou, wsol_protocol_boxes, wsol_quantize, wsol_sweep, wsol_thresholds
from camlens.capture import CamlensError

# ----------------------------------------------------------------------------------------------- WSOL sweep: reference


def cv2_contours(q: np.ndarray, level: int) -> tuple[tuple[int, ...], Counter]:
    """Choe et al.'s step at one threshold: exact boundingRect of the largest contour (contourArea, first
    maximum in OpenCV's order) and the multiset of every contour's boundingRect, as [x, y, x + w, y + h]."""
    cv2 = pytest.importorskip("cv2")
    _, binary = cv2.threshold(q, level, 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return (0, 0, 0, 0), Counter()
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    rects = Counter()
    for c in contours:
        cx, cy, cw, ch = cv2.boundingRect(c)
        rects[(cx, cy, cx + cw, cy + ch)] += 1
    return (x, y, x + w, y + h), rects


def assert_sweep_matches_cv2(maps: np.ndarray, thresholds: np.ndarray) -> None:
    sweep = wsol_sweep(maps, thresholds)
    q = wsol_quantize(maps)
    for b in range(q.shape[0]):
        done = set()
        for i, t in enumerate(thresholds):
            level = int(t * q[b].max())
            if level in done:
                continue
            done.add(level)
            largest, rects = cv2_contours(q[b], level)
            assert tuple(sweep.largest[b, i].tolist()) == largest, (b, t)
            assert Counter(map(tuple, sweep.contours(b, i).tolist())) == rects, (b, t)


def random_maps(rng: np.random.Generator, kind: str, b: int, h: int, w: int) -> np.ndarray:
    if kind == "noise":
        return rng.random((b, h, w))
    if kind == "levels":  # few distinct values: plateaus, ties at the threshold, equal-area ties
        return rng.integers(0, 5, (b, h, w)) / 4.0
    if kind == "binary":
        return (rng.random((b, h, w)) < 0.5).astype(np.float64)
    if kind in ("rings", "egg"):  # interior minima and maxima: holes that open onto the outside at saddles, islands
        y, x = np.mgrid[0:h, 0:w][:, None] + rng.random((2, b, 1, 1)) * np.array([h, w])[:, None, None, None]
        f = rng.uniform(0.4, 1.5, (b, 1, 1))
        up = np.cos(f * np.hypot(y - h / 2, x - w / 2)) if kind == "rings" else np.sin(f * x) * np.sin(f * y)
        up = up + 0.05 * rng.standard_normal(up.shape) * (rng.random((b, 1, 1)) < 0.5)  # half of them rough
        steps = rng.choice([4, 16, 256], (b, 1, 1))  # few levels: wide plateaus and ties
        return np.floor(np.clip((up + 1.2) / 2.4, 0, 1) * steps) / steps
    coarse = torch.tensor(rng.standard_normal((b, 1, 4, 4)))
    up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
    if kind == "relu":  # a CAM after ReLU: a flat zero background (pixels at level 0 never enter a component)
        up = np.maximum(up, 0.0) + (up.max((1, 2), keepdims=True) <= 0)
    lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    return (up - lo) / np.where(hi > lo, hi - lo, 1.0)


KINDS = {"noise": 0, "levels": 1, "binary": 2, "smooth": 3, "relu": 5, "rings": 6, "egg": 7}  # kind: seed


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_equals_opencv_per_threshold_search_on_random_maps(kind):
    rng = np.random.default_rng(KINDS[kind])
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        assert_sweep_matches_cv2(random_maps(rng, kind, int(rng.integers(1, 4)), h, w), wsol_thresholds(0.001))


@pytest.mark.parametrize("kind", ["smooth", "rings", "egg"])
def test_sweep_equals_opencv_on_a_cam_sized_map(kind):
    rng = np.random.default_rng(4)
    assert_sweep_matches_cv2(random_maps(rng, kind, 1, 96, 96), wsol_thresholds(0.01))


# ----------------------------------------------------------------------------------------------- WSOL sweep: by hand


def test_sweep_of_a_ring_lists_the_outer_border_and_the_hole():
    m = np.zeros((7, 7))
    m[1:6, 1:6] = 1.0
    m[3, 3] = 0.0  # one-pixel hole
    sweep = wsol_sweep(m, [0.5])
    assert sweep.largest[0, 0].tolist() == [1, 1, 6, 6]
    # the hole's contour runs through the ring pixels around it: its box is the hole grown by one pixel
    assert sorted(map(tuple, sweep.contours(0, 0).tolist())) == [(1, 1, 6, 6), (2, 2, 5, 5)]


def test_largest_contour_is_by_polygon_area_with_holes_filled_not_pixel_count():
    m = np.zeros((9, 12))
    m[1:8, 1:8] = 1.0
    m[2:7, 2:7] = 0.0  # a 1-pixel thick square ring: 24 pixels, polygon area 36
    m[1:6, 9:12] = 1.0  # a solid 5x3 block: 15 pixels, polygon area 8
    m[7:9, 9:12] = 1.0  # 2x3 block: 6 pixels
    assert wsol_sweep(m, [0.5]).largest[0, 0].tolist() == [1, 1, 8, 8]
    m[0:9, 9:12] = 1.0  # 27 pixels, polygon area 16: more pixels than the ring but a smaller contour area
    assert wsol_sweep(m, [0.5]).largest[0, 0].tolist() == [1, 1, 8, 8]


def test_island_in_a_hole_and_its_own_hole_are_contours_and_the_ring_is_largest():
    m = np.zeros((11, 16))
    m[1:10, 1:10] = 1.0
    m[2:9, 2:9] = 0.0  # a ring around a 7x7 hole: polygon area 64
    m[3:8, 3:8] = 1.0  # a 5x5 island inside the hole, with its own 3x3 hole
    m[4:7, 4:7] = 0.0
    m[1:6, 11:16] = 1.0  # a separate 5x5 block (area 16, as the island)
    sweep = wsol_sweep(m, [0.5])
    assert sweep.largest[0, 0].tolist() == [1, 1, 10, 10]
    expect = [(1, 1, 10, 10), (1, 1, 10, 10), (3, 3, 8, 8), (3, 3, 8, 8), (11, 1, 16, 6)]
    assert sorted(map(tuple, sweep.contours(0, 0).tolist())) == expect
    assert_sweep_matches_cv2(m[None], np.array([0.5]))


def test_equal_contour_areas_go_to_the_component_starting_last():
    m = np.zeros((6, 6))
    m[0:2, 0:2] = 1.0
    m[3:5, 3:5] = 1.0
    assert wsol_sweep(m, [0.5]).largest[0, 0].tolist() == [3, 3, 5, 5]


def test_threshold_ties_leave_the_pixel_out():
    m = np.array([[0.0, 0.5, 1.0]])  # q = 0, 127, 255; t = 0.5 cuts at int(127.5) = 127
    sweep = wsol_sweep(m, [0.5, 0.49])
    assert sweep.levels.tolist() == [[127, 124]]
    assert sweep.largest[0].tolist() == [[2, 0, 3, 1], [1, 0, 3, 1]]


@pytest.mark.parametrize("kind", ["smooth", "rings", "levels"])
def test_protocol_ious_equal_paired_iou_of_the_largest_and_of_every_contour(kind):
    # reference: at each threshold, paired_iou (float64 torch) of the protocol's largest box, and of every contour
    # of that threshold (the fallback box for a map without contours), with every ground-truth box of the map
    rng = np.random.default_rng(KINDS[kind])
    h, w = 19, 23
    maps = np.concatenate([random_maps(rng, kind, 3, h, w), np.zeros((1, h, w))])  # the last map: no contour
    thresholds = wsol_thresholds(0.01)
    sweep = wsol_sweep(maps, thresholds)
    gts = []
    for _ in range(4):  # 1-3 boxes per map, fractional corners as after scaling
        xy = rng.uniform(0, [w, h], (int(rng.integers(1, 4)), 2))
        gts.append(torch.tensor(np.concatenate([xy, xy + rng.uniform(1, [w, h], xy.shape)], 1)))
    gts[3][0] = torch.tensor([0.0, 0.0, 1.5, 2.0])  # overlaps the fallback pixel [0, 0, 1, 1]: IoU 1/3
    largest, best = sweep.protocol_ious(gts)
    by_level = sweep.best_iou_by_level(gts)
    protocol = sweep.protocol_largest()
    for b, gt in enumerate(gts):
        for i in range(len(thresholds)):
            expect_largest = paired_iou(protocol[b, i][None], gt).max()
            contours = wsol_protocol_boxes(sweep.contours(b, i), (h, w))
            expect_best = paired_iou(contours[:, None], gt[None]).max() if len(contours) else torch.tensor(0.0)
            assert largest[b, i] == expect_largest
            assert by_level[b, sweep.levels[b, i]] == expect_best
            assert best[b, i] == (expect_best if (sweep.image == b).any() else expect_largest)
    assert (sweep.image == 3).sum() == 0 and (largest[3] >= 1 / 3).all() and best[3].eq(largest[3]).all()


def test_protocol_ious_reject_a_wrong_number_of_ground_truth_lists():
    with pytest.raises(CamlensError, match="ground-truth box lists"):
        wsol_sweep(np.ones((2, 3, 3))).protocol_ious([torch.tensor([[0, 0, 1, 1]])])


def test_all_zero_map_has_no_contour_and_scores_the_protocol_fallback_pixel():
    sweep = wsol_sweep(np.zeros((2, 4, 5)))
    assert (sweep.largest == 0).all() and sweep.boxes.shape[0] == 0
    assert sweep.protocol_largest()[0, 0].tolist() == [0, 0, 1, 1]


def test_constant_map_is_one_box_over_the_whole_map():
    sweep = wsol_sweep(np.full((4, 6), 0.3), [0.0, 0.5, 0.999])
    assert sweep.largest[0].tolist() == [[0, 0, 6, 4]] * 3


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[0.0, 1.5]]), "must lie in \\[0, 1\\]"),
        (np.array([[-0.1, 0.5]]), "must lie in \\[0, 1\\]"),
        (np.array([[np.nan, 0.5]]), "NaN"),
        (np.zeros((2, 2, 2, 2)), "\\(B, H, W\\)"),
    ],
)
def test_sweep_rejects_bad_maps(bad, message):
    with pytest.raises(CamlensError, match=message):
        wsol_sweep(bad)


def test_sweep_rejects_thresholds_outside_unit_interval():
    with pytest.raises(CamlensError, match="thresholds"):
        wsol_sweep(np.zeros((3, 3)), [0.5, 1.0])
