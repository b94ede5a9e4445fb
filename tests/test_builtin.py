"""The built-in dataset: determinism, disjoint splits, and ground truth that matches the pasted pixels."""

from __future__ import annotations

import math

import pytest
import torch

from camlens.capture import CamlensError
from camlens.data import builtin
from camlens.data.builtin import BuiltinDataset


def _params(n: int = 64, split: str = "test", seed: int = 3, size: int = 64) -> builtin.SceneParams:
    return builtin.sample_params(split, n, seed, size)


def test_same_seed_gives_same_bytes_and_another_seed_does_not():
    a = builtin.render(_params(seed=5), 64)
    b = builtin.render(_params(seed=5), 64)
    c = builtin.render(_params(seed=6), 64)
    for field in ("images", "labels", "boxes", "masks"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.images, c.images)


def test_splits_draw_from_disjoint_digit_instances():
    pools = {s: set(builtin.split_instances(s).tolist()) for s in ("train", "val", "test")}
    assert not pools["train"] & pools["test"] and not pools["train"] & pools["val"] and not pools["val"] & pools["test"]
    _, labels = builtin._digit_templates()
    assert len(pools["train"]) + len(pools["val"]) + len(pools["test"]) == len(labels)
    for split in pools:
        p = _params(200, split)
        assert set(p.digit.tolist()) <= pools[split]
        assert torch.equal(labels[p.digit], p.label), "each image shows a digit of its own label"


def test_boxes_are_the_tight_boxes_of_the_masks():
    data = builtin.render(_params(40), 64)
    for mask, box in zip(data.masks, data.boxes):
        rows = [y for y in range(mask.shape[0]) if any(mask[y].tolist())]
        cols = [x for x in range(mask.shape[1]) if any(mask[:, x].tolist())]
        assert box.tolist() == [min(cols), min(rows), max(cols) + 1, max(rows) + 1]


def test_boxes_from_masks_hand_case_and_empty_mask():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True  # rows 1..2, columns 2..5
    assert builtin.boxes_from_masks(masks).tolist() == [[2.0, 1.0, 6.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


def test_pixels_are_the_composite_and_untouched_outside_the_object():
    p = _params(48)
    data = builtin.render(p, 64)
    bg = builtin.render_backgrounds(p, 64)
    ink, plate = builtin.render_mattes(p, 64)
    plate_rgb, ink_rgb = builtin.colours(p)
    under = (1 - plate) * bg + plate * plate_rgb[:, :, None, None]
    expected = ((1 - ink) * under + ink * ink_rgb[:, :, None, None]) * 255
    assert (data.images.float() - expected).abs().max() <= 0.5 + 1e-3
    assert torch.equal(data.masks, torch.maximum(ink, plate)[:, 0] >= 0.5)
    untouched = ((ink == 0) & (plate == 0))[:, 0, None].expand_as(bg)
    assert untouched.float().mean() > 0.3
    assert torch.equal(data.images[untouched], (bg * 255).round().to(torch.uint8)[untouched])
    # Anti-aliased edges (0 < alpha < 0.5) stay within one pixel of the box.
    for i in range(len(data.images)):
        x0, y0, x1, y1 = data.boxes[i].long().tolist()
        changed = (ink[i, 0] > 0) | (plate[i, 0] > 0)
        changed[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = False
        assert not changed.any()


def test_ink_and_plate_colours_contrast():
    plate, ink = builtin.colours(_params(500))
    luma = torch.tensor([0.299, 0.587, 0.114])
    assert ((plate @ luma) - (ink @ luma)).abs().min() > 0.15


def test_digit_warp_hand_cases():
    """Angle 0, centre (32, 32), extent 40: the 8x8 grid fills the square [12, 52)^2; the plate reaches
    0.85 * 20 = 17 px and 1.1 * 20 = 22 px from the centre, so pixel centres 32 +- 16.5 (columns 15..48) and
    32 +- 21.5 (rows 10..53) are in and the next ones out (signed distance 1/2, matte 0).  A quarter turn
    about the canvas centre maps pixel centres onto pixel centres, so the mattes are exactly the clockwise-rotated
    ones."""
    p = _params(4)
    p.angle = torch.zeros(4)
    p.centre = torch.full((4, 2), 32.0)
    p.extent = torch.full((4, 2), 40.0)
    ink, plate = (m[:, 0] for m in builtin.render_mattes(p, 64))
    assert ink[:, :12].sum() == 0 and ink[:, 52:].sum() == 0 and ink[:, :, :12].sum() == 0 and ink[:, :, 52:].sum() == 0
    assert builtin.boxes_from_masks(plate >= 0.5).tolist() == [[15.0, 10.0, 49.0, 54.0]] * 4
    p.angle = torch.full((4,), math.pi / 2)
    ink_turned, plate_turned = (m[:, 0] for m in builtin.render_mattes(p, 64))
    assert torch.allclose(ink_turned, torch.rot90(ink, k=-1, dims=(1, 2)), atol=1e-5)
    assert torch.allclose(plate_turned, torch.rot90(plate, k=-1, dims=(1, 2)), atol=1e-5)


def test_dataset_items_and_stacked_tensors_agree():
    ds = BuiltinDataset("test", num_images=30, seed=1)
    whole = ds.tensors()
    item = ds[7]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert torch.equal(item["image"], whole["images"][7])
    assert item["label"] == int(whole["labels"][7]) and isinstance(item["label"], int)
    assert item["box"].dtype == torch.float32 and torch.equal(item["box"], whole["boxes"][7])
    assert item["mask"].dtype == torch.bool and torch.equal(item["mask"], whole["masks"][7])
    assert len(set(ds.ids)) == 30 and item["id"] == ds.ids[7]
    assert len(ds.classes) == 10 and ds.classes[item["label"]] in builtin.CLASSES


def test_labels_are_balanced_and_objects_vary_in_size_and_place():
    data = BuiltinDataset("test", num_images=500, seed=0).tensors()
    assert torch.bincount(data["labels"], minlength=10).tolist() == [50] * 10
    boxes = data["boxes"]
    heights = boxes[:, 3] - boxes[:, 1]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert heights.min() < 28 and heights.max() > 40
    assert centres.min() < 20 and centres.max() > 44
    assert (data["masks"].flatten(1).sum(1) > 0).all()


def test_bundled_photos_are_read_offline():
    photos = builtin._photos()
    assert photos.shape == (len(builtin.PHOTOS), 3, builtin.PHOTO_SIZE, builtin.PHOTO_SIZE)
    assert photos.std((1, 2, 3)).min() > 0.02, "every background has texture"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(CamlensError, match="split 'dev'"):
        BuiltinDataset("dev")  # type: ignore[arg-type]
    with pytest.raises(CamlensError, match="num_images"):
        BuiltinDataset("test", num_images=0)
