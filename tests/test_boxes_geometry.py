"""Box geometry (camlens.boxes.geometry): the area IoU of exclusive-edge boxes, and boxes moved between grids."""

import pytest
import torch

from camlens.boxes import box_iou, scale_boxes


def test_iou_of_exclusive_boxes_counts_pixels():
    # [0, 0, 2, 2] covers 4 pixels, [1, 0, 3, 2] covers 4, they share 2: IoU = 2 / 6
    iou = box_iou(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[1, 0, 3, 2], [0, 0, 2, 2], [2, 2, 4, 4]]))
    assert iou.tolist() == [[pytest.approx(1 / 3), 1.0, 0.0]]


def test_iou_of_zero_area_box_is_zero():
    assert box_iou(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0], [0, 0, 5, 5]])).tolist() == [[0.0, 0.0]]


def test_scale_boxes_maps_pixel_edges_between_grids():
    # columns 1..2 of a 4-wide grid are columns 2..5 of an 8-wide grid covering the same image
    assert scale_boxes(torch.tensor([[1.0, 0.0, 3.0, 2.0]]), (2, 4), (6, 8)).tolist() == [[2.0, 0.0, 6.0, 6.0]]
