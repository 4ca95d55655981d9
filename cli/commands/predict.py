"""``packtool predict FILE.onnx``: an exported file served with onnxruntime, numpy and Pillow
only (no torch: this is what a serving machine runs)."""

from __future__ import annotations

from pathlib import Path

from packtool.exporters.runtime import PredictResult, predict

from ..console import console_for, print_json, show_predict
from ..progress import status


def run(source: Path, images: tuple[Path, ...], name: str | None, same_task: bool,
        task_score: str | None, reject: bool, top: int, skip_bad_images: bool, as_json: bool,
        quiet: bool) -> None:
    show(predict(source, list(images), task=name, top=top, same_task=same_task,
                 task_score=task_score, reject=reject, skip_bad_images=skip_bad_images,
                 say=status(quiet)), as_json)


def show(result: PredictResult, as_json: bool) -> None:
    doc = result.to_dict()
    if as_json:
        print_json(doc)
    else:
        show_predict(console_for(), doc)
