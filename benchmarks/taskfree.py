"""Task-free inference: serving every task of a pack without being told the task.

On the quality benchmark's split-digits and permuted-digits sequences (:mod:`.quality`; PackNet
at prune 0.75, the quality schedule, three seeds), every task's test split is run through every
task's network once (:func:`packtool.identification.split_logits`), then scored
(:func:`packtool.identification.score_task_free`) per image and per group of 8 and 32 images of one
task, with the recorded temperatures (calibrated on validation when each task was added) and
without them (every task at 1), for each task score (``mahalanobis`` reads the feature
statistics fitted with the temperature, and no temperature).

Columns: task identified (share of images, or groups), class accuracy without the task id (a
wrong task counts as wrong) and the oracle's (task given). Means over tasks, medians over seeds.
The two sequences are opposite cases: permuted-digits' tasks have clearly different inputs (the
pixels shuffled per task); split-digits' tasks are all digits, so telling them apart is the
class-incremental problem itself (a head of {0, 1} is rarely unsure on a 7).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from packtool.choices import SCORES
from packtool.identification import score_task_free, split_logits
from packtool.taskfree import task_free_net, temperatures_of

from .common import fmt, markdown_table, median
from .quality import SEQUENCES, SETTINGS, build_pack, load_sequence

RATIO = 0.75
GROUPS = (1, 8, 32)
SEQUENCE_NAMES = ("permuted-digits", "split-digits")


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    sequences = []
    for name in SEQUENCE_NAMES:
        seq = replace(SEQUENCES[name], train_images=settings.train_images)
        tasks = load_sequence(seq)
        per_seed = []
        for seed in settings.seeds:
            pack, _ = build_pack(seq, tasks, settings.config(seed), seed, RATIO)
            nets = [task_free_net(pack, t.name) for t in pack.tasks]
            table = [split_logits(nets, data.test, record.name, record.index)
                     for record, data in zip(pack.tasks, tasks)]
            per_seed.append(_measure(table, temperatures_of(pack)))
            per_seed[-1]["temperatures"] = temperatures_of(pack)
            if log:
                best = per_seed[-1]["rows"][0]
                log(f"taskfree {name} seed {seed}: task identified per image "
                    f"{best['task_accuracy']:.4f} (calibrated {best['score']})")
        sequences.append({"sequence": name, "description": seq.description,
                          "rows": _medians(per_seed), "seeds": per_seed,
                          "test_images": [len(t.test) for t in tasks]})
    return {"ratio": RATIO, "epochs": settings.epochs, "seeds": list(settings.seeds),
            "sequences": sequences}


def _measure(table: list[Any], temperatures: list[float]) -> dict[str, Any]:
    rows = []
    for calibrated in (True, False):
        temps = temperatures if calibrated else [1.0] * len(temperatures)
        for score in _scores(calibrated):
            for group in GROUPS:
                evals = score_task_free(table, temps, group=group, score=score)
                rows.append({
                    "calibrated": calibrated, "score": score, "group": group,
                    "groups": sum(e.groups for e in evals),
                    **{k: sum(getattr(e, k) for e in evals) / len(evals)
                       for k in ("task_accuracy", "accuracy", "oracle_accuracy")},
                })
    return {"rows": rows}


def _medians(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i, row in enumerate(per_seed[0]["rows"]):
        rows.append({**{k: row[k] for k in ("calibrated", "score", "group", "groups")},
                     **{k: median([s["rows"][i][k] for s in per_seed])
                        for k in ("task_accuracy", "accuracy", "oracle_accuracy")}})
    return rows


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's targets, for the default score (entropy) and for mahalanobis."""
    out = []
    for seq in result["sequences"]:
        rows = {(r["calibrated"], r["score"], r["group"]): r for r in seq["rows"]}
        name = seq["sequence"]
        for score in ("entropy", "mahalanobis"):
            g32 = rows[(True, score, 32)]
            if name == "permuted-digits":
                out.append({"target": f"{name}, {score}: task identified for >= 99% of groups "
                                      "of 32",
                            "measured": f"{100 * g32['task_accuracy']:.2f}%",
                            "ok": g32["task_accuracy"] >= 0.99})
            gap = 100 * (g32["oracle_accuracy"] - g32["accuracy"])
            out.append({"target": f"{name}, {score}: accuracy without task id within 2 points "
                                  "of the oracle, groups of 32",
                        "measured": f"{100 * g32['accuracy']:.2f} vs "
                                    f"{100 * g32['oracle_accuracy']:.2f} ({gap:.2f} points)",
                        "ok": gap <= 2.0})
        one, raw = rows[(True, "entropy", 1)], rows[(False, "entropy", 1)]
        out.append({"target": f"{name}: the temperature improves per-image task "
                              "identification (entropy)",
                    "measured": f"{100 * one['task_accuracy']:.2f}% calibrated vs "
                                f"{100 * raw['task_accuracy']:.2f}% at temperature 1",
                    "ok": one["task_accuracy"] > raw["task_accuracy"]})
        fitted = rows[(True, "mahalanobis", 1)]
        best_raw = max((r for r in seq["rows"] if not r["calibrated"] and r["group"] == 1),
                       key=lambda r: r["task_accuracy"])
        out.append({"target": f"{name}: what add-task fits on validation improves per-image "
                              "task identification (mahalanobis vs the best score with "
                              "nothing fitted)",
                    "measured": f"{100 * fitted['task_accuracy']:.2f}% vs "
                                f"{100 * best_raw['task_accuracy']:.2f}% "
                                f"({best_raw['score']}, T = 1)",
                    "ok": fitted["task_accuracy"] > best_raw["task_accuracy"]})
    return out


def markdown(result: dict[str, Any]) -> str:
    parts = [f"PackNet at prune {result['ratio']} ({result['epochs']} epochs per task, the "
             f"quality schedule), seeds {result['seeds']} (medians); mean over tasks. "
             "Task id: share of images (groups) given the right task; accuracy: class "
             "accuracy without the task id; oracle: with it."]
    for seq in result["sequences"]:
        headers = ["score", "calibrated", *(f"task id, {_unit(g)}" for g in GROUPS),
                   *(f"accuracy, {_unit(g)}" for g in GROUPS), "oracle"]
        rows = []
        for calibrated in (True, False):
            for score in _scores(calibrated):
                cells = {r["group"]: r for r in seq["rows"]
                         if r["calibrated"] == calibrated and r["score"] == score}
                rows.append([score, "yes" if calibrated else "no (T = 1)",
                             *(fmt(100 * cells[g]["task_accuracy"], 2) for g in GROUPS),
                             *(fmt(100 * cells[g]["accuracy"], 2) for g in GROUPS),
                             fmt(100 * cells[1]["oracle_accuracy"], 2)])
        parts.append(f"### {seq['sequence']}: {seq['description']}\n\n"
                     f"{sum(seq['test_images'])} test images in all.\n\n"
                     + markdown_table(headers, rows, ["l", "l"] + ["r"] * (len(headers) - 2)))
    check_rows = [[c["target"], c["measured"], "yes" if c["ok"] else "NO"]
                  for c in checks(result)]
    parts.append("### Targets\n\n" + markdown_table(["target", "measured", "met"], check_rows,
                                                    ["l", "l", "l"]))
    return "\n\n".join(parts)


def _scores(calibrated: bool) -> tuple[str, ...]:
    """The scores measured: mahalanobis uses no temperature, so only once."""
    return SCORES if calibrated else tuple(s for s in SCORES if s != "mahalanobis")


def _unit(group: int) -> str:
    return "per image" if group == 1 else f"groups of {group}"
