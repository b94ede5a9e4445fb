"""Training data: Choe et al.'s WSOL metadata layout end to end, its bad input, the augmentations, batch shards,
and precomputed maps named by stem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from _train_setup import write_builtin_metadata
from camlens.capture import CamlensError
from camlens.cli import main
from camlens.data.annotations import read_wsol_metadata
from camlens.distributed import Context
from camlens.evaluation import evaluate_maps
from camlens.training import load_data
from camlens.training.data import Augmentation, global_batches, local_part


@pytest.fixture(scope="module")
def wsol(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsol")
    meta, images = write_builtin_metadata(root, num_train=32, num_val=12)
    return root, meta, images


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["camlens"])


def test_wsol_metadata_trains_selects_by_maxboxacc_v2_and_localize_evaluate_use_its_threshold(wsol, capsys):
    root, meta, images = wsol
    out = root / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(meta),
                "--images",
                str(images),
                "--size",
                "32",
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--select-by",
                "maxboxacc_v2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    data = load_data(str(meta), images=images, image_size=32)
    assert len(data.train) == 32 and len(data.val) == 12 and data.augment == "crop" and data.resize_size == 37
    selection = _meta(out / "best.safetensors")["selection"]
    state = json.loads((out / "train_state.json").read_text())
    scores = [h["score"] for h in state["history"]]
    assert selection["epoch"] == 1 + int(np.argmax(scores)) and selection["score"] == max(scores)
    capsys.readouterr()
    # evaluate on the same boxed split: its sweep's best threshold is the recorded one, and the accuracy there is
    # MaxBoxAcc
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "best.safetensors"),
                "--data",
                str(meta),
                "--split",
                "val",
                "--images",
                str(images),
                "--json",
                str(root / "m.json"),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads((root / "m.json").read_text())
    assert metrics["best_threshold"] == selection["wsol_threshold"]
    assert metrics["maxboxacc_v2"] == selection["score"]
    assert metrics["box_acc_at_fixed_threshold"] == metrics["maxboxacc"]
    assert "at the checkpoint's threshold" in capsys.readouterr().out
    assert (
        main(
            [
                "localize",
                str(images / "val"),
                "--checkpoint",
                str(out / "best.safetensors"),
                "--protocol",
                "wsol",
                "--out",
                str(root / "boxes"),
                "--quiet",
            ]
        )
        == 0
    )
    boxes = json.loads((root / "boxes" / "boxes.json").read_text())["images"]
    assert {r["threshold"] for r in boxes} == {selection["wsol_threshold"]}
    assert "the one the checkpoint was selected with" in capsys.readouterr().err


def _broken_copy(root, meta, name):
    bad = root / name
    shutil.copytree(meta, bad)
    return bad


@pytest.mark.parametrize("case", ["unknown_class", "missing_image", "no_images_root"])
def test_bad_metadata_is_a_one_line_error_naming_it_and_nothing_is_written(wsol, capsys, case):
    root, meta, images = wsol
    bad = _broken_copy(root, meta, f"bad-{case}")
    args = ["--images", str(images)]
    if case == "unknown_class":
        lines = (bad / "val" / "class_labels.txt").read_text().splitlines()
        first = lines[0].split(",")[0]
        (bad / "val" / "class_labels.txt").write_text("\n".join([f"{first},17", *lines[1:]]) + "\n")
        expected = "class(es) [17] are unknown"
    elif case == "missing_image":
        ids = (bad / "train" / "image_ids.txt").read_text().splitlines()
        ids[3] = "train/nowhere.png"
        (bad / "train" / "image_ids.txt").write_text("\n".join(ids) + "\n")
        labels = (bad / "train" / "class_labels.txt").read_text().splitlines()
        labels[3] = "train/nowhere.png," + labels[3].split(",")[1]
        (bad / "train" / "class_labels.txt").write_text("\n".join(labels) + "\n")
        expected = "1 of 32 image(s) are missing"
    else:
        args = []
        expected = "--images DIR"
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--data",
                str(bad),
                *args,
                "--size",
                "32",
                "--epochs",
                "1",
                "--out",
                str(root / f"o-{case}"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (root / f"o-{case}").exists()


def test_metadata_without_a_val_split_holds_out_a_share_of_each_class(wsol):
    _, meta, images = wsol
    data = load_data(str(meta / "train"), images=images, image_size=32, val_fraction=0.25)
    assert len(data.train) + len(data.val) == 32 and len(data.val) > 0
    train_ids = {data.train.dataset[i]["id"] for i in range(len(data.train))}
    val_ids = {data.val.dataset[i]["id"] for i in range(len(data.val))}
    assert not train_ids & val_ids  # disjoint
    for c in data.val.labels.unique().tolist():
        assert (data.train.labels == c).sum() >= 1


def test_crop_augmentation_is_an_exact_crop_of_the_resized_image_and_flips_mirror_it():
    images = torch.rand(5, 3, 10, 10)
    aug = Augmentation("crop", 8, resize=10, flips=True)
    params = aug.draw(torch.Generator().manual_seed(3), 5)
    out = aug(images, params)
    assert out.shape == (5, 3, 8, 8) and params[:, :2].max() <= 2 and params[:, :2].min() >= 0
    for i, (top, left, mirror) in enumerate(params.tolist()):
        expected = images[i, :, top : top + 8, left : left + 8]
        assert torch.equal(out[i], expected.flip(-1) if mirror else expected)
    assert 0 < int(params[:, 2].sum()) < 5
    resized = Augmentation("crop", 8, resize=12)(images, torch.zeros(5, 3, dtype=torch.long))
    full = torch.nn.functional.interpolate(images, size=(12, 12), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(resized, full[..., :8, :8])


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_of_each_global_batch_cover_it_in_order_and_differ_by_at_most_one(world):
    batches = global_batches(torch.randperm(23, generator=torch.Generator().manual_seed(0)), 8)
    assert [len(b) for b in batches] == [8, 8, 7]
    for batch in batches:
        parts = [local_part(batch, Context(r, world, r, torch.device("cpu"))) for r in range(world)]
        assert torch.equal(torch.cat(parts), batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_precomputed_maps_named_by_stem_are_found_said_and_refused_when_ambiguous(wsol, tmp_path):
    _, meta, _ = wsol
    ann = read_wsol_metadata(meta / "val")
    rng = np.random.default_rng(0)
    by_id, by_stem = tmp_path / "by_id", tmp_path / "by_stem"
    for image_id in ann.ids:
        score = rng.random((32, 32))
        (by_id / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(by_id / f"{image_id}.npy", score)
        by_stem.mkdir(exist_ok=True)
        np.save(by_stem / f"{image_id.split('/')[-1][:-4]}.npy", score)
    a, b = evaluate_maps(by_id, ann), evaluate_maps(by_stem, ann)
    assert a["map_naming"] == "<image_id>.npy" and b["map_naming"] == "<stem>.npy"
    assert {k: v for k, v in a.items() if k != "map_naming"} == {k: v for k, v in b.items() if k != "map_naming"}
    twin = ann.ids[0].replace("val/", "other/")
    ann.ids.append(twin)  # two ids with one stem: that naming is ambiguous
    ann.labels = torch.cat([ann.labels, ann.labels[:1]])
    ann.boxes.append(ann.boxes[0])
    ann.sizes.append(ann.sizes[0])
    with pytest.raises(CamlensError, match="share a stem"):
        evaluate_maps(by_stem, ann)
