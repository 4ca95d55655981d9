"""How an image becomes a network input, with numpy and Pillow only: :class:`Preprocess`.

One routine serves every reader: training and evaluation (through :mod:`.transforms`, which adds
the random crop and flip on torch tensors), :meth:`Preprocess.load_image`, and the ONNX runtime
(:mod:`packtool.exporters.runtime`), which runs without torch. An image served from an exported
file is therefore the very array ``packtool eval`` measured.

The steps, :meth:`Preprocess.prepare` (deterministic: what a cache may keep) then
:meth:`Preprocess.finish`:

1. decode (:func:`read_image`: Pillow, EXIF orientation applied);
2. channels: alpha dropped, palettes and CMYK expanded, gray <-> RGB (RGB -> gray is the
   ITU-R 601-2 luma in float, not Pillow's rounded ``convert("L")``);
3. resize with Pillow's antialiased bilinear filter: the whole image to ``H x W``, or with
   ``resize`` its shorter side to that many pixels; 8-bit images stay uint8, others are float32
   in 0..1;
4. crop ``H x W`` (with ``resize``): from the center, or at given offsets in training;
5. flip horizontally (training, on request);
6. scale uint8 to 0..1, then ``(x - mean) / std`` per channel, in float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

# Luma weights of ITU-R 601-2, the ones PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

#: ``resize`` for natural images at input size ``S``: the shorter side to ``S * 8 / 7`` (256 for
#: 224, the paper's and torchvision's ImageNet recipe), then a crop of ``S``.
CROP_MARGIN = 8 / 7
#: File name endings (lower case) taken as images in image folders (torchvision's list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_input(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]
                ) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """The one check of a network input's description (a pack's spec, a Preprocess).

    ``input_size`` is ``C x H x W`` with positive sides; ``mean`` and ``std`` have one value per
    channel, every std > 0. Returns them as tuples of int and float; DataError otherwise.
    """
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise DataError(f"input size must be C x H x W with positive sides, got {size}")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != size[0] or len(std) != size[0] or min(std) <= 0:
        raise DataError(
            f"mean and std need {size[0]} values each with std > 0, got {mean} and {std}"
        )
    return size, mean, std  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input (see the module docstring for the steps).

    Attributes:
        input_size: ``(C, H, W)`` the network expects. Images are converted between grayscale
            (``C == 1``) and RGB (``C == 3``); other ``C`` accept only inputs with ``C`` channels.
        mean, std: one value per channel; inputs are ``(pixel / 255 - mean) / std``.
        resize: ``None``: the whole image is resized to ``H x W``. A number: its shorter side
            is resized to it, then an ``H x W`` crop is taken, at random for training and from
            the center for evaluation (see :meth:`cropping`).
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None

    def __post_init__(self) -> None:
        size, mean, std = check_input(self.input_size, self.mean, self.std)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.resize is not None and not (isinstance(self.resize, int)
                                            and self.resize >= max(size[1:])):
            raise DataError(f"resize must be a whole number >= the input's sides {size[1:]}, "
                            f"got {self.resize!r}")

    def cropping(self) -> Preprocess:
        """The recipe for natural images: resize the shorter side to ``CROP_MARGIN`` times the
        input size, then crop."""
        return replace(self, resize=round(max(self.input_size[1:]) * CROP_MARGIN))

    def prepare(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Steps 2-3: channels and resizing, ``[C, h, w]`` uint8 (8-bit images) or float32.

        ``image`` is a PIL image or an array ``[c, h, w]`` (or ``[h, w]``), uint8 or float in
        0..1. Without ``resize`` the result is ``H x W``; with it, the shorter side is
        ``resize`` and :meth:`finish` crops.
        """
        x = _to_channels(_as_array(image), self.input_size[0])
        h, w = x.shape[-2:]
        if self.resize is None:
            size = self.input_size[1:]
        elif h <= w:  # the shorter side to `resize`, the other in proportion (rounded down)
            size = (self.resize, int(self.resize * w / h))
        else:
            size = (int(self.resize * h / w), self.resize)
        return x if (h, w) == tuple(size) else _resize(x, size)

    def finish(self, x: np.ndarray, crop_at: tuple[int, int] | None = None,
               flip: bool = False) -> np.ndarray:
        """Steps 4-6 on a :meth:`prepare`\\ d image: float32 ``[C, H, W]``.

        With ``resize``, the crop is taken at ``crop_at`` (top, left), or from the center;
        :meth:`crop_offsets` gives the range a random crop draws from.
        """
        height, width = self.input_size[1:]
        if self.resize is not None:
            top, left = crop_at if crop_at is not None else (
                round((x.shape[-2] - height) / 2.0), round((x.shape[-1] - width) / 2.0))
            x = x[:, top:top + height, left:left + width]
        if flip:
            x = x[:, :, ::-1]
        x = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else \
            x.astype(np.float32, copy=False)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std)

    def crop_offsets(self, x: np.ndarray) -> tuple[int, int]:
        """How many positions a crop of a :meth:`prepare`\\ d image may start at, down and
        across (a random crop draws ``top < first`` and ``left < second``)."""
        return x.shape[-2] - self.input_size[1] + 1, x.shape[-1] - self.input_size[2] + 1

    def load_image(self, path: str | os.PathLike) -> np.ndarray:
        """Read an image file and apply the evaluation steps: float32 ``[C, H, W]``.

        Raises DataError naming the file if it is missing or cannot be decoded.
        """
        return self.finish(self.prepare(read_image(path)))


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or array as ``[c, h, w]``: uint8 where it is 8-bit, else float32 in 0..1
    (alpha still present)."""
    if isinstance(image, np.ndarray):
        x = image if image.ndim == 3 else image[None] if image.ndim == 2 else None
        if x is None:
            raise DataError(f"an image array must be [c, h, w] or [h, w], got {list(image.shape)}")
        if x.dtype == np.uint8:
            return x
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"an image array must be float in 0..1 or uint8, got {x.dtype}")
        return x.astype(np.float32, copy=False)
    if not isinstance(image, Image.Image):
        raise DataError(f"expected a PIL image or an array, got {type(image).__name__}")
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (PNG/TIFF): convert("L") would clip instead of scaling.
        array = np.asarray(image, dtype=np.float32) / 65535.0
        return np.clip(array, 0.0, 1.0)[None]
    if image.mode not in ("L", "RGB"):
        # Alpha is dropped, palettes and CMYK are expanded; gray modes stay gray.
        image = image.convert("L" if image.mode in ("1", "LA", "La", "F") else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``[c, h, w]`` to ``channels`` channels: drop alpha, gray <-> RGB."""
    c = x.shape[0]
    if c == channels:
        return x
    if channels in (1, 3) and c in (2, 4):  # gray + alpha, RGB + alpha
        x, c = x[: c - 1], c - 1
        if c == channels:
            return x
    if channels == 3 and c == 1:
        return np.repeat(x, 3, axis=0)
    if channels == 1 and c == 3:
        if x.dtype == np.uint8:  # the weighted sum is not 8-bit: go on in float
            x = x.astype(np.float32) / np.float32(255)
        return (x * _LUMA[:, None, None]).sum(0, keepdims=True, dtype=np.float32)
    raise DataError(f"cannot convert a {c}-channel image to the {channels} channels of the model")


def _resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``[c, h, w]`` to ``[c, *size]`` with Pillow's antialiased bilinear filter: uint8 as 8-bit
    images (RGB in one pass), float32 channel by channel (mode ``F``), clamped to 0..1."""
    target = (int(size[1]), int(size[0]))  # PIL speaks (width, height)
    if x.dtype == np.uint8:
        if x.shape[0] == 3:
            image = Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)), "RGB")
            return np.asarray(image.resize(target, Image.BILINEAR)).transpose(2, 0, 1)
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c), "L")
                                    .resize(target, Image.BILINEAR)) for c in x])
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), "F")
                         .resize(target, Image.BILINEAR)) for c in x]
    return np.clip(np.stack(planes), 0.0, 1.0)


def read_image(path: str | os.PathLike, box: Sequence[float] | None = None) -> Image.Image:
    """Decode an image file fully (EXIF orientation applied), optionally cropped to ``box``.

    ``box`` is ``(left, top, right, bottom)`` in pixels; it is clipped to the image. Any failure
    becomes a DataError naming the file: PIL raises many exception types on malformed files, and
    a user's bad file must not surface as a traceback.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, while the error can still name the file
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except Exception as exc:  # see docstring
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read image {path}: {reason}") from exc
    if box is None:
        return image
    left, top = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    right, bottom = min(image.width, math.ceil(box[2])), min(image.height, math.ceil(box[3]))
    if right <= left or bottom <= top:
        raise DataError(
            f"bounding box {tuple(box)} lies outside image {path} ({image.width}x{image.height})"
        )
    return image.crop((left, top, right, bottom))


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """``paths`` with every folder among them replaced by the images below it (by
    :data:`IMAGE_EXTENSIONS`, sorted, hidden files and folders left out); files stay as given.

    Raises:
        DataError: a folder with no image below it, or a path that does not exist.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            if not path.exists():
                raise DataError(f"image {path} does not exist")
            found.append(path)
            continue
        inside = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p, path))
        if not inside:
            raise DataError(f"folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        found.extend(inside)
    return found


def is_image_name(path: str | os.PathLike, top: str | os.PathLike) -> bool:
    """Whether ``path``, below folder ``top``, is an image an image folder holds: an
    :data:`IMAGE_EXTENSIONS` ending, and no hidden file or folder on the way from ``top``."""
    relative = os.path.relpath(path, top)
    return relative.lower().endswith(IMAGE_EXTENSIONS) and not any(
        part.startswith(".") for part in Path(relative).parts)
