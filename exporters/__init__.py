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
"""

from packtool.evaluate import PrecisionChange, half_precision_change
from packtool.formats.archive import (
    archive_from_bytes,
    owner_bits,
    pack_bits,
    read_archive,
    unpack_bits,
)

from .archive import ArchiveInfo, archive_bytes, write_archive
from .multitask import (
    MultiTaskExport,
    export_multi_task,
    export_multi_task_bytes,
    multi_task_onnx,
    tasks_metadata,
    verify_multi_task,
)
from .onnx import (
    ARCHIVE_NAME,
    OnnxExport,
    TaskMetadata,
    check_onnx,
    export_all,
    export_onnx,
    export_onnx_bytes,
    sparsify_initializers,
    task_filenames,
    task_onnx,
    verify_onnx,
)
from .predict import PredictResult, predict
from .quantize import PRECISIONS, export_reduced, half_weights, reduced_bytes
from .runtime import infer, providers, session

__all__ = [
    "ARCHIVE_NAME",
    "PRECISIONS",
    "ArchiveInfo",
    "MultiTaskExport",
    "OnnxExport",
    "PrecisionChange",
    "PredictResult",
    "TaskMetadata",
    "archive_bytes",
    "archive_from_bytes",
    "check_onnx",
    "export_all",
    "export_multi_task",
    "export_multi_task_bytes",
    "export_onnx",
    "export_onnx_bytes",
    "export_reduced",
    "half_precision_change",
    "half_weights",
    "infer",
    "multi_task_onnx",
    "owner_bits",
    "pack_bits",
    "predict",
    "providers",
    "read_archive",
    "reduced_bytes",
    "session",
    "sparsify_initializers",
    "task_filenames",
    "task_onnx",
    "tasks_metadata",
    "unpack_bits",
    "verify_multi_task",
    "verify_onnx",
    "write_archive",
]
