"""Nothing lost (issue 24): no command replaces an earlier run's outputs or writes outside its folder unasked,
every file is written whole or not at all, one bad item costs one line, CSV cells are never formulas."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _cli_setup import checkpoint_and_images
from camlens.cli import main
from camlens.files import OutputError, csv_text, write_atomic
from camlens.models import GapNet, Preprocess, save_checkpoint

# class names a spreadsheet or matplotlib would read as code
HOSTILE = ["$x^{5$", "=1+2", "-3", "@SUM(A1)", "+cmd", "\tx", "\rx", "ok", "$a$", "plain"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = checkpoint_and_images(tmp_path_factory.mktemp("lost"), 3)
    save_checkpoint(
        root / "hostile.safetensors",
        GapNet(10).eval(),
        arch="gapnet",
        class_names=HOSTILE,
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    return root


def _run(workspace: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.chdir(workspace)
    code = main([*args, "--quiet"])
    return code, capsys.readouterr().err


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def _assert_whole(folder: Path) -> None:
    """Every published file in ``folder`` decodes completely (temporaries are hidden and never published)."""
    for p in folder.iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix == ".png":
            with Image.open(p) as img:
                img.load()
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            list(csv.reader(p.open(newline="")))


# ------------------------------------------------------------------------------------------- nothing replaced


def test_train_into_a_run_folder_refuses_naming_resume_and_overwrite(workspace, monkeypatch, capsys):
    run = workspace / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"the 90% model")
    code, err = _run(workspace, monkeypatch, capsys, "train", "--out", "run", "--epochs", "1", "--num-train", "64")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--resume" in err and "--overwrite" in err
    assert (run / "best.safetensors").read_bytes() == b"the 90% model"
    (run / "probe.safetensors").write_bytes(b"an earlier probe")
    code, err = _run(workspace, monkeypatch, capsys, "train", "--linear-probe", "--out", "run", "--num-train", "64")
    assert code == 2 and "--overwrite" in err and (run / "probe.safetensors").read_bytes() == b"an earlier probe"


def test_explain_reruns_resume_and_other_options_need_overwrite(workspace, monkeypatch, capsys):
    args = ("explain", "imgs", "--checkpoint", "m.safetensors", "--out", "rerun")
    assert _run(workspace, monkeypatch, capsys, *args)[0] == 0
    first = _files(workspace / "rerun")
    assert _run(workspace, monkeypatch, capsys, *args)[0] == 0  # same options: resumes, nothing redone
    assert _files(workspace / "rerun") == first
    for more in ([], ["--restart"]):  # other options: the earlier results are kept, with or without --restart
        code, err = _run(workspace, monkeypatch, capsys, *args, "--topk", "2", *more)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "other options (topk)" in err and "could no longer be resumed" in err and "--overwrite" in err
        assert _files(workspace / "rerun") == first
    code, err = _run(workspace, monkeypatch, capsys, *args, "--topk", "2", "--overwrite")
    assert code == 0, err
    summary = json.loads((workspace / "rerun" / "summary.json").read_text())
    assert [len(r["explained"]) for r in summary["images"]] == [2, 2, 2]


def test_explain_keeps_files_that_were_in_the_folder_before(workspace, monkeypatch, capsys):
    args = ("explain", "imgs/im0.png", "--checkpoint", "m.safetensors", "--class", "0")
    out = workspace / "before"
    out.mkdir()
    (out / "im0_1_a.png").write_bytes(b"mine")  # the name explain --class 0 gives im0's overlay
    for _ in range(2):  # a rerun resumes the refused run, and still keeps the file
        code, err = _run(workspace, monkeypatch, capsys, *args, "--out", "before")
        assert code == 2 and "was there before this run" in err and "--overwrite" in err
        assert (out / "im0_1_a.png").read_bytes() == b"mine"
    assert _run(workspace, monkeypatch, capsys, *args, "--out", "before", "--overwrite")[0] == 0
    assert (out / "im0_1_a.png").read_bytes()[:4] == b"\x89PNG"
    (workspace / "old").mkdir()
    (workspace / "old" / "summary.json").write_text("{}")
    code, err = _run(workspace, monkeypatch, capsys, *args, "--out", "old")
    assert code == 2 and "holds the summary of an earlier run" in err
    assert (workspace / "old" / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("planted", ["im0_1_a.png", ".progress"])
def test_a_symlink_planted_in_the_output_folder_is_refused(workspace, monkeypatch, capsys, planted):
    outside = workspace / f"outside-{planted.strip('.')}"
    out = workspace / f"planted-{planted.strip('.')}"
    out.mkdir()
    if planted == ".progress":
        outside.mkdir()
    else:
        outside.write_bytes(b"precious")
    (out / planted).symlink_to(outside)
    code, err = _run(
        workspace,
        monkeypatch,
        capsys,
        "explain",
        "imgs/im0.png",
        "--checkpoint",
        "m.safetensors",
        "--class",
        "0",
        "--out",
        out.name,
        "--overwrite",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is a symlink" in err
    if planted == ".progress":
        assert list(outside.iterdir()) == []
    else:
        assert outside.read_bytes() == b"precious" and (out / planted).is_symlink()


def test_localize_and_evaluate_keep_earlier_outputs_unless_overwrite(workspace, monkeypatch, capsys):
    args = ("localize", "imgs", "--checkpoint", "m.safetensors", "--out", "boxes")
    assert _run(workspace, monkeypatch, capsys, *args)[0] == 0
    boxes = (workspace / "boxes" / "boxes.json").read_bytes()
    code, err = _run(workspace, monkeypatch, capsys, *args, "--threshold", "0.5")
    assert code == 2 and "--overwrite" in err and (workspace / "boxes" / "boxes.json").read_bytes() == boxes
    assert _run(workspace, monkeypatch, capsys, *args, "--threshold", "0.5", "--overwrite")[0] == 0
    assert json.loads((workspace / "boxes" / "boxes.json").read_text())["images"][0]["threshold"] == 0.5

    (workspace / "metrics.json").write_text('{"old": 1}')
    code, err = _run(
        workspace,
        monkeypatch,
        capsys,
        "evaluate",
        "--checkpoint",
        "m.safetensors",
        "--num-images",
        "2",
        "--json",
        "metrics.json",
    )
    assert code == 2 and "--json" in err and "--overwrite" in err
    assert (workspace / "metrics.json").read_text() == '{"old": 1}'


# ------------------------------------------------------------------------------------------ whole or nothing


def test_a_full_disk_keeps_the_old_file_leaves_no_torn_one_and_says_one_line(workspace, monkeypatch, capsys):
    import camlens.files

    args = ("explain", "imgs", "--checkpoint", "m.safetensors", "--out", "full", "--figure")
    assert _run(workspace, monkeypatch, capsys, *args)[0] == 0
    before = _files(workspace / "full")
    real = os.fdopen

    class FillsUp:
        """A file on a disk that fills up halfway through writing a PNG."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            if not bytes(data[:4]) == b"\x89PNG":  # overlays and figures only
                return self.f.write(data)
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(
        camlens.files.os,
        "fdopen",
        lambda fd, mode="r", *a: FillsUp(real(fd, mode, *a)) if mode == "wb" else real(fd, mode, *a),
    )
    code, err = _run(workspace, monkeypatch, capsys, *args, "--restart")
    monkeypatch.setattr(camlens.files.os, "fdopen", real)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "unchanged" in err
    assert _files(workspace / "full") == before  # every old file intact
    assert not [p.name for p in (workspace / "full").glob(".*.tmp")]  # no torn temporary left behind


def test_explain_killed_at_random_points_leaves_only_whole_files(tmp_path):
    root = checkpoint_and_images(tmp_path, 0)
    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(root / "imgs" / f"p{i}.png")
    cmd = [
        sys.executable,
        "-m",
        "camlens",
        "explain",
        "imgs",
        "--checkpoint",
        "m.safetensors",
        "--out",
        "out",
        "--batch-size",
        "2",
        "--figure",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    draw = random.Random(int(time.time()))
    interrupted = 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not list((root / "out").glob("*.png")):
            time.sleep(0.02)
        time.sleep(draw.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += not (root / "out" / "summary.json").exists()
        _assert_whole(root / "out")
    assert interrupted  # a kill landed mid-run
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_whole(root / "out")
    assert len(json.loads((root / "out" / "summary.json").read_text())["images"]) == 12
    assert not list((root / "out").glob(".*.tmp"))  # the killed runs' temporaries were cleaned up


def test_atomic_write_never_follows_a_symlink_at_the_temporary_name(tmp_path, monkeypatch):
    import camlens.files

    victim = tmp_path / "victim"
    victim.write_text("keep")
    monkeypatch.setattr(camlens.files, "temporary_name", lambda path: path.with_name(".planted"))
    (tmp_path / ".planted").symlink_to(victim)
    write_atomic(tmp_path / "new.json", "{}")
    assert victim.read_text() == "keep" and (tmp_path / "new.json").read_text() == "{}"
    with pytest.raises(OutputError, match="already exists"):
        write_atomic(tmp_path / "new.json", "[]", replace=False)
    assert (tmp_path / "new.json").read_text() == "{}"


# ------------------------------------------------------------------------------------ one bad item, one line


@pytest.mark.filterwarnings("ignore:Glyph")  # DejaVu Sans has no tab or carriage-return glyph; drawn as boxes
def test_class_names_are_text_in_figures_and_never_formulas_in_the_csv(workspace, monkeypatch, capsys):
    code, err = _run(
        workspace,
        monkeypatch,
        capsys,
        "explain",
        "imgs/im0.png",
        "--checkpoint",
        "hostile.safetensors",
        "--topk",
        "10",
        "--figure",
        "--out",
        "hostile",
    )
    assert code == 0, err
    out = workspace / "hostile"
    summary = json.loads((out / "summary.json").read_text())
    explained = summary["images"][0]["explained"]
    assert sorted(e["label"] for e in explained) == sorted(HOSTILE)
    for entry in explained:
        with Image.open(out / entry["figure"]) as figure:
            figure.load()
    rows = list(csv.reader((out / "summary.csv").open(newline="")))
    labels = {row[3] for row in rows[1:]}
    assert labels == {"$x^{5$", "'=1+2", "'-3", "'@SUM(A1)", "'+cmd", "'\tx", "'\rx", "ok", "$a$", "plain"}
    assert all(float(row[4]) >= 0 for row in rows[1:])


def test_negative_scores_stay_numbers_and_text_cells_are_neutralized(tmp_path):
    from camlens.pipeline import Summary

    summary = Summary(
        records=[
            {
                "file": "=evil.png",
                "explained": [
                    {"class": 3, "label": "-1", "score": -1.5, "overlay": "@x.png"},
                    {"class": 4, "label": "cat", "score": 0.25, "overlay": "cat.png"},
                ],
            }
        ]
    )
    summary.write(tmp_path)
    rows = list(csv.reader((tmp_path / "summary.csv").open(newline="")))
    assert rows[1:] == [
        ["'=evil.png", "1", "3", "'-1", "-1.500000", "'@x.png"],
        ["'=evil.png", "2", "4", "cat", "0.250000", "cat.png"],
    ]
    assert [csv_text(v) for v in ("=", "+", "-", "@", "\t", "\r", "a=b", "", "1")] == [
        "'=",
        "'+",
        "'-",
        "'@",
        "'\t",
        "'\r",
        "a=b",
        "",
        "1",
    ]


def test_bad_inputs_of_every_kind_are_skipped_with_their_reason_in_the_summary(workspace, monkeypatch, capsys):
    bad = workspace / "bad"
    bad.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8)).save(bad / "good.png")
    np.save(bad / "good.npy", np.random.default_rng(0).random((20, 24)))
    (bad / "zero.npy").write_bytes(b"")
    np.save(bad / "empty.npy", np.zeros((0, 5)))
    whole = (bad / "good.npy").read_bytes()
    (bad / "cut.npy").write_bytes(whole[: len(whole) // 2])
    png = (bad / "good.png").read_bytes()
    (bad / "cut.png").write_bytes(png[: 2 * len(png) // 3])
    (bad / "empty.png").write_bytes(b"")
    (workspace / "dir.png").mkdir()
    (workspace / "secret.png").write_bytes(png)
    (bad / "link.png").symlink_to(workspace / "secret.png")
    code, err = _run(
        workspace, monkeypatch, capsys, "explain", "bad", "dir.png", "--checkpoint", "m.safetensors", "--out", "skipped"
    )
    assert code == 1
    summary = json.loads((workspace / "skipped" / "summary.json").read_text())
    assert sorted(Path(r["file"]).name for r in summary["images"]) == ["good.npy", "good.png"]
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"zero.npy", "empty.npy", "cut.npy", "cut.png", "empty.png", "dir.png", "link.png"}
    assert "empty array" in reasons["empty.npy"] and "not a readable .npy" in reasons["cut.npy"]
    assert "truncated" in reasons["cut.png"] and "matched no image files" in reasons["dir.png"]
    assert "outside" in reasons["link.png"]
    assert all(name in err for name in reasons)


def test_folder_inputs_pick_up_npy_and_skip_symlinks_leading_outside(tmp_path):
    from camlens.data.images import expand_paths

    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/a.png", "in/b.npy", "in/sub/c.JPG", "in/notes.txt", "secret.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "in" / "inner.png").symlink_to(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "evil.png").symlink_to(tmp_path / "secret.png")
    paths, lines = expand_paths([tmp_path / "in"])
    assert [p.relative_to(tmp_path / "in").as_posix() for p in paths] == ["a.png", "b.npy", "inner.png", "sub/c.JPG"]
    assert lines == [f"{tmp_path / 'in' / 'evil.png'}: a symlink leading outside {tmp_path / 'in'}, skipped"]


def test_an_item_whose_figure_cannot_be_drawn_is_one_skipped_line_and_the_rest_is_done(
    workspace, tmp_path, monkeypatch
):
    import camlens.pipeline as pipeline
    from camlens import CAM
    from camlens.data.images import expand_paths
    from camlens.models import load_model

    def figure(image, cam, path, **kwargs):
        if path.name.startswith("im1_"):
            raise ValueError("bad glyph")
        return real(image, cam, path, **kwargs)

    real = pipeline.three_panel_figure
    monkeypatch.setattr(pipeline, "three_panel_figure", figure)
    loaded = load_model(workspace / "m.safetensors")
    paths, _ = expand_paths([workspace / "imgs"])
    lines: list[str] = []
    with CAM(loaded.model) as cam:
        summary = pipeline.explain_files(
            loaded, cam, paths, tmp_path, render=pipeline.RenderOptions(figure=True), on_error=lines.append
        )
    assert [Path(r["file"]).name for r in summary.records] == ["im0.png", "im2.png"]
    assert summary.skipped == [
        {"path": str(workspace / "imgs" / "im1.png"), "reason": "could not render (ValueError: bad glyph)"}
    ]
    assert lines == [f"{workspace / 'imgs' / 'im1.png'}: could not render (ValueError: bad glyph)"]
    assert json.loads((tmp_path / "summary.json").read_text())["skipped"] == summary.skipped
