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


def temperature(value: float | None) -> str:
    return "1 (not calibrated)" if value is None else f"{value:.3g}"


# -- info FILE.onnx ---------------------------------------------------------------------------


def show_onnx_info(console: Console, doc: dict[str, Any], shown: int = 6) -> None:
    """``packtool info FILE.onnx``: the file, what it serves, its input, and its tasks."""
    serves = ""
    if doc["kind"] == "multi-task":
        mixed = " (a batch may mix them)" if doc["mixed_batches"] else ""
        serves = f"; serves any of its tasks{mixed}" + (
            " and --task auto" if doc["task_free"] else "")
    origin = f" of model file sha256 {doc['source_sha256'][:12]}" if doc["source_sha256"] else ""
    console.print(f"{doc['path']}: {doc['kind']} ONNX, {doc['precision']}, "
                  f"{count(doc['bytes'])} bytes, exported by packtool {doc['version']}"
                  f"{origin}{serves}", markup=False)
    size = "x".join(map(str, doc["input_size"]))
    console.print(f"Input: {size} images, scaled to 0..1 and normalized with mean "
                  f"{_numbers(doc['mean'])} and std {_numbers(doc['std'])}", markup=False)
    rows = []
    for t in doc["tasks"]:
        names = ", ".join(t["classes"][:shown])
        more = f" (+{len(t['classes']) - shown} more)" if len(t["classes"]) > shown else ""
        resize = f"shorter side to {t['resize']}, center crop" if t["resize"] else "whole image"
        rows.append((str(t["index"]), t["task"], names + more, resize,
                     str(len(t["classes"])), temperature(t["temperature"]),
                     "-" if t["reject_distance"] is None else f"{t['reject_distance']:.4g}"))
    show_table(console, "Tasks", ("#", "task", "class names", "resize", "classes",
                                  "temperature", "reject distance"), rows, left=4)


def _numbers(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


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
    skipped = doc.get("skipped_files") or []
    if skipped:
        more = f", and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        console.print(f"Left out {len(skipped)} unreadable image file"
                      f"{'s' if len(skipped) > 1 else ''}: {', '.join(skipped[:3])}{more}",
                      markup=False)
