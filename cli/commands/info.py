"""``packtool info``: MODEL's tasks and how much of each layer each task owns."""

from __future__ import annotations

from pathlib import Path

from packtool.formats.files import load
from packtool.report import plot_capacity

from .. import render
from ..console import console_for, print_json


def run(model: Path, plot: str | None, share: float | None, growable: bool,
        as_json: bool) -> None:
    pack = load(model)
    doc = render.info_doc(pack, share, growable)
    if plot:
        plot_capacity(pack, plot)
    if as_json:
        print_json(doc)
    else:
        render.show_info(console_for(), doc, pack, str(model))
