"""Evaluation drivers and the `camlens evaluate` / `camlens localize` commands, on tiny data the tests make."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.capture import CamlensError
from camlens.cli import main
from camlens.data.annotations import Annotations, read_wsol_metadata, write_wsol_metadata
from camlens.data.samples import BuiltinSamples
from camlens.evaluation import box_baselines, evaluate_maps, evaluate_model, format_table, map_boxes
from camlens.methods import CAM, METHODS, get_method
from camlens.models import GapNet, LoadedModel, Preprocess, save_checkpoint

KEYS = {
    "top1_cls",
    "top1_loc",
    "top5_loc",
    "gt_known_loc",
    "maxboxacc",
    "maxboxacc_v2",
    "pxap",
    "num_images",
    "best_threshold",
    "maxboxacc_per_iou",
    "maxboxacc_v2_per_iou",
    "baselines",
}


def metadata_with_maps(tmp_path, perfect=True):
    """Three 20x16 images with one box each, as a WSOL metadata folder, and 10x8 maps (half size)."""
    boxes = [
        torch.tensor([[2.0, 2.0, 10.0, 8.0]]),
        torch.tensor([[10.0, 4.0, 20.0, 16.0]]),
        torch.tensor([[0.0, 0.0, 6.0, 6.0]]),
    ]
    ann = Annotations(["c/0.jpg", "c/1.jpg", "d/2.jpg"], torch.tensor([0, 1, 0]), boxes, [(20, 16)] * 3)
    meta = write_wsol_metadata(tmp_path / "meta", ann)
    maps_dir = tmp_path / "maps"
    for image_id, box in zip(ann.ids, boxes):
        m = np.zeros((8, 10))
        x0, y0, x1, y1 = (int(v) // 2 for v in box[0].tolist())
        m[y0:y1, x0:x1] = 1.0 if perfect else 0.0
        m[0, 0] = max(m[0, 0], 0.01)
        (maps_dir / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps_dir / f"{image_id}.npy", m)
    return meta, maps_dir


def test_maps_that_cover_their_boxes_score_high(tmp_path):
    meta, maps_dir = metadata_with_maps(tmp_path)
    result = evaluate_maps(maps_dir, read_wsol_metadata(meta))
    assert KEYS <= set(result)
    assert result["num_images"] == 3 and result["top1_loc"] is None and result["pxap"] is None
    assert result["maxboxacc"] == 100.0 and result["gt_known_loc"] == 100.0
    assert result["baselines"]["best_fixed_box"]["gt_known_loc"] >= result["baselines"]["center_box"]["gt_known_loc"]


def test_missing_and_extra_maps_are_errors(tmp_path):
    meta, maps_dir = metadata_with_maps(tmp_path)
    ann = read_wsol_metadata(meta)
    np.save(maps_dir / "stray.npy", np.zeros((8, 10)))
    with pytest.raises(CamlensError, match="not in the annotations, e.g. stray.npy"):
        evaluate_maps(maps_dir, ann)
    (maps_dir / "stray.npy").unlink()
    (maps_dir / "d" / "2.jpg.npy").unlink()
    with pytest.raises(CamlensError, match="no map for 1 image id"):
        evaluate_maps(maps_dir, ann)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((8, 10), np.nan), "NaN"),
        (np.zeros((2, 8, 10)), "2-D"),
        (np.full((8, 10), 1.5), "\\[0, 1\\]"),
        (np.zeros((8, 10), int), "floating"),
    ],
)
def test_bad_maps_name_the_file(tmp_path, bad, message):
    meta, maps_dir = metadata_with_maps(tmp_path)
    np.save(maps_dir / "c" / "1.jpg.npy", bad)
    with pytest.raises(CamlensError, match=message) as err:
        evaluate_maps(maps_dir, read_wsol_metadata(meta))
    assert "1.jpg.npy" in str(err.value)


def test_baselines_by_hand():
    # every ground truth is the central quarter: the center box hits all, and so does the best fixed box
    boxes = [torch.tensor([[25.0, 10.0, 75.0, 30.0]]), torch.tensor([[10.0, 10.0, 30.0, 30.0]])]
    out = box_baselines(boxes, [(100, 40), (40, 40)])
    assert out["center_box"]["gt_known_loc"] == 100.0 and out["center_box"]["box"] == [0.25, 0.25, 0.75, 0.75]
    assert out["best_fixed_box"]["gt_known_loc"] == 100.0
    # a ground truth in the left half only: the best fixed box finds it, the center box does not
    left = [torch.tensor([[0.0, 0.0, 8.0, 16.0]])] * 3
    out = box_baselines(left, [(32, 16)] * 3)
    assert out["center_box"]["gt_known_loc"] == 0.0 and out["best_fixed_box"]["per_iou"]["iou70"] == 100.0


def tiny_model(num_classes=10):
    torch.manual_seed(0)
    model = GapNet(num_classes).eval()
    return LoadedModel(model, [str(i) for i in range(num_classes)], Preprocess((32, 32)), "gapnet")


def test_model_evaluation_on_builtin_reports_every_metric():
    from camlens.data.builtin import BuiltinDataset

    loaded = tiny_model()
    ds = BuiltinDataset("test", num_images=6, image_size=32)
    with CAM(loaded.model) as cam:
        result = evaluate_model(loaded, cam, BuiltinSamples(ds), batch_size=4)
    assert KEYS <= set(result) and result["num_images"] == 6
    for key in ("top1_loc", "top5_loc", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap"):
        assert 0.0 <= result[key] <= 100.0
    assert result["top1_loc"] <= result["top5_loc"] <= result["gt_known_loc"]
    table = format_table(result)
    assert "MaxBoxAccV2" in table and "center box" in table and "best fixed box" in table


def test_map_boxes_protocols():
    m = torch.zeros(1, 6, 6)
    m[0, 1:3, 1:4] = 1.0
    assert map_boxes(m, "paper").tolist() == [[1.0, 1.0, 4.0, 3.0]]
    assert map_boxes(m, "wsol", 0.5).tolist() == [[1.0, 1.0, 5.0, 4.0]]  # the protocol's one-pixel growth
    with pytest.raises(CamlensError, match="unknown protocol"):
        map_boxes(m, "nope")


def test_maps_smaller_than_their_images_need_image_sizes(tmp_path):
    meta, maps_dir = metadata_with_maps(tmp_path)
    (meta / "image_sizes.txt").unlink()  # boxes are for 20x16 images, maps are 10x8
    with pytest.raises(CamlensError, match="outside its 10x8 map"):
        evaluate_maps(maps_dir, read_wsol_metadata(meta))


def test_accumulator_state_sums_like_one_run():
    from camlens.evaluation import Accumulators

    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.random((4, 8, 8)))
    boxes = [torch.tensor([[1.0, 1.0, 6.0, 5.0]])] * 4
    masks = maps > 0.5
    labels, logits = torch.tensor([0, 1, 2, 3]), torch.randn(4, 5)

    def run(sl):
        acc = Accumulators.create()
        acc.loc.update(maps[sl], boxes[sl], labels[sl], logits[sl])
        acc.box.update(maps[sl], boxes[sl])
        acc.pixel.update(maps[sl], masks[sl])
        return acc

    whole, a, b = run(slice(0, 4)), run(slice(0, 1)), run(slice(1, 4))
    summed = {k: a.state_dict()[k] + b.state_dict()[k] for k in whole.state_dict()}  # an all-reduce
    restored = Accumulators.create()
    restored.load_state_dict(summed)
    assert restored.compute() == whole.compute()


# --------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = GapNet(10).eval()
    for m in model.modules():  # non-trivial batch norm statistics, so maps are not flat
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(
        root / "m.safetensors",
        model,
        arch="gapnet",
        class_names=[str(i) for i in range(10)],
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )


def box_by_hand(m: np.ndarray) -> list[float]:
    """The paper's box with scipy: largest 8-connected component of {m > 0.2 max m}."""
    from scipy import ndimage

    labels, count = ndimage.label(m > 0.2 * m.max(), structure=np.ones((3, 3)))
    if count == 0:
        return [0.0, 0.0, 0.0, 0.0]
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_localize_writes_the_boxes_of_the_maps_in_original_pixels(checkpoint, tmp_path, capsys):
    from camlens.evaluation import image_maps
    from camlens.models import load_model

    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (40, 56), "b.jpg": (33, 20)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "c.png").write_bytes(b"not an image")
    out = tmp_path / "boxes"
    code = main(
        [
            "localize",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.jpg"),
            str(tmp_path / "c.png"),
            "--checkpoint",
            str(checkpoint),
            "--topk",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "c.png" in err and "Traceback" not in err  # one bad file, the rest done
    records = json.loads((out / "boxes.json").read_text())["images"]
    assert [r.get("error") is None for r in records] == [True, True, False]
    loaded = load_model(checkpoint)
    for rec in records[:2]:
        from camlens.data.images import load_image

        image = load_image(rec["file"])
        with CAM(loaded.model) as cam:
            res = cam(loaded.preprocess(image), topk=2)
        raw = image_maps(res.maps, [image], normalized=False)[0]  # the paper thresholds the raw map
        expected = map_boxes(raw, "paper", 0.2)
        assert torch.equal(expected, torch.stack([torch.tensor(box_by_hand(m.numpy())) for m in raw]))
        assert rec["size"] == [image.shape[-1], image.shape[-2]]
        assert [e["class"] for e in rec["boxes"]] == res.classes[0].tolist()
        assert [e["box"] for e in rec["boxes"]] == expected.tolist()
        assert (out / rec["overlay"]).is_file()


def test_evaluate_cli_json_equals_the_library_result(checkpoint, tmp_path):
    """The CLI's numbers are evaluate_model's on the built-in test images rendered at the model's 32 px input
    (as `camlens train` and the search render them), not at the dataset's default 64 px."""
    from camlens.data.samples import dataset_samples
    from camlens.models import load_model

    target = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--num-images",
                "10",
                "--batch-size",
                "4",
                "--json",
                str(target),
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads(target.read_text())
    loaded = load_model(checkpoint)
    samples = dataset_samples("builtin", num_images=10, image_size=32)
    assert samples[0].image.shape[-2:] == (32, 32)
    with CAM(loaded.model) as cam:
        expected = evaluate_model(loaded, cam, samples, batch_size=4)
    assert KEYS <= set(got) and got["method"] == "cam"
    assert {k: got[k] for k in KEYS} == json.loads(json.dumps({k: expected[k] for k in KEYS}))


def test_evaluate_cli_scores_precomputed_maps(tmp_path, capsys):
    meta, maps_dir = metadata_with_maps(tmp_path)
    assert (
        main(
            [
                "evaluate",
                "--maps",
                str(maps_dir),
                "--metadata",
                str(meta),
                "--json",
                str(tmp_path / "r.json"),
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["maxboxacc"] == 100.0 and got["top1_loc"] is None and got["pxap"] is None
    assert "MaxBoxAcc" in capsys.readouterr().out
    assert main(["evaluate", "--maps", str(maps_dir)]) == 2
    assert "go together" in capsys.readouterr().err


def test_evaluate_faithfulness_means_equal_the_metrics_on_each_image(checkpoint, tmp_path):
    from camlens.data.samples import dataset_samples
    from camlens.metrics.faithfulness import FaithfulnessConfig, faithfulness_scores
    from camlens.models import load_model

    target = tmp_path / "f.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--num-images",
                "6",
                "--batch-size",
                "4",
                "--method",
                "gradcam",
                "--faithfulness",
                "--steps",
                "8",
                "--pointing-tolerance",
                "3",
                "--json",
                str(target),
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads(target.read_text())
    loaded = load_model(checkpoint)
    samples = [dataset_samples("builtin", num_images=6, image_size=32)[i] for i in range(6)]
    config = FaithfulnessConfig(steps=8, tolerance=3)
    per_image = {}
    with get_method("gradcam")(loaded.model) as explainer:
        for s in samples:  # one image at a time: the batching must not change the numbers beyond rounding
            x = loaded.preprocess(s.image)
            res = explainer(x, [s.label])
            boxes = [s.boxes]  # rendered at the 32 px input: boxes in its pixels
            for k, v in faithfulness_scores(
                loaded.model, x, res.maps[:, 0].detach(), [s.label], boxes=boxes, config=config
            ).items():
                per_image.setdefault(k, []).append(float(v[0]))
    for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "road"):
        assert got[key] == pytest.approx(np.mean(per_image[key]), abs=1e-4), key
    hits = {}
    for s, hit in zip(samples, per_image["pointing_game"]):
        hits.setdefault(s.label, []).append(hit)
    assert got["pointing_game"] == pytest.approx(np.mean([np.mean(v) for v in hits.values()]))  # mean over classes


@pytest.mark.parametrize("method", [m for m in sorted(METHODS) if not METHODS[m].needs_attention])
def test_evaluate_faithfulness_runs_for_every_method(checkpoint, tmp_path, method):
    target = tmp_path / "f.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--num-images",
                "3",
                "--method",
                method,
                "--faithfulness",
                "--steps",
                "2",
                "--road-percentages",
                "50",
                "--json",
                str(target),
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads(target.read_text())
    assert got["method"] == method and got["num_images"] == 3
    for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "road", "pointing_game"):
        assert got[key] is not None and np.isfinite(got[key]), key
    assert 0 <= got["increase_in_confidence"] <= 100 and 0 <= got["pointing_game"] <= 1


def test_evaluate_on_a_metadata_folder_with_loader_workers_matches_the_images_in_memory(checkpoint, tmp_path):
    """The same images (of mixed sizes) written as PNG files (lossless) under a WSOL metadata folder, read by two
    DataLoader workers, give exactly the metrics of the images evaluated from memory."""
    from camlens.boxes import scale_boxes
    from camlens.data.builtin import BuiltinDataset
    from camlens.data.samples import Sample
    from camlens.maps import upsample
    from camlens.models import load_model
    from camlens.render import save_image

    data = BuiltinDataset("test", num_images=7)
    samples = []
    sizes = [(64, 64), (80, 48), (64, 64), (50, 72), (64, 64), (96, 96), (40, 64)]  # (H, W): mixed sizes in batches
    for i, size in enumerate(sizes):
        item = data[i]
        image = (upsample(item["image"], size).clamp(0, 1) * 255).round() / 255  # what the PNG file holds
        boxes = scale_boxes(item["box"].double().reshape(1, 4), (64, 64), size).round()
        image_id = f"c{item['label']}/{i}.png"
        (tmp_path / "imgs" / image_id).parent.mkdir(parents=True, exist_ok=True)
        save_image(image, tmp_path / "imgs" / image_id)
        samples.append(Sample(image_id, image, item["label"], boxes))
    ann = Annotations(
        [s.image_id for s in samples],
        torch.tensor([s.label for s in samples]),
        [s.boxes for s in samples],
        [(w, h) for h, w in sizes],
    )
    meta = write_wsol_metadata(tmp_path / "meta", ann)
    target = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(meta),
                "--images",
                str(tmp_path / "imgs"),
                "--workers",
                "2",
                "--batch-size",
                "3",
                "--json",
                str(target),
                "--quiet",
            ]
        )
        == 0
    )
    loaded = load_model(checkpoint)
    with CAM(loaded.model) as cam:
        expected = evaluate_model(loaded, cam, samples, batch_size=3)
    got = json.loads(target.read_text())
    assert got["num_images"] == 7 and got["pxap"] is None
    assert {k: got[k] for k in KEYS} == json.loads(json.dumps({k: expected[k] for k in KEYS}))
