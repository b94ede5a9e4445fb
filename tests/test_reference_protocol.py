"""``--protocol wsolevaluation``: Choe et al.'s reference code reproduced, checked against an oracle written in
this file from the reference code's text (clovaai/wsolevaluation: evaluation.py ``compute_bboxes_from_scoremaps``,
``calculate_multiple_iou``, ``resize_bbox``, ``BoxEvaluator``, ``MaskEvaluator``, ``get_mask``; inference.py
``normalize_scoremap`` and ``CAMComputer.compute_and_evaluate_cams``; data_loaders.py's test transform;
main.py ``_set_optimizer``; wsol/method/has.py), with OpenCV as they use it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.models import GapNet, Preprocess, load_model, save_checkpoint
from camlens.reference import reference_parameter_groups, reference_score_maps

cv2 = pytest.importorskip("cv2")

SIZE = 64  # the model's input; their code uses 224, the rules are the same at any size
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ the oracle (their rules)


def oracle_score_map(cam: np.ndarray, size: int) -> np.ndarray:
    resized = cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)
    if np.isnan(resized).any() or resized.min() == resized.max():
        return np.zeros_like(resized)
    resized -= resized.min()
    resized /= resized.max()
    return resized


def oracle_boxes(scoremap: np.ndarray, thresholds, all_contours: bool):
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    out = []
    for t in thresholds:
        _, binary = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            out.append(np.array([[0, 0, 0, 0]]))
            continue
        if not all_contours:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        out.append(np.array(boxes))
    return out


def oracle_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU with inclusive corners (+1), boxes (n, 4) x (m, 4)."""
    a, b = a[:, None].astype(np.float64), b[None].astype(np.float64)
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area = lambda z: (z[..., 2] - z[..., 0] + 1) * (z[..., 3] - z[..., 1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def oracle_resize_box(box, image_size, size):
    w, h = image_size
    return [int(box[0] * size / w), int(box[1] * size / h), int(box[2] * size / w), int(box[3] * size / h)]


def oracle_box_metrics(scoremaps, gt_boxes, thresholds):
    """MaxBoxAcc (largest contour, IoU 50) and MaxBoxAccV2 (all contours, mean over IoU 30/50/70), with the
    per-IoU values and the best threshold of MaxBoxAcc."""
    ious = (30, 50, 70)
    largest = {i: np.zeros(len(thresholds)) for i in ious}
    anyc = {i: np.zeros(len(thresholds)) for i in ious}
    for scoremap, gts in zip(scoremaps, gt_boxes):
        for counts, all_contours in ((largest, False), (anyc, True)):
            per_threshold = oracle_boxes(scoremap, thresholds, all_contours)
            best = [oracle_iou(b, np.array(gts)).max() for b in per_threshold]
            for i in ious:
                counts[i][np.where(np.asarray(best) >= i / 100)[0]] += 1
    n = len(scoremaps)
    return {
        "maxboxacc": largest[50].max() * 100 / n,
        "best_threshold": float(thresholds[int(np.argmax(largest[50]))]),
        "maxboxacc_v2_per_iou": {f"iou{i}": anyc[i].max() * 100 / n for i in ious},
        "maxboxacc_v2": float(np.mean([anyc[i].max() * 100 / n for i in ious])),
    }


def oracle_pxap(scoremaps, masks, ignores, thresholds):
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(thresholds) + 2)
    false_hist = np.zeros(len(thresholds) + 2)
    for scoremap, mask, ignore in zip(scoremaps, masks, ignores):
        gt = mask.astype(np.uint8) + 255 * (ignore & ~mask).astype(np.uint8)
        true_hist += np.histogram(scoremap[gt == 1], bins=edges)[0]
        false_hist += np.histogram(scoremap[gt == 0], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    keep = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[keep[1:]].sum() * 100)


def oracle_input(path) -> torch.Tensor:
    """data_loaders.py's test transform: PIL Resize((224, 224)) (bilinear), ToTensor, Normalize."""
    img = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


# ------------------------------------------------------------------------------------ a metadata folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small Choe et al. metadata folder with non-square images: boxes (CUB/ILSVRC layout) and masks
    (OpenImages layout), and an untrained GapNet checkpoint at SIZE px."""
    root = tmp_path_factory.mktemp("reference")
    torch.manual_seed(3)
    save_checkpoint(
        root / "m.safetensors",
        GapNet(3).eval(),
        arch="gapnet",
        class_names=["a", "b", "c"],
        preprocess=Preprocess((SIZE, SIZE), MEAN, STD),
    )
    rng = np.random.default_rng(7)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    boxes_meta, masks_meta = root / "meta" / "boxes" / "test", root / "meta" / "masks" / "test"
    boxes_meta.mkdir(parents=True)
    masks_meta.mkdir(parents=True)
    ids, labels, sizes, loc, mloc = [], [], [], [], []
    for i in range(12):
        w, h = int(rng.integers(50, 120)), int(rng.integers(50, 120))
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = int(rng.integers(x0 + 5, w)), int(rng.integers(y0 + 5, h))
        pixels[y0 : y1 + 1, x0 : x1 + 1] = (pixels[y0 : y1 + 1, x0 : x1 + 1] // 3 + 160).astype(np.uint8)
        image_id = f"c{i % 3}/im{i}.png"
        (root / "images" / f"c{i % 3}").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / image_id)
        mask = np.zeros((h, w), np.uint8)
        mask[y0 : y1 + 1, x0 : x1 + 1] = 255
        ignore = np.zeros((h, w), np.uint8)
        ignore[max(0, y0 - 4) : y1 + 5, max(0, x0 - 4) : x1 + 5] = 255
        Image.fromarray(mask).save(root / "masks" / f"m{i}.png")
        Image.fromarray(ignore).save(root / "masks" / f"i{i}.png")
        ids.append(image_id)
        labels.append(f"{image_id},{i % 3}")
        sizes.append(f"{image_id},{w},{h}")
        loc.append(f"{image_id},{x0},{y0},{x1},{y1}")
        mloc.append(f"{image_id},m{i}.png,i{i}.png")
    for folder, lines in ((boxes_meta, loc), (masks_meta, mloc)):
        (folder / "image_ids.txt").write_text("\n".join(ids) + "\n")
        (folder / "class_labels.txt").write_text("\n".join(labels) + "\n")
        (folder / "image_sizes.txt").write_text("\n".join(sizes) + "\n")
        (folder / "localization.txt").write_text("\n".join(lines) + "\n")
    return (
        root,
        ids,
        [tuple(map(int, s.split(",")[1:])) for s in sizes],
        [list(map(int, s.split(",")[1:])) for s in loc],
    )


def _camlens(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "camlens", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


def _oracle_maps(root, ids):
    """Their CAMComputer: model on their input, the CAM of the label, cv2 bicubic to the input, normalized."""
    loaded = load_model(root / "m.safetensors")
    import camlens

    x = torch.stack([oracle_input(root / "images" / i) for i in ids])
    labels = [int(i.split("/")[0][1]) for i in ids]
    with camlens.CAM(loaded.model) as cam, torch.no_grad():
        raw = cam(x, labels).maps[:, 0].numpy()
    return [oracle_score_map(m.copy(), SIZE) for m in raw]


def test_evaluate_in_reference_mode_gives_their_box_metrics_and_thresholds(workspace):
    root, ids, sizes, boxes = workspace
    _camlens(
        "evaluate",
        "--checkpoint",
        "m.safetensors",
        "--data",
        "meta/boxes",
        "--split",
        "test",
        "--images",
        "images",
        "--protocol",
        "wsolevaluation",
        "--json",
        "box.json",
        "--quiet",
        cwd=root,
    )
    got = json.loads((root / "box.json").read_text())
    thresholds = np.arange(0, 1, 0.001)  # config.py's cam_curve_interval for a model
    gts = [[oracle_resize_box(b, s, SIZE)] for b, s in zip(boxes, sizes)]
    want = oracle_box_metrics(_oracle_maps(root, ids), gts, thresholds)
    assert got["protocol"] == "wsolevaluation"
    assert got["maxboxacc"] == pytest.approx(want["maxboxacc"], abs=1e-9)
    assert got["best_threshold"] == pytest.approx(want["best_threshold"], abs=1e-12)
    assert got["maxboxacc_v2"] == pytest.approx(want["maxboxacc_v2"], abs=1e-9)
    assert got["maxboxacc_v2_per_iou"] == pytest.approx(want["maxboxacc_v2_per_iou"], abs=1e-9)


def test_evaluate_in_reference_mode_gives_their_pxap(workspace):
    root, ids, sizes, _ = workspace
    _camlens(
        "evaluate",
        "--checkpoint",
        "m.safetensors",
        "--data",
        "meta/masks",
        "--split",
        "test",
        "--images",
        "images",
        "--mask-root",
        "masks",
        "--protocol",
        "wsolevaluation",
        "--cam-curve-interval",
        "0.01",
        "--json",
        "mask.json",
        "--quiet",
        cwd=root,
    )
    got = json.loads((root / "mask.json").read_text())

    def near(p):  # evaluation.py's load_mask_image, then > 0.5
        image = np.float32(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
        return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) > 0.5

    masks = [near(root / "masks" / f"m{i}.png") for i in range(len(ids))]
    ignores = [near(root / "masks" / f"i{i}.png") for i in range(len(ids))]
    want = oracle_pxap(_oracle_maps(root, ids), masks, ignores, np.arange(0, 1, 0.01))
    assert got["pxap"] == pytest.approx(want, abs=1e-9)
    # a mask-only (OpenImages) folder has no boxes: box metrics are null, in the default protocol too
    _camlens(
        "evaluate",
        "--checkpoint",
        "m.safetensors",
        "--data",
        "meta/masks",
        "--split",
        "test",
        "--images",
        "images",
        "--mask-root",
        "masks",
        "--json",
        "default.json",
        "--quiet",
        cwd=root,
    )
    default = json.loads((root / "default.json").read_text())
    assert default["maxboxacc"] is None and default["pxap"] is not None and default["num_images"] == len(ids)


def test_saved_maps_in_reference_mode_use_their_step_of_001(workspace, tmp_path):
    """evaluation.py's command line sweeps at 0.01; camlens's default is 0.001, so the same maps score
    differently, and --protocol wsolevaluation gives theirs."""
    root, ids, sizes, boxes = workspace
    rng = np.random.default_rng(0)
    maps = []
    for image_id, (w, h) in zip(ids, sizes):
        m = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 6)
        m = (m - m.min()) / (m.max() - m.min())
        (tmp_path / image_id).parent.mkdir(exist_ok=True)
        np.save(tmp_path / f"{image_id}.npy", m.astype(np.float32))
        maps.append(m.astype(np.float32))
    _camlens(
        "evaluate",
        "--maps",
        tmp_path,
        "--metadata",
        "meta/boxes",
        "--split",
        "test",
        "--protocol",
        "wsolevaluation",
        "--json",
        "maps.json",
        "--quiet",
        cwd=root,
    )
    got = json.loads((root / "maps.json").read_text())
    gts = [[b] for b in boxes]  # maps at the image size: boxes as given
    want = oracle_box_metrics(maps, gts, np.arange(0, 1, 0.01))
    assert got["maxboxacc"] == pytest.approx(want["maxboxacc"], abs=1e-9)
    assert got["maxboxacc_v2"] == pytest.approx(want["maxboxacc_v2"], abs=1e-9)
    assert got["best_threshold"] == pytest.approx(want["best_threshold"], abs=1e-12)


def test_reference_score_maps_equal_opencv_bicubic_then_their_normalization():
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((3, 7, 7)).astype(np.float32)
    raw[2] = 1.5  # a constant map gives zeros
    got = reference_score_maps(torch.from_numpy(raw), (56, 56)).numpy()
    for m, g in zip(raw, got):
        np.testing.assert_allclose(g, oracle_score_map(m.copy(), 56), atol=2e-6)
    assert not got[2].any()


def _names(groups):
    return {g["name"]: g for g in groups}


@pytest.mark.parametrize("arch", ["wsol-vgg16", "wsol-resnet50", "wsol-inceptionv3"])
def test_reference_learning_rate_groups_follow_their_name_patterns(arch):
    from camlens.networks import build_network

    model = build_network(arch, num_classes=5)
    groups = _names(reference_parameter_groups(model, arch, 10.0))
    named = {id(p): n for n, p in model.named_parameters()}
    features = {named[id(p)] for p in groups["features"]["params"]}
    classifier = {named[id(p)] for p in groups["classifier"]["params"]}
    assert groups["classifier"]["lr_mult"] == 10.0 and groups["features"]["lr_mult"] == 1.0
    assert features | classifier == set(named.values()) and not features & classifier
    if arch == "wsol-vgg16":  # main.py: 'features.' at lr, everything else (conv6, fc) at 10x
        assert all(n.startswith("features.") for n in features) and not any(
            n.startswith("features.") for n in classifier
        )
    elif arch == "wsol-resnet50":  # the other way round: layer4 and fc at 10x
        assert all(n.startswith(("layer4.", "fc.")) for n in classifier)
        assert not any(n.startswith(("layer4.", "fc.")) for n in features)
    else:  # Mixed_* and Conv2d_1..4 at lr; the rest (SPG-free head: Conv2d_a..., fc) at 10x
        assert all(("Mixed" in n or "Conv2d_" in n) for n in features)


# ------------------------------------------------------------------------------------ training in their mode


def oracle_has(u: torch.Tensor, height: int, width: int, patch: int, drop_rate: float) -> torch.Tensor:
    """has.py's loop with its random.random() calls replaced by u[b, x // patch, y // patch], in its order."""
    image = torch.ones(u.shape[0], 1, height, width)
    for b in range(u.shape[0]):
        for x in range(0, width, patch):
            for y in range(0, height, patch):
                x_end, y_end = min(height, x + patch), min(height, y + patch)
                if u[b, x // patch, y // patch] <= drop_rate:
                    image[b, :, x:x_end, y:y_end] = 0.0
    return image[:, 0] == 0


@pytest.mark.parametrize("height,width,patch", [(64, 96, 16), (20, 30, 8), (24, 24, 5), (30, 20, 8)])
def test_reference_has_grid_is_their_loop(height, width, patch):
    from camlens.training.wsol.has import reference_hidden_pixels

    got = reference_hidden_pixels(3, height, width, patch, 0.5, torch.Generator().manual_seed(4))
    u = torch.rand(3, -(-width // patch), -(-height // patch), generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, oracle_has(u, height, width, patch, 0.5))


def test_reference_has_hides_only_the_first_h_columns_of_a_wide_image():
    from camlens.training.wsol.has import HaS, hidden_pixels, reference_hidden_pixels

    every = reference_hidden_pixels(2, 64, 96, 16, 1.0, torch.Generator().manual_seed(0))
    assert every[:, :, :64].all() and not every[:, :, 64:].any()  # 2/3 of the pixels at most
    assert hidden_pixels(2, 64, 96, 16, 1.0, torch.Generator().manual_seed(0)).all()
    # on a square image the two grids are the same draw
    square = [f(4, 48, 48, 8, 0.5, torch.Generator().manual_seed(1)) for f in (hidden_pixels, reference_hidden_pixels)]
    assert torch.equal(*square)
    assert HaS().reference().reference_grid and not HaS().reference_grid
    fraction = reference_hidden_pixels(4000, 64, 96, 16, 0.5, torch.Generator().manual_seed(2)).float().mean()
    assert abs(float(fraction) - 1 / 3) < 0.01  # the 0.33 against 0.50


def test_reference_training_uses_nesterov_sgd_and_their_groups(tmp_path):
    from camlens.networks import build_network
    from camlens.training import TrainConfig, train
    from camlens.training.optim import build_optimizer, training_groups

    config = TrainConfig(
        "builtin",
        arch="wsol-resnet50",
        image_size=32,
        num_train=8,
        num_val=4,
        epochs=1,
        batch_size=4,
        optimizer="sgd",
        protocol="wsolevaluation",
        out=str(tmp_path / "run"),
        progress=False,
    )
    assert config.lr_mult == 10.0  # their lr_classifier_ratio, from scratch too
    model = build_network("wsol-resnet50", num_classes=10)
    optimizer = build_optimizer(config, training_groups(config, model, ("fc",)))
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    boosted = {id(p) for g in optimizer.param_groups if g["lr_mult"] == 10.0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in boosted}
    assert names == {n for n, _ in model.named_parameters() if n.startswith(("layer4.", "fc."))}
    default = build_optimizer(
        TrainConfig(optimizer="sgd"), training_groups(TrainConfig(optimizer="sgd"), model, ("fc",))
    )
    assert not default.defaults["nesterov"]
    result = train(config, log=None)  # the whole loop runs in this mode, selection included
    assert result.checkpoint.is_file()


def test_reference_protocol_refuses_another_optimizer():
    from camlens.capture import CamlensError
    from camlens.training import TrainConfig

    with pytest.raises(CamlensError, match="Nesterov"):
        TrainConfig(protocol="wsolevaluation", optimizer="adamw")


def test_their_inception_with_adl_has_no_dropout():
    from camlens.networks import build_network
    from camlens.reference import reference_arch_options

    assert reference_arch_options("wsol-inceptionv3", "adl") == {"dropout": 0.0}
    assert reference_arch_options("wsol-inceptionv3", "has") == {} == reference_arch_options("wsol-vgg16", "adl")
    net = build_network("wsol-inceptionv3", num_classes=3, **reference_arch_options("wsol-inceptionv3", "adl"))
    assert net.dropout.p == 0.0 and net.arch_options["dropout"] == 0.0
