"""Reduced-precision per-task ONNX: float16 weights, or int8 with onnxruntime.quantization.

``packtool export --task NAME --half | --int8`` writes them. Both keep the per-task file's
contract (float32 ``input`` and ``logits``, the same metadata, plus ``packtool.precision``):

* ``float16``: every float32 initializer is stored as float16 and cast back to float32 in the
  graph. Half the bytes on disk; onnxruntime folds the casts when it loads the model, so the
  arithmetic stays float32 on every provider (the CPU provider has no float16 kernels for most
  operators) and only the weights' rounding changes the outputs.
* ``int8``: :func:`onnxruntime.quantization.quantize_dynamic` (int8 weights, activations
  quantized per call) for networks without convolutions, and
  :func:`~onnxruntime.quantization.quantize_static` (QDQ, int8 weights per channel, uint8
  activations whose ranges are calibrated on :data:`CALIBRATION_IMAGES` images of the task's
  training split) for conv nets, where static quantization is what makes int8 convolutions pay.

Both store weights as ``sparse_initializer`` where that is smaller, as the float32 file does.

:func:`export_reduced` measures the exported file on the task's test split against the float32
network and refuses to write it when the accuracy drops by more than ``max_drop`` points.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnxruntime import quantization as ortq
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.utils.data import Dataset

from packtool.choices import PRECISIONS
from packtool.data import task_data
from packtool.errors import DataError, PackToolError, one_line
from packtool.evaluation import PrecisionChange, noise_difference, precision_change
from packtool.fileio import atomic_write_bytes
from packtool.pack import Pack
from packtool.progress import Say, silent

from .onnx import OnnxExport, check_onnx, export_onnx_bytes, sparsify_initializers
from .runtime import infer, session

CALIBRATION_IMAGES = 64
CALIBRATION_SEED = 0


def half_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float32 initializer stored as float16 and a ``Cast`` back to
    float32 in front of its readers (in place; returns ``model``)."""
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        name = init.name
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       f"{name}_float16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], name=f"{name}_cast",
                                      to=onnx.TensorProto.FLOAT))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    # value_info typed the initializers float32 under their old names: still true of the casts.
    return model


def int8_model(model: bytes, calibration: list[np.ndarray] | None) -> bytes:
    """``model`` quantized to int8: static (QDQ) with ``calibration`` batches (float32
    ``[N, C, H, W]``, preprocessed inputs), dynamic without."""
    with tempfile.TemporaryDirectory(prefix="packtool-int8-") as tmp:
        source, target = Path(tmp, "float32.onnx"), Path(tmp, "int8.onnx")
        proto = onnx.load_from_string(model)
        # The exporter's value_info can disagree with onnx's own shape inference, which the
        # quantizer runs and trusts: let it infer every shape afresh.
        del proto.graph.value_info[:]
        onnx.save(proto, source)
        try:
            # What onnxruntime asks for first: shape inference and graph optimization.
            quant_pre_process(source, source)
            if calibration is None:
                ortq.quantize_dynamic(source, target, weight_type=ortq.QuantType.QInt8)
            else:
                ortq.quantize_static(
                    source, target, _Batches(model, calibration),
                    quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                    activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8)
        except Exception as exc:  # the quantizer raises many types; the message is what counts
            raise PackToolError(f"onnxruntime.quantization failed: {one_line(exc, first=True)}"
                                ) from exc
        return target.read_bytes()


class _Batches(ortq.CalibrationDataReader):
    """Calibration batches for :func:`onnxruntime.quantization.quantize_static`."""

    def __init__(self, model: bytes, batches: list[np.ndarray]) -> None:
        name = onnx.load_from_string(model).graph.input[0].name
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_batches(train: Dataset, images: int = CALIBRATION_IMAGES,
                        batch_size: int = 16) -> list[np.ndarray]:
    """The first ``images`` images of a training split (augmentation seeded), as batches."""
    count = min(images, len(train))  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CALIBRATION_SEED)
        samples = [train[i][0] for i in range(count)]
    return [torch.stack(samples[i:i + batch_size]).numpy()
            for i in range(0, count, batch_size)]


def reduced_bytes(model: bytes, precision: str, train: Dataset | None) -> bytes:
    """The float32 per-task ``model`` (dense) in ``precision``; ``train`` calibrates static
    int8 quantization of a conv net (required for one)."""
    if precision not in PRECISIONS:
        raise PackToolError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    proto = onnx.load_from_string(model)
    if precision == "float16":
        reduced = half_weights(proto)
        sparsify_initializers(reduced)
        _mark(reduced, precision)
        return reduced.SerializeToString()
    convolutional = any(node.op_type == "Conv" for node in proto.graph.node)
    if convolutional and train is None:
        raise PackToolError("int8 quantization of a conv net needs the task's training split "
                            "for calibration")
    data = int8_model(model, calibration_batches(train) if convolutional else None)
    quantized = onnx.load_from_string(data)
    # A task's own file keeps its pruned weights' zeros: dense int8 (1 byte each) outweighs
    # sparse float32 past ~92% zeros, so without this --int8 could write a larger file.
    sparsify_initializers(quantized)
    _mark(quantized, precision)
    return quantized.SerializeToString()


def _mark(model: onnx.ModelProto, precision: str) -> None:
    """Record the precision in the metadata, and check the model."""
    props = {p.key: p.value for p in model.metadata_props}
    props["packtool.precision"] = precision
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    check_onnx(model, f"the {precision} model")


def export_reduced(pack: Pack, task: str | int, path: str | os.PathLike, precision: str, *,
                   max_drop: float = 1.0, force: bool = False,
                   data_root: str | os.PathLike | None = None, opset: int = 18,
                   source_sha256: str | None = None, say: Say = silent
                   ) -> OnnxExport:
    """Export task ``task`` in ``precision`` (:data:`PRECISIONS`) to ``path``, measured first.

    The file is evaluated with onnxruntime on the task's test split beside the float32 network
    (``data_root``: where the data lives now). If the accuracy drops by more than ``max_drop``
    percentage points, or the data cannot be read, nothing is written, unless ``force`` (then
    the export says what it measured, or ``None`` without data).

    Raises:
        PackToolError: the drop exceeds ``max_drop`` or the data is missing (without
            ``force``), or the export or quantization fails.
    """
    if not max_drop >= 0:
        raise PackToolError(f"max_drop must be a number of points >= 0, got {max_drop}")
    record = pack.task(task)
    try:
        data = task_data(pack, record.name, root=data_root)
    except DataError as exc:
        if not force:
            raise PackToolError(f"cannot measure the {precision} export of task {record.name!r}"
                                f" ({one_line(exc)}); nothing was written") from None
        data = None
    dense, _ = export_onnx_bytes(pack, record.name, dense=True, opset=opset,
                                 source_sha256=source_sha256, say=say)
    if precision == "int8" and data is not None:
        say(f"task {record.name!r}: calibrating int8 on "
            f"{min(CALIBRATION_IMAGES, len(data.train))} training images")
    reduced = reduced_bytes(dense, precision, None if data is None else data.train)
    change = None
    full, file = pack.model_for(record.name, device="cpu"), OrtModule(session(reduced))
    if data is not None:
        say(f"task {record.name!r}: measuring the {precision} file on {len(data.test)} test "
            "images")
        change = precision_change(record.name, full, file, data.test)
        _check_drop(change, precision, max_drop, force)
    # The written file's own difference from PyTorch's float32 logits, not the float32 export's
    # it was made from (that one is checked to 1e-4 before quantizing).
    diff = change.max_abs_diff if change else noise_difference(full, file,
                                                               pack.spec.input_size)
    atomic_write_bytes(path, reduced)
    return OnnxExport(record.name, Path(path), len(reduced), diff,
                      file.session.get_providers()[0], precision, change)


def _check_drop(change: PrecisionChange, precision: str, max_drop: float, force: bool) -> None:
    drop = -change.accuracy_change
    if drop > max_drop and not force:
        raise PackToolError(
            f"the {precision} export of task {change.task!r} loses {drop:.2f} points of test "
            f"accuracy ({change.accuracy:.2%} -> {change.accuracy_reduced:.2%}), more than the "
            f"{max_drop:g} allowed; nothing was written")


class OrtModule(nn.Module):
    """An onnxruntime session as a module from images to logits (on the CPU), so that
    :func:`packtool.evaluation.precision_change` measures an ONNX file like a network."""

    def __init__(self, sess: object) -> None:
        super().__init__()
        self.session = sess

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(infer(self.session, x.detach().cpu().numpy()))
