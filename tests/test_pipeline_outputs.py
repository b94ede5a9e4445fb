"""The threaded file pipeline writes what the library's reference path gives: the predictions of the model on the
same batch, and overlays pixel for pixel equal to ``render.overlay`` + ``to_pil`` (the path `camlens explain`
took before rendering moved to table lookups in threads), whatever the colormap, blend, format and worker count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _cli_setup import checkpoint_and_images
from camlens import CAM
from camlens.blend import blend, colormap_index, colormap_table
from camlens.data.images import load_image
from camlens.models import load_model
from camlens.pipeline import RenderOptions, explain_files
from camlens.render import _lut, overlay, to_pil


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = checkpoint_and_images(tmp_path_factory.mktemp("pipeline"), 5)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (37, 23), dtype=np.uint8)).save(root / "imgs" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (19, 41, 4), dtype=np.uint8)).save(root / "imgs" / "rgba.png")
    smooth = np.kron(rng.integers(0, 255, (8, 10, 3)), np.ones((6, 6, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(root / "imgs" / "photo.jpg", quality=90)
    (root / "imgs" / "broken.png").write_text("not an image")
    return root


def test_jet_table_without_matplotlib_equals_matplotlibs():
    assert torch.equal(colormap_table("jet"), _lut("jet"))


@pytest.mark.parametrize(
    "colormap, alpha, classic",
    [
        ("jet", 0.5, False),
        ("jet", 0.35, False),
        ("jet", 1.0, False),
        ("jet", 0.0, False),
        ("jet", 0.5, True),
        ("viridis", 0.7, False),
    ],
)
def test_table_blend_equals_the_reference_overlay_bytes(colormap, alpha, classic):
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 29, 43), generator=gen).to(torch.uint8)
    for scale in (0.1, 1.0, 30.0):
        cam = torch.randn(5, 7, generator=gen) * scale
        want = np.asarray(to_pil(overlay(image.float().div(255), cam, colormap=colormap, alpha=alpha, classic=classic)))
        got = blend(image.permute(1, 2, 0).numpy().copy(), colormap_index(cam, (29, 43)), colormap, alpha, classic)
        assert np.array_equal(got, want), f"{int((got != want).sum())} bytes differ from render.overlay"


@pytest.mark.parametrize(
    "render, workers, topk",
    [
        (RenderOptions(), 2, 2),
        (RenderOptions(colormap="viridis", alpha=0.3, image_format="jpg"), 1, 1),
        (RenderOptions(classic=True), 3, 1),
    ],
)
def test_overlays_and_scores_equal_the_reference_path(workspace, tmp_path, render, workers, topk):
    loaded = load_model(workspace / "m.safetensors")
    paths = sorted((workspace / "imgs").iterdir())
    with CAM(loaded.model) as explainer:
        summary = explain_files(
            loaded, explainer, paths, tmp_path, topk=topk, batch_size=3, workers=workers, render=render, resume=False
        )
    assert len(summary.errors) == 1 and "broken.png" in summary.errors[0]
    good = [p for p in paths if p.name != "broken.png"]
    assert [r["file"] for r in summary.records] == [str(p) for p in good]
    on_disk = json.loads((tmp_path / "summary.json").read_text())["images"]
    assert on_disk == summary.records
    # the reference: the same batches of 3 files (the broken one leaves its batch with 2), through the library
    batches = [[p for p in paths[i : i + 3] if p.name != "broken.png"] for i in range(0, len(paths), 3)]
    with CAM(loaded.model) as reference:
        for batch in batches:
            images = [load_image(p) for p in batch]
            res = reference(torch.cat([loaded.preprocess(img) for img in images]), topk=topk)
            probs = res.logits.softmax(-1)
            for i, (path, image) in enumerate(zip(batch, images)):
                record = next(r for r in summary.records if r["file"] == str(path))
                assert record["size"] == [image.shape[-1], image.shape[-2]]
                assert [p["class"] for p in record["predictions"]] == probs[i].topk(5).indices.tolist()
                assert [p["score"] for p in record["predictions"]] == probs[i].topk(5).values.tolist()
                for rank, entry in enumerate(record["explained"]):
                    assert entry["class"] == int(res.classes[i, rank])
                    want = to_pil(
                        overlay(
                            image,
                            res.maps[i, rank],
                            colormap=render.colormap,
                            alpha=render.alpha,
                            classic=render.classic,
                        )
                    )
                    if render.image_format == "jpg":  # the reference bytes through the same encoder settings
                        buffer = tmp_path / "want.jpg"
                        want.save(buffer, quality=92)
                        want = Image.open(buffer)
                    got = Image.open(tmp_path / entry["overlay"])
                    assert got.format == ("JPEG" if render.image_format == "jpg" else "PNG")
                    assert np.array_equal(np.asarray(got), np.asarray(want)), entry["overlay"]


def test_a_bad_colormap_fails_before_any_file_is_written(workspace, tmp_path):
    from camlens.capture import CamlensError

    loaded = load_model(workspace / "m.safetensors")
    with CAM(loaded.model) as explainer, pytest.raises(CamlensError, match="unknown colormap 'nope'"):
        explain_files(
            loaded,
            explainer,
            sorted((workspace / "imgs").iterdir()),
            tmp_path / "out",
            render=RenderOptions(colormap="nope"),
            resume=False,
        )
    assert not (tmp_path / "out").exists() or not any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (7, 1), (37, 53), (120, 161)])
def test_png_writer_round_trips_through_pil_with_valid_checksums(tmp_path, height, width):
    from camlens.png import write_png

    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    write_png(rgb, tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as img:
        img.verify()  # chunk CRCs and structure
    with Image.open(tmp_path / "x.png") as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (width, height)
        assert np.array_equal(np.asarray(img), rgb)


def test_npy_images_and_volumes_equal_the_reference_render_path(workspace, tmp_path):
    """``.npy`` inputs (pixels not bytes) keep the torch render path: overlays equal ``render.overlay`` + ``to_pil``,
    a volume's map is saved upsampled to the volume and its overlay is ``volume_panels``' projection."""
    from camlens.data.arrays import load_array, prepare_volume
    from camlens.maps import upsample
    from camlens.methods.gradient import GradCAM
    from camlens.render import volume_panels

    rng = np.random.default_rng(5)
    np.save(tmp_path / "flat.npy", rng.random((21, 26)).astype(np.float32) * 3 - 1)  # min-max scaled on load
    loaded = load_model(workspace / "m.safetensors")
    with CAM(loaded.model) as explainer:
        summary = explain_files(loaded, explainer, [tmp_path / "flat.npy"], tmp_path / "o2", resume=False)
        image = load_array(tmp_path / "flat.npy", 2, 10**6)
        res = explainer(loaded.preprocess(image))
    (entry,) = summary.records[0]["explained"]
    want = np.asarray(to_pil(overlay(image, res.maps[0, 0])))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o2" / entry["overlay"])), want)

    np.save(tmp_path / "vol.npy", rng.random((5, 20, 20)).astype(np.float32))
    loaded = load_model(arch="r3d_18", weights=None, size=16)
    with GradCAM(loaded.model) as explainer:
        summary = explain_files(loaded, explainer, [tmp_path / "vol.npy"], tmp_path / "o3", resume=False)
        volume = load_array(tmp_path / "vol.npy", 3, 10**6)
        pre = loaded.preprocess
        res = explainer(prepare_volume(volume, pre.size, pre.mean, pre.std, 3))
    (entry,) = summary.records[0]["explained"]
    cam = res.maps[0, 0]
    saved = np.load(tmp_path / "o3" / entry["overlay"].replace(".png", ".npy"))
    assert np.array_equal(saved, upsample(cam.float(), (5, 20, 20)).numpy())
    mip = np.asarray(to_pil(volume_panels(volume, cam).mip))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o3" / entry["overlay"])), mip)


def test_decoding_runs_at_most_two_batches_ahead_of_the_model(workspace, tmp_path, monkeypatch):
    """Memory is bounded: when the model takes batch k, at most batches k .. k + AHEAD have been sent to decode."""
    import camlens.pipeline as pipeline

    decoded: list[str] = []
    real = pipeline.read_rgb
    monkeypatch.setattr(pipeline, "read_rgb", lambda path, limit: decoded.append(path.name) or real(path, limit))
    loaded = load_model(workspace / "m.safetensors")
    paths = sorted(p for p in (workspace / "imgs").iterdir() if p.name != "broken.png") * 3  # 24 files, batches of 2
    seen: list[int] = []
    with CAM(loaded.model) as explainer:

        def counting(x, *args, **kwargs):
            seen.append(len(decoded))
            return explainer(x, *args, **kwargs)

        explain_files(loaded, counting, paths, tmp_path, batch_size=2, workers=3, resume=False)
    assert len(seen) == 12 and len(decoded) == 24
    assert all(count <= 2 * (k + 1 + pipeline.AHEAD) for k, count in enumerate(seen)), seen


def test_a_batch_whose_write_failed_is_not_logged_so_resume_redoes_it(workspace, tmp_path, monkeypatch):
    """A batch counts as done only once its files are on disk: after a failed write, a resumed run writes it."""
    import camlens.pipeline as pipeline

    loaded = load_model(workspace / "m.safetensors")
    paths = sorted(p for p in (workspace / "imgs").iterdir() if p.name != "broken.png")
    real = pipeline.write_png

    def failing(pixels, path):
        if path.name.startswith("im3_"):
            raise OSError("disk full")
        real(pixels, path)

    monkeypatch.setattr(pipeline, "write_png", failing)
    with CAM(loaded.model) as explainer:
        with pytest.raises(OSError, match="disk full"):
            explain_files(loaded, explainer, paths, tmp_path / "out", batch_size=2, run_key={"k": 1})
        monkeypatch.setattr(pipeline, "write_png", real)
        resumed = explain_files(loaded, explainer, paths, tmp_path / "out", batch_size=2, run_key={"k": 1})
        full = explain_files(loaded, explainer, paths, tmp_path / "full", batch_size=2, run_key={"k": 1})
    assert resumed.records == full.records and len(resumed.records) == len(paths)
    for record in resumed.records:
        name = record["explained"][0]["overlay"]
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "out" / name)), np.asarray(Image.open(tmp_path / "full" / name))
        ), name


def test_input_rank_reads_convolution_subclasses():
    """timm's "same"-padding convolutions subclass nn.Conv2d: a model starting with one reads 2-D images."""
    from camlens.data.arrays import input_rank

    class SameConv(torch.nn.Conv2d):
        pass

    assert input_rank(torch.nn.Sequential(SameConv(3, 4, 3))) == 2
    assert input_rank(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3))) == 3
    assert input_rank(torch.nn.Sequential(torch.nn.Linear(3, 4))) == 2
