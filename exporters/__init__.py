"""Exporters: per-task ONNX models, the shared-weight archive, and onnxruntime inference.

::

    from packtool import Pack
    from packtool.exporters import export_onnx, export_all, write_archive, read_archive, predict

    pack = Pack.load("model.pt")
    export_onnx(pack, "cars", "cars.onnx")             # checked against PyTorch, then written
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
from .runtime import infer, providers, session

__all__ = [
    "ARCHIVE_NAME",
    "ArchiveInfo",
    "OnnxExport",
    "PrecisionChange",
    "PredictResult",
    "TaskMetadata",
    "archive_bytes",
    "archive_from_bytes",
    "check_onnx",
    "export_all",
    "export_onnx",
    "export_onnx_bytes",
    "half_precision_change",
    "infer",
    "owner_bits",
    "pack_bits",
    "predict",
    "providers",
    "read_archive",
    "session",
    "sparsify_initializers",
    "task_filenames",
    "task_onnx",
    "unpack_bits",
    "verify_onnx",
    "write_archive",
]
