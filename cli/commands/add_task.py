"""``packtool add-task``: train, prune, fine-tune and save a new task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packtool.choices import AUTO
from packtool.job import add_task_to_file

from .. import render
from ..console import console_for, print_json
from ..errors import as_flags
from ..progress import training_progress


def run(model: Path, data: str, prune: float | str, settings: dict[str, Any],
        planner: dict[str, Any], as_json: bool, quiet: bool, **arguments: Any) -> None:
    with training_progress(as_json, quiet) as progress:
        done = add_task_to_file(model, data, prune, settings=settings, **planner, **arguments,
                                progress=progress)
    if done is None:  # a torchrun rank other than 0: rank 0 reports
        return
    pack, result = done
    doc = result.to_dict()
    for key in result.WARNING_KEYS:  # the library's words, as this command line's flags
        if key in doc:
            doc[key] = as_flags(doc[key])
    if as_json:
        print_json(doc)
        return
    console = console_for()
    render.show_task_summary(console, doc, pack, str(model))
    if prune == AUTO and arguments.get("reserve") is None and pack.planned_tasks is None:
        render.show_reserve_tip(console)
