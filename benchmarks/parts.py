"""The benchmark parts: each a module ``benchmarks.<name>`` with ``run(mode, log)`` and
``markdown(result)``; run one after another, or, in a smoke run, side by side."""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

#: The parts, in the order they run (one process) and render: each is the module
#: ``benchmarks.<name>``, loaded when it is used.
PARTS = ("quality", "planner", "growth", "refit", "taskfree", "serving", "cost", "deploy",
         "architectures", "throughput", "startup")
#: The parts that export ONNX. A smoke run keeps them in one process, which pays torch's
#: exporter start-up (about 3 s: its tables, torch.export's first trace) once, and runs the
#: others in the other processes (measured one after another on 2 cores: 17 s of these parts,
#: 14 s of the others).
EXPORTING = ("serving", "cost", "deploy", "startup")


def part(name: str) -> Any:
    """The module of part ``name``."""
    return importlib.import_module(f"{__package__}.{name}")


def renderers() -> dict[str, Any]:
    """Every part's ``markdown`` function, by name, in :data:`PARTS` order."""
    return {name: part(name).markdown for name in PARTS}


def logger(quiet: bool) -> Callable[[str], None]:
    """The progress lines on stderr (none if ``quiet``)."""
    def log(text: str) -> None:
        if not quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
    return log


def run_part(name: str, mode: str, quiet: bool) -> tuple[dict[str, Any], float]:
    """Part ``name``'s result in ``mode`` and its wall seconds."""
    start = time.perf_counter()
    result = part(name).run(mode, log=logger(quiet))
    return result, time.perf_counter() - start


def _one_thread() -> None:
    # Two processes of torch's default (a thread per core) on two cores spin against each
    # other: a smoke run took 100 s so, against 35 s in one process. The smoke run's work is
    # small tensors, which one thread runs as fast.
    torch.set_num_threads(1)


def run_side_by_side(names: list[str], mode: str, quiet: bool, jobs: int
                     ) -> dict[str, tuple[dict[str, Any], float]]:
    """:func:`run_part` of every part in ``names``: those in :data:`EXPORTING` in this process,
    the others in ``jobs - 1`` more; one thread each (smoke runs: nothing there is a
    measurement the others could disturb)."""
    here = [n for n in names if n in EXPORTING]
    there = [n for n in names if n not in EXPORTING]
    if not here or not there:  # one group: split it instead
        here, there = names[0::2], names[1::2]
    context = multiprocessing.get_context("spawn")  # not a fork of torch's threads
    with ProcessPoolExecutor(jobs - 1, mp_context=context, initializer=_one_thread) as pool:
        futures = {name: pool.submit(run_part, name, mode, quiet) for name in there}
        threads = torch.get_num_threads()
        _one_thread()
        try:
            done = {name: run_part(name, mode, quiet) for name in here}
        finally:
            torch.set_num_threads(threads)
        done.update({name: future.result() for name, future in futures.items()})
    return {name: done[name] for name in names}
