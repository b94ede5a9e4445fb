"""Training methods after 2020: DA-WSOL (Zhu et al., CVPR 2022) and Kim et al.'s feature-direction alignment (CVPR
2022).  Each mechanism on hand-worked tiny cases or float64 references written from the papers' equations and the
authors' code, the losses' exact compositions, and both methods through ``camlens train``, ``evaluate`` and ``serve``
on a tiny built-in setting (the search over every method is in test_search.py)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from camlens import CAM, CamlensError
from camlens.cli import main
from camlens.models import GapNet, load_model
from camlens.training.wsol import DAWSOL, Bridging, method_explainer
from camlens.training.wsol.bridging import alignment_losses, attentive_drop_mask, drop_point
from camlens.training.wsol.dawsol import CACHE, TSACache, assign, kmeans, mmd_linear
from camlens.wsolnet.placement import probe

# ---------------------------------------------------------------- DA-WSOL: k-means and the TSA


def test_kmeans_splits_three_groups_from_their_inits():
    pts = torch.tensor([[0.0, 0.0], [0.2, 0.0], [5.0, 5.0], [5.0, 5.4], [10.0, 0.0], [10.0, 0.6]])
    centers, labels = kmeans(pts, torch.tensor([[1.0, 1.0], [4.0, 4.0], [9.0, 1.0]]))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(centers, torch.tensor([[0.1, 0.0], [5.0, 5.2], [10.0, 0.3]]))


def test_kmeans_moves_an_empty_cluster_to_the_farthest_sample():
    """Two equal inits (a class seen for the first time): cluster 2 starts empty and moves to the sample farthest
    from its centre, (9, 0), as sklearn relocates it; then the groups separate."""
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [8.0, 0.0], [9.0, 0.0]])
    centers, labels = kmeans(pts, torch.tensor([[0.0, 0.0], [5.0, 0.0], [5.0, 0.0]]))
    assert labels.tolist() == [0, 0, 1, 2]  # first pass: 0, 0, 1, 1 (ties go to cluster 1), cluster 2 empty
    assert torch.equal(centers, torch.tensor([[0.5, 0.0], [8.0, 0.0], [9.0, 0.0]]))


def _tsa_map() -> tuple[torch.Tensor, torch.Tensor]:
    """A 4x4 map of 2-channel features: 6 background pixels at (0, 0), 5 at (4, 4), 5 at (8, 8); the image feature
    (their mean) is (3.75, 3.75)."""
    values = [(0.0, 0.0)] * 6 + [(4.0, 4.0)] * 5 + [(8.0, 8.0)] * 5
    pixels = torch.tensor(values).T.reshape(1, 2, 4, 4)
    return pixels, pixels.mean((-2, -1))


def test_tsa_assigns_universum_source_and_target_and_updates_its_cache():
    """Cache: universum centre (0, 0) after 1 update, class 1 centre (8, 8) after 1.  Inits (0, 0), (3.75, 3.75),
    (8, 8) give the three groups as universum, source-like, target; the cache becomes the running means
    class 1: (8 + 4) / 2 = 6, universum: (0 + 0) / 2 = 0; 5 targets and 4 source-like pixels fill sets of 5."""
    pixels, image = _tsa_map()
    cache = TSACache(3, 2)
    cache.counts[1], cache.centers[1], cache.universe_count = 1, torch.tensor([8.0, 8.0]), torch.tensor(1.0)
    found = assign(pixels, image, torch.tensor([1]), cache, 5, torch.Generator().manual_seed(0))
    assert found.labels.tolist() == [[0] * 6 + [1] * 5 + [2] * 5]
    assert cache.counts.tolist() == [0, 2, 0] and torch.equal(cache.centers[1], torch.tensor([6.0, 6.0]))
    assert float(cache.universe_count) == 2 and torch.equal(cache.universe, torch.zeros(2))
    assert found.source.shape == (1, 5, 2) and found.target.shape == (1, 5, 2)
    assert torch.equal(found.source[0, 0], image[0])  # the image feature leads the source set
    assert torch.equal(found.source[0, 1:], torch.full((4, 2), 4.0))
    assert torch.equal(found.target[0], torch.full((5, 2), 8.0))
    assert torch.equal(found.universum, torch.zeros(6, 2))
    # sets of 6 need 6 targets: this image has 5, so it gives none (the authors skip it too)
    assert len(assign(pixels, image, torch.tensor([1]), TSACache(3, 2), 6, None).source) == 0


def test_tsa_first_sighting_of_a_class_starts_its_centre_at_the_image_feature():
    """Counts 0: the centre is set to the image feature (count 1), then the k-means update makes it the mean of
    that and the source-like centre (count 2), as the authors' cache matrix does."""
    pixels, image = _tsa_map()
    cache = TSACache(2, 2)
    found = assign(pixels, image, torch.tensor([0]), cache, 2, None)
    source_center = pixels.flatten(2)[0].T[found.labels[0] == 1].mean(0)
    assert float(cache.counts[0]) == 2
    assert torch.allclose(cache.centers[0], (image[0] + source_center) / 2)


# ---------------------------------------------------------------- DA-WSOL: the MMD


def _mmd_reference(s: list[list[float]], t: list[list[float]]) -> float:
    """The linear MMD of the authors' ``mmd_rbf_accelerate`` in float64 Python: 5 Gaussian kernels, bandwidth the
    mean squared distance of distinct pairs over 2^2, times 2^i."""
    x = s + t
    n2 = len(x)
    d2 = [[sum((a - b) ** 2 for a, b in zip(p, q)) for q in x] for p in x]
    bw = sum(map(sum, d2)) / (n2 * n2 - n2) / 4
    k = [[sum(math.exp(-d / (bw * 2**i)) for i in range(5)) for d in row] for row in d2]
    n = len(s)
    total = 0.0
    for i in range(n):
        j = (i + 1) % n
        total += k[i][j] + k[i + n][j + n] - k[i][j + n] - k[j][i + n]
    return total / n


def test_mmd_matches_a_float64_reference_and_is_zero_for_equal_sets():
    s, t = [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], [[3.0, 1.0], [4.0, 4.0], [0.5, 0.0]]
    got = mmd_linear(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64))
    assert abs(float(got) - _mmd_reference(s, t)) < 1e-12
    # an unbiased estimate (negative here); sets far apart give a clearly positive one
    far = mmd_linear(
        torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]]), torch.tensor([[9.0, 9.0], [9.1, 9.0], [9.0, 9.1]])
    )
    assert float(far) > 1
    same = torch.tensor(s, dtype=torch.float64)
    assert float(mmd_linear(same, same.clone())) == 0.0


def test_dawsol_loss_is_ce_plus_weighted_mmd_and_universum():
    """The loss minus CE equals beta * mean MMD + univer * mean(universum), recomputed from a copy of the cache
    with the same generator; with beta = univer = 0 it is CE exactly."""
    torch.manual_seed(0)
    net = GapNet(3)
    method = DAWSOL(num_samples=4)
    method.attach(net)
    net.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    cache = copy.deepcopy(getattr(net, CACHE))
    method.batch(x, y, torch.Generator().manual_seed(3))
    loss, logits = method.loss(net, x, y)
    f = net.features(x)
    found = assign(f, f.mean((-2, -1)), y, cache, 4, torch.Generator().manual_seed(3))
    assert len(found.source) > 0 and len(found.universum) > 0  # this seed exercises both terms
    mmd = torch.stack([mmd_linear(s.double(), t.double()) for s, t in zip(found.source, found.target)]).mean()
    expected = F.cross_entropy(logits.double(), y) + 0.3 * mmd + 0.3 * found.universum.double().mean()
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    assert torch.equal(getattr(net, CACHE).centers, cache.centers)  # both updated the same way
    plain = DAWSOL(beta=0.0, univer=0.0)
    plain.attach(net)
    loss0, logits0 = plain.loss(net, x, y)
    assert torch.equal(loss0, F.cross_entropy(logits0, y))


# ---------------------------------------------------------------- Bridging: erasure and alignment


def test_attentive_drop_mask_erases_above_the_threshold_with_probability_prob():
    """Channel means [[1, 2], [3, 10]]; threshold 0.25 of the max is 2.5: with prob 1 the pixels 3 and 10 are
    erased, with prob 0 none is."""
    f = torch.tensor([[[1.0, 2.0], [3.0, 10.0]]]).expand(2, 2, 2).unsqueeze(0).clone()
    assert attentive_drop_mask(f, 0.25, 1.0, None).tolist() == [[[[1.0, 1.0], [0.0, 0.0]]]]
    assert attentive_drop_mask(f, 0.25, 0.0, torch.Generator().manual_seed(0)).eq(1).all()


def test_alignment_losses_on_a_hand_worked_map():
    """w_y = (1, 0); pixels (4, 0), (2, 0), (-1, 0), (0, -1): norms 4, 2, 1, 1 -> 1, 1/3, 0, 0; cosines 1, 1, -1, 0.
    Foreground (> 0.4): the first, cosine 1; background (< 0.2): the last two, mean cosine -0.5: L_sim = -1.5.
    Positive cosines: mean norm (1 + 1/3) / 2; negative: 0: L_norm = -2/3."""
    f = torch.tensor([[4.0, 2.0, -1.0, 0.0], [0.0, 0.0, 0.0, -1.0]]).reshape(1, 2, 2, 2)
    w = torch.tensor([[1.0, 0.0]])
    loss_sim, loss_norm = alignment_losses(f, w, torch.tensor([0]), 0.4, 0.2)
    assert abs(float(loss_sim) + 1.5) < 1e-6 and abs(float(loss_norm) + 2 / 3) < 1e-6
    # sign: the same map with the weight reversed is misaligned, and both losses turn positive
    flipped = alignment_losses(f, -w, torch.tensor([0]), 0.4, 0.2, norm_sign="target")
    assert float(flipped[0]) == pytest.approx(1.5) and float(flipped[1]) == pytest.approx(2 / 3)
    # zero: every pixel along w_y gives cosine 1 on foreground and background alike
    along = torch.tensor([[4.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 2, 2)
    assert float(alignment_losses(along, w, torch.tensor([0]), 0.4, 0.2)[0]) == pytest.approx(0.0, abs=1e-6)


def test_bridging_loss_matches_its_formula_on_gapnet():
    """gapnet: erasure before its last block.  L = CE + 2 |F - F_erased|_1 + 0.5 L_sim + 0.05 L_norm recomputed
    from the network's blocks with the same generator; during warm-up only CE + consistency; with drop_prob 0
    nothing is erased and the warm-up loss is CE exactly."""
    torch.manual_seed(0)
    net = GapNet(3)
    method = Bridging(warm_epochs=1, drop_threshold=0.5, drop_prob=0.5)
    method.attach(net)
    assert drop_point(net, probe(net).head) == "features.5"
    net.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    middle = net.features[:6](x)
    f = net.features[6](middle)
    logits = net.fc(f.mean((-2, -1)))
    erased = net.features[6](middle * attentive_drop_mask(middle, 0.5, 0.5, torch.Generator().manual_seed(4)))
    consistency = F.cross_entropy(logits, y) + 2.0 * (f - erased).abs().mean()
    sim, norm = alignment_losses(f, net.fc.weight, y, 0.4, 0.2)
    for epoch, expected in ((0, consistency), (1, consistency + 0.5 * sim + 0.05 * norm)):
        method.start_epoch(epoch)
        method.batch(x, y, torch.Generator().manual_seed(4))
        loss, _ = method.loss(net, x, y)
        assert torch.allclose(loss, expected, atol=1e-5), epoch
    assert float(consistency.detach()) > float(F.cross_entropy(logits, y).detach())
    keep = Bridging(drop_prob=0.0)
    keep.attach(net)
    keep.batch(x, y, torch.Generator())
    loss, logits = keep.loss(net, x, y)
    assert torch.allclose(loss, F.cross_entropy(logits, y), atol=1e-6)


def test_bridging_erases_after_layer4_block_0_on_resnet():
    net = torchvision.models.resnet18(num_classes=2)
    assert drop_point(net, probe(net).head) == "layer4.0"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DAWSOL(beta=-1), "DA-WSOL: beta=-1 and univer=0.3 must be >= 0"),
        (lambda: DAWSOL(num_samples=1), "DA-WSOL: num_samples=1 must be an integer >= 2"),
        (lambda: Bridging(drop_prob=1.5), "Bridging: drop_prob=1.5 is outside [0, 1]"),
        (lambda: Bridging(norm_sign="min"), "Bridging: norm_sign='min'; choose max or target"),
        (lambda: Bridging(drop_after="fc").attach(GapNet(2)), "Bridging: drop_after='fc' must be"),
        (
            lambda: Bridging().attach(torchvision.models.squeezenet1_1(num_classes=2)),
            "Bridging needs a network ending in GAP + one linear classifier",
        ),
    ],
)
def test_bad_parameters_are_one_line_errors(build, message):
    with pytest.raises(CamlensError) as err:
        build()
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- through the CLI

TINY = [
    "--size",
    "32",
    "--num-train",
    "32",
    "--num-val",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--select-by",
    "maxboxacc_v2",
    "--quiet",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("after2020")
    runs = {"dawsol": ["--wsol-param", "num_samples=4"], "bridging": ["--wsol-param", "warm_epochs=0"]}
    for name, params in runs.items():
        assert main(["train", "--wsol-method", name, *params, "--out", str(out / name), *TINY]) == 0
    yield out
    torch.set_num_threads(threads)


def test_cli_checkpoints_record_the_method_and_load_with_it(trained):
    """The checkpoint names the method and its parameters; load_model re-attaches it (DA-WSOL's cache buffers
    come back with their trained values) and its map is the CAM."""
    dawsol = load_model(trained / "dawsol" / "best.safetensors")
    assert dawsol.meta["wsol_method"] == {"name": "dawsol", "beta": 0.3, "univer": 0.3, "num_samples": 4}
    assert float(getattr(dawsol.model, CACHE).universe_count) == 32  # one update per training image
    bridging = load_model(trained / "bridging" / "best.safetensors")
    assert bridging.meta["wsol_method"]["name"] == "bridging" and bridging.meta["wsol_method"]["warm_epochs"] == 0
    for loaded in (dawsol, bridging):
        explainer = method_explainer(loaded.model)
        assert type(explainer) is CAM
        explainer.close()


def test_cli_evaluate_and_serve_use_the_trained_methods(trained, capsys):
    from camlens.web.engine import ExplainerCache

    for name in ("dawsol", "bridging"):
        ckpt = trained / name / "best.safetensors"
        assert (
            main(
                [
                    "evaluate",
                    "--checkpoint",
                    str(ckpt),
                    "--data",
                    "builtin",
                    "--num-images",
                    "8",
                    "--json",
                    str(trained / f"{name}.json"),
                ]
            )
            == 0
        )
        metrics = json.loads((trained / f"{name}.json").read_text())
        assert metrics["method"] == "cam" and metrics["num_images"] == 8 and 0 <= metrics["maxboxacc_v2"] <= 100
        cache = ExplainerCache(load_model(ckpt).model)
        x = torch.randn(1, 3, 32, 32)
        with cache.use("cam", None, x) as explainer:
            assert type(explainer) is CAM
            assert explainer(x).maps.shape == (1, 1, 8, 8)
        cache.close()
