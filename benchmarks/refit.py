"""Refit: ``--refit`` against the same ratio without it, seed by seed.

packtool keeps 10% of each task's training images apart to choose its epochs (and, with
``auto``, its ratio). ``--refit`` then trains the task again on training and validation images
with those choices. Rows on split-digits and permuted-digits: prune 0.75, and prune 0.75 with
``--refit``, on the same seeds (per seed: the same data, initialization and batch order),
compared seed by seed; the quality part's settings. A refit's cost is about one more pass.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, replace
from typing import Any

from . import growth, quality
from .common import markdown_table

SEQUENCES = ("split-digits", "permuted-digits")
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "packnet-0.75": (f"PackNet, prune {growth.FIXED_RATIO}", {}),
    "packnet-0.75+refit": (f"PackNet, prune {growth.FIXED_RATIO}, --refit", {"refit": True}),
}


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = replace(quality.SETTINGS[mode], seeds=growth.SEEDS[mode])
    return {"settings": asdict(settings),
            "refit": [growth.run_study(name, METHODS, settings, log) for name in SEQUENCES]}


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A refit forgets nothing either, and costs at most about two passes."""
    out = []
    for study in result["refit"]:
        rows = {r["method"]: r for r in study["rows"]}
        plain, refit = rows["packnet-0.75"], rows["packnet-0.75+refit"]
        forgetting = [f for s in refit["seeds"] for f in s["forgetting"]]
        out.append({"target": f"{study['sequence']}: --refit forgets exactly 0.0 (every seed)",
                    "measured": f"max abs forgetting = {max(map(abs, forgetting))!r}",
                    "ok": all(f == 0.0 for f in forgetting)})
        ratio = (statistics.median(s["seconds"] for s in refit["seeds"])
                 / statistics.median(s["seconds"] for s in plain["seeds"]))
        out.append({"target": f"{study['sequence']}: --refit at most 2.5x the time without it",
                    "measured": f"{ratio:.2f}x (median seconds)", "ok": ratio <= 2.5})
    return out


def markdown(result: dict[str, Any]) -> str:
    parts = [growth.preamble(result["settings"])]
    for study in result["refit"]:
        parts.append(f"### --refit on {study['sequence']}: {study['description']}\n\n"
                     + growth.study_table(study, "packnet-0.75"))
    check_rows = [[c["target"], c["measured"], "yes" if c["ok"] else "NO"]
                  for c in checks(result)]
    parts.append("### Targets\n\n" + markdown_table(["target", "measured", "met"], check_rows,
                                                    ["l", "l", "l"]))
    return "\n\n".join(parts)
