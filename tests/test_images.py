import numpy as np
import pytest
import torch
from PIL import Image

from camlens.data.images import ImageError, decode_image, expand_paths, load_image


def _save(arr, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_grayscale_palette_rgba_and_16bit_become_rgb(tmp_path):
    gray = _save(np.full((4, 5), 128, np.uint8), tmp_path / "g.png")
    assert torch.allclose(load_image(gray), torch.full((3, 4, 5), 128 / 255))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest fully transparent over white
    img = load_image(_save(rgba, tmp_path / "a.png"))
    assert img[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and img[:, 1, 1].tolist() == [1.0, 1.0, 1.0]
    pal = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    pal.save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").shape == (3, 4, 4)
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "i16.png")
    assert torch.allclose(load_image(tmp_path / "i16.png"), torch.ones(3, 3, 3))


def test_bad_files_give_one_line_reasons_naming_the_file(tmp_path):
    good = _save(np.zeros((64, 64, 3), np.uint8), tmp_path / "x.jpg")
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {
        "trunc.jpg": "corrupt or truncated",
        "text.png": "not an image",
        "empty.png": "not an image",
        "missing.png": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageError, match=reason) as info:
            load_image(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(good, max_pixels=100)
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"")


def test_content_sniffing_ignores_the_file_name(tmp_path):
    path = _save(np.zeros((3, 3, 3), np.uint8), tmp_path / "really_png.jpg", format="PNG")
    assert load_image(path).shape == (3, 3, 3)


def test_expand_paths_folders_globs_and_misses(tmp_path):
    (tmp_path / "sub").mkdir()
    a = _save(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.png")
    b = _save(np.zeros((2, 2, 3), np.uint8), tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("x")
    paths, errors = expand_paths([tmp_path, str(tmp_path / "*.png"), str(tmp_path / "none*.png")])
    assert paths == [a, b]
    assert len(errors) == 1 and "none*.png" in errors[0]
