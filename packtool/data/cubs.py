"""CUB-200-2011 birds, as its publisher ships it; images cropped to their bounding boxes (the
paper's recipe). torchvision has no reader for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .layout import DatasetInfo, Splits, by_id, numbers, read_rows, require
from .sources import ImageFiles


def load(root: Path | None) -> Splits:
    assert root is not None
    base = root / "CUB_200_2011"
    names = ("images.txt", "image_class_labels.txt", "train_test_split.txt",
             "bounding_boxes.txt", "classes.txt")
    require("cubs", root, ["CUB_200_2011/images/", *(f"CUB_200_2011/{n}" for n in names)],
             INFO.layout)
    images, labels, split, boxes, classes = (base / n for n in names)

    image_rows = read_rows(images, 2)
    ids = [row[0] for row in image_rows]
    class_rows = sorted(read_rows(classes, 2), key=lambda r: numbers(classes, r[:1], int))
    class_ids = {row[0]: k for k, row in enumerate(class_rows)}  # ids 1..200 -> labels 0..199
    label_of = [row[0] for row in by_id(labels, read_rows(labels, 2), ids)]
    unknown = sorted(set(label_of) - set(class_ids))
    if unknown:
        raise DataError(f"{labels} uses class {unknown[0]}, which {classes} does not list")
    is_train = [row[0] for row in by_id(split, read_rows(split, 2), ids)]
    if set(is_train) - {"0", "1"}:
        raise DataError(f"{split}: the second column must be 1 (train) or 0 (test)")
    xywh = np.array([numbers(boxes, row, float)
                     for row in by_id(boxes, read_rows(boxes, 5), ids)]).reshape(-1, 4)
    if (xywh[:, 2:] <= 0).any():
        raise DataError(f"{boxes} has a box with zero or negative width or height")

    source = ImageFiles(base / "images", [row[1] for row in image_rows],
                        [class_ids[c] for c in label_of],
                        np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    source.check_exist(str(images))
    train = np.array([s == "1" for s in is_train], dtype=bool)
    return Splits(source, [row[1] for row in class_rows], np.flatnonzero(train),
                   np.flatnonzero(~train))


INFO = DatasetInfo(
    name="cubs", description="CUB-200-2011 birds, cropped to the bounding box (200 classes)",
    layout="CUB_200_2011/{images/<class>/<file>.jpg, images.txt, image_class_labels.txt, "
           "train_test_split.txt, bounding_boxes.txt, classes.txt}",
    natural=True, needs_root=True, load=load,
)
