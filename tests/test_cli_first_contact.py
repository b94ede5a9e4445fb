"""The command line a new user meets (issue #23): `--version`, `camlens layers`, `--save-maps` read back by
`evaluate --maps`, one-line errors for bad checkpoints, missing devices and crashes, the slow-run warning, skipped
classes reported, labelled boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camlens
from camlens import cli
from camlens.cli import main
from camlens.models import GapNet, Preprocess, load_model, save_checkpoint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """m.safetensors (a 10-class GapNet at 32 px with non-trivial batch-norm statistics, so maps are not flat) and
    a WSOL metadata folder over imgs/c0/*.png, every image of class 0 with one box."""
    from camlens.data.annotations import Annotations, write_wsol_metadata

    root = tmp_path_factory.mktemp("first")
    torch.manual_seed(0)
    model = GapNet(10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(
        root / "m.safetensors",
        model,
        arch="gapnet",
        class_names=[str(i) for i in range(10)],
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    rng = np.random.default_rng(0)
    sizes = [(40, 48), (36, 36), (48, 30), (40, 40)]  # (H, W)
    ids, boxes = [], []
    for i, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2 + 6, w // 3 : w - 4] += 150  # a bright object
        ids.append(f"c0/{i}.png")
        (root / "imgs" / "c0").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "imgs" / ids[-1])
        boxes.append(torch.tensor([[w // 3, h // 4, w - 4, h // 2 + 6]], dtype=torch.float64))
    ann = Annotations(ids, torch.zeros(len(ids), dtype=torch.long), boxes, [(w, h) for h, w in sizes])
    write_wsol_metadata(root / "meta", ann)
    return root


def _main(workspace: Path, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(workspace)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"camlens {camlens.__version__}"


def test_layers_lists_spatial_layers_with_shapes_and_marks_the_default(workspace, monkeypatch, capsys):
    code, out, _ = _main(workspace, monkeypatch, capsys, "layers", "m.safetensors")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    # GapNet at 32 px: two 2x poolings, so 8x8 maps; 16 channels, then 32, 64, 64, 128
    assert rows["features.0"].split()[1:] == ["16", "x", "32", "x", "32"]
    assert (
        rows["features"].split()[1:6] == ["128", "x", "8", "x", "8"]
        and "<- default for --method cam" in rows["features"]
    )
    assert sum("<- default" in line for line in out.splitlines()) == 1
    assert "fc" not in rows and "pool" not in rows  # (B, 10) and 1x1: not maps
    code, out, _ = _main(workspace, monkeypatch, capsys, "layers", "--checkpoint", "m.safetensors", "--all")
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert rows["fc"].split()[1:] == ["10"] and rows["pool"].split()[1:] == ["128", "x", "1", "x", "1"]


def test_layers_marks_the_layer_each_method_explains(workspace, monkeypatch, capsys):
    code, out, _ = _main(workspace, monkeypatch, capsys, "layers", "resnet18", "--weights", "none", "--size", "64")
    assert code == 0 and "layer4" in out
    (marked,) = [line for line in out.splitlines() if "<- default" in line]
    with camlens.CAM(load_model(arch="resnet18", weights="none", size=64)) as cam:
        assert marked.split()[0] == cam(torch.zeros(1, 3, 64, 64)).layer == "layer4"
    assert marked.split()[1:6] == ["512", "x", "2", "x", "2"]


def test_saved_maps_score_like_the_model_in_evaluate(workspace, monkeypatch, capsys):
    code, out, err = _main(
        workspace,
        monkeypatch,
        capsys,
        "explain",
        "imgs",
        "--checkpoint",
        "m.safetensors",
        "--class",
        "0",
        "--batch-size",
        "3",
        "--save-maps",
        "maps",
        "--out",
        "ex",
        "--quiet",
    )
    assert code == 0, err
    assert sorted(p.relative_to(workspace / "maps").as_posix() for p in (workspace / "maps").rglob("*.npy")) == [
        f"c0/{i}.png.npy" for i in range(4)
    ]
    saved = np.load(workspace / "maps" / "c0" / "1.png.npy")
    assert saved.shape == (36, 36) and saved.dtype == np.float32 and saved.min() == 0 and saved.max() == 1
    assert (
        _main(
            workspace,
            monkeypatch,
            capsys,
            "evaluate",
            "--maps",
            "maps",
            "--metadata",
            "meta",
            "--json",
            "from_maps.json",
        )[0]
        == 0
    )
    assert (
        _main(
            workspace,
            monkeypatch,
            capsys,
            "evaluate",
            "--checkpoint",
            "m.safetensors",
            "--data",
            "meta",
            "--images",
            "imgs",
            "--batch-size",
            "3",
            "--json",
            "from_model.json",
            "--quiet",
        )[0]
        == 0
    )
    maps, model = (json.loads((workspace / name).read_text()) for name in ("from_maps.json", "from_model.json"))
    assert maps["num_images"] == model["num_images"] == 4
    for key in ("maxboxacc", "maxboxacc_v2", "best_threshold", "maxboxacc_v2_by_iou"):
        assert maps.get(key) == model.get(key), key
    assert 0 < model["maxboxacc_v2"] < 100  # not a degenerate case where any maps agree


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"), "not a valid .safetensors file"),
        (lambda p: torch.save(GapNet(3), p), "torch.save(model.state_dict(), 'weights.pt')"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "not a PyTorch weights file"),
    ],
)
def test_bad_checkpoints_are_one_plain_line(workspace, monkeypatch, capsys, make, message):
    name = "bad.safetensors" if "safetensors" in message else "bad.pt"
    make(workspace / name)
    code, _, err = _main(
        workspace,
        monkeypatch,
        capsys,
        "explain",
        "imgs",
        "--checkpoint",
        name,
        "--arch",
        "gapnet",
        "--out",
        "bad",
        "--quiet",
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "\x1b" not in err and "Traceback" not in err


def test_a_checkpoint_of_another_architecture_says_which(workspace, monkeypatch, capsys):
    torch.save(torch.nn.Linear(3, 2).state_dict(), workspace / "linear.pt")
    code, _, err = _main(workspace, monkeypatch, capsys, "layers", "linear.pt", "--arch", "gapnet")
    assert code == 2 and "first keys: weight, bias" in err and "--arch" in err and len(err.strip().splitlines()) == 1


def test_missing_cuda_is_one_line_before_any_work(workspace, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = ["--checkpoint", "m.safetensors"]
    for command in (
        ["explain", "imgs", "--out", "cuda", *model],
        ["layers", *model],
        ["evaluate", *model],
        ["train", "--epochs", "1", "--out", "cuda"],
        ["demo", "--out", "cuda"],
    ):
        code, _, err = _main(workspace, monkeypatch, capsys, *command, "--device", "cuda")
        assert code == 2 and "--device cuda: no CUDA GPU is usable here" in err and "use --device cpu" in err
        assert len(err.strip().splitlines()) == 1
    assert not (workspace / "cuda").exists()


def test_an_unexpected_crash_is_one_line_unless_debug(workspace, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise RuntimeError("\x1b[1mdisk\x1b[0m full\n\tmore detail")

    monkeypatch.setattr("camlens.pipeline.explain_files", crash)
    args = ("explain", "imgs", "--checkpoint", "m.safetensors", "--out", "crash", "--quiet")
    code, _, err = _main(workspace, monkeypatch, capsys, *args)
    assert code == 1 and err == "camlens: error: RuntimeError: disk full (rerun with --debug for the traceback)\n"
    with pytest.raises(RuntimeError):
        main(["--debug", *args])


class _Expensive:
    expensive = True
    progress = False


def test_slow_run_warning_estimates_from_the_first_passes(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])  # the batch starts at 100 s; 10 of its 100 passes took 2 s
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))
    lines: list[str] = []
    explainer = _Expensive()
    with cli.PassWatch(explainer, "sscam", 8, 2, "cpu", quiet=True, write=lines.append) as watch:
        assert explainer.progress is watch
        watch(0, 100)
        watch(10, 100)  # 0.2 s a pass x 100 passes x 4 batches of 2 images = 80 s
        watch(20, 100)
    assert lines == ["camlens: sscam: about 80 s for 8 image(s) on this CPU; use --method gradcam or a GPU"]
    clock = iter([0.0, 1.0])
    with cli.PassWatch(_Expensive(), "scorecam", 2, 2, "cuda", quiet=True, write=lines.append) as watch:
        watch(0, 50)
        watch(25, 50)  # 2 s in all: no warning
    assert len(lines) == 1


def test_slow_method_from_the_command_line_warns_and_explains(workspace, monkeypatch, capsys):
    monkeypatch.setattr(cli.common, "SLOW_RUN_SECONDS", 0)
    code, _, err = _main(
        workspace,
        monkeypatch,
        capsys,
        "explain",
        "imgs/c0/0.png",
        "--checkpoint",
        "m.safetensors",
        "--method",
        "scorecam",
        "--out",
        "slow",
        "--quiet",
    )
    assert code == 0 and "camlens: scorecam: about" in err and "for 1 image(s) on this CPU" in err


def test_a_segmentation_class_without_pixels_is_reported_as_skipped(workspace, monkeypatch, capsys):
    torch.manual_seed(0)
    loaded = load_model(arch="deeplabv3_mobilenet_v3_large", weights="none", size=48)
    from camlens.data.images import load_image

    with torch.no_grad():
        predicted = set(
            loaded.model(loaded.preprocess(load_image(workspace / "imgs/c0/0.png")))["out"][0]
            .argmax(0)
            .unique()
            .tolist()
        )
    absent = min(set(range(21)) - predicted)
    torch.manual_seed(0)
    code, out, err = _main(
        workspace,
        monkeypatch,
        capsys,
        "explain",
        "imgs/c0/0.png",
        "--arch",
        "deeplabv3_mobilenet_v3_large",
        "--weights",
        "none",
        "--size",
        "48",
        "--method",
        "gradcam",
        "--target",
        f"segment:{absent}",
        "--out",
        "seg",
        "--quiet",
    )
    assert code == 0  # the run worked; the answer is that the class is absent
    assert "explained 0 image(s) into seg/" in out and f"1 skipped: imgs/c0/0.png (no pixels of class {absent})" in out
    assert f"camlens: skipped imgs/c0/0.png (no pixels of class {absent})" in err
    assert not list((workspace / "seg").glob("*.png"))


def test_localize_overlays_carry_class_labels(workspace, monkeypatch, capsys):
    from camlens.render import draw_boxes

    image = torch.zeros(3, 40, 60)
    plain = np.asarray(draw_boxes(image, [[5, 10, 50, 35]]))
    labelled = np.asarray(draw_boxes(image, [[5, 10, 50, 35]], labels=["cat 93%"]))
    changed = np.argwhere((plain != labelled).any(-1))
    assert len(changed) and changed.min(0).tolist() >= [10, 5] and changed[:, 0].max() < 25  # text inside, at the top
    text = labelled[changed[:, 0], changed[:, 1]]
    assert ((text[:, 1] > 128) & (text[:, 0] == 0) & (text[:, 2] == 0)).sum() > 20  # written in the box's colour
    code, _, err = _main(
        workspace,
        monkeypatch,
        capsys,
        "localize",
        "imgs/c0/0.png",
        "--checkpoint",
        "m.safetensors",
        "--out",
        "boxes",
        "--quiet",
    )
    assert code == 0, err
    (record,) = json.loads((workspace / "boxes" / "boxes.json").read_text())["images"]
    (entry,) = record["boxes"]
    overlay = np.asarray(Image.open(workspace / "boxes" / record["overlay"]))
    label = f"{entry['label']} {entry['score']:.0%}"
    from camlens.evaluation import explain_batch, image_maps
    from camlens.render import overlay as blend

    with camlens.CAM(load_model(workspace / "m.safetensors")) as cam:
        loaded = load_model(workspace / "m.safetensors")
        img = camlens.load_image(workspace / "imgs/c0/0.png")
        _, res = explain_batch(loaded, cam, [img], None)
    expected = draw_boxes(
        blend(img, image_maps(res.maps, [img], normalized=False)[0][0]), [entry["box"]], labels=[label]
    )
    assert (overlay == np.asarray(expected)).all()
