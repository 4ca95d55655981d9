"""Datasets for packtool: a registry of named datasets, image folders, transforms, class subsets.

Every task's data is a :class:`TaskData`: three map-style datasets (train, val, test) whose items
are ``(x, y)`` with ``x`` a float32 tensor ``[C, H, W]`` (resized to the network's input size,
scaled to 0..1 and normalized per channel) and ``y`` an int label in ``0..len(classes)-1``.

* ``train`` is the training data minus ``val``; its transform flips horizontally at random when
  ``augment`` is set (natural images, inputs of at least 32 px), as the PackNet paper does.
* ``val`` is for model selection. It is the publisher's validation split where one exists
  (Flowers-102, an image folder with both ``val/`` and ``test/``), else a stratified, seeded
  fraction of the training data. It is never the test split.
* ``test`` is the held-out split that accuracies are reported on.

Images are read lazily: construction only lists ``(path, label, box)`` records, so ImageNet-sized
folders cost one directory walk. Every problem a user can cause (missing files, an empty class
folder, an unreadable image, a bad ``--classes``) raises :class:`~packtool.errors.DataError` with
a one-line message naming the file or directory involved.

Nothing is downloaded: ``digits`` ships with scikit-learn, everything else is read from
``--data-root`` / ``$PACKTOOL_DATA`` in the layouts their publishers ship.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .errors import DataError

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetInfo",
    "ImageArray",
    "ImageFiles",
    "Preprocess",
    "TaskData",
    "TaskSplit",
    "dataset_root",
    "load_task_data",
    "parse_classes",
]

#: File name endings (lower case) taken as images in image folders (torchvision's list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

ENV_ROOT = "PACKTOOL_DATA"

# Luma weights of ITU-R 601-2, the ones PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_MAX_CLASSES = 1_000_000  # bounds the size of a --classes range such as "0-999999999999"


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


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
        size = tuple(int(v) for v in self.input_size)
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(size) != 3 or min(size) < 1:
            raise DataError(f"input size must be C x H x W with positive sides, got {size}")
        if len(mean) != size[0] or len(std) != size[0] or min(std) <= 0:
            raise DataError(
                f"mean and std need {size[0]} values each with std > 0, got {mean} and {std}"
            )
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


# ----------------------------------------------------------------------------------------------
# Sources: all samples of a dataset (every split), read by position
# ----------------------------------------------------------------------------------------------


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

    def load(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.images[i], dtype=np.float32) / self.scale)


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
        assert (self.labels >= 0).all(), "indices must only pick classes of the task"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.source.load(int(self.indices[i]))), int(self.labels[i])


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass
class _Splits:
    """What a dataset loader returns: one source and the positions of each published split.

    ``val`` is the publisher's validation split, or None when it has to be carved from train.
    """

    source: Source
    classes: list[str]
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    Attributes:
        name: the name used as DATA on the command line.
        description: one line for help texts.
        layout: the files expected under the data root, as shown in error messages.
        natural: natural images (train-time horizontal flips make sense).
        needs_root: read from ``--data-root`` / ``$PACKTOOL_DATA`` (False: bundled).
        load: ``root -> _Splits`` (root is None when ``needs_root`` is False).
    """

    name: str
    description: str
    layout: str
    natural: bool
    needs_root: bool
    load: Callable[[Path | None], _Splits]


def dataset_root(root: str | os.PathLike | None) -> Path:
    """The data root: ``root`` if given, else ``$PACKTOOL_DATA``; it must be a directory."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_ROOT) or None
        if root is None:
            raise DataError(f"no data root: pass `root=DIR` or set {ENV_ROOT}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} is not a directory")
    return path


def _not_found(name: str, root: Path, missing: Sequence[str], layout: str) -> DataError:
    return DataError(
        f"dataset '{name}' not found in {root}: missing {', '.join(missing)} "
        f"(expected {layout}; set `root` or {ENV_ROOT} to the folder holding it)"
    )


def _require(name: str, root: Path, relpaths: Sequence[str], layout: str) -> None:
    """Raise the not-found DataError if any of ``relpaths`` (dirs end with /) is missing."""
    missing = [p for p in relpaths
               if not ((root / p).is_dir() if p.endswith("/") else (root / p).is_file())]
    if missing:
        raise _not_found(name, root, missing, layout)


def _read_rows(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of a text annotation file; the last column keeps spaces."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = line.split(maxsplit=columns - 1)
        if len(row) != columns:
            raise DataError(f"{path} line {number}: expected {columns} fields, got {line!r}")
        rows.append(row)
    return rows


def _numbers(path: Path, row: Sequence[str], kind: type) -> list:
    try:
        return [kind(v) for v in row]
    except ValueError:
        raise DataError(f"{path}: bad numbers in line {' '.join(row)!r}") from None


def _by_id(path: Path, rows: list[list[str]], ids: Sequence[str]) -> list[list[str]]:
    """The rows of ``path`` keyed by their first column, in the order of ``ids`` (all present)."""
    table = {row[0]: row[1:] for row in rows}
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{path} has no line for image id {missing[0]} ({len(missing)} missing)")
    return [table[i] for i in ids]


def _load_cubs(root: Path | None) -> _Splits:
    assert root is not None
    base = root / "CUB_200_2011"
    names = ("images.txt", "image_class_labels.txt", "train_test_split.txt",
             "bounding_boxes.txt", "classes.txt")
    _require("cubs", root, ["CUB_200_2011/images/", *(f"CUB_200_2011/{n}" for n in names)],
             DATASETS["cubs"].layout)
    images, labels, split, boxes, classes = (base / n for n in names)

    image_rows = _read_rows(images, 2)
    ids = [row[0] for row in image_rows]
    class_rows = sorted(_read_rows(classes, 2), key=lambda r: _numbers(classes, r[:1], int))
    class_ids = {row[0]: k for k, row in enumerate(class_rows)}  # ids 1..200 -> labels 0..199
    label_of = [row[0] for row in _by_id(labels, _read_rows(labels, 2), ids)]
    unknown = sorted(set(label_of) - set(class_ids))
    if unknown:
        raise DataError(f"{labels} uses class {unknown[0]}, which {classes} does not list")
    is_train = [row[0] for row in _by_id(split, _read_rows(split, 2), ids)]
    if set(is_train) - {"0", "1"}:
        raise DataError(f"{split}: the second column must be 1 (train) or 0 (test)")
    xywh = np.array([_numbers(boxes, row, float)
                     for row in _by_id(boxes, _read_rows(boxes, 5), ids)]).reshape(-1, 4)
    if (xywh[:, 2:] <= 0).any():
        raise DataError(f"{boxes} has a box with zero or negative width or height")

    source = ImageFiles(base / "images", [row[1] for row in image_rows],
                        [class_ids[c] for c in label_of],
                        np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    source.check_exist(str(images))
    train = np.array([s == "1" for s in is_train], dtype=bool)
    return _Splits(source, [row[1] for row in class_rows], np.flatnonzero(train),
                   np.flatnonzero(~train))


def _loadmat(path: Path, *keys: str) -> list[Any]:
    """Variables ``keys`` of a MATLAB file (squeezed); DataError naming the file if bad."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as exc:  # scipy raises many types on malformed files
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{path} has no variable '{missing[0]}'")
    return [mat[k] for k in keys]


def _load_cars(root: Path | None) -> _Splits:
    assert root is not None
    base = root / "stanford_cars"
    annotations = {"cars_train/": "devkit/cars_train_annos.mat",
                   "cars_test/": "cars_test_annos_withlabels.mat"}
    _require("cars", root, [f"stanford_cars/{p}" for p in
                            ["devkit/cars_meta.mat", *annotations, *annotations.values()]],
             DATASETS["cars"].layout)
    (names,) = _loadmat(base / "devkit/cars_meta.mat", "class_names")
    classes = [str(n) for n in np.atleast_1d(names).tolist()]

    paths, labels, boxes, train = [], [], [], []
    for folder, mat_name in annotations.items():
        path = base / mat_name
        (records,) = _loadmat(path, "annotations")
        records = np.atleast_1d(records)
        fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
        if records.dtype.names is None or set(fields) - set(records.dtype.names):
            raise DataError(f"{path}: 'annotations' needs the fields {', '.join(fields)}")
        for record in records:
            label = int(record["class"])
            if not 1 <= label <= len(classes):
                raise DataError(f"{path}: class {label} of {record['fname']} is not in 1.."
                                f"{len(classes)} (cars_meta.mat)")
            x1, y1, x2, y2 = (float(record[f]) for f in fields[:4])
            if x2 <= x1 or y2 <= y1:
                raise DataError(f"{path}: empty bounding box for {record['fname']}")
            paths.append(folder + str(record["fname"]))
            labels.append(label - 1)
            boxes.append((x1, y1, x2, y2))
            train.append(folder == "cars_train/")
    source = ImageFiles(base, paths, labels, np.array(boxes).reshape(-1, 4))
    source.check_exist(f"{base}/{{{', '.join(annotations.values())}}}")
    is_train = np.array(train, dtype=bool)
    return _Splits(source, classes, np.flatnonzero(is_train), np.flatnonzero(~is_train))


def _load_flowers(root: Path | None) -> _Splits:
    assert root is not None
    base = root / "flowers-102"
    _require("flowers", root, ["flowers-102/jpg/", "flowers-102/imagelabels.mat",
                               "flowers-102/setid.mat"], DATASETS["flowers"].layout)
    from torchvision.datasets import Flowers102  # only for its list of the 102 class names

    (labels,) = _loadmat(base / "imagelabels.mat", "labels")
    labels = np.atleast_1d(labels).astype(np.int64)
    # The dataset ships no names; torchvision lists them (older releases don't: use "1".."102").
    classes = list(getattr(Flowers102, "classes", None) or (str(k) for k in range(1, 103)))
    if labels.size == 0 or labels.min() < 1 or labels.max() > len(classes):
        raise DataError(f"{base / 'imagelabels.mat'}: labels must be 1..{len(classes)}")
    setid = [np.atleast_1d(v).astype(np.int64) for v in _loadmat(base / "setid.mat",
                                                                 "trnid", "valid", "tstid")]
    for ids in setid:
        if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
            raise DataError(f"{base / 'setid.mat'}: image ids must be 1..{len(labels)}")
    source = ImageFiles(base / "jpg", [f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)],
                        labels - 1)
    trnid, valid, tstid = (ids - 1 for ids in setid)
    source.check_exist(str(base / "setid.mat"), np.concatenate([trnid, valid, tstid]))
    # The published split has a validation set: use it for model selection, tstid as the test.
    return _Splits(source, classes, trnid, tstid, valid)


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numbers, strings, lists, dicts and numpy arrays.

    CIFAR-100 is published only as pickles, so this is the one place packtool reads a pickle
    (acceptable for this dataset only: the files come from its publisher). torchvision's
    CIFAR100 would unpickle with no restriction, and its md5 check rejects any re-packed copy;
    this allows just the globals a pickled numpy array needs, so a planted file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()  # latin1: Python 2 pickles
    except Exception as exc:  # malformed pickles raise many types
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise DataError(f"cannot read {path}: expected a dict, got {type(data).__name__}")
    return data


def _load_cifar100(root: Path | None) -> _Splits:
    assert root is not None
    base = root / "cifar-100-python"
    _require("cifar100", root, [f"cifar-100-python/{n}" for n in ("train", "test", "meta")],
             DATASETS["cifar100"].layout)
    meta = _unpickle(base / "meta")
    classes = [str(c) for c in meta.get("fine_label_names", [])]
    if not classes:
        raise DataError(f"{base / 'meta'} has no fine_label_names")
    images, labels, sizes = [], [], []
    for split in ("train", "test"):
        data = _unpickle(base / split)
        try:
            array = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            fine = np.asarray(data["fine_labels"], dtype=np.int64).reshape(-1)
        except (KeyError, ValueError) as exc:
            raise DataError(f"{base / split}: needs 'data' (N x 3072 uint8) and 'fine_labels' "
                            f"({exc})") from exc
        if len(fine) != len(array) or (fine.size and not 0 <= fine.min() <= fine.max()
                                       < len(classes)):
            raise DataError(f"{base / split}: one fine label in 0..{len(classes) - 1} per image")
        images.append(array)
        labels.append(fine)
        sizes.append(len(array))
    source = ImageArray(np.concatenate(images), np.concatenate(labels), scale=255.0)
    return _Splits(source, classes, np.arange(sizes[0]), sizes[0] + np.arange(sizes[1]))


def _load_digits(root: Path | None) -> _Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 values 0..16 -> [1, 8, 8] in 0..1.
    source = ImageArray(digits.images[:, None].astype(np.float32), digits.target, scale=16.0)
    # No published split: a fixed stratified 20% test split, independent of the task's seed.
    train, test = _stratified_split(source.labels, np.arange(len(source)), 0.2, seed=0, salt=1)
    return _Splits(source, [str(int(n)) for n in digits.target_names], train, test)


def _folder_loader(name: str, held_out: str) -> Callable[[Path | None], _Splits]:
    def load(root: Path | None) -> _Splits:
        assert root is not None
        _require(name, root, [f"{name}/train/", f"{name}/{held_out}/"], DATASETS[name].layout)
        return _load_image_folder(root / name, held_out)

    return load


def _list_class_folder(base: Path, folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, symlinks followed), relative to ``base``, sorted.

    Hidden files and other extensions (notes, Thumbs.db) are skipped.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        prefix = os.path.relpath(dirpath, base)  # once per directory: ImageNet has 1.28M files
        found.extend(os.path.join(prefix, f) for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise DataError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def _class_folders(split: Path) -> list[str]:
    names = sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{split} has no class folders (expected {split}/<class>/<image>)")
    return names


def _load_image_folder(base: Path, held_out: str, val: str | None = None) -> _Splits:
    """``base/train/<class>/*`` plus ``base/<held_out>/<class>/*`` (and ``base/<val>``)."""
    classes = _class_folders(base / "train")
    index = {c: k for k, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    positions = {}
    for split in ("train", held_out, val):
        if split is None:
            continue
        start = len(paths)
        for name in _class_folders(base / split):
            if name not in index:
                raise DataError(f"class folder {base / split / name} has no counterpart in "
                                f"{base / 'train'}")
            files = _list_class_folder(base, base / split / name)
            paths.extend(files)
            labels.extend([index[name]] * len(files))
        positions[split] = np.arange(start, len(paths))
    return _Splits(ImageFiles(base, paths, labels), classes, positions["train"],
                   positions[held_out], None if val is None else positions[val])


def _load_path(path: Path) -> _Splits:
    """A user's image folder: train/ and test/ or val/ (both: val for selection, test held out)."""
    layout = f"{path}/train/<class>/<image> and {path}/val/<class>/<image> or {path}/test/..."
    if not path.is_dir():
        raise DataError(f"{path} is not a folder (expected {layout})")
    if not (path / "train").is_dir():
        raise DataError(f"image folder {path} has no train/ subfolder (expected {layout})")
    has_val, has_test = (path / "val").is_dir(), (path / "test").is_dir()
    if not (has_val or has_test):
        raise DataError(f"image folder {path} has no val/ or test/ subfolder (expected {layout})")
    if has_val and has_test:
        return _load_image_folder(path, "test", "val")
    return _load_image_folder(path, "test" if has_test else "val")


def _registry(*infos: DatasetInfo) -> dict[str, DatasetInfo]:
    return {info.name: info for info in infos}


DATASETS: dict[str, DatasetInfo] = _registry(
    DatasetInfo(
        name="digits", description="UCI handwritten digits, bundled (8x8 gray, 10 classes)",
        layout="nothing: bundled with scikit-learn", natural=False, needs_root=False,
        load=_load_digits,
    ),
    DatasetInfo(
        name="cubs", description="CUB-200-2011 birds, cropped to the bounding box (200 classes)",
        layout="CUB_200_2011/{images/<class>/<file>.jpg, images.txt, image_class_labels.txt, "
               "train_test_split.txt, bounding_boxes.txt, classes.txt}",
        natural=True, needs_root=True, load=_load_cubs,
    ),
    DatasetInfo(
        name="cars", description="Stanford Cars, cropped to the bounding box (196 classes)",
        layout="stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat, "
               "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}",
        natural=True, needs_root=True, load=_load_cars,
    ),
    DatasetInfo(
        name="flowers", description="Oxford Flowers-102 (102 classes; published train/val/test)",
        layout="flowers-102/{jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat}",
        natural=True, needs_root=True, load=_load_flowers,
    ),
    DatasetInfo(
        name="imagenet", description="ILSVRC-2012 ImageNet (1000 classes; val is the test split)",
        layout="imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG",
        natural=True, needs_root=True, load=_folder_loader("imagenet", "val"),
    ),
    DatasetInfo(
        name="cifar100", description="CIFAR-100 (100 classes, 32x32)",
        layout="cifar-100-python/{train, test, meta}",
        natural=True, needs_root=True, load=_load_cifar100,
    ),
    DatasetInfo(
        name="sketch", description="TU-Berlin sketches, PackNet/Piggyback split (250 classes)",
        layout="sketch/train/<class>/<image> and sketch/test/<class>/<image>",
        natural=True, needs_root=True, load=_folder_loader("sketch", "test"),
    ),
    DatasetInfo(
        name="wikiart", description="WikiArt paintings, PackNet/Piggyback split (195 classes)",
        layout="wikiart/train/<class>/<image> and wikiart/test/<class>/<image>",
        natural=True, needs_root=True, load=_folder_loader("wikiart", "test"),
    ),
)


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """The data of one task.

    Attributes:
        train, val, test: :class:`TaskSplit` datasets of ``(float32 [C, H, W], int label)``;
            disjoint; ``val`` is for model selection, ``test`` is held out.
        classes: class names in label order.
        spec: JSON-able; ``load_task_data(**spec, preprocess=...)`` rebuilds this TaskData.
        augment: whether ``train`` flips images at random.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    spec: dict
    augment: bool


def parse_classes(text: str) -> list[int]:
    """Parse ``--classes``: ``"0,1"``, ``"0-4"``, ``"0-2,7"`` -> class indices in the given order.

    Ranges are inclusive and ascending. Duplicates, negative numbers and anything else that is
    not a comma-separated list of indices or ranges raise DataError.
    """
    result: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part, re.ASCII)
        if match is None:
            what = "negative class index" if re.fullmatch(r"-\s*\d+.*", part) else "bad class item"
            raise DataError(f"{what} {part!r} in {text!r} (use e.g. 0,1 or 0-4 or 0-2,7)")
        low = int(match[1])
        high = low if match[2] is None else int(match[2])
        if high < low:
            raise DataError(f"class range {part!r} in {text!r} runs backwards")
        if len(result) + high - low + 1 > _MAX_CLASSES:
            raise DataError(f"{text!r} selects more than {_MAX_CLASSES} classes")
        result.extend(range(low, high + 1))
    seen: set[int] = set()
    for k in result:
        if k in seen:
            raise DataError(f"class {k} is listed twice in {text!r}")
        seen.add(k)
    return result


def _check_classes(classes: Sequence[int] | str | None, count: int, data: str) -> list[int]:
    if classes is None:
        return list(range(count))
    if isinstance(classes, str):
        classes = parse_classes(classes)
    chosen = []
    for k in classes:
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise DataError(f"class indices must be integers, got {k!r}")
        chosen.append(int(k))
    if not chosen:
        raise DataError("the class subset is empty")
    if len(set(chosen)) != len(chosen):
        raise DataError(f"a class is listed twice in {chosen}")
    bad = [k for k in chosen if not 0 <= k < count]
    if bad:
        raise DataError(f"class index {bad[0]} is out of range: {data} has classes 0..{count - 1}")
    return chosen


def _stratified_split(labels: np.ndarray, positions: np.ndarray, fraction: float, seed: int,
                      salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``positions`` into (kept, carved), carving ``fraction`` of each class.

    Each class is shuffled by its own generator seeded with ``(seed, class, salt)``, so a
    class's split does not depend on which other classes are present (a --classes subset sees
    the same test and val images as the full dataset). Every class with >= 2 samples gives at
    least one to each side when ``fraction > 0``. Both outputs are sorted.
    """
    kept, carved = [], []
    groups = labels[positions]
    order = np.argsort(groups, kind="stable")
    values, starts = np.unique(groups[order], return_index=True)
    for value, members in zip(values, np.split(positions[order], starts[1:]), strict=True):
        rng = np.random.default_rng([seed % 2**64, int(value), salt])
        shuffled = rng.permutation(members)
        n = len(members)
        k = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
        carved.append(shuffled[:k])
        kept.append(shuffled[k:])
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate([empty, *kept])), np.sort(np.concatenate([empty, *carved])))


def _resolve(data: str) -> tuple[DatasetInfo | None, Path | None]:
    """A registered name, or a path (anything that looks like one, or an existing folder)."""
    looks_like_path = os.sep in data or "/" in data or data.startswith(".")
    if data in DATASETS and not looks_like_path:
        return DATASETS[data], None
    path = Path(data).expanduser()
    if looks_like_path or path.exists():
        return None, path.resolve()
    raise DataError(f"unknown dataset '{data}': not a registered name "
                    f"({', '.join(sorted(DATASETS))}) nor an existing folder")


def load_task_data(
    data: str,
    preprocess: Preprocess,
    *,
    root: str | os.PathLike | None = None,
    classes: Sequence[int] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> TaskData:
    """Build a task's train/val/test datasets.

    Args:
        data: a name in :data:`DATASETS`, or a path to an image folder with ``train/`` and
            ``val/`` or ``test/`` subfolders of one folder per class (names sorted = labels).
        preprocess: the network's input size and normalization.
        root: where registered datasets live; default ``$PACKTOOL_DATA``. Unused for
            ``digits`` and folder paths.
        classes: dataset class indices to keep (a list, or ``--classes`` text); labels become
            ``0..len(classes)-1`` in the given order and class names are kept.
        val_fraction: fraction of each class's training data carved off as ``val``, in [0, 1);
            ignored where the dataset publishes a validation split.
        seed: seeds the val carve (the test split never depends on it).

    Raises:
        DataError: unknown dataset, missing or malformed files, bad ``classes``.
    """
    if not isinstance(preprocess, Preprocess):
        raise TypeError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    info, path = _resolve(str(data))
    if info is None:
        assert path is not None
        splits, spec_data, spec_root, natural = _load_path(path), str(path), None, True
    else:
        base = dataset_root(root) if info.needs_root else None
        splits, spec_data, natural = info.load(base), info.name, info.natural
        # An explicit root is recorded; one from $PACKTOOL_DATA is looked up again on reload.
        spec_root = None if base is None or root in (None, "") else str(base.resolve())
    chosen = _check_classes(classes, len(splits.classes), spec_data)

    label_map = np.full(len(splits.classes), -1, dtype=np.int64)
    label_map[chosen] = np.arange(len(chosen))
    labels = splits.source.labels

    def pick(positions: np.ndarray) -> np.ndarray:
        return positions[label_map[labels[positions]] >= 0]

    train = pick(splits.train)
    counts = np.bincount(labels[train], minlength=len(splits.classes))
    empty = [k for k in chosen if counts[k] == 0]
    if empty:
        raise DataError(f"{spec_data} has no training images of class {empty[0]} "
                        f"('{splits.classes[empty[0]]}')")
    if splits.val is None:
        train, val = _stratified_split(labels, train, val_fraction, seed, salt=0)
    else:
        val = pick(splits.val)

    augment = natural and min(preprocess.input_size[1:]) >= 32
    evaluate = preprocess.transform()
    return TaskData(
        train=TaskSplit(splits.source, train, label_map,
                        preprocess.transform(train=True, augment=augment)),
        val=TaskSplit(splits.source, val, label_map, evaluate),
        test=TaskSplit(splits.source, pick(splits.test), label_map, evaluate),
        classes=[splits.classes[k] for k in chosen],
        spec={"data": spec_data, "root": spec_root,
              "classes": None if classes is None else chosen,
              "val_fraction": float(val_fraction), "seed": int(seed)},
        augment=augment,
    )
