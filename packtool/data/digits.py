"""The UCI handwritten digits, bundled with scikit-learn (8x8 gray, 10 classes).

The file is read from scikit-learn's installed data folder with numpy, as its ``load_digits``
reads it (``np.loadtxt`` of ``digits.csv.gz``; a test checks the arrays are identical), without
importing scikit-learn itself: its import costs more than a small digits task trains.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataError
from .layout import DatasetInfo, Splits, stratified_split
from .sources import ImageArray


def digits_file() -> Path:
    """``sklearn/datasets/data/digits.csv.gz`` of the installed scikit-learn (found, not
    imported)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn, which is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits file {path} is missing")
    return path


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images, float64 ``[N, 8, 8]`` with values 0..16, and their labels ``[N]``
    (read-only arrays: read once per process, shared by every caller)."""
    return _read(digits_file())


@functools.lru_cache(maxsize=1)
def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # `packtool run` reads the file for every task it trains and every task it re-measures.
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    images, labels = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load(root: Path | None) -> Splits:
    images, labels = read_digits()
    # 8x8 values 0..16 -> [1, 8, 8] in 0..1.
    source = ImageArray(images[:, None].astype(np.float32), labels, scale=16.0)
    # No published split: a fixed stratified 20% test split, independent of the task's seed.
    train, test = stratified_split(source.labels, np.arange(len(source)), 0.2, seed=0, salt=1)
    return Splits(source, [str(n) for n in range(10)], train, test)


INFO = DatasetInfo(
    name="digits", description="UCI handwritten digits, bundled (8x8 gray, 10 classes)",
    layout="nothing: bundled with scikit-learn", natural=False, needs_root=False, load=load,
)
