"""``predict`` on any file: an exported ONNX file as it is (:mod:`.runtime`, torch-free), or a
pack file (an archive or a ``model.pt``) whose task is exported to ONNX in memory first, so
both give the same numbers. With ``task="auto"`` a pack file is exported as one multi-task
graph and every task runs (:mod:`packtool.task_id` chooses).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from packtool.choices import AUTO
from packtool.data.preprocess import image_files
from packtool.errors import PackToolError, TaskChoiceError, TaskError
from packtool.formats.files import load
from packtool.formats.sniff import is_pack_file
from packtool.progress import Say, silent

from .multitask import multi_task_onnx
from .onnx import task_onnx
from .runtime import PredictResult
from .runtime import predict as predict_onnx


def predict(source: str | os.PathLike, images: Sequence[str | os.PathLike], *,
            task: str | None = None, top: int = 5, same_task: bool = False,
            task_score: str | None = None, reject: bool = False, skip_bad_images: bool = False,
            say: Say = silent) -> PredictResult:
    """Classify ``images`` with one task of ``source``, or let ``task="auto"`` choose the task
    (:func:`packtool.exporters.runtime.predict`, whose arguments these are).

    A per-task ``.onnx`` file needs no ``task``; a multi-task ``.onnx`` file and a pack file
    need one (or ``auto``).
    """
    source = Path(source)
    if not source.is_file():
        raise PackToolError(f"{source} does not exist")
    images = image_files(images)  # a missing image fails before the export, not after
    if not is_pack_file(source):
        return predict_onnx(source, images, task=task, top=top, same_task=same_task,
                            task_score=task_score, reject=reject,
                            skip_bad_images=skip_bad_images, say=say)
    pack = load(source)
    if not pack.tasks:
        raise TaskError(f"{source} has no tasks yet; add one with `packtool add-task`")
    if task == AUTO:
        say(f"{source}: exporting every task to one ONNX graph in memory")
        model = multi_task_onnx(pack)
    elif task is None:
        raise TaskChoiceError(f"{source} holds tasks {', '.join(pack.task_names)}: choose one with "
                        "`task` (or `auto`)")
    else:
        say(f"{source}: exporting task {task!r} to ONNX in memory")
        model = task_onnx(pack, pack.task(task).name)
    return predict_onnx(model.SerializeToString(), images, task=task, top=top,
                        same_task=same_task, task_score=task_score, reject=reject,
                        source=str(source), skip_bad_images=skip_bad_images, say=say)
