"""The CLI's wording of numbers (cli/render.py), away from any model file."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli import render


def forecast_line(tasks_fit: int | None, share: float | None = None) -> str:
    out = io.StringIO()
    doc = {"free_fraction": 0.25, "median_share": None if tasks_fit is None else 0.375,
           "tasks_fit": tasks_fit, "share": share, "tasks_fit_at_share": 2 if share else None}
    render.show_forecast(Console(file=out, width=400), doc)
    return out.getvalue().strip()


@pytest.mark.parametrize(("fit", "says"), [
    (0, "no room for one more task owning 37.50% of every layer (the median share so far): "
        "the next one gets less."),
    (1, "room for 1 more task owning 37.50% of every layer (the median share so far)."),
    (3, "room for 3 more tasks owning 37.50% of every layer (the median share so far)."),
])
def test_forecast_counts_tasks_in_words(fit, says):
    assert forecast_line(fit) == f"Forecast: 25.00% of the prunable weights are free; {says}"


def test_forecast_without_tasks_and_at_a_share():
    assert forecast_line(None) == "Forecast: 25.00% of the prunable weights are free."
    assert forecast_line(1, 0.1).endswith("; for 2 owning 10.00% (--share).")


@pytest.mark.parametrize(("reason", "prune", "owned", "says"), [
    ("fixed", 0.5, 0.5, "0.5, as given"),
    # A first task of three at 0.5: the reserve released 0.67 of every layer.
    ("reserve", 0.5, 1 / 3, "0.5, raised to 0.67 overall to keep room for more tasks (--reserve)"),
    # auto fell back to the reserve's own ratio: nothing raised past it, nothing more to say.
    ("reserve", 0.6, 0.4, "0.6, raised to keep room for more tasks (--reserve)"),
    ("tolerance", 0.9, 0.1, "0.9, the largest within the tolerance (--prune auto)"),
])
def test_the_prune_ratio_says_what_the_reserve_released(reason, prune, owned, says):
    doc = {"prune": prune, "prune_reason": reason, "free_fraction": 1 - owned}
    assert render._prune(doc, owned) == says


@pytest.mark.parametrize(("added", "says"), [
    (1, "Planned: 2 tasks (init --tasks), 1 still to come."),
    (2, "Planned: 2 tasks (init --tasks), all added."),
    (3, "Planned: 2 tasks (init --tasks), 3 added, 1 past the plan."),
])
def test_the_plan_line_says_where_the_pack_stands(added, says):
    out = io.StringIO()
    render.show_plan(Console(file=out, width=400), {"planned_tasks": 2, "tasks": [{}] * added})
    assert out.getvalue().strip() == says
    out = io.StringIO()
    render.show_plan(Console(file=out, width=400), {"planned_tasks": None, "tasks": []})
    assert out.getvalue() == ""
