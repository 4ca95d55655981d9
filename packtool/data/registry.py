"""The dataset registry and a task's data: :data:`DATASETS` and :func:`load_task_data`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from ..errors import DataError, did_you_mean, one_line
from ..parse import parse_classes
from . import cars, cifar100, cubs, digits, flowers
from .folders import IMAGENET, SKETCH, WIKIART, read_folder
from .layout import DatasetInfo, Splits, dataset_root, stratified_split
from .preprocess import Preprocess, image_files
from .sources import ImageFiles, TaskSplit
from .transforms import ImageTransform

if TYPE_CHECKING:
    from ..pack import Pack

#: The registered datasets by name (``DATA`` on the command line).
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    digits.INFO, cubs.INFO, cars.INFO, flowers.INFO, IMAGENET, cifar100.INFO, SKETCH, WIKIART,
)}


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
        skipped: files left out as unreadable (``skip_bad_images``).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    spec: dict
    augment: bool
    skipped: list[str] = field(default_factory=list)


def missing_classes(data: TaskData) -> dict[str, list[str]]:
    """The classes that ``data.val`` and ``data.test`` (by those names) have no image of,
    ``{"validation"|"test": [class names]}``: a user's small folder may leave one out, and
    that split's accuracy then leaves the class out. Splits without ``labels`` are not read."""
    missing = {}
    for name, split in (("validation", data.val), ("test", data.test)):
        labels = getattr(split, "labels", None)
        if labels is None or len(labels) == 0:  # none at all (--val-fraction 0): no note
            continue
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(data.classes))
        absent = [c for c, n in zip(data.classes, counts) if n == 0]
        if absent:
            missing[name] = absent
    return missing


def chance_accuracy(split: Dataset) -> float | None:
    """What always answering ``split``'s most common class scores on it (0..1): the accuracy a
    model that learned nothing reaches; ``None`` for a split without ``labels`` or images."""
    labels = getattr(split, "labels", None)
    if labels is None or len(labels) == 0:
        return None
    return float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / len(labels))


def with_validation_in_training(data: TaskData) -> TaskData:
    """``data`` whose training split also holds the validation images (read as training
    images, augmented alike), for a refit; ``val`` and ``test`` unchanged."""
    train, val = data.train, data.val
    joined = (train.joined(val) if isinstance(train, TaskSplit) and isinstance(val, TaskSplit)
              and train.source is val.source else ConcatDataset([train, val]))
    return replace(data, train=joined)


def task_data(pack: Pack, task: str | int, *, root: str | os.PathLike | None = None
              ) -> TaskData:
    """Task ``task`` of ``pack``: its dataset, rebuilt from the spec recorded when it was added.

    Args:
        root: where the registered datasets live now, if not where they were (the recorded
            root, else ``$PACKTOOL_DATA``).

    Raises:
        DataError: the data is not there (or cannot be read) any more; the message names the
            task (a pack's tasks may read different folders).
    """
    record = pack.task(task)
    spec = dict(record.data)
    spec.setdefault("resize", None)  # tasks added before the recipes: resized whole
    if root is not None:
        spec["root"] = str(root)
    try:
        return load_task_data(**spec, preprocess=pack.preprocess)
    except DataError as exc:
        raise DataError(f"task {record.name!r}: {one_line(exc)}") from None


def _check_classes(classes: Sequence[int | str] | str | None, names: Sequence[str],
                   data: str) -> list[int]:
    """The class indices ``classes`` selects (indices, or names as ``data`` spells them)."""
    count = len(names)
    if classes is None:
        return list(range(count))
    if isinstance(classes, str):
        classes = parse_classes(classes)
    chosen = []
    for k in classes:
        if isinstance(k, str) and k not in names:
            shown = ", ".join(names[:12]) + (", ..." if count > 12 else "")
            raise DataError(f"{data} has no class {k!r}; its classes: {shown}")
        if isinstance(k, str):
            k = list(names).index(k)
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise DataError(f"classes must be indices or names, got {k!r}")
        chosen.append(int(k))
    if not chosen:
        raise DataError("the class subset is empty")
    if len(set(chosen)) != len(chosen):
        raise DataError(f"a class is listed twice in {chosen}")
    bad = [k for k in chosen if not 0 <= k < count]
    if bad:
        raise DataError(f"class index {bad[0]} is out of range: {data} has classes 0..{count - 1}")
    return chosen


def _resolve(data: str) -> tuple[DatasetInfo | None, Path | None]:
    """A registered name, or a path (anything that looks like one, or an existing folder)."""
    looks_like_path = os.sep in data or "/" in data or data.startswith(".")
    if data in DATASETS and not looks_like_path:
        return DATASETS[data], None
    path = Path(data).expanduser()
    if looks_like_path or path.exists():
        return None, path.resolve()
    names = sorted(DATASETS)
    raise DataError(f"unknown dataset '{data}': not a registered name ({did_you_mean(data, names)}"
                    f"known: {', '.join(names)}) nor an existing folder")


def load_task_data(
    data: str, preprocess: Preprocess, *, root: str | os.PathLike | None = None,
    classes: Sequence[int | str] | str | None = None, val_fraction: float = 0.1, seed: int = 0,
    resize: int | str | None = "auto", skip_bad_images: bool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TaskData:
    """Build a task's train/val/test datasets.

    Args:
        data: a name in :data:`DATASETS`, or a path to an image folder with ``train/`` and
            ``val/`` or ``test/`` subfolders of one folder per class (names sorted = labels).
        preprocess: the network's input size and normalization.
        root: where registered datasets live; default ``$PACKTOOL_DATA``. Unused for
            ``digits`` and folder paths.
        classes: dataset classes to keep, by index or by name (a list, or ``--classes``
            text); labels become ``0..len(classes)-1`` in the given order and class names are
            kept. The record keeps their indices.
        val_fraction: fraction of each class's training data carved off as ``val``, in [0, 1);
            ignored where the dataset publishes a validation split.
        seed: seeds the val carve (the test split never depends on it).
        resize: the transforms' :attr:`Preprocess.resize`; ``"auto"``: the paper's resize and
            crop for whole photographs (and image folders) at inputs of 32 pixels and more.
        skip_bad_images: ``None`` reads files as they are used (one that cannot be read stops
            training there); ``False`` first checks every file's header and names every bad
            one at once; ``True`` checks and leaves the bad ones out (``TaskData.skipped``).
        on_progress: ``(done, total)`` while headers are checked.

    Raises:
        DataError: unknown dataset, missing or malformed files, bad ``classes``.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    splits, spec_data, spec_root, natural, crop = _read(str(data), root)
    auto = _auto_resize(preprocess, crop)
    preprocess = replace(preprocess, resize=auto if resize == "auto" else resize)
    chosen = _check_classes(classes, splits.classes, spec_data)
    label_map = np.full(len(splits.classes), -1, dtype=np.int64)
    label_map[chosen] = np.arange(len(chosen))
    skipped = _unreadable(splits, label_map, skip_bad_images, on_progress, spec_data)
    train, val, test = _task_positions(splits, chosen, label_map, val_fraction, seed, spec_data,
                                       set(skipped))
    augment = natural and _photo_sized(preprocess)
    evaluate = ImageTransform(preprocess)
    return TaskData(
        train=TaskSplit(splits.source, train, label_map,
                        ImageTransform(preprocess, train=True, flip=augment)),
        val=TaskSplit(splits.source, val, label_map, evaluate),
        test=TaskSplit(splits.source, test, label_map, evaluate),
        classes=[splits.classes[k] for k in chosen],
        spec={"data": spec_data, "root": spec_root,
              "classes": None if classes is None else chosen,
              "val_fraction": float(val_fraction), "seed": int(seed),
              **({"resize": preprocess.resize} if preprocess.resize or auto else {}),
              **({"skip_bad_images": True} if skip_bad_images else {})},
        augment=augment,
        skipped=[str(Path(splits.source.base) / splits.source.paths[i]) for i in skipped],
    )


def unknown_images(data: str, preprocess: Preprocess, *, root: str | os.PathLike | None = None,
                   classes: Sequence[int | str] | str | None = None) -> Dataset:
    """Images that belong to none of a pack's tasks, to score as such (``eval --unknown``).

    ``data`` as :func:`load_task_data` takes it (a registered dataset or a task's image folder,
    ``classes`` of it): its test split; or a folder of images without a ``train/`` split (any
    layout; every image below it, sorted, as :func:`~.preprocess.image_files` finds them), read
    as a test split of an image folder is. Labels are the dataset's (0 for a plain folder);
    scoring the unknown does not use them.

    Raises:
        DataError: no such dataset or folder, a folder without images, ``classes`` with a
            plain folder (it has none).
    """
    _, path = _resolve(str(data))
    if path is None or (path / "train").is_dir() or not path.is_dir():
        return load_task_data(data, preprocess, root=root, classes=classes).test
    if classes is not None:
        raise DataError(f"{path} is a folder of images without a train/ split: it has no "
                        "classes to choose from")
    files = [str(f.relative_to(path)) for f in image_files([path])]
    source = ImageFiles(path, files, np.zeros(len(files), dtype=np.int64))
    transform = ImageTransform(replace(preprocess, resize=_auto_resize(preprocess, crop=True)))
    return TaskSplit(source, np.arange(len(files)), np.zeros(1, dtype=np.int64), transform)


def _auto_resize(preprocess: Preprocess, crop: bool) -> int | None:
    """``resize="auto"``: the paper's resize-and-crop for whole photographs (``crop``) at inputs
    of 32 pixels and more, else none."""
    return preprocess.cropping().resize if crop and _photo_sized(preprocess) else None


def _photo_sized(preprocess: Preprocess) -> bool:
    """Inputs of 32 pixels and more: where photographs get augmented and resized-and-cropped
    (smaller inputs are digit-like: taken as they are)."""
    return min(preprocess.input_size[1:]) >= 32


def _unreadable(splits: Splits, label_map: np.ndarray, skip: bool | None,
                on_progress: Callable[[int, int], None] | None, name: str) -> list[int]:
    """Positions of the task's files that cannot be read, when asked to check (see
    :func:`load_task_data`); names them all in one DataError unless ``skip``."""
    source = splits.source
    if skip is None or not isinstance(source, ImageFiles):
        return []
    positions = np.concatenate([p for p in (splits.train, splits.val, splits.test)
                                if p is not None])
    positions = positions[label_map[source.labels[positions]] >= 0]
    bad = source.unreadable(positions, on_progress)
    if bad and not skip:
        shown = ", ".join(str(source.base / source.paths[i]) for i in list(bad)[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        first, why = next(iter(bad.items()))
        why = why.replace(f"'{source.base / source.paths[first]}'", "").strip()
        raise DataError(f"{len(bad)} of {len(positions)} images of {name} cannot be read: "
                        f"{shown}{more} (cannot read image {source.paths[first]}: {why}); fix "
                        "or remove them, or pass `skip_bad_images=True`")
    return sorted(bad)


def _read(data: str, root: str | os.PathLike | None
          ) -> tuple[Splits, str, str | None, bool, bool]:
    """The dataset's splits, its name as recorded, the root to record, whether its images are
    natural ones (flipped at random in training) and take the resize-and-crop recipe."""
    info, path = _resolve(data)
    if info is None:
        assert path is not None
        return read_folder(path), str(path), None, True, True
    base = dataset_root(root) if info.needs_root else None
    # An explicit root is recorded; one from $PACKTOOL_DATA is looked up again on reload.
    spec_root = None if base is None or root in (None, "") else str(base.resolve())
    return info.load(base), info.name, spec_root, info.natural, info.crop


def _task_positions(splits: Splits, chosen: list[int], label_map: np.ndarray,
                    val_fraction: float, seed: int, name: str, skipped: set[int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the task's train, val and test samples (its classes, none skipped)."""
    labels = splits.source.labels

    def pick(positions: np.ndarray) -> np.ndarray:
        kept = label_map[labels[positions]] >= 0
        if skipped:
            kept &= ~np.isin(positions, list(skipped))
        return positions[kept]

    train = pick(splits.train)
    counts = np.bincount(labels[train], minlength=len(splits.classes))
    empty = [k for k in chosen if counts[k] == 0]
    if empty:
        raise DataError(f"{name} has no training images of class {empty[0]} "
                        f"('{splits.classes[empty[0]]}')")
    if splits.val is None:
        train, val = stratified_split(labels, train, val_fraction, seed, salt=0)
    else:
        val = pick(splits.val)
    return train, val, pick(splits.test)
