"""The built-in localization dataset: handwritten digit plates pasted onto cluttered photo crops, made offline.

Every image is generated from data that installed packages carry: the 1797 handwritten digits of scikit-learn
(``load_digits``, 8x8, smoothly upscaled) and photos bundled with scikit-image.  The object is a plate (a rounded
rectangle of random colour) carrying one handwritten digit in a contrasting colour, like a house number; it is
pasted at a random size, position and rotation onto a random crop of a random photo.  The ground truth is exact
because the mattes are known: ``mask`` is where the plate or the ink covers at least half a pixel and ``box`` is
the tight box of the mask (``[x0, y0, x1, y1]``, exclusive right/bottom edges).  Backgrounds, colours and
placements are drawn independently of the class, so the only evidence for a label is the handwriting.

The train, val and test splits draw digits from disjoint shares of each class's instances and use different
random streams.  Generation is vectorized (one ``grid_sample`` over a photo atlas for the backgrounds, one
``grid_sample`` for the digit warp) and cached in memory as uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import CamlensError

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_SIZES = {"train": 6000, "val": 500, "test": 1000}
# Photos shipped inside scikit-image's wheel (no download): colour photos and grey textures/scenes.
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "page",
    "text",
    "moon",
)
PHOTO_SIZE = 128
# Each class's digit instances are cut, in order, into disjoint train / val / test shares.
SPLIT_SHARES = {"train": 0.55, "val": 0.15, "test": 0.30}
_SPLIT_STREAM = {"train": 1, "val": 3, "test": 2}
PLATE = (0.85, 1.1, 0.35)  # plate half width, half height and corner radius, in units of half the digit grid
_TEMPLATE = 32  # digits are upscaled once to this resolution (bicubic) before being warped


@lru_cache(maxsize=1)
def _digit_templates() -> tuple[Tensor, Tensor]:
    """All 1797 scikit-learn digits as smooth (1797, 1, 32, 32) ink intensities in [0, 1], and their labels.

    The 8x8 grids get a one-cell zero border first so the bicubic upscale fades to zero at the edge."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grid = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    padded = F.pad(grid, (1, 1, 1, 1))
    size = _TEMPLATE * 10 // 8  # 8 cells -> 32 px, so 10 cells -> 40 px; the border is cropped back off
    up = F.interpolate(padded, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    border = (size - _TEMPLATE) // 2
    return up[..., border : border + _TEMPLATE, border : border + _TEMPLATE].contiguous(), torch.as_tensor(
        digits.target, dtype=torch.long
    )


@lru_cache(maxsize=1)
def _photos() -> Tensor:
    """The bundled photos as a (P, 3, 128, 128) float stack: centre square, area-resized; grey ones as RGB."""
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            image = torch.as_tensor(getattr(skimage.data, name)())
        except Exception as err:  # a trimmed or changed install; the dataset must not silently change
            raise CamlensError(
                f"scikit-image's bundled photo {name!r} cannot be read ({type(err).__name__}); "
                "reinstall scikit-image (pip install --force-reinstall scikit-image)"
            ) from err
        image = image.float() / 255.0
        image = image[None].expand(3, -1, -1) if image.ndim == 2 else image[..., :3].permute(2, 0, 1)
        h, w = image.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = image[:, top : top + side, left : left + side]
        out.append(F.interpolate(square[None], size=(PHOTO_SIZE, PHOTO_SIZE), mode="area")[0])
    return torch.stack(out)


@lru_cache(maxsize=1)
def _atlas() -> tuple[Tensor, Tensor]:
    """All photos tiled into one (3, H, W) image with a 2-pixel gap, and each photo's top-left (x, y) in it."""
    photos = _photos()
    count = photos.shape[0]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell = PHOTO_SIZE + 2
    atlas = torch.zeros(3, rows * cell, cols * cell)
    origins = torch.empty(count, 2)
    for i in range(count):
        top, left = (i // cols) * cell, (i % cols) * cell
        atlas[:, top : top + PHOTO_SIZE, left : left + PHOTO_SIZE] = photos[i]
        origins[i] = torch.tensor([left, top], dtype=torch.float32)
    return atlas, origins


def split_instances(split: Literal["train", "val", "test"]) -> Tensor:
    """Indices into the scikit-learn digits that a split may use: per class, consecutive disjoint shares
    (55% train, 15% val, 30% test), so no handwritten instance appears in two splits."""
    _, labels = _digit_templates()
    names = list(SPLIT_SHARES)
    chosen = []
    for c in range(len(CLASSES)):
        idx = (labels == c).nonzero().flatten()
        bounds: list[float] = [0]
        for name in names:
            bounds.append(bounds[-1] + SPLIT_SHARES[name])
        cuts = [int(round(b * len(idx))) for b in bounds]
        k = names.index(split)
        chosen.append(idx[cuts[k] : cuts[k + 1]])
    return torch.cat(chosen)


@dataclass
class SceneParams:
    """The random draws behind N images (all tensors have N rows)."""

    label: Tensor  # (N,) long
    digit: Tensor  # (N,) long, index into the scikit-learn digits
    photo: Tensor  # (N,) long
    crop: Tensor  # (N, 4) float, photo pixels [x0, y0, x1, y1]
    flip: Tensor  # (N,) bool, mirror the background
    tint: Tensor  # (N, 3) float, per-channel background gain
    centre: Tensor  # (N, 2) float, digit centre (x, y) in output pixels
    extent: Tensor  # (N, 2) float, side of the digit's 8x8 grid (x, y) in output pixels
    angle: Tensor  # (N,) float, radians
    plate_hue: Tensor  # (N,) float in [0, 1)
    plate_value: Tensor  # (N,) float, plate brightness
    ink_hue: Tensor  # (N,) float in [0, 1)
    ink_value: Tensor  # (N,) float in [0, 1): how far the ink's brightness sits from the plate's


def sample_params(split: Literal["train", "val", "test"], num_images: int, seed: int, image_size: int) -> SceneParams:
    """Draw the scene parameters for a split from one seeded generator: balanced labels; a digit instance of the
    label from the split's share; a photo crop of 30-80% of the photo's side, mirrored half the time, tinted
    0.6-1 per channel; a digit grid of 38-72% of the image side (width jittered +-10%), rotated up to 15 degrees,
    centred anywhere that keeps the upright plate inside the image.  Nothing but the digit depends on the label."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_STREAM[split])
    n = num_images
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731

    label = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    pool = split_instances(split)
    _, all_labels = _digit_templates()
    pool_labels = all_labels[pool]
    order = torch.argsort(pool_labels, stable=True)
    pool = pool[order]
    counts = torch.bincount(pool_labels, minlength=len(CLASSES))
    offsets = torch.cumsum(counts, 0) - counts
    digit = pool[offsets[label] + (u(n) * counts[label]).long().clamp_max(counts[label] - 1)]

    num_photos = _photos().shape[0]
    photo = torch.randint(num_photos, (n,), generator=g)
    side = PHOTO_SIZE * (0.3 + 0.5 * u(n))
    corner = (PHOTO_SIZE - side)[:, None] * u(n, 2)
    crop = torch.cat([corner, corner + side[:, None]], 1)
    flip = u(n) < 0.5
    tint = 0.6 + 0.4 * u(n, 3)

    size = image_size * (0.38 + 0.34 * u(n))
    extent = size[:, None] * torch.stack([0.9 + 0.2 * u(n), torch.ones(n)], 1)
    margin = extent * torch.tensor(PLATE[:2]) / 2
    centre = margin + (image_size - 2 * margin) * u(n, 2)
    angle = (u(n) * 2 - 1) * math.radians(15)
    return SceneParams(
        label, digit, photo, crop, flip, tint, centre, extent, angle, u(n), 0.15 + 0.75 * u(n), u(n), u(n)
    )


def render_backgrounds(p: SceneParams, image_size: int) -> Tensor:
    """(N, 3, S, S) photo crops, bilinear, flipped and tinted: one ``grid_sample`` over an atlas of all photos."""
    atlas, origins = _atlas()
    n = p.label.shape[0]
    frac = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size  # output pixel centres in [0, 1]
    fx = torch.where(p.flip[:, None], 1 - frac, frac)  # (N, S)
    x0, y0, x1, y1 = (p.crop + origins[p.photo].repeat(1, 2)).unbind(1)
    ax = x0[:, None] + fx * (x1 - x0)[:, None]  # atlas pixel coordinates
    ay = y0[:, None] + frac * (y1 - y0)[:, None]
    h, w = atlas.shape[-2:]
    grid = torch.stack(torch.broadcast_tensors((2 * ax / w - 1)[:, None, :], (2 * ay / h - 1)[:, :, None]), -1)
    bg = F.grid_sample(atlas[None], grid.view(1, n * image_size, image_size, 2), align_corners=False)
    bg = bg.view(3, n, image_size, image_size).transpose(0, 1)
    return (bg * p.tint[:, :, None, None]).clamp(0, 1)


def render_mattes(p: SceneParams, image_size: int) -> tuple[Tensor, Tensor]:
    """(N, 1, S, S) mattes in [0, 1] of the warped digit's ink and of its plate.

    An output pixel centre X (continuous coordinates: pixel x covers [x, x+1)) maps into the digit's frame
    ([-1, 1] over its 8x8 grid) by v = D R(-angle) (X - centre), D = diag(2 / extent).  In ``affine_grid``'s
    normalized output units u = 2X/S - 1 that is v = A (u - c), A = D R(-angle) S/2, c = 2 centre / S - 1.
    The ink matte is a steep ramp of the upscaled digit (0.3 -> 0, 0.4 -> 1), anti-aliased but thin.  The plate
    is the rounded rectangle |v_x| <= 0.85, |v_y| <= 1.1 (corner radius 0.35) of that frame, anti-aliased over one
    pixel of its signed distance d: matte = clamp(1/2 - d, 0, 1).
    """
    templates, _ = _digit_templates()
    n = p.label.shape[0]
    cos, sin = torch.cos(p.angle), torch.sin(p.angle)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R(-angle)
    a = ((2.0 / p.extent) * (image_size / 2.0))[:, :, None] * rot
    centre_n = 2.0 * p.centre / image_size - 1.0
    theta = torch.cat([a, -(a @ centre_n[:, :, None])], 2)
    grid = F.affine_grid(theta, [n, 1, image_size, image_size], align_corners=False)  # (N, S, S, 2) = v
    ink = F.grid_sample(templates[p.digit], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    half_x, half_y, radius = PLATE
    q = grid.abs() - torch.tensor([half_x - radius, half_y - radius])
    dist = q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0) - radius  # frame units
    dist_px = dist * (p.extent.mean(1) / 2)[:, None, None]
    return ((ink - 0.3) / 0.1).clamp(0, 1), (0.5 - dist_px).clamp(0, 1)[:, None]


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    k = torch.stack([torch.full_like(h, 5.0), torch.full_like(h, 3.0), torch.ones_like(h)], -1)
    k = (k + 6 * h[:, None]) % 6
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 brightness weights


def colours(p: SceneParams) -> tuple[Tensor, Tensor]:
    """(N, 3) plate and ink colours: a muted plate, and saturated ink whose brightness (luma) is set on the
    other side of the plate's: dark ink (luma 0..0.2) on a light plate, light ink (0.7..0.95) on a dark one."""
    luma = torch.tensor(LUMA)
    plate = _hsv_to_rgb(p.plate_hue, torch.full_like(p.plate_hue, 0.35), p.plate_value)
    base = _hsv_to_rgb(p.ink_hue, torch.full_like(p.ink_hue, 0.8), torch.ones_like(p.ink_hue))
    base_luma = base @ luma
    dark_plate = plate @ luma < 0.5
    light_target = 0.7 + 0.25 * p.ink_value
    lighten = ((light_target - base_luma) / (1 - base_luma)).clamp(0, 1)[:, None]
    light = base + (1 - base) * lighten
    dark = base * (0.2 * p.ink_value / base_luma)[:, None]
    return plate, torch.where(dark_plate[:, None], light, dark)


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight boxes (N, 4) ``[x0, y0, x1, y1]`` with exclusive right/bottom edges of boolean masks (N, H, W).
    An empty mask gives ``[0, 0, 0, 0]``."""
    n, h, w = masks.shape
    cols, rows = masks.any(1), masks.any(2)
    xs = torch.arange(w).expand(n, w)
    ys = torch.arange(h).expand(n, h)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs + 1, 0).amax(1)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys + 1, 0).amax(1)
    empty = ~cols.any(1)
    box = torch.stack([x0, y0, x1, y1], 1).masked_fill(empty[:, None], 0)
    return box.float()


@dataclass
class Rendered:
    """One split as stacked tensors: images stored as uint8 (N, 3, S, S) to keep the cache small."""

    images: Tensor  # uint8 (N, 3, S, S)
    labels: Tensor  # long (N,)
    boxes: Tensor  # float32 (N, 4)
    masks: Tensor  # bool (N, S, S)


def render(p: SceneParams, image_size: int, chunk: int = 1024) -> Rendered:
    """Composite plate then ink over the background, ``out = (1 - alpha) * under + alpha * colour``, in chunks."""
    n = p.label.shape[0]
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, image_size, image_size, dtype=torch.bool)
    for start in range(0, n, chunk):
        part = SceneParams(*(getattr(p, f)[start : start + chunk] for f in SceneParams.__dataclass_fields__))
        bg = render_backgrounds(part, image_size)
        ink, plate = render_mattes(part, image_size)
        plate_rgb, ink_rgb = colours(part)
        image = (1 - plate) * bg + plate * plate_rgb[:, :, None, None]
        image = (1 - ink) * image + ink * ink_rgb[:, :, None, None]
        images[start : start + chunk] = (image * 255).round().to(torch.uint8)
        masks[start : start + chunk] = torch.maximum(ink, plate)[:, 0] >= 0.5
    return Rendered(images, p.label.clone(), boxes_from_masks(masks), masks)


@lru_cache(maxsize=8)
def _cached(split: str, num_images: int, seed: int, image_size: int) -> Rendered:
    return render(sample_params(split, num_images, seed, image_size), image_size)  # type: ignore[arg-type]


class BuiltinDataset(Dataset):
    """Seeded, procedurally generated digits-on-clutter localization dataset (10 classes), made offline.

    Items are dicts ``{"image": (3, S, S) float32 in [0, 1], "label": int, "box": (4,) float32
    [x0, y0, x1, y1] (exclusive right/bottom), "mask": (S, S) bool, "id": str}``.  The same
    ``(split, num_images, seed, image_size)`` always gives the same bytes; :meth:`tensors` returns the whole
    split stacked.  Defaults: 6000 train, 500 val and 1000 test
    images of 64x64.
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        *,
        num_images: int | None = None,
        image_size: int = 64,
        seed: int = 0,
    ) -> None:
        if split not in _SPLIT_STREAM:
            raise CamlensError(f"split {split!r} is not one of: train, val, test")
        if image_size < 16:
            raise CamlensError(f"image_size={image_size} is too small for the built-in dataset; use 16 or more")
        self.split = split
        self.num_images = DEFAULT_SIZES[split] if num_images is None else int(num_images)
        if self.num_images < 1:
            raise CamlensError(f"num_images={num_images} must be at least 1")
        self.image_size = image_size
        self.seed = seed
        self._data = _cached(split, self.num_images, seed, image_size)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        d = self._data
        return {
            "image": d.images[index].float() / 255.0,
            "label": int(d.labels[index]),
            "box": d.boxes[index].clone(),
            "mask": d.masks[index].clone(),
            "id": self.image_id(index),
        }

    def image_id(self, index: int) -> str:
        return f"builtin-{self.split}-s{self.seed}-{index:05d}"

    @property
    def ids(self) -> list[str]:
        return [self.image_id(i) for i in range(self.num_images)]

    def tensors(self) -> dict[str, Tensor]:
        """The whole split: ``images`` float32 (N, 3, S, S) in [0, 1], ``labels`` (N,), ``boxes`` (N, 4),
        ``masks`` (N, S, S) bool.  Images are a new float tensor; the others are the cached tensors (read-only)."""
        d = self._data
        return {"images": d.images.float() / 255.0, "labels": d.labels, "boxes": d.boxes, "masks": d.masks}

    def uint8_images(self) -> Tensor:
        """The cached (N, 3, S, S) uint8 images, without a float copy."""
        return self._data.images

    def __repr__(self) -> str:
        return (
            f"BuiltinDataset(split={self.split!r}, num_images={self.num_images}, "
            f"image_size={self.image_size}, seed={self.seed})"
        )
