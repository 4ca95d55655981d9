"""How an image becomes a network input: :class:`Preprocess` and :func:`read_image`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import DataError

# Luma weights of ITU-R 601-2, the ones PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


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
    """How an image becomes a network input.

    Attributes:
        input_size: ``(C, H, W)`` the network expects. Images are converted between grayscale
            (``C == 1``) and RGB (``C == 3``); other ``C`` accept only inputs with ``C`` channels.
        mean, std: one value per channel; inputs are ``(pixel / 255 - mean) / std``.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        size, mean, std = check_input(self.input_size, self.mean, self.std)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def transform(
        self, train: bool = False, augment: bool = False
    ) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
        """The transform ``image -> float32 [C, H, W]``; flips at random only if train and augment.

        The image is a PIL image or a tensor ``[c, h, w]`` (or ``[h, w]``) of floats in 0..1
        (uint8 tensors are divided by 255). The result is picklable (DataLoader workers).
        """
        return _Transform(self, flip=train and augment)

    def load_image(self, path: str | os.PathLike) -> torch.Tensor:
        """Read an image file and apply the eval transform: float32 ``[C, H, W]``.

        Raises DataError naming the file if it is missing or cannot be decoded.
        """
        return _Transform(self, flip=False)(read_image(path))


class _Transform:
    """Channel conversion -> resize -> normalize (-> random horizontal flip), as one callable.

    Resizing runs on float values (bilinear, antialiased), so a PIL image and the same image as
    a 0..1 tensor give the same result, and the exported ONNX contract ("resize, /255,
    normalize") holds without uint8 rounding in between.
    """

    def __init__(self, preprocess: Preprocess, flip: bool) -> None:
        self.channels, self.height, self.width = preprocess.input_size
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(-1, 1, 1)
        self.flip = flip

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        x = _to_channels(_as_tensor(image), self.channels)
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(
                x[None], size=(self.height, self.width), mode="bilinear",
                align_corners=False, antialias=True,
            )[0].clamp_(0.0, 1.0)  # bilinear with antialias can overshoot 0..1 slightly
        x = (x - self.mean) / self.std
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x.contiguous()

    def __repr__(self) -> str:
        return (f"Transform(size={(self.channels, self.height, self.width)}, "
                f"flip={self.flip})")


def _as_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A PIL image or tensor as float32 ``[c, h, w]`` in 0..1 (alpha still present)."""
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 3 else image[None] if image.dim() == 2 else None
        if x is None:
            raise DataError(f"an image tensor must be [c, h, w] or [h, w], got {list(image.shape)}")
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        if not x.is_floating_point():
            raise DataError(f"an image tensor must be float in 0..1 or uint8, got {x.dtype}")
        return x.float()
    if not isinstance(image, Image.Image):
        raise DataError(f"expected a PIL image or a tensor, got {type(image).__name__}")
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (PNG/TIFF): convert("L") would clip instead of scaling.
        array = np.asarray(image, dtype=np.float32) / 65535.0
        return torch.from_numpy(np.clip(array, 0.0, 1.0))[None]
    if image.mode not in ("L", "RGB"):
        # Alpha is dropped, palettes and CMYK are expanded; gray modes stay gray.
        image = image.convert("L" if image.mode in ("1", "LA", "La", "F") else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``[c, h, w]`` to ``channels`` channels: drop alpha, gray <-> RGB."""
    c = x.shape[0]
    if c == channels:
        return x
    if channels in (1, 3) and c in (2, 4):  # gray + alpha, RGB + alpha
        x, c = x[: c - 1], c - 1
        if c == channels:
            return x
    if channels == 3 and c == 1:
        return x.expand(3, -1, -1)
    if channels == 1 and c == 3:
        luma = torch.tensor(_LUMA, dtype=x.dtype).view(3, 1, 1)
        return (x * luma).sum(0, keepdim=True)
    raise DataError(f"cannot convert a {c}-channel image to the {channels} channels of the model")


def read_image(path: str | os.PathLike, box: Sequence[float] | None = None) -> Image.Image:
    """Decode an image file fully (EXIF orientation applied), optionally cropped to ``box``.

    ``box`` is ``(left, top, right, bottom)`` in pixels; it is clipped to the image. Any failure
    becomes a DataError naming the file: PIL raises many exception types on malformed files,
    and a user's bad file must not surface as a traceback.
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
