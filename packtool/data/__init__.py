"""Datasets for packtool: a registry of named datasets, image folders, transforms, class subsets.

Modules: :mod:`.registry` (:data:`DATASETS`, :func:`load_task_data`), :mod:`.preprocess` (image ->
network input, numpy and Pillow only), :mod:`.transforms` (the same as a torch transform, with
training's random crop and flip), :mod:`.sampling` (a training epoch's order and randomness),
:mod:`.sources` (samples read by position, one task's split),
:mod:`.folders` (image folders), and one module per published layout (:mod:`.cubs`,
:mod:`.cars`, :mod:`.flowers`, :mod:`.cifar100`, :mod:`.digits`) on the helpers of
:mod:`.layout`. Names are loaded on first use (:mod:`packtool._lazy`).

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

from .._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    ".layout": ("ENV_ROOT", "DatasetInfo", "dataset_root"),
    ".preprocess": ("IMAGE_EXTENSIONS", "Preprocess", "image_files", "read_image"),
    ".registry": ("DATASETS", "TaskData", "chance_accuracy", "load_task_data", "missing_classes",
                  "task_data", "unknown_images", "with_validation_in_training"),
    ".sampling": ("EpochSampler", "SeededSamples"),
    ".sources": ("ImageArray", "ImageFiles", "TaskSplit", "cache_splits", "in_memory"),
    ".transforms": ("ImageTransform",),
})
