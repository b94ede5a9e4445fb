"""WSOL metrics: hand-worked cases, an independent re-implementation of Choe et al.'s per-threshold box
evaluation (OpenCV contours, inclusive boxes and their +1 IoU), scikit-learn's average precision for PxAP, and
merging of sufficient statistics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from camlens.boxes import wsol_thresholds
from camlens.capture import CamlensError
from camlens.metrics import BoxAccuracy, ClassLocalization, PixelAP


def choe_box_counts(maps, gt_inclusive, thresholds, ious=(30, 50, 70)):
    """Choe et al.'s BoxEvaluator.accumulate, written out: boxes (x, y, min(x+w, W-1), min(y+h, H-1)) per
    threshold, [0, 0, 0, 0] without contour, IoU counting x1 - x0 + 1 pixels, hits per IoU threshold."""
    cv2 = pytest.importorskip("cv2")
    largest = {k: np.zeros(len(thresholds), np.int64) for k in ious}
    every = {k: np.zeros(len(thresholds), np.int64) for k in ious}

    def iou(a, b):
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        inter = iw * ih
        union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
        return 0.0 if union <= 0 else inter / union

    for m, gts in zip(maps, gt_inclusive):
        h, w = m.shape
        img = (m * 255).astype(np.uint8)
        for i, t in enumerate(thresholds):
            _, binary = cv2.threshold(img, int(t * np.max(img)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            boxes = []
            for c in contours:
                x, y, bw, bh = cv2.boundingRect(c)
                boxes.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
            if contours:
                x, y, bw, bh = cv2.boundingRect(max(contours, key=cv2.contourArea))
                big = (x, y, min(x + bw, w - 1), min(y + bh, h - 1))
            else:
                big = boxes_all = (0, 0, 0, 0)
                boxes = [boxes_all]
            best_big = max(iou(big, g) for g in gts)
            best_any = max(iou(b, g) for b in boxes for g in gts)
            for k in ious:
                largest[k][i] += best_big >= k / 100
                every[k][i] += best_any >= k / 100
    return largest, every


def test_box_accuracy_counts_equal_choe_evaluator_on_random_maps():
    rng = np.random.default_rng(0)
    thresholds = wsol_thresholds(0.01)
    maps, gt_inclusive, gt_camlens = [], [], []
    for n in range(24):
        h, w = 12, 15
        if n % 3 == 0:
            m = rng.random((h, w))
        elif n % 3 == 1:
            m = rng.integers(0, 4, (h, w)) / 3.0
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            m = np.exp(-((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2) / rng.uniform(4, 40))
            m = (m - m.min()) / (m.max() - m.min())
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
            boxes.append((x0, y0, int(rng.integers(x0, w)), int(rng.integers(y0, h))))
        maps.append(m)
        gt_inclusive.append(boxes)
        gt_camlens.append(torch.tensor([[x0, y0, x1 + 1, y1 + 1] for x0, y0, x1, y1 in boxes], dtype=torch.float64))
    acc = BoxAccuracy(thresholds)
    acc.update(np.stack(maps[:10]), gt_camlens[:10])
    acc.update(np.stack(maps[10:]), gt_camlens[10:])
    largest, every = choe_box_counts(maps, gt_inclusive, thresholds)
    for k, iou in enumerate((30, 50, 70)):
        assert acc.correct_largest[k].tolist() == largest[iou].tolist()
        assert acc.correct_any[k].tolist() == every[iou].tolist()
    out = acc.compute()
    assert out["maxboxacc"] == pytest.approx(largest[50].max() * 100 / 24)
    assert out["maxboxacc_v2"] == pytest.approx(np.mean([every[k].max() for k in (30, 50, 70)]) * 100 / 24)
    assert out["best_threshold"] == pytest.approx(thresholds[int(np.argmax(largest[50]))])


def test_maxboxacc_of_a_map_equal_to_its_box_is_100():
    m = np.zeros((10, 10))
    m[2:6, 3:9] = 1.0
    acc = BoxAccuracy()
    # the protocol scores [3, 2, 9, 6] as one pixel larger: IoU 24/35 >= 0.5 but < 0.7
    acc.update(m, [torch.tensor([[3.0, 2.0, 9.0, 6.0]])])
    out = acc.compute()
    assert out["maxboxacc"] == 100.0
    assert out["maxboxacc_per_iou"] == {"iou30": 100.0, "iou50": 100.0, "iou70": 0.0}
    assert out["maxboxacc_v2"] == pytest.approx(200 / 3)


def test_maxboxacc_v2_takes_the_best_of_several_contours():
    m = np.zeros((10, 20))
    m[1:9, 1:9] = 1.0  # the largest blob
    m[3:6, 14:17] = 0.9  # a small blob matching the ground truth
    gt = [torch.tensor([[14.0, 3.0, 18.0, 7.0]])]  # the small blob's box as the protocol grows it
    acc = BoxAccuracy()
    acc.update(m, gt)
    out = acc.compute()
    assert out["maxboxacc_v2_per_iou"]["iou70"] == 100.0
    # the big blob is larger at every threshold and outlives the small one: the largest contour never matches
    assert out["maxboxacc"] == 0.0


def test_box_accuracy_merge_equals_one_pass_and_state_round_trips():
    rng = np.random.default_rng(1)
    maps = rng.random((6, 8, 8))
    gts = [torch.tensor([[1.0, 1.0, 5.0, 6.0]])] * 6
    whole, a, b = BoxAccuracy(), BoxAccuracy(), BoxAccuracy()
    whole.update(maps, gts)
    a.update(maps[:2], gts[:2])
    b.update(maps[2:], gts[2:])
    a.merge(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), whole.state_dict().values()))
    c = BoxAccuracy()
    c.load_state_dict(whole.state_dict())
    assert c.compute() == whole.compute()


def test_box_accuracy_rejects_missing_ground_truth_and_bad_maps():
    acc = BoxAccuracy()
    with pytest.raises(CamlensError, match="no ground-truth box"):
        acc.update(np.zeros((1, 4, 4)), [torch.zeros(0, 4)])
    with pytest.raises(CamlensError, match="\\[0, 1\\]"):
        acc.update(np.full((1, 4, 4), 2.0), [torch.tensor([[0.0, 0.0, 2.0, 2.0]])])
    with pytest.raises(CamlensError, match="0.5"):
        BoxAccuracy(ious=(0.3, 0.7))


# ----------------------------------------------------------------------------------------------- PxAP


def test_pxap_of_a_perfect_map_is_100():
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[0, 1:4, 2:5] = True
    mask[1, 0, 0] = True
    px = PixelAP()
    px.update(mask.double(), mask)
    assert px.compute()["pxap"] == pytest.approx(100.0)


def test_pxap_of_a_constant_map_is_the_foreground_fraction():
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1:3, 1:4] = True  # 6 of 20 pixels
    px = PixelAP()
    px.update(torch.full((4, 5), 0.37), mask)
    assert px.compute()["pxap"] == pytest.approx(30.0)


def test_pxap_leaves_ignored_pixels_out():
    mask = torch.tensor([[True, False, False, False]])
    ignore = torch.tensor([[False, True, False, False]])
    scores = torch.tensor([[0.9, 1.0, 0.1, 0.2]])  # the ignored pixel would rank first
    px = PixelAP()
    px.update(scores, mask, ignore)
    assert px.compute()["pxap"] == pytest.approx(100.0)


def test_pxap_equals_average_precision_for_scores_on_the_threshold_grid():
    rng = np.random.default_rng(2)
    t = wsol_thresholds()
    scores = t[rng.integers(0, 1000, (3, 9, 11))]  # each distinct score in its own bin
    masks = rng.random((3, 9, 11)) < 0.3
    px = PixelAP()
    px.update(scores, torch.from_numpy(masks))
    assert px.compute()["pxap"] == pytest.approx(100 * average_precision_score(masks.ravel(), scores.ravel()), abs=1e-9)


def test_pxap_is_none_without_foreground_and_merges():
    px = PixelAP()
    px.update(torch.rand(3, 3), torch.zeros(3, 3, dtype=torch.bool))
    assert px.compute()["pxap"] is None
    a, b, whole = PixelAP(), PixelAP(), PixelAP()
    maps, masks = torch.rand(4, 5, 5), torch.rand(4, 5, 5) > 0.5
    a.update(maps[:1], masks[:1])
    b.update(maps[1:], masks[1:])
    whole.update(maps, masks)
    assert a.merge(b).compute() == whole.compute()


def test_pxap_rejects_out_of_range_maps():
    with pytest.raises(CamlensError):
        PixelAP().update(torch.full((2, 2), 1.5), torch.ones(2, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- Top-1 / Top-5


def test_top1_top5_and_gt_known_loc_by_hand():
    maps = torch.zeros(3, 8, 8)
    maps[:, 2:6, 2:6] = 1.0
    gt = [
        torch.tensor([[2.0, 2.0, 6.0, 6.0]]),
        torch.tensor([[2.0, 2.0, 6.0, 6.0]]),
        torch.tensor([[0.0, 0.0, 2.0, 2.0]]),
    ]
    labels = torch.tensor([0, 1, 2])
    logits = torch.tensor(
        [
            [9.0, 1, 0, 0, 0, 0],  # top-1 right, box right
            [9.0, 1, 0, 0, 0, 0],  # label 1 is second: top-5 only
            [0.0, 0, 9, 0, 0, 0],  # class right, box wrong
        ]
    )
    loc = ClassLocalization()
    boxes = loc.update(maps, gt, labels, logits)
    assert boxes[0].tolist() == [2.0, 2.0, 6.0, 6.0]
    out = loc.compute()
    assert out["gt_known_loc"] == pytest.approx(200 / 3)
    assert out["top1_loc"] == pytest.approx(100 / 3)
    assert out["top5_loc"] == pytest.approx(200 / 3)
    assert out["top1_cls"] == pytest.approx(200 / 3)  # images 0 and 2: the top class is the label
