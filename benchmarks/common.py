"""Shared helpers: run modes, markdown tables, the machine description, timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

MODES = ("smoke", "quick", "full")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` is ``l``/``r`` per column (default: first left)."""
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values, or None if any is None (a metric that does not apply)."""
    if not values or any(v is None for v in values):
        return None
    return float(statistics.median(values))  # type: ignore[arg-type]


def interleaved_medians(fns: dict[str, Callable[[], Any]], budget_s: float,
                        min_repeats: int = 5, max_repeats: int = 2000, warmup: int = 5
                        ) -> tuple[dict[str, float], int]:
    """Median seconds per call of each function and the number of timed rounds.

    Calls are interleaved (one of each per round), so a slow spell of the machine hits every
    function alike. Rounds run until ``budget_s`` has passed (at least ``min_repeats``, at most
    ``max_repeats``), after ``warmup`` untimed rounds.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    started, rounds = time.perf_counter(), 0
    while rounds < max_repeats and (rounds < min_repeats
                                    or time.perf_counter() - started < budget_s):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}, rounds


def count_word(n: int) -> str:
    """``n`` as the tables write a task count: a word for the counts the runs use."""
    return {2: "two", 3: "three", 5: "five", 10: "ten"}.get(n, str(n))


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number for a table cell; ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def fmt_int(value: int | float) -> str:
    return f"{int(value):,}"
