"""Oxford Flowers-102, as its publisher ships it, with its published train/val/test split.

The class names come from torchvision's ``Flowers102`` (the dataset ships none). Its reader is not
used for the files: it refuses any ``.mat`` whose MD5 differs from the published one (a re-saved
copy, or a test's small fixture), where this reader only needs the layout to be right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .layout import DatasetInfo, Splits, loadmat, require
from .sources import ImageFiles


def load(root: Path | None) -> Splits:
    assert root is not None
    base = root / "flowers-102"
    require("flowers", root, ["flowers-102/jpg/", "flowers-102/imagelabels.mat",
                               "flowers-102/setid.mat"], INFO.layout)
    (labels,) = loadmat(base / "imagelabels.mat", "labels")
    labels = np.atleast_1d(labels).astype(np.int64)
    # The dataset ships no names; torchvision lists them (older releases don't: use "1".."102").
    from torchvision.datasets import Flowers102  # a reader: imported when it reads

    classes = list(getattr(Flowers102, "classes", None) or (str(k) for k in range(1, 103)))
    if labels.size == 0 or labels.min() < 1 or labels.max() > len(classes):
        raise DataError(f"{base / 'imagelabels.mat'}: labels must be 1..{len(classes)}")
    setid = [np.atleast_1d(v).astype(np.int64) for v in loadmat(base / "setid.mat",
                                                                 "trnid", "valid", "tstid")]
    for ids in setid:
        if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
            raise DataError(f"{base / 'setid.mat'}: image ids must be 1..{len(labels)}")
    source = ImageFiles(base / "jpg", [f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)],
                        labels - 1)
    trnid, valid, tstid = (ids - 1 for ids in setid)
    source.check_exist(str(base / "setid.mat"), np.concatenate([trnid, valid, tstid]))
    # The published split has a validation set: use it for model selection, tstid as the test.
    return Splits(source, classes, trnid, tstid, valid)


INFO = DatasetInfo(
    name="flowers", description="Oxford Flowers-102 (102 classes; published train/val/test)",
    layout="flowers-102/{jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat}",
    natural=True, needs_root=True, load=load, crop=True,
)
