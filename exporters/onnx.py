"""Per-task ONNX export: one task of a pack as a standalone ONNX model.

The exported file (see "Exported ONNX" in the CLI contract):

* one input ``input``, float32 ``[batch, C, H, W]`` with a dynamic batch dimension, holding
  the image resized to ``H x W``, scaled to 0..1 and normalized with the pack's mean and std;
  one output ``logits``, float32 ``[batch, classes]`` in the task's class order;
* the network of :meth:`packtool.pack.Pack.model_for` (task ``k``: weights of tasks ``1..k``,
  head ``k``, task ``k``'s private state), exported by ``torch.onnx.export`` (dynamo) with its
  graph optimizer on, which folds constants and folds a BatchNorm that follows a convolution
  into it. (Unoptimized graphs of torchvision models keep shape arithmetic, e.g. of adaptive
  pooling, that onnxruntime warns about on every load.) Initializers keep PyTorch's names
  (``features.0.weight``); a folded convolution holds its BatchNorm-scaled weight under its
  own name (zeros stay zeros) and gains a ``<name>_bias`` if it had no bias;
* ``metadata_props``: ``packtool.task``, ``packtool.classes`` (JSON list), ``packtool.input_size``
  (``CxHxW``), ``packtool.mean``, ``packtool.std`` (JSON lists), ``packtool.version``,
  ``packtool.source_sha256`` (empty if unknown), and ``packtool.resize`` where the task's images
  take the resize-and-crop recipe (the shorter side to that many pixels, then the center
  ``H x W``; absent: the whole image resized to ``H x W``, as in files written before it), and
  ``packtool.temperature`` where the task was calibrated (its softmax temperature for
  task-free scores, :mod:`packtool.taskfree`; absent: 1);
* initializers stored as ``sparse_initializer`` (COO, flat INT64 indices) wherever that is
  smaller than dense, i.e. below about a third non-zero for float32. onnxruntime densifies them
  on load: this saves disk, not compute.

:func:`export_onnx` checks the model with ``onnx.checker`` (the full check on the dense model,
the structural check once sparse, see :func:`check_onnx`) and, unless disabled, runs it in
onnxruntime beside PyTorch before writing it; a failed check writes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from packtool.errors import PackToolError, one_line
from packtool.evaluation import PrecisionChange
from packtool.fileio import atomic_write_bytes
from packtool.formats.archive import ArchiveInfo, write_archive
from packtool.pack import Pack
from packtool.progress import Say, silent

from .metadata import INPUT_NAME, OUTPUT_NAME, TaskMetadata
from .runtime import infer, provider_of, session
from .torchlib_table import one_torchlib_table

MIN_OPSET = 18  # the dynamo exporter's lowest opset; lower requests fall back to 18 silently
VERIFY_BATCH = 4
VERIFY_SEED = 0
ARCHIVE_NAME = "pack.safetensors"

#: The initializers stored sparse where smaller: float weights, and int8 ones of an int8 export
#: (a pruned weight quantizes to 0 exactly: symmetric int8 weights have zero point 0).
_SPARSE_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                 onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


@dataclass(frozen=True)
class OnnxExport:
    """One exported task.

    Attributes:
        task: task name.
        path: file written (``None`` for an in-memory export).
        bytes: file size.
        max_abs_diff: largest ``|onnxruntime - PyTorch|`` logit on the check batch, ``None`` if
            the check was skipped; for a reduced precision, the written file's against the
            float32 network, on the task's test split (8 seeded standard-normal inputs
            without data).
        provider: onnxruntime execution provider that ran the check, ``None`` if skipped.
        precision: ``float32``, or ``float16`` / ``int8`` (:mod:`.quantize`).
        change: for a reduced precision, the file against float32 on the task's test split
            (``None`` if not measured).
    """

    task: str
    path: Path | None
    bytes: int
    max_abs_diff: float | None
    provider: str | None
    precision: str = "float32"
    change: PrecisionChange | None = None

    def to_dict(self) -> dict[str, Any]:
        """An item of ``files`` in ``packtool export --json``; a reduced precision adds
        ``precision``, ``accuracy_change`` (points on the test split, negative = worse; ``None``
        if not measured) and the two accuracies (0..1)."""
        doc = {"task": self.task, "path": None if self.path is None else str(self.path),
               "bytes": self.bytes, "max_abs_diff": self.max_abs_diff}
        if self.precision == "float32":
            return doc
        change = self.change
        return {**doc, "precision": self.precision,
                "accuracy_change": None if change is None else change.accuracy_change,
                "accuracy_float32": None if change is None else change.accuracy,
                "accuracy": None if change is None else change.accuracy_reduced}


# ------------------------------------------------------------------------------------------------
# Building the model
# ------------------------------------------------------------------------------------------------


def task_onnx(pack: Pack, task: str | int, *, dense: bool = False, opset: int = MIN_OPSET,
              source_sha256: str | None = None) -> onnx.ModelProto:
    """Task ``task`` of ``pack`` as an in-memory ONNX model (see the module docstring)."""
    return _TaskExport(pack, task, opset).model(dense=dense, source_sha256=source_sha256)


class _TaskExport:
    """One task's baked network and its ONNX translation."""

    def __init__(self, pack: Pack, task: str | int, opset: int) -> None:
        check_opset(opset)
        self.pack, self.record, self.opset = pack, pack.task(task), opset
        self.network: nn.Module = pack.model_for(self.record.name, device="cpu")
        self.outputs = [OUTPUT_NAME]

    def model(self, *, dense: bool, source_sha256: str | None, check: bool = False
              ) -> onnx.ModelProto:
        """The ONNX model; with ``check``, ``onnx.checker`` runs before and after sparsifying."""
        proto = strip_export_noise(self._torch_export())
        onnx.helper.set_model_props(
            proto, TaskMetadata.of(self.pack, self.record, source_sha256).to_props()
        )
        name = f"task {self.record.name!r}"
        if check:
            check_onnx(proto, name)
        if not dense and sparsify_initializers(proto) and check:
            check_onnx(proto, name)
        return proto

    def _torch_export(self) -> onnx.ModelProto:
        # Batch 2, not 1: torch.export specializes a dimension of size 1 instead of keeping it.
        example = torch.zeros(2, *self.pack.spec.input_size)
        try:
            with one_torchlib_table():
                program = torch.onnx.export(
                    self.network, (example,), dynamo=True, external_data=False, optimize=True,
                    input_names=[INPUT_NAME], output_names=self.outputs,
                    dynamic_shapes=({0: "batch"},), opset_version=self.opset, verbose=False,
                )
            proto = program.model_proto
        except Exception as exc:  # the exporter raises many types; the message is what counts
            raise PackToolError(
                f"cannot export task {self.record.name!r} to ONNX: {one_line(exc, first=True)}"
            ) from exc
        opsets = {o.domain: o.version for o in proto.opset_import}
        if opsets.get("", opsets.get("ai.onnx")) != self.opset:
            raise PackToolError(f"the exporter could not produce opset {self.opset}")
        return proto


def check_opset(opset: int) -> None:
    """PackToolError unless ``opset`` is one the exporter can write (18 up to onnx's newest)."""
    if opset < MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise PackToolError(
            f"opset must be in {MIN_OPSET}..{onnx.defs.onnx_opset_version()}, got {opset}"
        )


def strip_export_noise(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's metadata, in place: per-node stack traces and source paths of the
    export machine are noise, and not ours to ship."""
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.metadata_props[:]
    return proto


def sparsify_initializers(model: onnx.ModelProto) -> list[str]:
    """Store weight initializers (float or 8-bit) as COO ``sparse_initializer`` where that is
    smaller, in place.

    Indices are flat (row-major) INT64 positions of the non-zero values, as ``onnx.checker``
    requires; ``-0.0`` counts as zero. Returns the names of the converted initializers.
    """
    graph = model.graph
    dense, converted = [], []
    for init in graph.initializer:
        sparse = _sparse_if_smaller(init)
        if sparse is None:
            dense.append(init)
        else:
            graph.sparse_initializer.append(sparse)
            converted.append(init.name)
    del graph.initializer[:]
    graph.initializer.extend(dense)
    # The exporter records initializers' types in value_info as dense tensors; the checker's
    # shape inference types a sparse initializer as sparse_tensor and refuses the mismatch.
    names = set(converted)
    kept = [info for info in graph.value_info if info.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return converted


def _sparse_if_smaller(init: onnx.TensorProto) -> onnx.SparseTensorProto | None:
    if init.data_type not in _SPARSE_TYPES or len(init.dims) == 0:
        return None
    values = numpy_helper.to_array(init).reshape(-1)
    nonzero = np.flatnonzero(values)
    # COO costs itemsize + 8 bytes per non-zero: a cheap test before building the proto.
    if nonzero.size * (values.itemsize + 8) >= values.nbytes:
        return None
    sparse = onnx.helper.make_sparse_tensor(
        numpy_helper.from_array(values[nonzero], name=init.name),
        numpy_helper.from_array(nonzero.astype(np.int64)),
        list(init.dims),
    )
    return sparse if sparse.ByteSize() < init.ByteSize() else None


# ------------------------------------------------------------------------------------------------
# Checking and writing
# ------------------------------------------------------------------------------------------------


def check_onnx(model: onnx.ModelProto, name: str = "model") -> None:
    """``onnx.checker.check_model``: the full check (strict shape inference) for dense models.

    A model with ``sparse_initializer`` gets the structural check only (which validates the
    sparse tensors): onnx's shape inference types a sparse initializer as ``sparse_tensor``,
    which no operator accepts, while runtimes densify it on load. :func:`export_onnx` therefore
    fully checks the dense model first, then structurally checks the sparse one.
    """
    try:
        onnx.checker.check_model(model, full_check=not model.graph.sparse_initializer)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PackToolError(
            f"exported ONNX of {name} fails onnx.checker: {one_line(exc, first=True)}"
        ) from exc


def verify_onnx(model: bytes, reference: nn.Module, input_size: Sequence[int], *,
                tolerance: float = 1e-4, batch: int = VERIFY_BATCH, seed: int = VERIFY_SEED,
                name: str = "model") -> tuple[float, str]:
    """Run ``model`` in onnxruntime and ``reference`` in PyTorch on the same random batch.

    The batch is ``[batch, *input_size]`` standard normal values from a generator seeded with
    ``seed`` (CPU, float32), so the check is reproducible.

    Returns:
        ``(max_abs_diff, provider)`` over all logits.

    Raises:
        PackToolError: the difference exceeds ``tolerance`` (or is NaN), or shapes differ.
    """
    inputs = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference.eval()(inputs).numpy()
    sess = session(model)
    provider = provider_of(sess)
    actual = infer(sess, inputs.numpy())
    if actual.shape != expected.shape:
        raise PackToolError(f"ONNX check of {name} failed: onnxruntime returns shape "
                            f"{list(actual.shape)}, PyTorch {list(expected.shape)}")
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected))) if actual.size else 0.0
    if not diff <= tolerance:  # also catches NaN
        raise PackToolError(
            f"ONNX check of {name} failed: onnxruntime ({provider}) differs from PyTorch by "
            f"{diff:.3g} > tolerance {tolerance:g}; nothing was written"
        )
    return diff, provider


def export_onnx(pack: Pack, task: str | int, path: str | os.PathLike, *, dense: bool = False,
                opset: int = MIN_OPSET, verify: bool = True, tolerance: float = 1e-4,
                source_sha256: str | None = None, say: Say = silent
                ) -> OnnxExport:
    """Export task ``task`` of ``pack`` to the ONNX file ``path``.

    The model is checked with ``onnx.checker`` (full check) and, if ``verify``, run in
    onnxruntime beside PyTorch; only then is ``path`` written, atomically. On any failure the
    file is not created and an existing one keeps its bytes.

    Args:
        dense: store every initializer dense (default: sparse where smaller).
        opset: ONNX opset, at least 18 (the dynamo exporter's).
        tolerance: largest accepted ``|onnxruntime - PyTorch|`` logit in the check.
        source_sha256: SHA-256 of the model file, recorded as ``packtool.source_sha256``.
        say: receives a line of progress per step (export, verification).
    """
    data, result = export_onnx_bytes(pack, task, dense=dense, opset=opset, verify=verify,
                                     tolerance=tolerance, source_sha256=source_sha256, say=say)
    atomic_write_bytes(path, data)
    return OnnxExport(result.task, Path(path), result.bytes, result.max_abs_diff,
                      result.provider)


def export_onnx_bytes(pack: Pack, task: str | int, *, dense: bool = False,
                      opset: int = MIN_OPSET, verify: bool = True, tolerance: float = 1e-4,
                      source_sha256: str | None = None, say: Say = silent
                      ) -> tuple[bytes, OnnxExport]:
    """:func:`export_onnx` into memory: the checked file's bytes and its record (no path)."""
    job = _TaskExport(pack, task, opset)
    say(f"task {job.record.name!r}: exporting to ONNX (opset {opset})")
    data = job.model(dense=dense, source_sha256=source_sha256, check=True).SerializeToString()
    diff = provider = None
    if verify:
        say(f"task {job.record.name!r}: checking onnxruntime's outputs against PyTorch's")
        diff, provider = verify_onnx(data, job.network, pack.spec.input_size,
                                     tolerance=tolerance, name=f"task {job.record.name!r}")
    return data, OnnxExport(job.record.name, None, len(data), diff, provider)


def export_all(pack: Pack, out_dir: str | os.PathLike, *, dense: bool = False,
               opset: int = MIN_OPSET, verify: bool = True, archive: bool = True,
               source_sha256: str | None = None, say: Say = silent
               ) -> tuple[list[OnnxExport], ArchiveInfo | None]:
    """Export every task to ``<out_dir>/<task>.onnx`` and the archive to ``pack.safetensors``.

    File names are task names made safe (:func:`task_filenames`). ``out_dir`` is created if
    missing. Each file is checked before it is written; the first failure stops the export
    (files already written stay, each complete).
    """
    if not pack.tasks:
        raise PackToolError("the pack has no tasks yet: there is nothing to export")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PackToolError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    exports = []
    for record, stem in zip(pack.tasks, task_filenames(pack.task_names)):
        exports.append(export_onnx(pack, record.name, out / f"{stem}.onnx", dense=dense,
                                   opset=opset, verify=verify, source_sha256=source_sha256,
                                   say=say))
    if archive:
        say(f"writing the archive {out / ARCHIVE_NAME}")
    info = write_archive(pack, out / ARCHIVE_NAME, source_sha256=source_sha256) if archive else None
    return exports, info


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}


def task_filenames(names: Sequence[str]) -> list[str]:
    """Distinct file stems for task names, safe on every common file system.

    Characters other than ASCII letters, digits, ``.``, ``_`` and ``-`` become ``_``; leading
    dots and dashes go (no hidden files, no option look-alikes); Windows device names get a
    ``_``; stems are at most 100 characters. Stems equal ignoring case (or to the archive's)
    get ``-<index>`` (1-based task index) appended.
    """
    stems = []
    for name in names:
        stem = _UNSAFE.sub("_", name).lstrip(".-").rstrip(". ")[:100] or "task"
        if stem.lower().split(".")[0] in _RESERVED:
            stem += "_"
        stems.append(stem)
    taken = {ARCHIVE_NAME.lower()}
    result = []
    for index, stem in enumerate(stems, start=1):
        clash = [s.lower() for s in stems].count(stem.lower()) > 1
        candidate = f"{stem}-{index}" if clash else stem
        while f"{candidate}.onnx".lower() in taken:
            candidate += "_"
        taken.add(f"{candidate}.onnx".lower())
        result.append(candidate)
    return result
