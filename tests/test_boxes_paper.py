"""The CAM paper's boxes (camlens.boxes.paper) on hand-made maps: threshold at 20% of the max, the largest
connected component, its tight box."""

import numpy as np
import pytest
import torch

from camlens.boxes import paper_boxes
from camlens.capture import CamlensError


def test_paper_box_of_unimodal_map_covers_pixels_above_20_percent():
    m = torch.zeros(6, 7)
    m[1:4, 2:6] = 0.5
    m[2, 3] = 1.0
    m[5, 0] = 0.2  # exactly 20% of the max: not above it
    assert paper_boxes(m).tolist() == [2.0, 1.0, 6.0, 4.0]


def test_paper_box_takes_the_largest_of_several_components():
    m = torch.zeros(8, 8)
    m[0, 0] = 1.0  # the peak, alone
    m[4:7, 3:7] = 0.6  # 12 pixels
    m[0:2, 5:8] = 0.5  # 6 pixels
    assert paper_boxes(m).tolist() == [3.0, 4.0, 7.0, 7.0]


def test_paper_box_ties_go_to_the_first_component_in_raster_order():
    m = torch.zeros(5, 5)
    m[3:5, 0:2] = 1.0
    m[0:2, 3:5] = 1.0  # same size, starts first in raster order
    assert paper_boxes(m).tolist() == [3.0, 0.0, 5.0, 2.0]


def test_paper_box_of_ring_spans_the_hole():
    m = torch.ones(5, 6)
    m[0, :] = m[:, 0] = 0.0
    m[2, 2:4] = 0.0  # a hole inside the ring does not cut the component
    assert paper_boxes(m).tolist() == [1.0, 1.0, 6.0, 5.0]


def test_paper_connectivity_decides_whether_diagonal_pixels_join():
    m = torch.zeros(5, 5)
    m[0, 0] = m[1, 1] = m[2, 2] = 1.0  # a diagonal: one component of 3, or three of 1
    m[4, 0] = m[4, 1] = 1.0  # a pair
    assert paper_boxes(m, connectivity=8).tolist() == [0.0, 0.0, 3.0, 3.0]
    assert paper_boxes(m, connectivity=4).tolist() == [0.0, 4.0, 2.0, 5.0]


def test_paper_box_of_empty_and_constant_maps():
    assert paper_boxes(torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert paper_boxes(torch.full((3, 4), 0.7)).tolist() == [0.0, 0.0, 4.0, 3.0]


def test_paper_boxes_are_batched_and_scaled_to_the_original_image():
    maps = torch.zeros(2, 3, 4, 4)
    maps[1, 2, 1:3, 2:4] = 1.0
    boxes = paper_boxes(maps, image_size=(40, 80))
    assert boxes.shape == (2, 3, 4)
    assert boxes[1, 2].tolist() == [40.0, 10.0, 80.0, 30.0]


@pytest.mark.parametrize("bad", [torch.tensor([[0.0, float("nan")]]), torch.zeros(5), np.array([["a"]])])
def test_paper_boxes_reject_nan_wrong_rank_and_non_numbers(bad):
    with pytest.raises(CamlensError):
        paper_boxes(bad)
