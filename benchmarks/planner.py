"""Planner: ``--prune auto`` against the fixed ratios, seed by seed over ten seeds.

The quality part shows medians of three seeds. On these sequences a sequence's average moves by
about a point from seed to seed, as much as the methods differ, so a three-seed median cannot
say whether ``auto`` beats a fixed ratio. Here every method runs on the same ten seeds (per
seed: the same data, initialization and batch order) and is compared with the best fixed ratio
in hindsight (the larger mean) seed by seed: the mean paired difference and its standard error
say whether a gap is real.

Rows, on the quality part's three sequences and settings: prune 0.5 and 0.75, ``auto`` at its
defaults, ``auto`` told how many tasks are still to come (``--reserve`` that number, so each
task keeps at most an equal share of the free weights with the tasks after it: what a user who
knows the sequence's length can say), and separate networks. Then the validation study: prune
0.75 and both ``auto`` rows again with 25% of the training part validated (:data:`WIDE_VAL`;
10% elsewhere, where the planner warns that its split cannot resolve the tolerance), each
compared seed by seed with prune 0.75 on the same split: what a firmer split buys the planner.
Targets (issue 13): ``auto`` at least the best fixed ratio on every sequence, within 3 points of
separate networks on the long one, its search at most 1.5x a fixed ratio's time; zero
forgetting throughout. As the project's owners decided after the ten-seed study: ``auto`` is
judged as the documentation presents it, told the plan (the ``+reserve`` rows; the rows
without are reported for information), and "at least" means not significantly below, paired
over the seeds (:func:`not_below`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, replace
from typing import Any

from scipy.special import stdtrit  # the t quantile; scipy.stats takes 1.5 s more to import

from . import quality
from .common import fmt, markdown_table

SEEDS = {"smoke": (0,), "quick": (0, 1, 2), "full": tuple(range(10))}
METHODS = {
    "packnet-0.5": "PackNet, prune 0.5",
    "packnet-0.75": "PackNet, prune 0.75",
    "packnet-auto": "PackNet, prune auto",
    f"packnet-auto{quality.RESERVE}": "PackNet, prune auto, --reserve the tasks still to come",
    "separate": "Separate networks (upper bound)",
}
FIXED = ("packnet-0.5", "packnet-0.75")
AUTO = ("packnet-auto", f"packnet-auto{quality.RESERVE}")
#: The ``auto`` row the targets judge: told the plan (the rows without it are for information).
JUDGED = f"packnet-auto{quality.RESERVE}"
#: "At least" a reference: not below it at this one-sided significance (paired t-test).
SIGNIFICANCE = 0.05
#: The validation study's share of the training part validated, and its method suffix.
WIDE_VAL, WIDE = 0.25, "+val25"
METHODS.update({f"{m}{WIDE}": f"{METHODS[m]}; 25% validated" for m in ("packnet-0.75", *AUTO)})


def run_sequence(name: str, settings: quality.QualitySettings, log: Any = None
                 ) -> dict[str, Any]:
    seq = quality.sequence(name, settings)
    tasks, wide = quality.load_sequence(seq), quality.load_sequence(seq, WIDE_VAL)
    quality.warm_up(seq, tasks, settings)
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in settings.seeds:  # seeds outside: a slow spell of the machine hits every method
        for method in METHODS:
            data = wide if method.endswith(WIDE) else tasks
            result = quality.run_method(method.removesuffix(WIDE), seq, data, settings, seed)
            per_method[method].append(result)
            if log:
                log(f"planner {name} seed {seed} {method}: avg accuracy "
                    f"{result['avg_accuracy']:.4f}, {result['seconds']:.1f} s")
    return {"sequence": name, "description": seq.description, "tasks": len(seq.tasks),
            "val_images": [len(t.val) for t in tasks],
            "val_images_wide": [len(t.val) for t in wide],
            "rows": [{"method": m, "label": label, "seeds": per_method[m]}
                     for m, label in METHODS.items()]}


#: The smoke run's sequence: the one every target names (the others run the same code).
SMOKE_SEQUENCES = ("long-permuted-digits",)


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = replace(quality.SETTINGS[mode], seeds=SEEDS[mode])
    if mode == "smoke":
        settings = replace(settings, sequences=SMOKE_SEQUENCES)
    return {"settings": asdict(settings),
            "sequences": [run_sequence(name, settings, log) for name in settings.sequences]}


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (None from a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def _accuracies(row: dict[str, Any]) -> list[float]:
    return [s["avg_accuracy"] for s in row["seeds"]]


def best_fixed(seq: dict[str, Any]) -> dict[str, Any]:
    """The fixed-ratio row with the larger mean accuracy: the best fixed ratio in hindsight."""
    rows = [r for r in seq["rows"] if r["method"] in FIXED]
    return max(rows, key=lambda r: statistics.fmean(_accuracies(r)))


def reference(seq: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """What ``row`` is compared with: the best fixed ratio, or for the validation study's rows
    prune 0.75 on the same (wider) validation split."""
    if row["method"].endswith(WIDE):
        return next(r for r in seq["rows"] if r["method"] == f"packnet-0.75{WIDE}")
    return best_fixed(seq)


def paired(row: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float | None, int]:
    """Mean paired difference of average accuracy (points), its standard error, and the number
    of seeds on which ``row`` is at least ``reference``."""
    diffs = [100 * (a - b) for a, b in zip(_accuracies(row), _accuracies(reference), strict=True)]
    mean, se = mean_se(diffs)
    return mean, se, sum(d >= 0 for d in diffs)


def not_below(mean: float, se: float | None, seeds: int) -> tuple[bool, str]:
    """Whether a mean paired difference (points) is not significantly below 0 (one-sided
    paired t-test at :data:`SIGNIFICANCE`), and the test in words. One seed, or no spread:
    the mean itself must be >= 0."""
    if se is None or se == 0:
        return mean >= 0, "a single value" if se is None else "no spread"
    t, limit = mean / se, -float(stdtrit(seeds - 1, 1 - SIGNIFICANCE))
    return t >= limit, f"t = {t:.2f}, significantly below at t < {limit:.2f}"


def _met(ok: bool | None) -> str:
    return "n/a (for information)" if ok is None else "yes" if ok else "NO"


def _pm(mean: float, se: float | None) -> str:
    return f"{mean:+.2f}" if se is None else f"{mean:+.2f} +/- {se:.2f}"


def _ratios(row: dict[str, Any]) -> str:
    if not row["seeds"][0]["ratios"]:
        return "n/a"
    per_task = zip(*(s["ratios"] for s in row["seeds"]), strict=True)
    return " ".join(f"{statistics.fmean(r):.2f}" for r in per_task)


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets, measured over every seed."""
    out = []
    for seq in result["sequences"]:
        name, rows = seq["sequence"], {r["method"]: r for r in seq["rows"]}
        forgetting = [f for m in rows if m.startswith("packnet-") for s in rows[m]["seeds"]
                      for f in s["forgetting"]]
        out.append({"target": f"{name}: every PackNet row forgets exactly 0.0 (every seed)",
                    "measured": f"max abs forgetting = {max(map(abs, forgetting))!r}",
                    "ok": all(f == 0.0 for f in forgetting)})
        best = best_fixed(seq)
        fixed_s = statistics.median(s["seconds"] for s in rows["packnet-0.75"]["seeds"])
        for method in AUTO:
            judged = method == JUDGED
            out.append(_at_least(f"{name}: {method} mean accuracy at least the best fixed "
                                 "ratio's", rows[method], best, judged))
            seconds = statistics.median(s["seconds"] for s in rows[method]["seeds"])
            out.append({"target": f"{name}: {method} time at most 1.5x packnet-0.75's",
                        "measured": f"{seconds / fixed_s:.2f}x (median seconds)",
                        "ok": seconds <= 1.5 * fixed_s})
            if name == "long-permuted-digits":
                gap, se, _ = paired(rows["separate"], rows[method])
                out.append({"target": f"{name}: {method} within 3 points of separate networks",
                            "measured": f"{_pm(gap, se).lstrip('+')} points behind",
                            "ok": gap <= 3.0 if judged else None})
        out += _validation_study(name, rows)
    return out


def _validation_study(name: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What a firmer validation split buys ``auto``: at least prune 0.75 on the same split."""
    fixed = rows[f"packnet-0.75{WIDE}"]
    return [_at_least(f"{name}: (validation study) {method} at least packnet-0.75, both with "
                      f"{WIDE_VAL:.0%} of the training part validated",
                      rows[f"{method}{WIDE}"], fixed, method == JUDGED)
            for method in AUTO]


def _at_least(target: str, row: dict[str, Any], reference: dict[str, Any], judged: bool
              ) -> dict[str, Any]:
    """The target "``row`` at least ``reference``" (:func:`not_below`); not ``judged``: the
    measurement only, for information (``ok`` None)."""
    mean, se, wins = paired(row, reference)
    ok, test = not_below(mean, se, len(row["seeds"]))
    return {"target": target,
            "measured": f"{_pm(mean, se)} points vs {reference['method']} ({test}; at least "
                        f"it on {wins} of {len(reference['seeds'])} seeds)",
            "ok": ok if judged else None}


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    parts = [f"Seeds {list(settings['seeds'])}, every method on every seed; the quality part's "
             f"settings ({settings['epochs']} + {settings['finetune_epochs']} epochs). Mean "
             "+/- standard error over the seeds; paired: the mean of the per-seed differences "
             "from the best fixed ratio in hindsight (the 25% validated rows: from prune 0.75 "
             "with 25% validated), in points. The targets judge `auto` told the plan (the "
             "`+reserve` rows; the others are for information), \"at least\" meaning not "
             f"significantly below: a one-sided paired t-test at {SIGNIFICANCE:.0%}."]
    for seq in result["sequences"]:
        rows = []
        for r in seq["rows"]:
            mean, se = mean_se([100 * a for a in _accuracies(r)])
            ref = reference(seq, r)
            diff, dse, wins = paired(r, ref)
            rows.append([r["label"], _pm(mean, se).lstrip("+"),
                         "-" if r is ref else _pm(diff, dse),
                         "-" if r is ref else f"{wins}/{len(r['seeds'])}", _ratios(r),
                         fmt(statistics.median(s["seconds"] for s in r["seeds"]))])
        headers = ["method", "avg acc (%)", f"vs {best_fixed(seq)['method']} (paired)",
                   "seeds at least it", "mean ratio per task (but the last)", "wall s"]
        val, wide = min(seq["val_images"]), min(seq["val_images_wide"])
        parts.append(f"### {seq['sequence']}: {seq['description']}\n\n"
                     f"Validation images per task: at least {val} (25% validated: {wide}).\n\n"
                     + markdown_table(headers, rows, ["l", "r", "r", "r", "l", "r"]))
    check_rows = [[c["target"], c["measured"], _met(c["ok"])] for c in checks(result)]
    parts.append("### Targets\n\n" + markdown_table(["target", "measured", "met"], check_rows,
                                                    ["l", "l", "l"]))
    return "\n\n".join(parts)
