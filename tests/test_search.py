"""The fair hyperparameter search: reproducible draws inside each method's space, every method trained, selected on
the boxed split and reported on the test split through the CLI, finished trials never rerun, interrupted ones
resumed, trials dealt out to torchrun ranks, and checkpoints whose method explain/localize/evaluate/serve use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli_setup import free_port
from camlens.cli import main
from camlens.data.builtin import BuiltinDataset
from camlens.data.samples import BuiltinSamples
from camlens.evaluation import evaluate_model
from camlens.models import load_model
from camlens.training.search import best_per_method, draw_trials, read_result
from camlens.training.wsol import WSOL_METHODS, ACoLCAM, method_explainer

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
    "--num-test",
    "16",
    "--quiet",
]


def test_draws_are_reproducible_per_method_and_inside_each_space():
    a = draw_trials(["has", "spg"], 3, seed=5, lr_range=(1e-4, 1e-2))
    b = draw_trials(["spg"], 4, seed=5, lr_range=(1e-4, 1e-2))
    assert [t for t in a if t.method == "spg"] == b[:3]  # other methods and more trials leave a draw unchanged
    assert a != draw_trials(["has", "spg"], 3, seed=6, lr_range=(1e-4, 1e-2))
    for t in a + b:
        assert 1e-4 <= t.lr <= 1e-2
        if t.method == "spg":
            assert all(t.params[f"threshold_{i}l"] <= t.params[f"threshold_{i}h"] for i in (1, 2, 3))
        else:
            assert t.params["patch_size"] in (2, 4, 8, 16) and 0 <= t.params["drop_rate"] <= 1


def test_best_trial_is_chosen_on_the_selection_split_never_on_test():
    records = [
        {"method": "cam", "number": 0, "val_score": 50.0, "test": {"maxboxacc_v2": 90.0}},
        {"method": "cam", "number": 1, "val_score": 60.0, "test": {"maxboxacc_v2": 10.0}},
        {"method": "cam", "number": 2, "val_score": 60.0, "test": {"maxboxacc_v2": 80.0}},
    ]
    assert best_per_method(records)["cam"]["number"] == 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny trials run as fast on one thread, and two threads spin against each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, one_thread):
    """One trial of every method through ``camlens train --trials``, on a tiny built-in setting."""
    out = tmp_path_factory.mktemp("search") / "s"
    assert main(["train", "--trials", "1", "--wsol-method", "all", "--out", str(out), *TINY]) == 0
    return out


def test_search_trains_selects_and_reports_every_method(searched, capsys):
    summary = json.loads((searched / "search.json").read_text())
    assert sorted(summary["best"]) == sorted(WSOL_METHODS)
    assert summary["select_by"] == "maxboxacc_v2" and summary["test"] == {
        "data": "builtin",
        "split": "test",
        "num_images": 16,
    }
    for record in summary["trials"]:
        folder = searched / record["trial"]
        meta = load_model(folder / "best.safetensors").meta
        assert meta["wsol_method"] == record["config"] and meta["selection"]["metric"] == "maxboxacc_v2"
        assert record["val_score"] == meta["selection"]["score"]
        assert all(record["test"][k] is not None for k in ("accuracy", "gt_known_loc", "maxboxacc_v2", "pxap"))


def test_a_finished_search_is_not_rerun(searched, monkeypatch, capsys):
    import camlens.training.search as search_module

    def refuse(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(search_module, "train", refuse)
    before = (searched / "search.json").read_text()
    assert main(["train", "--trials", "1", "--wsol-method", "all", "--out", str(searched), *TINY]) == 0
    shown = capsys.readouterr().out
    assert "reported on the test split" in shown and "acol" in shown
    assert json.loads(before)["trials"] == json.loads((searched / "search.json").read_text())["trials"]


def test_an_interrupted_trial_resumes_from_its_last_epoch(searched, monkeypatch, tmp_path):
    """A trial without result.json (killed after its last epoch was saved) resumes: the loop finds every epoch
    done and trains none, and the record matches the one before."""
    import camlens.training.search as search_module

    trial = next(t for t in draw_trials(list(WSOL_METHODS), 1) if t.method == "has")
    record = read_result(searched, trial)
    (searched / trial.name / "result.json").rename(tmp_path / "kept.json")
    calls = []
    real = search_module.train
    monkeypatch.setattr(search_module, "train", lambda cfg, **kw: calls.append(cfg.resume) or real(cfg, **kw))
    assert main(["train", "--trials", "1", "--wsol-method", "all", "--out", str(searched), *TINY]) == 0
    assert calls == [True]
    again = read_result(searched, trial)
    assert again["test"] == record["test"] and again["val_score"] == record["val_score"]


def test_acol_checkpoint_drives_explain_localize_and_evaluate(searched, tmp_path, capsys):
    """The checkpoint alone: evaluate's numbers are ACoLCAM's (not plain CAM's), explain and localize run."""
    ckpt = str(searched / "acol-000" / "best.safetensors")
    loaded = load_model(ckpt)
    assert isinstance(method_explainer(loaded.model), ACoLCAM)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                ckpt,
                "--data",
                "builtin",
                "--num-images",
                "12",
                "--quiet",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    got = json.loads((tmp_path / "m.json").read_text())
    samples = BuiltinSamples(
        BuiltinDataset("test", num_images=12, image_size=32)
    )  # the model's input, as evaluate renders it
    with ACoLCAM(loaded.model, threshold=loaded.meta["wsol_method"]["threshold"]) as explainer:
        expected = evaluate_model(loaded, explainer, samples)
    assert got["maxboxacc_v2"] == pytest.approx(expected["maxboxacc_v2"])
    assert got["pxap"] == pytest.approx(expected["pxap"])
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray((samples[0].image.permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / "imgs" / "a.png")
    assert main(["explain", str(tmp_path / "imgs"), "--checkpoint", ckpt, "--out", str(tmp_path / "x"), "--quiet"]) == 0
    assert (
        main(["localize", str(tmp_path / "imgs"), "--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    )
    assert (tmp_path / "b" / "boxes.json").is_file()


def test_python_explain_gives_the_checkpoints_method_map(searched):
    """camlens.explain on an ACoL checkpoint returns ACoLCAM's maps, as the CLI and the server do: one dispatch
    (camlens.build_explainer) for all three, and plain CAM only when a layer is named."""
    import camlens

    loaded = load_model(searched / "acol-000" / "best.safetensors")
    image = BuiltinSamples(BuiltinDataset("test", num_images=1))[0].image
    got = camlens.explain(loaded, image)
    with ACoLCAM(loaded.model, threshold=loaded.meta["wsol_method"]["threshold"]) as explainer:
        expected = explainer(loaded.preprocess(image))
    assert torch.equal(got.result.maps, expected.maps)
    with camlens.build_explainer(loaded.model, "cam") as explainer:
        assert isinstance(explainer, ACoLCAM)
    layer = expected.layer
    with camlens.build_explainer(loaded.model, "cam", layer) as plain:
        assert type(plain) is camlens.CAM
        assert not torch.allclose(plain(loaded.preprocess(image)).maps, expected.maps)


def test_serve_uses_the_checkpoints_method(searched):
    from camlens.web.engine import ExplainerCache

    loaded = load_model(searched / "acol-000" / "best.safetensors")
    cache = ExplainerCache(loaded.model)
    x = torch.randn(1, 3, 32, 32)
    with cache.use("cam", None, x) as explainer:
        assert isinstance(explainer, ACoLCAM)
        res = explainer(x)
    assert res.maps.shape == (1, 1, 8, 8) and 0 <= float(res.maps.min()) and float(res.maps.max()) <= 1
    cache.close()


def test_bad_search_and_method_input_are_one_line_errors(tmp_path, capsys):
    cases = [
        (["train", "--trials", "1", "--select-by", "accuracy"], "a fair search selects on a split with boxes"),
        (["train", "--trials", "0", "--select-by", "maxboxacc_v2"], "--trials 0 must be at least 1"),
        (
            ["train", "--wsol-method", "has", "--wsol-param", "patch_size=99", "--size", "32"],
            "HaS: patch_size=99 is larger than the 32x32 input",
        ),
        (["train", "--wsol-method", "acol", "--wsol-param", "threshold=1.5"], "ACoL: threshold=1.5 is outside [0, 1]"),
        (["train", "--wsol-method", "adl", "--wsol-param", "rate"], "--wsol-param 'rate': expected KEY=VALUE"),
        (
            ["train", "--trials", "1", "--wsol-method", "has,foo", "--select-by", "maxboxacc_v2"],
            "unknown WSOL method 'foo'",
        ),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_trials_are_dealt_out_to_torchrun_ranks(tmp_path):
    """2 gloo ranks, 2 trials each of cam and has: rank r runs trials r, r + 2, ... of the draw order."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "--monitor-interval=0.1",
        "-m",
        "camlens",
        "train",
        "--trials",
        "1",
        "--wsol-method",
        "cam,has",
        "--out",
        str(out),
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "search.json").read_text())
    assert {r["trial"]: r["rank"] for r in summary["trials"]} == {"cam-000": 0, "has-000": 1}
    assert done.stdout.count("search results:") == 1  # rank 0 alone reports


def test_one_method_run_records_its_parameters_in_the_checkpoint(tmp_path):
    """``camlens train --wsol-method adl --wsol-param drop_rate=0.5``: the checkpoint names the method and its
    parameters (the others at Choe et al.'s defaults) and was selected on the boxed split."""
    out = tmp_path / "adl"
    assert (
        main(
            [
                "train",
                "--wsol-method",
                "adl",
                "--wsol-param",
                "drop_rate=0.5",
                "--out",
                str(out),
                *TINY[: TINY.index("--num-test")],
                "--quiet",
            ]
        )
        == 0
    )
    meta = load_model(out / "best.safetensors").meta
    assert meta["wsol_method"] == {"name": "adl", "drop_rate": 0.5, "threshold": 0.9, "positions": None}
    assert meta["selection"]["metric"] == "maxboxacc_v2"
