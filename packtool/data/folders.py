"""Image folders: ``<split>/<class>/<image>`` trees, listed with torchvision's folder reader.

A user's folder (``--data path/``) has ``train/`` and ``val/`` or ``test/`` (both: ``val`` for
model selection, ``test`` held out); the registered ``imagenet``, ``sketch`` and ``wikiart`` are
such trees under the data root. Class names are ``train/``'s subfolders, sorted; the other splits
must use the same names. Files are found by ``torchvision.datasets.folder.make_dataset``
(recursive, symlinks followed, sorted); hidden files and folders and other extensions (notes,
``Thumbs.db``) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .layout import DatasetInfo, Splits, require
from .preprocess import IMAGE_EXTENSIONS, is_image_name
from .sources import ImageFiles


def read_folder(path: Path) -> Splits:
    """A user's image folder: train/ and test/ or val/ (both: val for selection, test held out)."""
    layout = f"{path}/train/<class>/<image> and {path}/val/<class>/<image> or {path}/test/..."
    if not path.is_dir():
        raise DataError(f"{path} is not a folder (expected {layout})")
    if not (path / "train").is_dir():
        raise DataError(f"image folder {path} has no train/ subfolder: "
                        f"{_hint(path) or f'expected {layout}'}")
    has_val, has_test = (path / "val").is_dir(), (path / "test").is_dir()
    if not (has_val or has_test):
        raise DataError(f"image folder {path} has no val/ or test/ subfolder (expected {layout})")
    if has_val and has_test:
        return _read_splits(path, "test", "val")
    return _read_splits(path, "test" if has_test else "val")


def _hint(path: Path) -> str:
    """What a folder without ``train/`` most likely is: one split of a dataset, or a tree of
    class folders that has no splits yet."""
    if path.name in ("train", "val", "test") and (path.parent / "train").is_dir():
        return f"{path.name}/ is one of the splits of {path.parent}; give that folder"
    classes = [e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    if classes and not {"val", "test"} & set(classes):
        shown = ", ".join(sorted(classes)[:3]) + (", ..." if len(classes) > 3 else "")
        return (f"its subfolders ({shown}) look like classes: move them into {path}/train/ "
                f"and set some images of each class aside in {path}/test/<class>/")
    return ""


def _read_splits(base: Path, held_out: str, val: str | None = None) -> Splits:
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
        for path, label in _list_split(base, split, index):
            paths.append(path)
            labels.append(label)
        positions[split] = np.arange(start, len(paths))
    return Splits(ImageFiles(base, paths, labels), classes, positions["train"],
                  positions[held_out], None if val is None else positions[val])


def _list_split(base: Path, split: str, index: dict[str, int]) -> list[tuple[str, int]]:
    """``(path relative to base, label)`` of every image of ``base/split``, class by class."""
    folder = base / split
    names = _class_folders(folder)
    unknown = [name for name in names if name not in index]
    if unknown:
        raise DataError(f"class folder {folder / unknown[0]} has no counterpart in "
                        f"{base / 'train'}")
    from torchvision.datasets.folder import make_dataset  # a reader: imported when it reads

    found = make_dataset(str(folder), {name: index[name] for name in names},
                         is_valid_file=_is_image(str(folder)), allow_empty=True)
    counts = np.bincount([label for _, label in found], minlength=len(index))
    empty = [name for name in names if counts[index[name]] == 0]
    if empty:
        raise DataError(f"class folder {folder / empty[0]} has no images "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    return [(os.path.relpath(path, base), label) for path, label in found]


def _is_image(top: str) -> Callable[[str], bool]:
    """Image files below ``top`` that are not hidden and not in a hidden folder."""
    return lambda path: is_image_name(path, top)


def _class_folders(split: Path) -> list[str]:
    names = sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{split} has no class folders (expected {split}/<class>/<image>)")
    return names


def _registered(name: str, held_out: str, description: str, layout: str) -> DatasetInfo:
    """A registered folder dataset: ``<root>/<name>/train`` and ``<root>/<name>/<held_out>``."""

    def load(root: Path | None) -> Splits:
        assert root is not None
        require(name, root, [f"{name}/train/", f"{name}/{held_out}/"], layout)
        return _read_splits(root / name, held_out)

    return DatasetInfo(name=name, description=description, layout=layout, natural=True,
                       needs_root=True, load=load, crop=True)


IMAGENET = _registered(
    "imagenet", "val", "ILSVRC-2012 ImageNet (1000 classes; val is the test split)",
    "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG")
SKETCH = _registered(
    "sketch", "test", "TU-Berlin sketches, PackNet/Piggyback split (250 classes)",
    "sketch/train/<class>/<image> and sketch/test/<class>/<image>")
WIKIART = _registered(
    "wikiart", "test", "WikiArt paintings, PackNet/Piggyback split (195 classes)",
    "wikiart/train/<class>/<image> and wikiart/test/<class>/<image>")
