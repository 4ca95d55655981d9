"""Output every command shares: consoles, JSON, tables; and the rendering of ``predict``, which
runs without torch (this module imports click and rich only).

Tables use colors and box lines on a terminal, and plain ASCII without escape codes when the
output is piped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 200  # piped output is not wrapped at 80 columns; tables take what they need


def console_for(stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr); no escape codes unless it is a terminal."""
    console = Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def count(n: int) -> str:
    return f"{n:,}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1,
          terminal: bool = True, header: bool = True) -> Table:
    """A table whose first ``left`` columns are left-aligned and the rest right-aligned."""
    tbl = Table(box=box.SIMPLE_HEAD if terminal else box.ASCII2, show_header=header,
                header_style="bold" if terminal else "")
    for i, name in enumerate(headers):
        tbl.add_column(name, justify="left" if i < left else "right")
    for row in rows:
        tbl.add_row(*row)
    return tbl


def show_table(console: Console, title: str | None, headers: Sequence[str],
               rows: Iterable[Sequence[str]], *, left: int = 1, header: bool = True) -> None:
    """Print ``title`` on its own line (never wrapped), then the table."""
    if title:
        console.print(title, style="bold" if console.is_terminal else None, markup=False)
    console.print(table(headers, rows, left=left, terminal=console.is_terminal, header=header))


# -- predict ----------------------------------------------------------------------------------


def show_predict(console: Console, doc: dict[str, Any]) -> None:
    if doc.get("task_score") is None:
        console.print(f"Task {doc['task']!r} (provider {doc['provider']})", markup=False)
    else:
        chosen = f"one task for all images: {doc['task']!r}" if doc["task"] else "task per image"
        console.print(f"Task chosen by {doc['task_score']} score, {chosen} "
                      f"(provider {doc['provider']})", markup=False)
    for item in doc["predictions"]:
        rows = [(str(rank), str(p["class"]), pct(p["probability"]))
                for rank, p in enumerate(item["top"], start=1)]
        title = str(item["image"])
        if "task" in item and item["task"] is None:
            console.print(f"{title}  none of the tasks (feature distance "
                          f"{item['reject_ratio']:.3g}x its nearest task's threshold)",
                          markup=False)
            continue
        if "task" in item:
            margin = item["task_margin"]
            title += f"  task {item['task']!r}" + (
                "" if margin is None else f" (margin {margin:.3g} over the runner-up)")
        show_table(console, title, ("rank", "class", "probability"), rows, left=2)
