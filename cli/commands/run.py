"""``packtool run PLAN.toml``: a whole task sequence from one plan file."""

from __future__ import annotations

from pathlib import Path

from packtool.plan import Plan
from packtool.runlog import RunLog
from packtool.sequence import SequenceResult, results_path, run_plan

from .. import render
from ..console import console_for, print_json
from ..progress import training_progress


def run(plan: Plan, model: Path, reference: bool, log_dir: Path | None, as_json: bool,
        quiet: bool) -> None:
    """``plan`` is read and checked already (by the command line, before this module loads
    the training stack)."""
    with training_progress(as_json, quiet, plan_words=True) as progress:
        log = RunLog(log_dir, forward=progress) if log_dir is not None else None
        try:
            result = run_plan(plan, model, reference=reference, progress=progress, log=log)
        finally:
            if log is not None:
                log.close()
    if as_json:
        print_json(result.to_dict())
    else:
        show(result, model)


def show(result: SequenceResult, model: Path) -> None:
    console = console_for()
    render.show_sequence(console, result.to_dict())
    console.print(f"Results written to {results_path(model, 'json')} and "
                  f"{results_path(model, 'csv')}", markup=False)
