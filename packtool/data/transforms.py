"""A :class:`~.preprocess.Preprocess` as a torch transform: image -> float32 tensor ``[C, H, W]``.

The pixels are :class:`~.preprocess.Preprocess`'s (numpy and Pillow, the same routine the ONNX
runtime serves with); this adds what training draws at random, from torch's global generator,
which :mod:`.sampling` seeds per sample: the crop's position (with ``resize``) and the
horizontal flip (with ``flip``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .preprocess import Preprocess


class ImageTransform:
    """``image -> float32 [C, H, W]``: :meth:`prepare` (deterministic: what a cache keeps) then
    :meth:`finish` (the random crop and flip of training, scaling and normalizing).

    ``image`` is a PIL image, or an array or tensor ``[c, h, w]`` (or ``[h, w]``), uint8 or
    float in 0..1. Picklable (DataLoader workers).
    """

    def __init__(self, preprocess: Preprocess, train: bool = False, flip: bool = False) -> None:
        self.preprocess, self.train, self.flip = preprocess, train, flip

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.finish(self.prepare(image))

    @property
    def random(self) -> bool:
        """Whether :meth:`finish` draws random numbers (a training crop or a flip); if not, a
        cache may keep finished images."""
        return self.flip or (self.train and self.preprocess.resize is not None)

    def prepare(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            image = image.numpy()
        # A copy only when needed: torch cannot wrap a read-only array (a memory-mapped cache,
        # an image array handed in) without undefined behaviour if anything writes to it.
        return torch.from_numpy(np.require(self.preprocess.prepare(image), requirements="CW"))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        array = x.numpy()
        crop_at = None
        if self.train and self.preprocess.resize is not None:
            rows, columns = self.preprocess.crop_offsets(array)
            crop_at = (int(torch.randint(0, rows, ())), int(torch.randint(0, columns, ())))
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return torch.from_numpy(np.require(self.preprocess.finish(array, crop_at, flip),
                                           requirements="CW"))

    def __repr__(self) -> str:
        p = self.preprocess
        return (f"ImageTransform(size={p.input_size}, resize={p.resize}, train={self.train}, "
                f"flip={self.flip})")
