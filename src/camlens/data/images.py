"""Reading image files, which are untrusted input: every failure becomes one :class:`ImageError` line."""

from __future__ import annotations

import glob
import io
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..errors import CamlensError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_MAX_PIXELS = 50_000_000


class ImageError(CamlensError):
    """An image that cannot be used, with the reason."""


def decode_image(data: bytes | Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes or a file into an RGB PIL image, by content (never by name), EXIF orientation applied.

    Grayscale, palette and 16-bit images are converted; transparent images are composited over white.
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    if isinstance(data, (bytes, bytearray)) and not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(f"{width}x{height} is over the limit of {max_pixels} pixels")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(_reason(err)) from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # PIL's decoders raise these on corrupt data
        raise ImageError(f"corrupt or truncated image ({err})") from err


def _reason(err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not an image in a supported format"
    return f"too many pixels ({err})"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray((arr / peak * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> Tensor:
    """(3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def array_to_tensor(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 to (3, H, W) float32 in [0, 1], the values :func:`to_tensor` gives."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as a writable (H, W, 3) uint8 array (decoded as :func:`decode_image` does);
    :class:`ImageError` naming the file otherwise.  Only numpy and PIL work here (no torch), so decoding threads
    do not compete with the model for torch's intra-op threads."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder")
    try:
        return np.array(decode_image(path, max_pixels), dtype=np.uint8)
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from None


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """An image file as a (3, H, W) float32 tensor in [0, 1]; :class:`ImageError` naming the file otherwise.

    Args:
        path: the file (any format PIL reads; EXIF orientation applied).
        max_pixels: larger images are refused (decompression bombs).

    Returns:
        The image (3, H, W), float32 in [0, 1].
    """
    return array_to_tensor(read_rgb(path, max_pixels))


def as_image(image: str | Path | Image.Image | np.ndarray | Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """A file (read with :func:`load_image`), a PIL image, an array (H, W) or (H, W, 3|4), uint8 or float in
    [0, 1], or a tensor (3, H, W) in [0, 1], as a (3, H, W) float32 tensor in [0, 1].

    Args:
        image: the image in any of those forms.
        max_pixels: larger image files are refused (decompression bombs).

    Returns:
        The image (3, H, W), float32 in [0, 1].
    """
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels)
    if isinstance(image, Image.Image):
        return to_tensor(_to_rgb(image))
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ImageError(f"an image tensor must be (3, H, W) in [0, 1], got {tuple(image.shape)}")
        return image.float()
    if isinstance(image, np.ndarray):
        arr = image[..., None].repeat(3, -1) if image.ndim == 2 else image
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        if arr.dtype == np.uint8:
            return to_tensor(_to_rgb(Image.fromarray(arr)))
        if arr.dtype.kind != "f" or arr.shape[-1] != 3:
            raise ImageError(f"an image array must be uint8, or float RGB in [0, 1]; got {arr.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).clamp(0, 1)
    raise ImageError(f"not an image: {type(image).__name__} (give a path, a PIL image, an array or a tensor)")


def expand_paths(specs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively for image suffixes) and glob patterns, in order, without repeats.

    Returns the paths and one error line per spec that matched nothing, so the caller can go on with the rest.
    """
    found: dict[Path, None] = {}
    errors = []
    for spec in specs:
        spec = str(spec)
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists() or not glob.has_magic(spec):
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not matches:
            errors.append(f"{spec}: matched no image files")
        for match in matches:
            found.setdefault(match, None)
    return list(found), errors
