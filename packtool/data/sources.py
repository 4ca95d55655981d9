"""Sources: all samples of a dataset (every split), read by position, and one task's split."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from ..errors import DataError
from .preprocess import read_image

#: Images that take longer than this to prepare are cached on threads; below it, handing an
#: image to a thread costs more than decoding it (8x8 PNGs: 0.2 ms each, 2.5x slower on threads).
THREADED_DECODE_SECONDS = 1e-3


class ImageFiles:
    """Image files with labels and optional bounding boxes, read lazily.

    Attributes:
        base: directory the paths are relative to.
        paths: relative file paths, one per sample.
        labels: int64 ``[N]``, the dataset's class index of each sample.
        boxes: float64 ``[N, 4]`` ``(left, top, right, bottom)`` crops, or None (whole images).
    """

    def __init__(self, base: Path, paths: list[str], labels: Sequence[int],
                 boxes: np.ndarray | None = None) -> None:
        self.base = Path(base)
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(self.labels) != len(paths) or (self.boxes is not None
                                              and len(self.boxes) != len(paths)):
            raise ValueError("paths, labels and boxes must have the same length")

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        """The ``i``-th image (cropped to its box), decoded; DataError naming the file if bad."""
        box = None if self.boxes is None else self.boxes[i].tolist()
        return read_image(self.base / self.paths[i], box)

    def unreadable(self, positions: np.ndarray,
                   on_progress: Callable[[int, int], None] | None = None) -> dict[int, str]:
        """Positions among ``positions`` whose file cannot be opened as an image, with why.

        Reads each file's header only (PIL identifies the format and size without decoding
        the pixels), on a few threads: fast enough to run before training instead of failing
        in the middle of an epoch. ``on_progress(done, total)`` is called as files are checked.
        """
        def check(i: int) -> str | None:
            try:
                with Image.open(self.base / self.paths[i]) as image:
                    image.size  # noqa: B018 - the header is parsed on open; size proves it
            except Exception as exc:  # PIL raises many types on malformed files
                return " ".join(str(exc).split()) or type(exc).__name__
            return None

        bad: dict[int, str] = {}
        total = len(positions)
        with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
            for done, (i, reason) in enumerate(zip(positions, pool.map(check, positions)), 1):
                if reason is not None:
                    bad[int(i)] = reason
                if on_progress is not None and (done == total or done % 256 == 0):
                    on_progress(done, total)
        return bad

    def check_exist(self, listed_in: str, positions: np.ndarray | None = None) -> None:
        """Raise DataError if a file (of ``positions``, default all) is missing.

        For annotation-listed datasets: a partly extracted archive fails here, at once, rather
        than hours into training. Folder listings need no check.
        """
        paths = self.paths if positions is None else [self.paths[i] for i in positions]
        missing = [p for p in paths if not (self.base / p).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(paths)} images listed in {listed_in} are missing, "
                f"e.g. {self.base / missing[0]}"
            )


class ImageArray:
    """Images held in memory as an array ``[N, c, h, w]`` (digits, CIFAR-100).

    ``images`` may be any numeric dtype; ``load`` returns float32 ``images[i] / scale`` in 0..1.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], scale: float) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.scale = float(scale)
        if images.ndim != 4 or len(images) != len(self.labels):
            raise ValueError("images must be [N, c, h, w] with one label per image")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:
        return np.asarray(self.images[i], dtype=np.float32) / np.float32(self.scale)


Source = ImageFiles | ImageArray


class TaskSplit(Dataset):
    """One split of a task: the samples ``source[indices]`` with labels remapped.

    Item ``i`` is ``(transform(source.load(indices[i])), int(labels[i]))`` where ``labels[i] ==
    label_map[source.labels[indices[i]]]``. The splits of one task share one ``source``, so their
    ``indices`` are directly comparable (they are disjoint).

    Attributes:
        source: the dataset's samples (all splits).
        indices: int64 ``[n]``, positions in ``source``.
        labels: int64 ``[n]``, task labels in ``0..num_classes-1`` (no image is read).
        transform: image -> float32 ``[C, H, W]``.
    """

    def __init__(self, source: Source, indices: np.ndarray, label_map: np.ndarray,
                 transform: Callable[[Any], torch.Tensor]) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = label_map[source.labels[self.indices]]
        self.transform = transform
        self.cached: list[torch.Tensor] | None = None  # see cache()
        # Whether cached images are finished (a transform with no random part), not prepared.
        self.cached_final = not getattr(transform, "random", True)
        assert (self.labels >= 0).all(), "indices must only pick classes of the task"

    def __len__(self) -> int:
        return len(self.indices)

    def joined(self, other: TaskSplit) -> TaskSplit:
        """This split's samples then ``other``'s (same source), read with this split's
        transform (a refit trains on validation images as on training ones)."""
        if other.source is not self.source:
            raise ValueError("splits of different sources cannot be joined")
        split = copy.copy(self)
        split.indices = np.concatenate([self.indices, other.indices])
        split.labels = np.concatenate([self.labels, other.labels])
        split.cached = None
        return split

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.cached is not None:  # decoded and resized once; the random part every time
            x = self.cached[i]
            return (x if self.cached_final else self.transform.finish(x)), int(  # type: ignore
                self.labels[i])
        return self.transform(self.source.load(int(self.indices[i]))), int(self.labels[i])

    def prepared_bytes(self, sample: int = 8) -> int:
        """An estimate of the memory :meth:`cache` takes (from the first ``sample`` items)."""
        n = min(sample, len(self))
        if n == 0:
            return 0
        seen = sum(self._prepare(i).nbytes for i in range(n))
        return seen * len(self) // n

    def cache(self) -> None:
        """Decode and resize every image once and keep it (uint8 where the image is 8-bit):
        each epoch then only crops, flips and normalizes. Where the transform has no random
        part (evaluation, small images), the finished float32 image is kept instead and an
        item costs only its lookup. Large images are decoded on a few threads (decoders
        release the GIL); small ones, faster than a thread hand-off, in this one."""
        first = min(len(self), 8)
        start = time.perf_counter()
        cached = [self._prepare(i) for i in range(first)]
        rest = range(first, len(self))
        if first and (time.perf_counter() - start) / first > THREADED_DECODE_SECONDS:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                cached += pool.map(self._prepare, rest)
        else:
            cached += [self._prepare(i) for i in rest]
        self.cached = cached

    def _prepare(self, i: int) -> torch.Tensor:
        """Item ``i`` as :meth:`cache` keeps it."""
        x = self.transform.prepare(self.source.load(int(self.indices[i])))  # type: ignore
        return self.transform.finish(x) if self.cached_final else x  # type: ignore


def in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset``'s items are already in memory (tensors, images held as arrays, or
    finished images in the cache, or a concatenation of such, as a refit's training split):
    loader worker processes would only add their start-up cost."""
    if isinstance(dataset, TensorDataset):
        return True
    if isinstance(dataset, ConcatDataset):
        return all(in_memory(part) for part in dataset.datasets)
    return isinstance(dataset, TaskSplit) and (
        isinstance(dataset.source, ImageArray)
        or (dataset.cached is not None and dataset.cached_final))


def cache_splits(splits: Sequence[Dataset], budget: float) -> int:
    """Cache every :class:`TaskSplit` of ``splits`` (:meth:`TaskSplit.cache`) if together
    they fit ``budget`` bytes; returns the bytes cached (0: not cached)."""
    cacheable = [s for s in splits if isinstance(s, TaskSplit)]
    total = sum(s.prepared_bytes() for s in cacheable)
    if not cacheable or total > budget:
        return 0
    for split in cacheable:
        split.cache()
    return sum(sum(t.nbytes for t in s.cached or ()) for s in cacheable)
