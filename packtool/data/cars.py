"""Stanford Cars, as its publisher ships it; images cropped to their bounding boxes (the paper's
recipe).

torchvision's ``StanfordCars`` reads the same files but keeps only file names and classes (in a
private attribute) and drops the boxes, so this reads the annotations once, boxes included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .layout import DatasetInfo, Splits, loadmat, require
from .sources import ImageFiles


def load(root: Path | None) -> Splits:
    assert root is not None
    base = root / "stanford_cars"
    annotations = {"cars_train/": "devkit/cars_train_annos.mat",
                   "cars_test/": "cars_test_annos_withlabels.mat"}
    require("cars", root, [f"stanford_cars/{p}" for p in
                            ["devkit/cars_meta.mat", *annotations, *annotations.values()]],
             INFO.layout)
    (names,) = loadmat(base / "devkit/cars_meta.mat", "class_names")
    classes = [str(n) for n in np.atleast_1d(names).tolist()]

    paths, labels, boxes, train = [], [], [], []
    for folder, mat_name in annotations.items():
        path = base / mat_name
        (records,) = loadmat(path, "annotations")
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
    return Splits(source, classes, np.flatnonzero(is_train), np.flatnonzero(~is_train))


INFO = DatasetInfo(
    name="cars", description="Stanford Cars, cropped to the bounding box (196 classes)",
    layout="stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat, "
           "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat}",
    natural=True, needs_root=True, load=load,
)
