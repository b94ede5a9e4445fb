"""Choe et al.'s WSOL protocol (camlens.boxes.protocol): quantization, threshold levels and box conventions, each
by hand against their code's arithmetic."""

import numpy as np
import torch

from camlens.boxes import threshold_levels, wsol_protocol_boxes, wsol_quantize, wsol_resize_boxes


def test_quantization_truncates_in_float64():
    assert wsol_quantize(np.array([[0.0, 0.5, 1.0, 0.999]], dtype=np.float32)).tolist() == [[0, 127, 255, 254]]


def test_threshold_levels_truncate_like_the_protocol():
    q = np.array([[[0, 200]]], dtype=np.uint8)
    assert threshold_levels(q, np.array([0.0, 0.001, 0.5, 0.999])).tolist() == [[0, 0, 100, 199]]


def test_protocol_boxes_grow_by_one_pixel_except_at_the_border():
    boxes = torch.tensor([[1, 1, 4, 3], [2, 0, 10, 8], [0, 0, 0, 0]])
    assert wsol_protocol_boxes(boxes, (8, 10)).tolist() == [[1, 1, 5, 4], [2, 0, 10, 8], [0, 0, 1, 1]]


def test_ground_truth_resize_follows_choe_truncation():
    # a 500x335 image box (inclusive 60,27..385,331 in their file) onto a 224x224 map
    box = torch.tensor([[60.0, 27.0, 386.0, 332.0]])
    expect = [int(60 * 224 / 500), int(27 * 224 / 335), int(385 * 224 / 500) + 1, int(331 * 224 / 335) + 1]
    assert wsol_resize_boxes(box, (500, 335), (224, 224)).tolist() == [expect]
