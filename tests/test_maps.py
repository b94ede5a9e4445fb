import torch

from camlens import normalize, upsample


def test_normalize_is_min_max_per_map_on_a_hand_worked_case():
    maps = torch.tensor([[[[1.0, 3.0], [5.0, 9.0]], [[-2.0, -2.0], [0.0, 2.0]]]])
    expected = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.5, 1.0]]]])
    torch.testing.assert_close(normalize(maps), expected)


def test_normalize_gives_zeros_never_nan_on_constant_maps():
    maps = torch.stack([torch.full((4, 4), 7.0), torch.zeros(4, 4), torch.full((4, 4), -1e30)])
    out = normalize(maps)
    assert not out.isnan().any()
    assert torch.equal(out, torch.zeros_like(out))


def test_normalize_does_not_modify_its_input():
    maps = torch.randn(2, 3, 5, 5)
    before = maps.clone()
    normalize(maps)
    assert torch.equal(maps, before)


def test_upsample_keeps_constants_and_matches_pixel_centre_interpolation():
    assert torch.equal(upsample(torch.full((1, 2, 3, 3), 2.5), 12), torch.full((1, 2, 12, 12), 2.5))
    # 1x2 -> 1x4 with align_corners=False: output centres at 0.25 and 0.75 of the way between inputs.
    out = upsample(torch.tensor([[0.0, 4.0]]), (1, 4))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 3.0, 4.0]]))


def test_upsample_to_non_square_original_size():
    assert upsample(torch.randn(2, 1, 7, 7), (480, 640)).shape == (2, 1, 480, 640)
