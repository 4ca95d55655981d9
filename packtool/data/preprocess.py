"""How an image becomes a network input: :class:`Preprocess` and :func:`read_image`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as F

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


#: ``resize`` for natural images at input size ``S``: the shorter side to ``S * 8 / 7`` (256 for
#: 224, the paper's and torchvision's ImageNet recipe), then a crop of ``S``.
CROP_MARGIN = 8 / 7


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input.

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

    def transform(
        self, train: bool = False, augment: bool = False
    ) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
        """The transform ``image -> float32 [C, H, W]``: a random crop (with ``resize``) when
        ``train``, a random horizontal flip when ``train`` and ``augment``.

        The image is a PIL image, a uint8 tensor or a float tensor in 0..1, ``[c, h, w]`` (or
        ``[h, w]``); uint8 stays uint8 until the last step. The result is picklable (DataLoader
        workers).
        """
        return _Transform(self, train=train, flip=train and augment)

    def load_image(self, path: str | os.PathLike) -> torch.Tensor:
        """Read an image file and apply the evaluation transform: float32 ``[C, H, W]``.

        Raises DataError naming the file if it is missing or cannot be decoded.
        """
        return _Transform(self, train=False, flip=False)(read_image(path))


class _Transform:
    """Channel conversion -> resize (-> crop) (-> random flip) -> /255 -> normalize.

    On ``torchvision.transforms.v2``'s functional ops. A uint8 image is resized (bilinear,
    antialiased) and cropped as uint8 and scaled to 0..1 last, as the exported ONNX contract
    says; a float image is resized in float (and clamped to 0..1, which antialiasing can
    overshoot).
    """

    def __init__(self, preprocess: Preprocess, train: bool, flip: bool) -> None:
        self.channels, self.height, self.width = preprocess.input_size
        self.resize, self.train = preprocess.resize, train
        self.mean, self.std = list(preprocess.mean), list(preprocess.std)
        self.flip = flip

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.finish(self.prepare(image))

    @property
    def random(self) -> bool:
        """Whether :meth:`finish` draws random numbers (a training crop or a flip); if not, a
        cache may keep finished images."""
        return self.flip or (self.train and self.resize is not None)

    def prepare(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """The deterministic part: channels and resizing (what a cache may keep)."""
        x = _to_channels(_as_tensor(image), self.channels)
        size = [self.height, self.width]
        if self.resize is None and list(x.shape[-2:]) == size:
            return x
        x = F.resize(x, [self.resize] if self.resize else size, antialias=True)  # or the shorter
        return x if x.dtype == torch.uint8 else x.clamp(0.0, 1.0)  # antialias overshoots

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The rest: the crop, the random flip, scaling to 0..1 and normalizing."""
        if self.resize is not None:
            x = self._crop(x, [self.height, self.width])
        if self.flip and bool(torch.rand(()) < 0.5):
            x = F.horizontal_flip(x)
        if x.dtype == torch.uint8:
            x = F.to_dtype(x, torch.float32, scale=True)
        return F.normalize(x.contiguous(), self.mean, self.std)

    def _crop(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        if not self.train:
            return F.center_crop(x, size)
        top = int(torch.randint(0, x.shape[-2] - size[0] + 1, ()))
        left = int(torch.randint(0, x.shape[-1] - size[1] + 1, ()))
        return F.crop(x, top, left, size[0], size[1])

    def __repr__(self) -> str:
        return (f"Transform(size={(self.channels, self.height, self.width)}, "
                f"resize={self.resize}, train={self.train}, flip={self.flip})")


def _as_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A PIL image or tensor as ``[c, h, w]``: uint8 where it is 8-bit, else float32 in 0..1
    (alpha still present)."""
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 3 else image[None] if image.dim() == 2 else None
        if x is None:
            raise DataError(f"an image tensor must be [c, h, w] or [h, w], got {list(image.shape)}")
        if x.dtype == torch.uint8:
            return x
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
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


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
        if x.dtype == torch.uint8:  # the weighted sum is not 8-bit: go on in float
            x = x.float() / 255.0
        luma = torch.tensor(_LUMA, dtype=x.dtype).view(3, 1, 1)
        return (x * luma).sum(0, keepdim=True)
    raise DataError(f"cannot convert a {c}-channel image to the {channels} channels of the model")


def read_image(path: str | os.PathLike, box: Sequence[float] | None = None) -> Image.Image:
    """Decode an image file fully (EXIF orientation applied), optionally cropped to ``box``.

    PIL decodes (``torchvision.io.decode_image`` would, but torchvision 0.29 deprecated its
    image decoders, pointing to TorchCodec). ``box`` is ``(left, top, right, bottom)`` in
    pixels; it is clipped to the image. Any failure becomes a DataError naming the file: PIL
    raises many exception types on malformed files, and a user's bad file must not surface as
    a traceback.
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
