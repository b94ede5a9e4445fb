"""Training: reaching a stated accuracy on the built-in dataset, exact resumption, self-describing checkpoints,
ImageFolder data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens.capture import CamlensError
from camlens.models import load_model
from camlens.training import TrainConfig, TrainData, load_data, train
from camlens.training.checkpoint import load_optimizer, optimizer_tensors
from camlens.training.data import Augmentation
from camlens.training.loop import replace_classifier
from camlens.training.optim import learning_rate


def cfg(**kw) -> TrainConfig:
    return TrainConfig(progress=False, **kw)


class SmallGap(nn.Module):
    """A stand-in GAP CNN for fast tests: stride 4, conv -> GAP -> linear."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        w = width
        self.features = nn.Sequential(
            block(3, w, 2),
            block(w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 3 * w),
            block(3 * w, 4 * w),
            block(4 * w, 6 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_reduced_run_on_builtin_reaches_80_percent(tmp_path):
    """3000 images of 32 px, 6 epochs: validation accuracy on unseen handwriting >= 80% (chance: 10%)."""
    torch.manual_seed(0)
    result = train(
        cfg(out=str(tmp_path), epochs=6, batch_size=32, num_train=3000, num_val=300, image_size=32),
        model=SmallGap(),
        log=None,
    )
    assert result.best_val_acc >= 0.80, [h.val_acc for h in result.history]
    assert len(result.history) == 6 and result.history[-1].train_loss < result.history[0].train_loss
    assert (tmp_path / "best.safetensors").is_file()


def _tiny_data(n: int = 96, size: int = 16) -> TrainData:
    return load_data("builtin", image_size=size, num_train=n, num_val=32)


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = _tiny_data()

    def run(out: Path, **kw):
        torch.manual_seed(0)
        return train(cfg(out=str(out), epochs=3, batch_size=16), model=SmallGap(width=4), prepared=data, **kw)

    straight = run(tmp_path / "a", log=None)

    def stop_after_first(line: str) -> None:
        if line.startswith("epoch 1/3"):
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "b", log=stop_after_first)
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert state["epoch"] == 1
    torch.manual_seed(123)  # a different fresh init: everything must come from the saved state
    resumed = train(
        cfg(out=str(tmp_path / "b"), epochs=3, batch_size=16, resume=True),
        model=SmallGap(width=4),
        prepared=data,
        log=None,
    )
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "last.safetensors"))
    b = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.best_val_acc == straight.best_val_acc


def test_resume_refuses_other_settings_and_empty_folders(tmp_path):
    data = _tiny_data()
    train(cfg(out=str(tmp_path / "run"), epochs=1, batch_size=16), model=SmallGap(width=4), prepared=data, log=None)
    with pytest.raises(CamlensError, match="batch_size=16, not 32"):
        train(
            cfg(out=str(tmp_path / "run"), epochs=2, batch_size=32, resume=True),
            model=SmallGap(width=4),
            prepared=data,
            log=None,
        )
    with pytest.raises(CamlensError, match="no interrupted run"):
        train(cfg(out=str(tmp_path / "empty"), epochs=1, resume=True), model=SmallGap(width=4), prepared=data, log=None)
    assert not (tmp_path / "empty").exists()  # nothing written by a refused run


def test_gapnet_checkpoint_alone_rebuilds_the_model(tmp_path):
    data = _tiny_data(64, 32)
    result = train(cfg(arch="gapnet", out=str(tmp_path), epochs=1, batch_size=32), prepared=data, log=None)
    loaded = load_model(result.checkpoint)
    assert loaded.arch == "gapnet" and loaded.class_names == result.class_names
    assert loaded.preprocess == result.preprocess and loaded.preprocess.size == (32, 32)
    x = result.preprocess(data.val.images[:8].float() / 255)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), result.model(x), atol=1e-5)


def test_optimizer_state_round_trips_through_tensors_and_json():
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, rest = optimizer_tensors(opt)
    rest = json.loads(json.dumps(rest))
    other = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.5)
    load_optimizer(other, tensors, rest)
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 0.1
    for index in a["state"]:
        for key, value in a["state"][index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key])), key


def test_augment_is_an_exact_bounded_translation_and_flips_only_when_allowed():
    images = torch.rand(6, 3, 8, 8)
    shift = 2
    aug = Augmentation("shift", 8, shift, flips=False)
    out = aug(images, aug.draw(torch.Generator().manual_seed(0), 6))
    padded = torch.nn.functional.pad(images, (shift,) * 4, mode="replicate")
    for i in range(6):
        matches = [
            (dy, dx)
            for dy in range(2 * shift + 1)
            for dx in range(2 * shift + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert matches, f"image {i} is not a shifted copy"
    flip = Augmentation("shift", 8, 0, flips=True)
    flipped = flip(images, flip.draw(torch.Generator().manual_seed(0), 6))
    kinds = [torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images)]
    assert all(kinds)
    assert any(torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images))


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    base, total, warm = 0.1, 110, 10
    assert learning_rate(0, total, base, warm) == pytest.approx(0.01)
    assert learning_rate(9, total, base, warm) == pytest.approx(base)
    assert learning_rate(60, total, base, warm) == pytest.approx(base / 2)
    assert learning_rate(35, total, base, warm) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(110, total, base, warm) == pytest.approx(0.0, abs=1e-12)


def test_replace_classifier_swaps_the_last_linear_or_1x1_conv():
    from torchvision.models import resnet18, squeezenet1_1

    r, name = replace_classifier(resnet18(weights=None), 7)
    assert name == "fc"
    assert isinstance(r.fc, nn.Linear) and r.fc.out_features == 7 and r.fc.in_features == 512
    s, name = replace_classifier(squeezenet1_1(weights=None), 5)
    assert name == "classifier.1"
    assert s(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def _write_tree(root: Path, classes: dict[str, int], size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_tree_trains_with_a_held_out_share_per_class(tmp_path):
    _write_tree(tmp_path, {"cat": 10, "dog": 5})
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_data(str(tmp_path), image_size=16, val_fraction=0.2)
    assert data.classes == ["cat", "dog"] and data.flips and data.augment == "crop" and data.resize_size == 18
    assert sorted(data.val.labels.tolist()) == [0, 0, 1] and len(data.train) == 12
    result = train(
        cfg(data=str(tmp_path), out=str(tmp_path / "out"), epochs=1, batch_size=4, image_size=16, val_fraction=0.2),
        model=SmallGap(2, width=4),
        log=None,
    )
    assert result.class_names == ["cat", "dog"] and result.preprocess.size == (16, 16)


def test_image_folder_with_train_and_val_folders_is_used_as_given(tmp_path):
    _write_tree(tmp_path / "train", {"a": 3, "b": 2})
    _write_tree(tmp_path / "val", {"a": 1, "b": 1})
    data = load_data(str(tmp_path), image_size=8)
    assert len(data.train) == 5 and data.val.labels.tolist() == [0, 1]
    image, label = data.val.dataset[1]["image"], data.val.dataset[1]["label"]
    assert image.shape == (3, 8, 8) and label == 1
    assert data.train.dataset[0]["image"].shape == (3, 9, 9)  # read at 8 x 256/224 for the random crop


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CamlensError, match="not a folder"):
        load_data(str(tmp_path / "nope"))
