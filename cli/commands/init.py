"""``packtool init``: create MODEL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packtool.job import create_file

from .. import render
from ..console import console_for


def run(model: Path, arch: str, weights: str | None, input_size: tuple[int, int, int] | None,
        policy: str, free_init: str, kwargs: dict[str, Any], planned_tasks: int | None,
        force: bool) -> None:
    pack = create_file(model, arch, input_size=input_size, kwargs=kwargs, weights=weights,
                       policy=policy, free_init=free_init, planned_tasks=planned_tasks,
                       force=force)
    render.show_created(console_for(), pack, str(model))
