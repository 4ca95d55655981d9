"""Exporters: per-task ONNX models, the shared-weight archive, and onnxruntime inference.

::

    from packtool import Pack
    from packtool.exporters import (export_onnx, export_all, export_multi_task, export_reduced,
                                    write_archive, read_archive, predict)

    pack = Pack.load("model.pt")
    export_onnx(pack, "cars", "cars.onnx")             # checked against PyTorch, then written
    export_multi_task(pack, "pack.onnx")               # every task in one graph, task an input
    export_reduced(pack, "cars", "cars-int8.onnx", "int8")  # measured; refused past max_drop
    export_all(pack, "out/")                           # out/<task>.onnx + out/pack.safetensors
    pack2 = read_archive("out/pack.safetensors")       # a Pack serving every archived task
    predict("cars.onnx", ["photo.jpg"], top=3)         # softmax top-3 with onnxruntime

Serving needs only :mod:`.runtime` (onnxruntime, numpy and Pillow; no torch). Names are loaded
on first use (:mod:`packtool._lazy`).
"""

from packtool._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "": ("metadata", "runtime"),
    "packtool.evaluation": ("PrecisionChange", "half_precision_change"),
    "packtool.formats.archive": ("ArchiveInfo", "archive_bytes", "archive_from_bytes",
                                 "read_archive", "write_archive"),
    "packtool.formats.owner_code": ("owner_bits", "pack_bits", "unpack_bits"),
    ".metadata": ("TaskMetadata", "tasks_metadata"),
    ".multitask": ("MultiTaskExport", "export_multi_task", "export_multi_task_bytes",
                   "multi_task_onnx", "verify_multi_task", "with_mixed_batches"),
    ".onnx": ("ARCHIVE_NAME", "OnnxExport", "check_onnx", "export_all", "export_onnx",
              "export_onnx_bytes", "sparsify_initializers", "task_filenames", "task_onnx",
              "verify_onnx"),
    ".prediction": ("predict",),
    ".quantize": ("export_reduced", "half_weights", "reduced_bytes"),
    ".fileinfo": ("OnnxInfo", "onnx_info"),
    ".runtime": ("PredictResult", "infer", "providers", "session"),
    "packtool.choices": ("PRECISIONS",),
})
