"""The multi-task ONNX file: every task of a pack in one graph, the task an input.

``packtool export --multi-task --out pack.onnx`` writes it; ``predict`` runs it. The file:

* inputs ``input``, float32 ``[batch, C, H, W]`` (dynamic batch; the values of the per-task
  files), and ``task``, int64 ``[batch]``: each row's 1-based task index in the pack (the
  order of ``packtool.tasks``), or ``[1]`` for every row (:mod:`.routing` loops over the tasks
  present). A ``task`` outside ``1..T`` makes onnxruntime fail the call (an out-of-bounds
  gather; the CPU provider checks bounds, so check the indices before calling on other
  providers);
* output ``logits``, float32 ``[batch, C_max]``: the task's logits in its class order, then
  ``-inf`` up to the largest class count ``C_max``; and, when every task has feature
  statistics, ``distance``, float32 ``[batch]``, the feature distance of task-free scores
  (:class:`packtool.taskfree.TaskFreeNet`);
* the network of :class:`packtool.multitask.MultiTaskNet`: the shared weights once, the owner
  index as bit planes, the task's mask built in the graph; per-task heads, biases and norm
  state gathered by ``task``. Task ``k`` computes what its per-task file does (checked on
  export);
* ``metadata_props``: ``packtool.tasks``, a JSON list with one object per task in index order,
  ``{"task", "classes", "resize", "temperature"}`` (``resize`` and ``temperature`` may be
  ``null``: as absent in a per-task file), and ``packtool.input_size``, ``packtool.mean``,
  ``packtool.std``, ``packtool.version``, ``packtool.source_sha256`` as in per-task files.

Initializers are stored as ``sparse_initializer`` where that is smaller (weights mostly free), as
in per-task files. Feature statistics of int8 rows (tasks calibrated with a rejection
threshold) stay int8 in the file, each row's step beside it. The mask costs time: convolutions
whose weights are computed per call miss onnxruntime's prepacked kernels (the README's
"Deploying" section has the measurements).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxscript.optimizer
import torch

from packtool.errors import PackToolError, one_line
from packtool.fileio import atomic_write_bytes
from packtool.multitask import MultiTaskNet, OneTask, multi_task_net
from packtool.pack import Pack
from packtool.progress import Say, silent
from packtool.taskfree import task_free_net

from .metadata import (
    DISTANCE_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    TASK_NAME,
    TaskMetadata,
    multi_task_props,
)
from .onnx import (
    MIN_OPSET,
    VERIFY_BATCH,
    VERIFY_SEED,
    check_onnx,
    check_opset,
    sparsify_initializers,
    strip_export_noise,
)
from .routing import route_by_task
from .runtime import infer_all, provider_of, session
from .torchlib_table import one_torchlib_table

#: Largest tensor (elements) the exporter's optimizer may fold into a stored constant: shape
#: arithmetic folds, the rebuilt dense weights and masks (which would undo the compact storage)
#: do not.
FOLD_LIMIT = 256
#: Largest relative difference of the feature distance accepted on export.
DISTANCE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class MultiTaskExport:
    """A written multi-task file; :meth:`to_dict` is its item of ``export --json`` ``files``.

    Attributes:
        tasks: the task names, in index order (``task`` input ``k`` is ``tasks[k-1]``).
        path: file written (``None`` in memory); bytes: its size.
        max_abs_diff: largest ``|onnxruntime - PyTorch|`` logit over every task on the check
            batch, ``None`` if the check was skipped; provider: what ran the check.
    """

    tasks: tuple[str, ...]
    path: Path | None
    bytes: int
    max_abs_diff: float | None
    provider: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"task": None, "tasks": list(self.tasks),
                "path": None if self.path is None else str(self.path), "bytes": self.bytes,
                "max_abs_diff": self.max_abs_diff}


def _props(pack: Pack, source_sha256: str | None) -> dict[str, str]:
    return multi_task_props([TaskMetadata.of(pack, r, source_sha256) for r in pack.tasks])


def multi_task_onnx(pack: Pack, *, opset: int = MIN_OPSET, source_sha256: str | None = None,
                    mixed: bool = True) -> onnx.ModelProto:
    """Every task of ``pack`` as one in-memory ONNX model (see the module docstring).

    ``mixed=False``: without the loop over tasks (:mod:`.routing`), ``task`` int64 ``[1]``
    for the whole batch, as files were before mixed-task batches (what the serving benchmark
    compares a one-task batch against)."""
    if not pack.tasks:
        raise PackToolError("the pack has no tasks yet: there is nothing to export")
    return _export(pack, multi_task_net(pack), opset, source_sha256, mixed)


def _export(pack: Pack, net: MultiTaskNet, opset: int, source_sha256: str | None,
            mixed: bool) -> onnx.ModelProto:
    check_opset(opset)
    outputs = [OUTPUT_NAME] if net.distance is None else [OUTPUT_NAME, DISTANCE_NAME]
    # Batch 2, not 1: torch.export specializes a dimension of size 1 instead of keeping it.
    example = (torch.zeros(2, *pack.spec.input_size), torch.ones(1, dtype=torch.int64))
    try:
        with _no_attention_fast_path(), one_torchlib_table():
            program = torch.onnx.export(
                OneTask(net).eval(), example, dynamo=True, external_data=False, optimize=False,
                input_names=[INPUT_NAME, TASK_NAME], output_names=outputs,
                dynamic_shapes=({0: "batch"}, None), opset_version=opset, verbose=False)
        proto = strip_export_noise(program.model_proto)
        proto = strip_export_noise(onnxscript.optimizer.optimize(proto,
                                                                 output_size_limit=FOLD_LIMIT))
    except Exception as exc:  # the exporter raises many types; the message is what counts
        raise PackToolError(
            f"cannot export the pack to one multi-task ONNX: {one_line(exc, first=True)}"
        ) from exc
    onnx.helper.set_model_props(proto, _props(pack, source_sha256))
    check_onnx(proto, "the multi-task model")
    if sparsify_initializers(proto):
        check_onnx(proto, "the multi-task model")
    return with_mixed_batches(proto) if mixed else proto


def with_mixed_batches(model: onnx.ModelProto) -> onnx.ModelProto:
    """The file :func:`multi_task_onnx` writes, from the one it writes with ``mixed=False``
    (the same bytes: the loop over tasks is added last), checked: one trace gives both."""
    try:
        routed = route_by_task(model)
    except ValueError as exc:
        raise PackToolError(f"cannot export the pack to one multi-task ONNX: {exc}") from exc
    check_onnx(routed, "the multi-task model")
    return routed


@contextmanager
def _no_attention_fast_path() -> Iterator[None]:
    """Trace ``nn.MultiheadAttention`` by its plain operators: its fused inference kernel (taken
    when no weight needs a gradient, as here) has no ONNX translation. Also quiets dynamo's
    warning about the side effects of a forward (the exporter falls back to dynamo for some
    attention graphs): the task context a call sets is deliberate."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="While compiling, we found certain side "
                                                      "effects")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def export_multi_task(pack: Pack, path: str | os.PathLike, *, opset: int = MIN_OPSET,
                      verify: bool = True, tolerance: float = 1e-4,
                      source_sha256: str | None = None, say: Say = silent
                      ) -> MultiTaskExport:
    """Export every task of ``pack`` to the one ONNX file ``path``.

    Checked with ``onnx.checker`` and, if ``verify``, run in onnxruntime for every task beside
    the task's PyTorch network (logits within ``tolerance``, the padding ``-inf``, the
    feature distance too); only then is ``path`` written, atomically. On any failure nothing is
    written.
    """
    data, result = export_multi_task_bytes(pack, opset=opset, verify=verify,
                                           tolerance=tolerance, source_sha256=source_sha256,
                                           say=say)
    atomic_write_bytes(path, data)
    return MultiTaskExport(result.tasks, Path(path), result.bytes, result.max_abs_diff,
                           result.provider)


def export_multi_task_bytes(pack: Pack, *, opset: int = MIN_OPSET, verify: bool = True,
                            tolerance: float = 1e-4, source_sha256: str | None = None,
                            say: Say = silent
                            ) -> tuple[bytes, MultiTaskExport]:
    """:func:`export_multi_task` into memory: the checked file's bytes and its record."""
    say(f"exporting {len(pack.tasks)} tasks to one ONNX graph (opset {opset})")
    data = multi_task_onnx(pack, opset=opset, source_sha256=source_sha256).SerializeToString()
    diff = provider = None
    if verify:
        say(f"checking onnxruntime's outputs against PyTorch's for each of {len(pack.tasks)} "
            "tasks")
        diff, provider = verify_multi_task(data, pack, tolerance=tolerance)
    return data, MultiTaskExport(tuple(pack.task_names), None, len(data), diff, provider)


def verify_multi_task(model: bytes, pack: Pack, *, tolerance: float = 1e-4
                      ) -> tuple[float, str]:
    """Run every task of the multi-task ``model`` in onnxruntime beside its PyTorch network
    (:func:`packtool.taskfree.task_free_net`) on one seeded standard-normal batch.

    Returns:
        ``(max_abs_diff, provider)``: the largest logit difference of all tasks.

    Raises:
        PackToolError: a logit difference above ``tolerance`` (or NaN), a distance differing by
            more than :data:`DISTANCE_TOLERANCE` relative to its size, padding that is not
            ``-inf``, or a wrong shape.
    """
    inputs = torch.randn(VERIFY_BATCH, *pack.spec.input_size,
                         generator=torch.Generator().manual_seed(VERIFY_SEED))
    sess = session(model)
    worst = 0.0
    expected = []
    for record in pack.tasks:
        with torch.no_grad():
            logits, distance = task_free_net(pack, record.name, "cpu").eval()(inputs)
        expected.append((logits.numpy(), distance.numpy()))
        worst = max(worst, _compare(sess, infer_all(sess, inputs.numpy(), task=record.index),
                                    expected, [record.index] * len(inputs), tolerance))
    # One mixed call: row i with task i % T + 1.
    mixed = [i % len(pack.tasks) + 1 for i in range(len(inputs))]
    worst = max(worst, _compare(sess, infer_all(sess, inputs.numpy(), task=mixed), expected,
                                mixed, tolerance))
    return worst, provider_of(sess)


def _compare(sess: Any, outputs: list[np.ndarray], expected: list[tuple[np.ndarray, np.ndarray]],
             tasks: list[int], tolerance: float) -> float:
    """The largest logit difference of ``outputs`` (row ``i`` of task ``tasks[i]``) from
    ``expected`` (per task: PyTorch's logits and distances); PackToolError past tolerance."""
    actual = outputs[0]
    rows = np.arange(len(tasks))
    tasks_named = sorted(set(tasks))
    name = (f"task {tasks_named[0]}" if len(tasks_named) == 1 else "a mixed-task batch") + \
        " of the multi-task model"
    if actual.ndim != 2 or actual.shape[0] != len(tasks):
        raise PackToolError(f"ONNX check of {name} failed: shape {list(actual.shape)}")
    worst = far = 0.0
    for i, task in zip(rows, tasks):
        logits, distance = expected[task - 1]
        classes = logits.shape[1]
        if actual.shape[1] < classes or not np.all(np.isneginf(actual[i, classes:])):
            raise PackToolError(f"ONNX check of {name} failed: padded logits are not -inf")
        worst = max(worst, float(np.abs(actual[i, :classes].astype(np.float64)
                                        - logits[i]).max()))
        # Distances scale the features' float differences by the inverse feature variance:
        # compare them relatively, at DISTANCE_TOLERANCE.
        if len(outputs) > 1:
            far = max(far, float(abs(outputs[1][i] - distance[i]) / max(1, abs(distance[i]))))
    if not (worst <= tolerance and far <= DISTANCE_TOLERANCE):  # also catches NaN
        raise PackToolError(
            f"ONNX check of {name} failed: onnxruntime ({provider_of(sess)}) differs from "
            f"PyTorch by {worst:.3g} in logits (tolerance {tolerance:g}), {far:.3g} relative "
            f"in distances (tolerance {DISTANCE_TOLERANCE:g}); nothing was written")
    return worst
