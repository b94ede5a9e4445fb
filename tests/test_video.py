"""`camlens explain clip.mp4`: a video explained frame by frame with a 2-D classifier."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from camlens.blend import blend, colormap_index
from camlens.methods import CAM
from camlens.models import GapNet, LoadedModel, Preprocess, save_checkpoint
from camlens.pipeline import RenderOptions
from camlens.video import VideoOptions, explain_video

av = pytest.importorskip("av")

FRAMES, SIDE = 20, 48


def _frames() -> list[np.ndarray]:
    """A bright square moving over a textured background, one (SIDE, SIDE, 3) uint8 frame per step."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 90, (SIDE, SIDE, 3), dtype=np.uint8)
    frames = []
    for t in range(FRAMES):
        frame = background.copy()
        frame[8:24, 2 + t : 18 + t] = (240, 200, 40)
        frames.append(frame)
    return frames


def _write_clip(path: Path, codec: str, pix_fmt: str) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = SIDE
        stream.pix_fmt = pix_fmt
        for pixels in _frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))


def _read(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    torch.manual_seed(0)
    save_checkpoint(
        root / "m.safetensors",
        GapNet(3).eval(),
        arch="gapnet",
        class_names=["ant", "bee", "cow"],
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    _write_clip(root / "clip.mp4", "mpeg4", "yuv420p")
    _write_clip(root / "lossless.mkv", "ffv1", "bgr0")
    (root / "broken.mp4").write_bytes((root / "clip.mp4").read_bytes()[:200])
    (root / "text.mp4").write_text("not a video")
    return root


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "camlens", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _loaded(root: Path) -> LoadedModel:
    from camlens.models import load_model

    return load_model(root / "m.safetensors")


def test_each_overlay_frame_is_the_image_overlay_of_that_frame(workspace, tmp_path):
    """Lossless in, lossless out: every output frame equals blend(frame, colormap index of its map) for the maps
    the explainer gives on the same batch of frames, so the video path renders exactly as the image path."""
    loaded = _loaded(workspace)
    frames = _read(workspace / "lossless.mkv")
    assert np.array_equal(frames[3], _frames()[3])  # the input really is lossless
    with CAM(loaded.model) as cam:
        record = explain_video(
            loaded, cam, workspace / "lossless.mkv", tmp_path, topk=2, batch_size=8, options=VideoOptions(codec="ffv1")
        )
        expected = {1: [], 2: []}
        for start in range(0, FRAMES, 8):
            batch = np.stack(frames[start : start + 8])
            res = cam(loaded.preprocess(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255), topk=2)
            for i, frame in enumerate(batch):
                for rank in (1, 2):
                    expected[rank].append(blend(frame, colormap_index(res.maps[i, rank - 1], (SIDE, SIDE))))
    assert record["frames"] == FRAMES and record["size"] == [SIDE, SIDE]
    for rank in (1, 2):
        written = _read(tmp_path / f"lossless_{rank}.mkv")
        assert len(written) == FRAMES
        for got, want in zip(written, expected[rank]):
            assert np.array_equal(got, want)
    table = json.loads((tmp_path / "lossless_frames.json").read_text())["per_frame"]
    assert [row["frame"] for row in table] == list(range(FRAMES))
    assert table[5]["time"] == pytest.approx(0.5)  # 10 frames a second


def test_every_and_max_frames_pick_the_frames_and_the_rate(workspace, tmp_path):
    loaded = _loaded(workspace)
    with CAM(loaded.model) as cam:
        record = explain_video(
            loaded,
            cam,
            workspace / "lossless.mkv",
            tmp_path,
            batch_size=3,
            options=VideoOptions(codec="ffv1", every=3, max_frames=5),
        )
    assert record["frames"] == 5 and record["rate"] == "10/3"
    rows = list(csv.DictReader((tmp_path / "lossless_frames.csv").open()))
    assert [int(r["frame"]) for r in rows] == [0, 3, 6, 9, 12]
    assert len(_read(tmp_path / "lossless_1.mkv")) == 5


def test_fixed_classes_are_explained_in_every_frame(workspace, tmp_path):
    loaded = _loaded(workspace)
    with CAM(loaded.model) as cam:
        explain_video(
            loaded,
            cam,
            workspace / "clip.mp4",
            tmp_path,
            classes=[2, 0],
            render=RenderOptions(),
            options=VideoOptions(codec="mpeg4", max_frames=4),
        )
    table = json.loads((tmp_path / "clip_frames.json").read_text())["per_frame"]
    assert all([e["class"] for e in row["explained"]] == [2, 0] for row in table)


def test_cli_writes_an_overlay_video_and_reports_bad_videos_in_one_line(workspace):
    proc = _run(
        "explain",
        "clip.mp4",
        "broken.mp4",
        "text.mp4",
        "--checkpoint",
        "m.safetensors",
        "--out",
        "out",
        "--quiet",
        cwd=workspace,
    )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("camlens:")]
    assert len(errors) == 2 and all(line.count("\n") == 0 for line in errors)
    assert "broken.mp4" in proc.stderr and "text.mp4" in proc.stderr and "Traceback" not in proc.stderr
    out = workspace / "out"
    frames = _read(out / "clip_1.mp4")
    assert len(frames) == FRAMES and frames[0].shape == (SIDE, SIDE, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(r["file"]).name for r in summary["images"]] == ["clip.mp4"]
    assert len(summary["errors"]) == 2
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind by the failed ones


def test_bad_video_options_are_one_line(workspace):
    proc = _run(
        "explain", "clip.mp4", "--checkpoint", "m.safetensors", "--video-codec", "divx", "--out", "o2", cwd=workspace
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "divx" in proc.stderr


def test_without_pyav_the_error_says_what_to_install(workspace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    loaded = _loaded(workspace)
    from camlens.capture import CamlensError

    with CAM(loaded.model) as cam, pytest.raises(CamlensError, match=r"pip install 'camlens\[video\]'"):
        explain_video(loaded, cam, workspace / "clip.mp4", tmp_path)
