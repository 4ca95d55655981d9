"""CIFAR-100 in its published Python layout (``cifar-100-python/{train, test, meta}``).

torchvision's ``CIFAR100`` is not used: it unpickles the files with no restriction (a planted
file could run code) and its MD5 check refuses any re-packed copy. This reader allows only what a
pickled NumPy array needs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .layout import DatasetInfo, Splits, require
from .sources import ImageArray

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


def load(root: Path | None) -> Splits:
    assert root is not None
    base = root / "cifar-100-python"
    require("cifar100", root, [f"cifar-100-python/{n}" for n in ("train", "test", "meta")],
             INFO.layout)
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
    return Splits(source, classes, np.arange(sizes[0]), sizes[0] + np.arange(sizes[1]))


INFO = DatasetInfo(
    name="cifar100", description="CIFAR-100 (100 classes, 32x32)",
    layout="cifar-100-python/{train, test, meta}",
    natural=True, needs_root=True, load=load,
)
