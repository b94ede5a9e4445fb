"""Reading image files, which are untrusted input: every failure becomes one :class:`ImageError` line.

Every image file camlens opens goes through :func:`open_image`: Pillow is asked only for the formats in
:data:`FORMATS`, whose plugins are imported here, so no other plugin is consulted or even imported (PostScript,
EPS and PDF run Ghostscript; others are exotic parsers a CAM never needs).  Decoding is bounded twice: per file
(``max_pixels``, checked on the header before any pixel is decoded) and per process (a :class:`DecodeBudget` of
pixels being decoded or held at once, shared by the threads that decode).
"""

from __future__ import annotations

import glob
import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import torch
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)
from torch import Tensor

from ..errors import CamlensError

# the plugins of FORMATS, imported so that Image.open finds them registered and never loads the others
_PLUGINS = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin)
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FOLDER_SUFFIXES = IMAGE_SUFFIXES | {".npy"}  # what a folder input picks up
# per file: a 40-megapixel photo (7700 x 5200) still opens; a CAM only needs the model's input (224 x 224 is
# 0.05 MP), so the limit exists for the full-resolution overlays alone.  Each decoded pixel costs about 15 bytes
# on its way to the model (RGB bytes, then float32), so one file at the limit costs about 0.6 GB.
DEFAULT_MAX_PIXELS = 40_000_000
BUDGET_PIXELS_PER_INPUT = 64  # a decode budget's share per image: 64 times its model input (8 times each side)


class ImageError(CamlensError):
    """An image that cannot be used, with the reason."""


class FormatError(ImageError):
    """A file that is not an image in one of the allowed :data:`FORMATS`."""


class BudgetFull(CamlensError):
    """The process is decoding as many pixels as its :class:`DecodeBudget` allows; retry later."""


class DecodeBudget:
    """A process-wide bound on image pixels being decoded (or held decoded) at once, a counting semaphore in
    pixels: :meth:`hold` takes an image's pixels and gives them back when its block ends.

    An image larger than the whole budget is let through when nothing else is held, so one file at the
    per-file limit always proceeds (the budget is never smaller than that limit in camlens' own callers).

    Args:
        capacity: pixels held at once, at most.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise CamlensError(f"a decode budget needs at least 1 pixel, got {capacity}")
        self.capacity = int(capacity)
        self.held = 0
        self.peak = 0
        self._cond = threading.Condition()

    @classmethod
    def for_batches(
        cls, batch_size: int, input_size: tuple[int, int] | None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> "DecodeBudget":
        """The budget of a run that feeds ``batch_size`` images of ``input_size`` (h, w) to the model at once:
        ``max(max_pixels, batch_size * BUDGET_PIXELS_PER_INPUT * h * w)``.

        Args:
            batch_size: images per model batch (the CLI's ``--batch-size``, serve's model threads x batch).
            input_size: the model's input (h, w); None counts as 224 x 224.
            max_pixels: the per-file limit, the least the budget can be (one file at the limit must fit).

        Returns:
            The budget.
        """
        h, w = input_size or (224, 224)
        return cls(max(max_pixels, max(1, batch_size) * BUDGET_PIXELS_PER_INPUT * h * w))

    def try_acquire(self, pixels: int) -> bool:
        """Take ``pixels`` if they fit now (or nothing is held); never waits.

        Args:
            pixels: the image's width x height.

        Returns:
            Whether they were taken (then :meth:`release` them).
        """
        with self._cond:
            return self._take(pixels)

    def acquire(self, pixels: int, timeout: float | None = None) -> bool:
        """Take ``pixels``, waiting until they fit (at most ``timeout`` seconds; None: as long as it takes).

        Args:
            pixels: the image's width x height.
            timeout: seconds to wait at most.

        Returns:
            Whether they were taken.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._take(pixels):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _take(self, pixels: int) -> bool:
        if self.held and self.held + pixels > self.capacity:
            return False
        self.held += pixels
        self.peak = max(self.peak, self.held)
        return True

    def release(self, pixels: int) -> None:
        """Give back ``pixels`` taken by :meth:`acquire` or :meth:`try_acquire`.

        Args:
            pixels: what was taken.
        """
        with self._cond:
            self.held -= pixels
            self._cond.notify_all()

    @contextmanager
    def hold(self, pixels: int, timeout: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` for the block; :class:`BudgetFull` when they do not fit within ``timeout`` seconds.

        Args:
            pixels: the image's width x height.
            timeout: seconds to wait at most (None: as long as it takes).

        Returns:
            A context manager.
        """
        if not self.acquire(pixels, timeout):
            raise BudgetFull(f"busy: {self.held} of {self.capacity} image pixels are being decoded; retry shortly")
        try:
            yield
        finally:
            self.release(pixels)


@contextmanager
def open_image(source: bytes | Path | str) -> Iterator[Image.Image]:
    """The image in ``source`` (bytes or a file), opened lazily (header only) by content, never by name, in
    one of the allowed :data:`FORMATS` only; :class:`FormatError` for anything else (EPS, PDF, text...).

    Args:
        source: the file's bytes, or its path.

    Returns:
        A context manager giving the opened, not yet decoded, PIL image.
    """
    stream: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    try:
        # a file object, not a name: Pillow would import the plugin of the name's extension (.eps) otherwise
        try:
            img = Image.open(stream, formats=FORMATS)
        except UnidentifiedImageError:
            raise FormatError(f"not an image in a supported format (give {FORMAT_NAMES})") from None
        with img:
            yield img
    finally:
        stream.close()


def image_pixels(source: bytes | Path | str) -> int:
    """An image's width x height, read from its header only; 0 when it cannot be read (decoding says why).

    Args:
        source: the file's bytes, or its path.

    Returns:
        Its pixel count.
    """
    try:
        with open_image(source) as img:
            return img.size[0] * img.size[1]
    except (ImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return 0


def decode_image(data: bytes | Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes or a file into an RGB PIL image, by content (never by name), EXIF orientation applied, in one
    of the allowed :data:`FORMATS`; images over ``max_pixels`` are refused on their header, before decoding.

    Grayscale, palette and 16-bit images are converted; transparent images are composited over white.
    """
    if isinstance(data, (bytes, bytearray)) and not data:
        raise ImageError("empty file")
    try:
        with open_image(data) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"{width}x{height} is over the limit of {max_pixels} pixels")
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"too many pixels ({err})") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # PIL's decoders raise these on corrupt data
        raise ImageError(f"corrupt or truncated image ({err})") from err


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
        raise type(err)(f"{path}: {err}") from None


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
    """Files, folders (searched recursively for image suffixes and ``.npy`` arrays) and glob patterns, in order,
    without repeats.  A symlink in a folder that leads outside it is skipped.

    Returns the paths and one error line per spec that matched nothing and per symlink skipped, so the caller
    can go on with the rest.
    """
    found: dict[Path, None] = {}
    errors = []
    for spec in specs:
        spec = str(spec)
        path = Path(spec)
        if path.is_dir():
            matches, outside = _folder_inputs(path)
            errors += [f"{p}: a symlink leading outside {path}, skipped" for p in outside]
        elif path.exists() or not glob.has_magic(spec):
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not matches:
            errors.append(f"{spec}: matched no image files")
        for match in matches:
            found.setdefault(match, None)
    return list(found), errors


def _folder_inputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """The input files under ``folder`` (image suffixes and ``.npy``), and the symlinks among them that resolve
    outside it."""
    root = folder.resolve()
    inside: list[Path] = []
    outside: list[Path] = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in FOLDER_SUFFIXES or not p.is_file():
            continue
        (inside if p.resolve().is_relative_to(root) else outside).append(p)
    return inside, outside
