"""Selection by localization picks the epoch with the best metric and records its thresholds; parameter groups
train new layers at the higher rate; the SGD schedule decays in steps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from _train_setup import TinyCam
from camlens.training import TrainConfig, load_data, loop, train
from camlens.training.optim import Schedule, parameter_groups, step_decay
from camlens.training.wsol import TrainingMethod


@pytest.fixture(scope="module")
def data():
    return load_data("builtin", image_size=16, num_train=32, num_val=16)


def test_selection_keeps_the_epoch_with_the_best_metric_and_its_threshold(data, tmp_path, monkeypatch):
    """A scripted sequence of MaxBoxAccV2 values (best at epoch 3 of 4, the accuracy elsewhere): the best
    checkpoint holds epoch 3's weights and threshold."""
    script = iter([(40.0, 0.1), (55.0, 0.25), (70.0, 0.35), (60.0, 0.5)])

    def scripted(*args, **kwargs):
        score, threshold = next(script)
        return {"maxboxacc_v2": score, "best_threshold": threshold, "maxboxacc": score - 5, "gt_known_loc": 1.0}

    monkeypatch.setattr(loop, "localization_metrics", scripted)
    snapshots = {}

    def keep_last(line: str) -> None:
        if line.startswith("epoch "):
            snapshots[int(line.split("/")[0].split()[1])] = load_file(str(tmp_path / "last.safetensors"))

    config = TrainConfig(out=str(tmp_path), epochs=4, batch_size=16, select_by="maxboxacc_v2", progress=False)
    result = train(config, model=TinyCam(), prepared=data, log=keep_last)
    assert result.best_epoch == 3 and result.best_score == 70.0 and result.selection["wsol_threshold"] == 0.35
    best = load_file(str(tmp_path / "best.safetensors"))
    assert best.keys() == snapshots[3].keys() and all(torch.equal(best[k], snapshots[3][k]) for k in best)
    assert not all(torch.equal(best[k], snapshots[4][k]) for k in best)
    with safe_open(str(tmp_path / "best.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["camlens"])
    assert meta["epoch"] == 3 and meta["selection"]["metric"] == "maxboxacc_v2"
    assert meta["selection"]["wsol_threshold"] == 0.35 and meta["selection"]["paper_threshold"] == 0.2
    assert [h.score for h in result.history] == [40.0, 55.0, 70.0, 60.0]


class _Extra(TrainingMethod):
    """A method that attaches a module: it trains at the new layers' rate."""

    def attach(self, model):
        model.extra = torch.nn.Linear(1, 1)
        return ("extra",)


def test_new_layers_and_attached_modules_train_at_the_multiplied_rate(data, tmp_path):
    config = TrainConfig(
        out=str(tmp_path), epochs=1, batch_size=16, optimizer="sgd", lr=0.05, new_layer_lr_mult=10, progress=False
    )
    method = _Extra()
    model = TinyCam()
    train(config, model=model, method=method, prepared=data, log=None)
    with safe_open(str(tmp_path / "resume.safetensors"), framework="pt") as f:
        groups = json.loads(f.metadata()["camlens_train"])["optimizer"]["param_groups"]
    by_name = {g["name"]: g for g in groups}
    assert by_name["pretrained"]["lr"] == pytest.approx(0.05) and by_name["new"]["lr"] == pytest.approx(0.5)
    assert by_name["new"]["momentum"] == 0.9 and by_name["new"]["weight_decay"] == 1e-4  # Choe et al.'s defaults
    named = dict(model.named_parameters())
    new = parameter_groups(model, ("conv2", "fc", "extra"), 10)[1]["params"]
    assert {id(p) for p in new} == {id(named[k]) for k in named if k.split(".")[0] in ("conv2", "fc", "extra")}
    assert len(by_name["new"]["params"]) == len(new)


def test_a_new_layer_that_is_not_in_the_model_is_an_error():
    with pytest.raises(Exception, match="'head' is not a module"):
        parameter_groups(TinyCam(), ("head",), 10)


def test_sgd_decays_tenfold_every_lr_decay_every_epochs_from_the_global_step():
    config = TrainConfig(optimizer="sgd", lr=0.1, epochs=9, lr_decay_every=3)
    schedule = Schedule(config, steps_per_epoch=5)
    assert [schedule(e * 5 + 4) for e in range(9)] == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3)
    assert step_decay(6, 0.1, 3) == pytest.approx(0.001)


@pytest.mark.parametrize("links", [True, False])
def test_best_is_the_last_file_as_it_was_even_after_last_is_replaced(tmp_path, monkeypatch, links):
    """keep_as_best links (or, where the filesystem cannot, copies) last to best; the next epoch's last, written
    to a temporary name and renamed, leaves best as it was."""
    from camlens.training import checkpoint

    if not links:
        monkeypatch.setattr(checkpoint.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no links here")))
    last, best = tmp_path / "last.safetensors", tmp_path / "best.safetensors"
    checkpoint._save(last, {"w": torch.ones(3)}, {})
    checkpoint.keep_as_best(last, best)
    assert (best.stat().st_ino == last.stat().st_ino) is links
    checkpoint._save(last, {"w": torch.zeros(3)}, {})
    assert torch.equal(load_file(str(best))["w"], torch.ones(3)) and torch.equal(
        load_file(str(last))["w"], torch.zeros(3)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "last.safetensors"]  # no temporaries
