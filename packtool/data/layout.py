"""What every published layout's reader shares: the registry entry, the splits it returns, and
small readers of annotation files (whitespace tables, MATLAB files) with one-line errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .sources import Source

ENV_ROOT = "PACKTOOL_DATA"


@dataclass
class Splits:
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
        load: ``root -> Splits`` (root is None when ``needs_root`` is False).
        crop: the paper's recipe for its whole photographs: resize the shorter side, then crop
            (at random in training, the center at evaluation); False where images are cropped
            to their bounding boxes (CUBS, Cars) or small (CIFAR, digits), resized whole.
    """

    name: str
    description: str
    layout: str
    natural: bool
    needs_root: bool
    load: Callable[[Path | None], Splits]
    crop: bool = False


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


def not_found(name: str, root: Path, missing: Sequence[str], layout: str) -> DataError:
    return DataError(
        f"dataset '{name}' not found in {root}: missing {', '.join(missing)} "
        f"(expected {layout}; set `root` or {ENV_ROOT} to the folder holding it)"
    )


def require(name: str, root: Path, relpaths: Sequence[str], layout: str) -> None:
    """Raise the not-found DataError if any of ``relpaths`` (dirs end with /) is missing."""
    missing = [p for p in relpaths
               if not ((root / p).is_dir() if p.endswith("/") else (root / p).is_file())]
    if missing:
        raise not_found(name, root, missing, layout)


def read_rows(path: Path, columns: int) -> list[list[str]]:
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


def numbers(path: Path, row: Sequence[str], kind: type) -> list:
    try:
        return [kind(v) for v in row]
    except ValueError:
        raise DataError(f"{path}: bad numbers in line {' '.join(row)!r}") from None


def by_id(path: Path, rows: list[list[str]], ids: Sequence[str]) -> list[list[str]]:
    """The rows of ``path`` keyed by their first column, in the order of ``ids`` (all present)."""
    table = {row[0]: row[1:] for row in rows}
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{path} has no line for image id {missing[0]} ({len(missing)} missing)")
    return [table[i] for i in ids]


def loadmat(path: Path, *keys: str) -> list[Any]:
    """Variables ``keys`` of a MATLAB file (squeezed); DataError naming the file if bad."""
    import scipy.io  # a reader: imported when it reads

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as exc:  # scipy raises many types on malformed files
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{path} has no variable '{missing[0]}'")
    return [mat[k] for k in keys]


def stratified_split(labels: np.ndarray, positions: np.ndarray, fraction: float, seed: int,
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
