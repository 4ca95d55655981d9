"""``packtool predict MODEL``: a pack file's task exported to ONNX in memory, then served as an
exported file is (:mod:`.predict`)."""

from __future__ import annotations

from pathlib import Path

from packtool.exporters.prediction import predict

from ..progress import status
from .predict import show


def run(source: Path, images: tuple[Path, ...], name: str | None, same_task: bool,
        task_score: str | None, reject: bool, top: int, skip_bad_images: bool, as_json: bool,
        quiet: bool) -> None:
    show(predict(source, list(images), task=name, top=top, same_task=same_task,
                 task_score=task_score, reject=reject, skip_bad_images=skip_bad_images,
                 say=status(quiet)), as_json)
