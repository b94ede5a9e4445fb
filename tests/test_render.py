import numpy as np
import pytest
import torch
from PIL import Image

from camlens.capture import CamlensError
from camlens.render import colorize, draw_boxes, overlay, save_image, three_panel_figure


def test_jet_colormap_ends_are_dark_blue_and_dark_red():
    rgb = colorize(torch.tensor([[0.0, 1.0]]))
    assert rgb[2, 0, 0] > 0.4 and rgb[0, 0, 0] == 0 and rgb[1, 0, 0] == 0  # dark blue
    assert rgb[0, 0, 1] > 0.4 and rgb[1, 0, 1] == 0 and rgb[2, 0, 1] == 0  # dark red


def test_overlay_blend_formulas():
    image = torch.full((3, 4, 4), 0.6)
    cam = torch.zeros(2, 2)
    cam[0, 0] = 1.0
    heat = colorize(
        torch.nn.functional.interpolate(
            ((cam - cam.min()) / (cam.max() - cam.min()))[None, None], size=(4, 4), mode="bilinear", align_corners=False
        )[0, 0]
    )
    torch.testing.assert_close(overlay(image, cam, alpha=0.25), 0.75 * image + 0.25 * heat)
    torch.testing.assert_close(overlay(image, cam, classic=True), (0.3 * heat + 0.5 * image).clamp(0, 1))


def test_overlay_is_at_the_image_size_and_rejects_bad_alpha():
    assert overlay(torch.rand(3, 37, 53), torch.rand(7, 7)).shape == (3, 37, 53)
    with pytest.raises(CamlensError, match="alpha"):
        overlay(torch.rand(3, 8, 8), torch.rand(2, 2), alpha=1.5)
    with pytest.raises(CamlensError, match="colormap"):
        overlay(torch.rand(3, 8, 8), torch.rand(2, 2), colormap="nope")


def test_save_png_and_jpeg_and_boxes(tmp_path):
    img = torch.zeros(3, 20, 30)
    boxed = draw_boxes(img, [[5, 4, 15, 10]], colors=("red",), width=1)
    arr = np.asarray(boxed)
    assert tuple(arr[4, 5]) == (255, 0, 0) and tuple(arr[9, 14]) == (255, 0, 0)  # exclusive right/bottom edges
    assert tuple(arr[10, 15]) == (0, 0, 0)
    save_image(boxed, tmp_path / "a.png")
    save_image(img, tmp_path / "a.jpg")
    assert Image.open(tmp_path / "a.png").format == "PNG" and Image.open(tmp_path / "a.jpg").format == "JPEG"
    with pytest.raises(CamlensError):
        save_image(img, tmp_path / "a.gif")


def test_three_panel_figure_is_written(tmp_path):
    path = three_panel_figure(torch.rand(3, 32, 32), torch.rand(4, 4), tmp_path / "fig.png", title="cat")
    assert Image.open(path).size[0] > 3 * Image.open(path).size[1] / 2
