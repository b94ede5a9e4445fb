"""Faithfulness and sanity metrics: closed-form cases on models whose answer is known, independent reference
implementations written here (plain loops, float64), and pytorch_grad_cam / scipy / skimage as oracles.

Conventions that differ from pytorch_grad_cam (checked below, not hidden):
- its DropInConfidence is max(0, Y - O), ours is 100 * max(0, Y - O) / Y (the Grad-CAM++ paper's Average Drop %);
- its IncreaseInConfidence is 1[O > Y] in {0, 1}, ours 100 * 1[O > Y];
- its ROADMostRelevantFirst(q) / ROADLeastRelevantFirst(q) take the percentile q of pixels *kept*, ours the
  percentage removed (MoRF / LeRF at 100 - q), and its imputer's noise is fixed at 0.01 (we compare at noise 0).
"""

import copy

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics import road as gc_road
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from skimage.metrics import structural_similarity
from torch import nn

import camlens
from camlens import CamlensError
from camlens.metrics.faithfulness import (
    ROAD_NEIGHBOUR_WEIGHTS,
    FaithfulnessConfig,
    FaithfulnessTotals,
    boxes_to_masks,
    confidence_change,
    deletion_curve,
    faithfulness_scores,
    insertion_curve,
    noisy_linear_imputation,
    pointing_game,
    randomization_check,
    rank_correlation,
    rise_blur,
    road,
    ssim,
)
from camlens.metrics.faithfulness._common import _relevance_rank
from camlens.metrics.faithfulness.road import _dissection_rank


class RegionMean(nn.Module):
    """logits = (scale * mean over region R of the channel-mean image, 0, 0): every score is known in closed form."""

    def __init__(self, region: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * (x.mean(1) * self.region).sum((-2, -1)) / self.region.sum()
        return torch.stack([s, torch.zeros_like(s), torch.zeros_like(s)], 1)


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[2.0, 1.0, 0.5]]).expand(x.shape[0], 3)


def tiny_net(classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


def corner_region(size: int = 4) -> torch.Tensor:
    region = torch.zeros(size, size, dtype=torch.bool)
    region[:2, :2] = True
    return region


def ranked_map(region: torch.Tensor, first: bool) -> torch.Tensor:
    """A map with distinct values whose ranking puts the region first (or last)."""
    n = region.numel()
    base = torch.arange(n, 0, -1, dtype=torch.float32).view_as(region) / n
    return (base + (2.0 if first else -2.0) * region)[None]


# ----------------------------------------------------------------------------------- Average Drop / Increase


def test_average_drop_is_fifty_percent_when_the_map_halves_a_linear_logit():
    region = corner_region()
    model = RegionMean(region).eval()
    image = torch.ones(1, 3, 4, 4)
    cam = torch.full((1, 4, 4), 0.25)
    cam[0][region] = 0.5
    cam[0, 3, 3], cam[0, 2, 3] = 1.0, 0.0  # min-max normalization leaves this map unchanged
    out = confidence_change(model, image, cam, [0], score="logit")
    assert out.original.item() == pytest.approx(1.0)
    assert out.masked.item() == pytest.approx(0.5)
    assert out.average_drop.item() == pytest.approx(50.0)
    assert out.increase_in_confidence.item() == 0.0
    soft = confidence_change(model, image, cam, [0])
    y, o = np.exp(1) / (np.exp(1) + 2), np.exp(0.5) / (np.exp(0.5) + 2)
    assert soft.average_drop.item() == pytest.approx(100 * (y - o) / y, rel=1e-5)


def test_constant_model_has_no_drop_and_no_increase():
    out = confidence_change(Constant().eval(), torch.randn(3, 3, 6, 6), torch.rand(3, 6, 6), [0, 1, 2])
    assert torch.equal(out.average_drop, torch.zeros(3))
    assert torch.equal(out.increase_in_confidence, torch.zeros(3))


def test_increase_in_confidence_counts_a_higher_masked_score():
    region = corner_region()
    image = -torch.ones(1, 3, 4, 4)
    cam = torch.full((1, 4, 4), 0.5)
    out = confidence_change(RegionMean(region).eval(), image, cam, [0], normalize_maps=False)
    assert out.masked.item() > out.original.item()
    assert out.increase_in_confidence.item() == 100.0 and out.average_drop.item() == 0.0


def test_average_drop_with_logits_is_nan_where_the_original_logit_is_not_positive():
    out = confidence_change(
        RegionMean(corner_region()).eval(), -torch.ones(1, 3, 4, 4), torch.rand(1, 4, 4), [0], score="logit"
    )
    assert torch.isnan(out.average_drop).all()


def test_confidence_change_matches_pytorch_grad_cam_up_to_its_convention():
    model = tiny_net()
    images = torch.randn(4, 3, 12, 12)
    cams = camlens.normalize(torch.rand(4, 12, 12))
    classes = [0, 1, 2, 1]
    ours = confidence_change(model, images, cams, classes)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    drop = DropInConfidence()(images, cams.numpy(), targets, model)
    increase = IncreaseInConfidence()(images, cams.numpy(), targets, model)
    np.testing.assert_allclose(ours.average_drop * ours.original / 100, drop, atol=1e-6)
    np.testing.assert_array_equal(ours.increase_in_confidence / 100, increase)


def test_low_resolution_maps_are_upsampled_bilinearly_to_the_image():
    model = tiny_net()
    images, small = torch.randn(2, 3, 12, 12), torch.rand(2, 1, 3, 3)
    a = confidence_change(model, images, small, [0, 1])
    b = confidence_change(model, images, camlens.upsample(small[:, 0], 12), [0, 1])
    assert torch.equal(a.masked, b.masked)


# ------------------------------------------------------------------------------------- Deletion / Insertion


@pytest.mark.parametrize("first, auc", [(True, 2 / 16), (False, 14 / 16)])
def test_deletion_auc_of_a_region_mean_logit_is_known_in_closed_form(first, auc):
    # One pixel per step: the logit is (4 - region pixels deleted) / 4.
    region = corner_region()
    curve = deletion_curve(
        RegionMean(region).eval(), torch.ones(1, 3, 4, 4), ranked_map(region, first), [0], steps=16, score="logit"
    )
    assert curve.auc.item() == pytest.approx(auc, abs=1e-6)
    expected = [1 - min(k, 4) / 4 for k in range(17)] if first else [1.0] * 13 + [0.75, 0.5, 0.25, 0.0]
    np.testing.assert_allclose(curve.scores[0], expected, atol=1e-6)


def test_insertion_auc_of_a_region_mean_logit_is_known_in_closed_form():
    region = corner_region()
    curve = insertion_curve(
        RegionMean(region).eval(),
        torch.ones(1, 3, 4, 4),
        ranked_map(region, True),
        [0],
        steps=16,
        baseline="zeros",
        score="logit",
    )
    assert curve.auc.item() == pytest.approx(14 / 16, abs=1e-6)


def test_deletion_with_softmax_integrates_the_probability_over_the_fraction_removed():
    region = corner_region()
    curve = deletion_curve(
        RegionMean(region, scale=3.0).eval(), torch.ones(1, 3, 4, 4), ranked_map(region, True), [0], steps=8
    )
    logit = np.array([3 * (1 - min(2 * k, 4) / 4) for k in range(9)])
    prob = np.exp(logit) / (np.exp(logit) + 2)
    assert curve.auc.item() == pytest.approx(trapezoid(prob, np.arange(9) / 8), rel=1e-6)


def test_steps_that_do_not_divide_the_pixels_use_floor_counts_and_their_true_fractions():
    curve = deletion_curve(tiny_net(), torch.randn(1, 3, 4, 4), torch.rand(1, 4, 4), [0], steps=3)
    np.testing.assert_allclose(curve.fractions, [0, 5 / 16, 10 / 16, 1])
    assert curve.auc.item() == pytest.approx(trapezoid(curve.scores[0], [0, 5 / 16, 10 / 16, 1]), rel=1e-6)


@pytest.mark.parametrize("rows, auc", [(slice(0, 1), 2 / 16), (slice(3, 4), 14 / 16)])
def test_tied_map_values_are_ranked_by_row_major_index(rows, auc):
    # A constant map deletes pixels in row-major order: the first row first, the last row last.
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[rows] = True
    curve = deletion_curve(
        RegionMean(region).eval(), torch.ones(1, 3, 4, 4), torch.zeros(1, 4, 4), [0], steps=16, score="logit"
    )
    assert curve.auc.item() == pytest.approx(auc, abs=1e-6)


def test_relevance_rank_breaks_ties_by_lower_index_in_both_orders():
    cam = torch.tensor([[[1.0, 3.0, 3.0], [2.0, 3.0, 1.0]]])
    assert _relevance_rank(cam, True).tolist() == [[4, 0, 1, 3, 2, 5]]
    assert _relevance_rank(cam, False).tolist() == [[0, 3, 4, 2, 5, 1]]


def trapezoid(y, x) -> float:
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def rise_reference(model, image, cam, cls, step, start, finish):
    """RISE's CausalMetric.single_run loop (eclique/RISE evaluation.py), rewritten: pixels change `step` at a time
    in np.flip(np.argsort) order; AUC = (sum - first/2 - last/2) / (n - 1)."""
    hw = image.shape[-1] * image.shape[-2]
    n_steps = (hw + step - 1) // step
    order = np.flip(np.argsort(cam.reshape(-1).numpy()))
    current = start.clone().reshape(1, 3, hw)
    scores = []
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores.append(model(current.view_as(image)).softmax(-1)[0, cls].item())
        coords = torch.from_numpy(order[step * i : step * (i + 1)].copy())
        current[0, :, coords] = finish.reshape(1, 3, hw)[0, :, coords]
    scores = np.array(scores)
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)


def rise_gkern_blur(images, klen=11, nsig=5):
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    k = torch.from_numpy(scipy.ndimage.gaussian_filter(delta, nsig)).float()
    kern = torch.zeros(3, 3, klen, klen)
    for c in range(3):
        kern[c, c] = k
    return F.conv2d(images, kern, padding=klen // 2)


@pytest.mark.parametrize("klen, nsig", [(11, 5.0), (5, 1.0)])
def test_rise_blur_equals_the_kernel_of_the_rise_code(klen, nsig):
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rise_blur(images, klen, nsig), rise_gkern_blur(images, klen, nsig), atol=1e-6, rtol=0)


def test_deletion_and_insertion_match_the_rise_loop():
    model = tiny_net()
    images, cams = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    dele = deletion_curve(model, images, cams, [0, 2], steps=16)
    ins = insertion_curve(model, images, cams, [0, 2], steps=16)
    blurred = rise_gkern_blur(images)
    for b, cls in enumerate([0, 2]):
        scores, auc = rise_reference(
            model, images[b : b + 1], cams[b], cls, 4, images[b : b + 1], torch.zeros(1, 3, 8, 8)
        )
        np.testing.assert_allclose(dele.scores[b], scores, atol=1e-6)
        assert dele.auc[b].item() == pytest.approx(auc, abs=1e-6)
        scores, auc = rise_reference(model, images[b : b + 1], cams[b], cls, 4, blurred[b : b + 1], images[b : b + 1])
        assert ins.auc[b].item() == pytest.approx(auc, abs=1e-6)


def test_mean_baseline_replaces_pixels_by_the_channel_means_of_each_image():
    region = corner_region()
    images = torch.ones(1, 3, 4, 4)
    images[0, :, 3, 3] = 17.0  # channel mean 2, so the region mean falls from 1 to 2 once fully replaced
    curve = deletion_curve(
        RegionMean(region).eval(), images, ranked_map(region, True), [0], steps=16, baseline="mean", score="logit"
    )
    assert curve.scores[0, 4].item() == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------------- ROAD


def random_mask(shape, fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < fraction


def test_noisy_linear_imputation_without_noise_matches_pytorch_grad_cam():
    image = torch.randn(1, 3, 9, 11)
    missing = random_mask((1, 9, 11), 0.5)
    theirs = gc_road.NoisyLinearImputer(noise=0.0)(image[0], (~missing[0]).float())
    ours = noisy_linear_imputation(image, missing, noise=0.0)
    torch.testing.assert_close(ours[0], theirs, atol=1e-5, rtol=1e-5)


def test_imputed_pixels_are_the_weighted_mean_of_their_in_image_neighbours():
    image = torch.randn(1, 2, 7, 6, dtype=torch.float64)
    missing = random_mask((1, 7, 6), 0.6, seed=3)
    missing[0, 0, 0] = missing[0, 6, 5] = True  # corners, whose neighbour weights are renormalized
    out = noisy_linear_imputation(image, missing, noise=0.0)[0]
    for r, c in missing[0].nonzero().tolist():
        total, weight = torch.zeros(2, dtype=torch.float64), 0.0
        for dr, dc, w in ROAD_NEIGHBOUR_WEIGHTS:
            if 0 <= r + dr < 7 and 0 <= c + dc < 6:
                total += w * out[:, r + dr, c + dc]
                weight += w
        torch.testing.assert_close(out[:, r, c], total / weight, atol=1e-10, rtol=0)
    assert torch.equal(out[:, ~missing[0]], image[0][:, ~missing[0]])


def test_linear_imputation_reproduces_a_linear_ramp_inside_the_image():
    rows, cols = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    image = torch.stack([2 * rows - cols, rows + 0.5 * cols, torch.full_like(rows, 3.0)])[None].double()
    missing = torch.zeros(1, 10, 12, dtype=torch.bool)
    missing[0, 2:8, 3:9] = True
    missing[0, 5, 1] = True
    out = noisy_linear_imputation(image, missing, noise=0.0)
    torch.testing.assert_close(out, image, atol=1e-10, rtol=0)


def dense_imputation(image: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Reference: the neighbour-mean equations of every missing pixel as a dense system, solved by numpy."""
    channels, height, width = image.shape
    ids = [(r, c) for r in range(height) for c in range(width) if missing[r, c]]
    var = {pixel: k for k, pixel in enumerate(ids)}
    matrix, rhs = np.zeros((len(ids), len(ids))), np.zeros((len(ids), channels))
    for k, (r, c) in enumerate(ids):
        for dr, dc, w in ROAD_NEIGHBOUR_WEIGHTS:
            if 0 <= r + dr < height and 0 <= c + dc < width:
                matrix[k, k] += w
                if missing[r + dr, c + dc]:
                    matrix[k, var[r + dr, c + dc]] -= w
                else:
                    rhs[k] += w * image[:, r + dr, c + dc]
    out = image.copy()
    if ids:
        rows, cols = zip(*ids)
        out[:, rows, cols] = np.linalg.solve(matrix, rhs).T
    return out


def imputation_cases():
    g = torch.Generator().manual_seed(11)
    border = torch.zeros(12, 15, dtype=torch.bool)
    border[:5, :] = True  # a band along the whole top edge
    border[4:, 11:] = True  # and down the right edge, joined to it
    column = torch.zeros(9, 10, dtype=torch.bool)
    column[:, 4] = True  # splits the kept pixels in two
    one_kept = torch.ones(7, 8, dtype=torch.bool)
    one_kept[6, 7] = False
    return [
        torch.rand(9, 11, generator=g) < 0.3,
        torch.rand(16, 16, generator=g) < 0.9,
        torch.rand(23, 17, generator=g) < 0.9,
        torch.rand(1, 10, generator=g) < 0.6,
        torch.rand(13, 1, generator=g) < 0.6,
        border,
        column,
        one_kept,
    ]


@pytest.mark.parametrize("case", range(8))
def test_imputation_matches_a_dense_solve_of_the_neighbour_mean_equations(case):
    missing = imputation_cases()[case]
    image = torch.randn(1, 3, *missing.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(case))
    ours = noisy_linear_imputation(image, missing[None], noise=0.0)[0]
    np.testing.assert_allclose(ours.numpy(), dense_imputation(image[0].numpy(), missing.numpy()), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (5, 3), (17, 40), (112, 112)])
def test_dissection_order_is_a_permutation_of_the_pixels(shape):
    rank = _dissection_rank(*shape)
    assert np.array_equal(np.sort(rank), np.arange(shape[0] * shape[1]))


def test_imputation_does_not_depend_on_the_memory_layout_of_the_images():
    image = torch.randn(2, 3, 10, 12)
    missing = random_mask((2, 10, 12), 0.7, seed=2)
    plain = noisy_linear_imputation(image, missing, 0.05, torch.Generator().manual_seed(1))
    strided = image.transpose(2, 3).contiguous().transpose(2, 3)  # column-major pixels
    assert torch.equal(noisy_linear_imputation(strided, missing, 0.05, torch.Generator().manual_seed(1)), plain)
    assert not torch.equal(plain[:, :, missing[0]], image[:, :, missing[0]])


def test_imputation_noise_has_the_requested_scale_on_removed_pixels_only():
    image = torch.zeros(1, 3, 40, 40)
    missing = random_mask((1, 40, 40), 0.5)
    a = noisy_linear_imputation(image, missing, 0.1, torch.Generator().manual_seed(5))
    b = noisy_linear_imputation(image, missing, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a[0][:, missing[0]].std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(a[0][:, ~missing[0]], image[0][:, ~missing[0]])


def gc_metric(remover, q):
    return PerturbationConfidenceMetric(remover(q, gc_road.NoisyLinearImputer(noise=0.0)))


def test_road_morf_and_lerf_match_pytorch_grad_cam_at_complementary_percentiles():
    model = tiny_net()
    images, cams = torch.randn(3, 3, 10, 10), torch.rand(3, 10, 10)  # 100 distinct values: percentiles are exact
    classes = [0, 1, 2]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    ours = road(model, images, cams, classes, percentages=(20, 70), noise=0.0)
    for j, removed in enumerate((20, 70)):
        kept = 100 - removed
        morf = gc_metric(RemoveMostRelevantFirst, kept)(images, cams.numpy(), targets, model, return_diff=False)
        lerf = gc_metric(RemoveLeastRelevantFirst, kept)(images, cams.numpy(), targets, model, return_diff=False)
        np.testing.assert_allclose(ours.morf[:, j], morf, atol=1e-5)
        np.testing.assert_allclose(ours.lerf[:, j], lerf, atol=1e-5)


def test_road_combined_equals_pytorch_grad_cam_road_combined(monkeypatch):
    # ROADCombined builds NoisyLinearImputer() with its fixed noise 0.01: make that imputer noiseless.
    class Noiseless(gc_road.NoisyLinearImputer):
        def __init__(self, noise: float = 0.0) -> None:
            super().__init__(noise=0.0)

    monkeypatch.setattr(gc_road, "NoisyLinearImputer", Noiseless)
    model = tiny_net()
    images, cams = torch.randn(2, 3, 10, 10), torch.rand(2, 10, 10)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in (1, 2)]
    theirs = gc_road.ROADCombined()(images, cams.numpy(), targets, model)
    ours = road(model, images, cams, [1, 2], noise=0.0)
    np.testing.assert_allclose(ours.combined, theirs, atol=1e-5)


def test_road_is_deterministic_for_a_seed_whatever_the_batch_size():
    model = tiny_net()
    images, cams = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    a = road(model, images, cams, [0, 1], percentages=(30, 60), seed=4, batch_size=3)
    b = road(model, images, cams, [0, 1], percentages=(30, 60), seed=4, batch_size=64)
    assert torch.equal(a.morf, b.morf) and torch.equal(a.lerf, b.lerf)


def test_road_rejects_removing_everything():
    with pytest.raises(CamlensError, match="between 0 and 100"):
        road(tiny_net(), torch.randn(1, 3, 8, 8), torch.rand(1, 8, 8), [0], percentages=(100,))


# ------------------------------------------------------------------------------------------ pointing game


def peak_map(size, *points):
    cam = torch.rand(1, size, size) * 0.5
    for r, c in points:
        cam[0, r, c] = 1.0
    return cam


def single_pixel(size, r, c):
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, r, c] = True
    return mask


@pytest.mark.parametrize("dr, dc, hit", [(0, 14, 1.0), (0, 15, 0.0), (9, 11, 1.0), (9, 12, 0.0), (-12, -9, 0.0)])
def test_pointing_game_hits_within_a_strict_euclidean_tolerance(dr, dc, hit):
    # 9² + 11² = 202 < 225, 9² + 12² = 225 is not < 15²: TorchRay's strict acceptance disc.
    out = pointing_game(peak_map(40, (15, 15)), masks=single_pixel(40, 15 + dr, 15 + dc), tolerance=15)
    assert out.item() == hit


def test_pointing_game_with_zero_tolerance_needs_the_point_inside_the_box():
    cam = peak_map(20, (5, 7))
    assert pointing_game(cam, boxes=torch.tensor([[7.0, 5.0, 8.0, 6.0]]), tolerance=0).item() == 1.0
    assert pointing_game(cam, boxes=torch.tensor([[8.0, 5.0, 9.0, 6.0]]), tolerance=0).item() == 0.0


def test_pointing_game_tie_rules():
    cam = peak_map(30, (2, 2), (20, 20))
    box = torch.tensor([[18.0, 18.0, 23.0, 23.0]])
    got = {ties: pointing_game(cam, boxes=box, tolerance=1, ties=ties).item() for ties in ("all", "any", "first")}
    assert got == {"all": 0.0, "any": 1.0, "first": 0.0}
    box_first = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    assert pointing_game(cam, boxes=box_first, tolerance=1, ties="first").item() == 1.0


def test_a_flat_map_hits_under_all_ties_only_when_everything_is_near_the_truth():
    flat = torch.zeros(1, 10, 10)
    assert pointing_game(flat, boxes=torch.tensor([[2.0, 2.0, 5.0, 5.0]]), tolerance=3).item() == 0.0
    assert pointing_game(flat, boxes=torch.tensor([[2.0, 2.0, 8.0, 8.0]]), tolerance=3).item() == 1.0


def test_boxes_rasterize_by_pixel_centres_with_exclusive_edges():
    mask = boxes_to_masks([torch.tensor([[2.0, 1.0, 6.0, 3.0]])], (5, 8))[0]
    expected = torch.zeros(5, 8, dtype=torch.bool)
    expected[1:3, 2:6] = True
    assert torch.equal(mask, expected)


def test_pointing_game_matches_a_plain_loop_reference():
    g = torch.Generator().manual_seed(2)
    cams = torch.rand(6, 16, 16, generator=g)
    masks = torch.rand(6, 16, 16, generator=g) < 0.04
    masks[5] = False
    for tol in (0, 3, 15):
        out = pointing_game(cams, masks=masks, tolerance=tol, ties="first")
        for b in range(6):
            r, c = divmod(int(cams[b].argmax()), 16)
            truth = masks[b].nonzero().tolist()
            if not truth:
                assert np.isnan(out[b].item())
                continue
            hit = any((y - r) ** 2 + (x - c) ** 2 < tol**2 or (y, x) == (r, c) for y, x in truth)
            assert out[b].item() == float(hit), (tol, b)


def test_boxes_and_their_masks_give_the_same_hits_and_images_without_boxes_are_nan():
    cams = torch.rand(3, 24, 24)
    boxes = [
        torch.tensor([[1.0, 2.0, 9.0, 7.0], [15.0, 15.0, 22.0, 20.0]]),
        torch.zeros(0, 4),
        torch.tensor([[10.0, 0.0, 24.0, 5.0]]),
    ]
    out = pointing_game(cams, boxes=boxes, tolerance=4)
    ref = pointing_game(cams, masks=boxes_to_masks(boxes, (24, 24)), tolerance=4)
    assert torch.equal(out.nan_to_num(-1), ref.nan_to_num(-1))
    assert torch.isnan(out[1])


def test_totals_give_per_class_and_mean_class_pointing_accuracy_and_add_across_parts():
    scores = {
        "pointing_game": torch.tensor([1.0, 0.0, 1.0, float("nan")]),
        "average_drop": torch.tensor([10.0, 20, 30, 40]),
    }
    classes = torch.tensor([0, 0, 1, 2])
    whole = FaithfulnessTotals()
    whole.update(scores, classes)
    summary = whole.summary()
    assert whole.pointing_game_per_class() == {0: 0.5, 1: 1.0}
    assert summary["pointing_game"] == pytest.approx(0.75)
    assert summary["pointing_game_overall"] == pytest.approx(2 / 3)
    assert summary["average_drop"] == pytest.approx(25.0)
    first, second = FaithfulnessTotals(), FaithfulnessTotals()
    first.update({k: v[:2] for k, v in scores.items()}, classes[:2])
    second.update({k: v[2:] for k, v in scores.items()}, classes[2:])
    assert (first + second).summary() == summary


# ------------------------------------------------------------------------------------ randomization check


def test_rank_correlation_matches_scipy_spearman_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.round(torch.rand(4, 9, 9, generator=g) * 5)
    b = torch.round(a + torch.randn(4, 9, 9, generator=g) * 2)
    ours = rank_correlation(a, b)
    for i in range(4):
        assert ours[i].item() == pytest.approx(scipy.stats.spearmanr(a[i].flatten(), b[i].flatten())[0], abs=1e-6)
    assert torch.isnan(rank_correlation(torch.ones(1, 4, 4), torch.rand(1, 4, 4))).all()


def test_ssim_matches_skimage():
    a, b = torch.rand(2, 20, 24), torch.rand(2, 20, 24)
    b[0] = a[0] * 0.8 + 0.1 * b[0]
    ours = ssim(a, b)
    for i in range(2):
        ref = structural_similarity(
            a[i].double().numpy(),
            b[i].double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)


class GapNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.spare = nn.Linear(3, 3)  # never called: randomizing it cannot change any map

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(x.mean((-2, -1)))


def test_randomization_leaves_the_model_untouched_and_goes_top_down():
    torch.manual_seed(3)
    model = GapNet().eval()
    before = copy.deepcopy(model.state_dict())
    images = torch.randn(2, 3, 16, 16)
    out = randomization_check(model, camlens.CAM, images, with_ssim=True)
    assert out.layers == ["fc", "conv2", "bn", "conv1"]
    assert out.spearman.shape == out.ssim.shape == (2, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_randomizing_an_unused_layer_keeps_the_maps_identical():
    out = randomization_check(
        GapNet().eval(), camlens.CAM, torch.randn(2, 3, 16, 16), [1, 3], layers=["spare"], with_ssim=True
    )
    torch.testing.assert_close(out.spearman, torch.ones(2, 1))
    torch.testing.assert_close(out.ssim, torch.ones(2, 1))


def test_randomization_runs_gradient_methods_built_by_a_factory_on_the_copy():
    out = randomization_check(
        GapNet().eval(),
        lambda m: camlens.GradCAM(m, layer="conv2"),
        torch.randn(2, 3, 16, 16),
        [0, 2],
        layers=["spare", "fc"],
    )
    torch.testing.assert_close(out.spearman[:, 0], torch.ones(2))
    assert (out.spearman[:, 1] < 0.999).all()


def test_first_randomization_step_equals_a_manual_reinitialization_of_the_classifier():
    torch.manual_seed(4)
    model = GapNet().eval()
    images = torch.randn(3, 3, 16, 16)
    out = randomization_check(model, camlens.CAM, images, [0, 1, 2], seed=7)
    with camlens.CAM(model) as cam:
        trained = camlens.upsample(cam(images, [0, 1, 2]).maps[:, 0], 16)
    manual = copy.deepcopy(model)
    torch.manual_seed(7)
    manual.fc.reset_parameters()
    with camlens.CAM(manual) as cam:
        randomized = camlens.upsample(cam(images, [0, 1, 2]).maps[:, 0], 16)
    for i in range(3):
        ref = scipy.stats.spearmanr(trained[i].flatten(), randomized[i].flatten())[0]
        assert out.spearman[i, 0].item() == pytest.approx(ref, abs=1e-5)


# ----------------------------------------------------------------------------------------------- all at once


def test_faithfulness_scores_equal_the_separate_metrics_and_share_the_unperturbed_pass():
    model = tiny_net()
    images, cams, classes = torch.randn(2, 3, 10, 10), torch.rand(2, 10, 10), [0, 2]
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 9.0, 9.0]])
    config = FaithfulnessConfig(steps=5, road_percentages=(25, 75), batch_size=7)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    scores = faithfulness_scores(model, images, cams, classes, boxes=boxes, config=config)
    handle.remove()
    assert sum(seen) == 2 * (1 + 1 + 5 + 5 + 4)
    change = confidence_change(model, images, cams, classes)
    torch.testing.assert_close(scores["average_drop"], change.average_drop)
    torch.testing.assert_close(scores["increase_in_confidence"], change.increase_in_confidence)
    torch.testing.assert_close(scores["deletion_auc"], deletion_curve(model, images, cams, classes, steps=5).auc)
    torch.testing.assert_close(scores["insertion_auc"], insertion_curve(model, images, cams, classes, steps=5).auc)
    result = road(model, images, cams, classes, percentages=(25, 75))
    torch.testing.assert_close(scores["road"], result.combined)
    torch.testing.assert_close(scores["road_morf"], result.morf.mean(1))
    torch.testing.assert_close(scores["pointing_game"], pointing_game(cams, boxes=boxes))


def test_faithfulness_scores_skip_the_pointing_game_without_ground_truth():
    scores = faithfulness_scores(
        tiny_net(),
        torch.randn(1, 3, 8, 8),
        torch.rand(1, 8, 8),
        [0],
        config=FaithfulnessConfig(metrics=("average_drop", "pointing_game")),
    )
    assert set(scores) == {"average_drop"}


def test_errors_name_the_problem():
    model = tiny_net()
    with pytest.raises(CamlensError, match="model.eval"):
        confidence_change(model.train(), torch.randn(1, 3, 8, 8), torch.rand(1, 8, 8), [0])
    model.eval()
    with pytest.raises(CamlensError, match="one map per image"):
        deletion_curve(model, torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8), [0, 1])
    with pytest.raises(CamlensError, match="unknown metrics"):
        faithfulness_scores(
            model, torch.randn(1, 3, 8, 8), torch.rand(1, 8, 8), [0], config=FaithfulnessConfig(metrics=("avg_drop",))
        )
    with pytest.raises(CamlensError, match="out of range"):
        confidence_change(model, torch.randn(1, 3, 8, 8), torch.rand(1, 8, 8), [7])
