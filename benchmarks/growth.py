"""Growth: ``--grow auto`` when the network is full, seed by seed.

Every method runs on the same seeds (per seed: the same data, initialization and batch order),
compared seed by seed as in :mod:`benchmarks.planner`, on the long permuted sequence (ten
ten-class tasks, MLP 2x32 hidden: the capacity runs out). Rows: ``--prune auto`` told the plan
(each task ``--reserve`` the tasks still to come: what ``packtool run`` does), then the same
with ``--grow auto --max-size 2`` and ``--max-size 3``, and separate networks (ten networks: 10x
the parameters); and ``--max-size 3`` by steps only, the first task not grown (with a plan,
``--grow auto`` tries growing the first task to the size limit at once). Measured: average
accuracy after the last task, the gap to separate networks
(paired), forgetting (exactly 0), and the network's prunable weights after each task as a
multiple of the original (where the growth happened). ``--refit`` is measured in :mod:`.refit`.

Target (issue 28): with ``--max-size 3``, within 1 point of separate networks on the long
sequence. The settings are the quality part's (20 + 10 epochs in full mode).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from typing import Any

from packtool import Pack, evaluate
from packtool.growth import relative_size

from . import quality
from .common import fmt, markdown_table
from .planner import mean_se

SEEDS = {"smoke": (0,), "quick": (0, 1, 2), "full": tuple(range(10))}
GROWTH_SEQUENCE = "long-permuted-digits"
#: method -> (label, add_task options); every packnet row runs ``auto`` told the plan.
GROWTH_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "auto+plan": ("PackNet, prune auto with the plan", {}),
    "auto+plan+grow2": ("... and --grow auto --max-size 2", {"grow": "auto", "max_size": 2.0}),
    "auto+plan+grow3-steps": ("... --max-size 3, the first task not grown (by steps only)",
                              {"grow": "auto", "max_size": 3.0, "first": {"grow": None}}),
    "auto+plan+grow3": ("... and --grow auto --max-size 3", {"grow": "auto", "max_size": 3.0}),
    "separate": ("Separate networks (10x the parameters)", {}),
}
#: The fixed ratio of the rows that do not say ``auto`` (:mod:`.refit`'s).
FIXED_RATIO = 0.75
#: The target: the largest growth row within this many points of separate networks.
TARGET_GAP = 1.0


def reserve_with_room(pack: Pack, ahead: int, max_size: float) -> int:
    """A reserve that counts the room growth still allows: the task keeps at most an equal
    share, with the ``ahead`` tasks to come, of the free weights plus those ``max_size`` may
    still add (in units of the network as created), so early tasks keep more and later ones
    grow. Tried against the plan's reserve (:mod:`.growth_settings`), not adopted."""
    size = relative_size(pack.growth(), pack.shapes, pack.widths)
    created = pack.prunable_weights / size
    free, room = pack.free_weights / created, max(0.0, max_size - size)
    return max(0, round((ahead + 1) * free / (free + room) - 1))


def run_packnet(seq: quality.SequenceSpec, tasks: list[Any], settings: quality.QualitySettings,
                seed: int, ratio: float | str, options: dict[str, Any],
                reserve_rule: Callable[[Pack, int], int] | None = None,
                first: dict[str, Any] | None = None,
                config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One PackNet sequence on one seed; ``auto`` is told the plan (tasks still to come),
    or ``reserve_rule``'s reserve; ``first``: the first task's options over ``options``;
    ``config``: TrainConfig fields over the settings' (e.g. ``prune_scope``)."""
    start = time.perf_counter()
    train = replace(settings.config(seed), **(config or {}))
    pack, just = quality.build_pack(seq, tasks, train, seed, ratio,
                                    reserve_ahead=ratio == "auto", options=options,
                                    reserve_rule=reserve_rule, first=first)
    seconds = time.perf_counter() - start
    final = [evaluate(pack.model_for(d.name), d.test).accuracy for d in tasks]
    sizes = [relative_size(pack.growth(), pack.shapes, pack.widths_of(k))
             for k in range(1, len(pack.tasks) + 1)]
    return {"seed": seed, "final": final, "avg_accuracy": statistics.fmean(final),
            "forgetting": [j - f for j, f in zip(just[:-1], final[:-1], strict=True)],
            "ratios": [record.prune for record in pack.tasks[:-1]], "sizes": sizes,
            "prunable_weights": sum(math.prod(s) for s in pack.shapes.values()),
            "seconds": seconds}


def run_method(method: str, options: dict[str, Any], seq: quality.SequenceSpec,
               tasks: list[Any], settings: quality.QualitySettings, seed: int
               ) -> dict[str, Any]:
    """One row on one seed. ``options`` go to :func:`packtool.add_task`, but ``prune`` (the
    ratio; default ``auto`` for a method named ``auto...``, else :data:`FIXED_RATIO`),
    ``reserve: "room"`` (:func:`reserve_with_room` instead of the plan's reserve), ``first``
    (the first task's options over the others) and ``config`` (TrainConfig fields)."""
    if method == "separate":
        return quality.run_method("separate", seq, tasks, settings, seed)
    add = {k: v for k, v in options.items() if k not in ("prune", "reserve", "first", "config")}
    ratio = options.get("prune", "auto" if method.startswith("auto") else FIXED_RATIO)
    rule = (partial(reserve_with_room, max_size=float(options["max_size"]))
            if options.get("reserve") == "room" else None)
    return run_packnet(seq, tasks, settings, seed, ratio, add, rule, options.get("first"),
                       options.get("config"))


def run_study(name: str, methods: dict[str, tuple[str, dict[str, Any]]],
              settings: quality.QualitySettings, log: Any = None) -> dict[str, Any]:
    seq = quality.sequence(name, settings)
    tasks = quality.load_sequence(seq)
    quality.warm_up(seq, tasks, settings)
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in settings.seeds:  # seeds outside: a slow spell of the machine hits every method
        for method, (_, options) in methods.items():
            result = run_method(method, options, seq, tasks, settings, seed)
            per_method[method].append(result)
            if log:
                log(f"growth {name} seed {seed} {method}: avg accuracy "
                    f"{result['avg_accuracy']:.4f}, {result['seconds']:.1f} s")
    return {"sequence": name, "description": seq.description, "tasks": len(seq.tasks),
            "rows": [{"method": m, "label": label, "options": options, "seeds": per_method[m]}
                     for m, (label, options) in methods.items()]}


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = replace(quality.SETTINGS[mode], seeds=SEEDS[mode])
    return {"settings": asdict(settings),
            "growth": run_study(GROWTH_SEQUENCE, GROWTH_METHODS, settings, log)}


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def paired(row: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float | None]:
    """Mean paired difference of average accuracy, row minus reference (points), and its SE."""
    return mean_se([100 * (a["avg_accuracy"] - b["avg_accuracy"])
                    for a, b in zip(row["seeds"], reference["seeds"], strict=True)])


def _pm(mean: float, se: float | None) -> str:
    return f"{mean:+.2f}" if se is None else f"{mean:+.2f} +/- {se:.2f}"


def _sizes(row: dict[str, Any]) -> str:
    if "sizes" not in row["seeds"][0]:
        return "n/a"
    per_task = zip(*(s["sizes"] for s in row["seeds"]), strict=True)
    return " ".join(f"{statistics.fmean(s):.2f}" for s in per_task)


def study_table(study: dict[str, Any], reference: str) -> str:
    """A study's rows: mean accuracy, paired difference from ``reference``, sizes, time."""
    rows = {r["method"]: r for r in study["rows"]}
    ref = rows[reference]
    lines = []
    for r in study["rows"]:
        mean, se = mean_se([100 * s["avg_accuracy"] for s in r["seeds"]])
        diff = "-" if r is ref else _pm(*paired(r, ref))
        lines.append([r["label"], _pm(mean, se).lstrip("+"), diff, _sizes(r),
                      fmt(statistics.median(s["seconds"] for s in r["seeds"]))])
    return markdown_table(["method", "avg acc (%)", f"vs {reference} (paired)",
                           "network size after each task (x original)", "wall s"],
                          lines, ["l", "r", "r", "l", "r"])


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 28's targets: zero forgetting with growth, ``--max-size`` kept, and the largest
    growth within :data:`TARGET_GAP` points of separate networks."""
    study = result["growth"]
    rows = {r["method"]: r for r in study["rows"]}
    out = []
    packnet = [r for r in study["rows"] if r["method"] != "separate"]
    forgetting = [f for r in packnet for s in r["seeds"] for f in s["forgetting"]]
    out.append({"target": "every growth row forgets exactly 0.0 (every seed)",
                "measured": f"max abs forgetting = {max(map(abs, forgetting))!r}",
                "ok": all(f == 0.0 for f in forgetting)})
    for r in packnet:
        limit = r["options"].get("max_size")
        if limit:
            largest = max(s["sizes"][-1] for s in r["seeds"])
            out.append({"target": f"{r['method']}: never past --max-size {limit:g}",
                        "measured": f"largest network {largest:.2f}x", "ok": largest <= limit})
    largest_row = packnet[-1]
    gap, se = paired(rows["separate"], largest_row)
    out.append({"target": f"{largest_row['method']} within {TARGET_GAP:g} point of separate "
                          "networks",
                "measured": f"{_pm(gap, se).lstrip('+')} points behind", "ok": gap <= TARGET_GAP})
    return out


def preamble(settings: dict[str, Any]) -> str:
    return (f"Seeds {list(settings['seeds'])}, every method on every seed; the quality part's "
             f"settings ({settings['epochs']} + {settings['finetune_epochs']} epochs). Mean "
             "+/- standard error over the seeds; paired: the mean of the per-seed differences, "
             "in points. Network size: the prunable weights as a multiple of the network as "
             "created, after each task (mean over the seeds).")


def markdown(result: dict[str, Any]) -> str:
    study = result["growth"]
    parts = [preamble(result["settings"]),
             f"### Growth on {study['sequence']}: {study['description']}\n\n"
             + study_table(study, "auto+plan")]
    check_rows = [[c["target"], c["measured"], "yes" if c["ok"] else "NO"]
                  for c in checks(result)]
    parts.append("### Targets\n\n" + markdown_table(["target", "measured", "met"], check_rows,
                                                    ["l", "l", "l"]))
    return "\n\n".join(parts)
