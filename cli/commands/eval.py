"""``packtool eval``: tasks on their held-out splits, or served without their task id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packtool.data import unknown_images
from packtool.evaluation import evaluate_tasks
from packtool.formats.files import load
from packtool.identification import (
    evaluate_task_free,
    evaluate_unknown,
    logits_table,
    reject_thresholds,
)
from packtool.pack import Pack
from packtool.progress import Say
from packtool.report import plot_accuracy
from packtool.taskfree import default_score

from .. import render
from ..console import console_for, print_json
from ..progress import status


def run(model: Path, as_json: bool, quiet: bool, task_free: bool = False,
        **options: Any) -> None:
    pack = load(model)
    (_task_free if task_free else _accuracy)(pack, as_json, say=status(quiet), **options)


def _accuracy(pack: Pack, as_json: bool, tasks: tuple[str, ...], data: str | None,
              classes: list[int] | None, data_root: str | None, device: str, batch_size: int,
              plot: str | None, say: Say) -> None:
    rows = [row.to_dict() for row in evaluate_tasks(
        pack, tasks, data=data, classes=classes, root=data_root, batch_size=batch_size,
        device=device, say=say)]
    doc = {"tasks": rows}
    if plot:
        plot_accuracy(rows, plot)
    if as_json:
        print_json(doc)
    else:
        render.show_eval(console_for(), doc)


def _task_free(pack: Pack, as_json: bool, unknown: str | None, classes: list[int] | None,
               **settings: Any) -> None:
    score = settings["score"] = settings["score"] or default_score(pack)
    say, root = settings.pop("say"), settings["root"]
    if unknown is not None:  # refuse a pack that cannot reject before reading any data
        reject_thresholds(pack)
        outside = unknown_images(unknown, pack.preprocess, root=root, classes=classes)
    table = logits_table(pack, root=root, batch_size=settings["batch_size"],
                         device=settings["device"], say=say)
    rows = evaluate_task_free(pack, table=table, **settings)
    doc = render.task_free_doc(rows, pack, group=settings["group"], score=score)
    if unknown is not None:
        doc["unknown"] = {"data": unknown, **evaluate_unknown(
            pack, outside, table=table, batch_size=settings["batch_size"],
            device=settings["device"], say=say).to_dict()}
    if as_json:
        print_json(doc)
    else:
        render.show_task_free(console_for(), doc)
