"""The UCI handwritten digits, bundled with scikit-learn (8x8 gray, 10 classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from .layout import DatasetInfo, Splits, stratified_split
from .sources import ImageArray


def load(root: Path | None) -> Splits:
    digits = load_digits()
    # 8x8 values 0..16 -> [1, 8, 8] in 0..1.
    source = ImageArray(digits.images[:, None].astype(np.float32), digits.target, scale=16.0)
    # No published split: a fixed stratified 20% test split, independent of the task's seed.
    train, test = stratified_split(source.labels, np.arange(len(source)), 0.2, seed=0, salt=1)
    return Splits(source, [str(int(n)) for n in digits.target_names], train, test)


INFO = DatasetInfo(
    name="digits", description="UCI handwritten digits, bundled (8x8 gray, 10 classes)",
    layout="nothing: bundled with scikit-learn", natural=False, needs_root=False, load=load,
)
