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
