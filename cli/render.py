"""Rendering: the ``--json`` documents of the contract and the rich tables that show them.

Each command builds one document (``*_doc`` here, or the library's ``to_dict()``) and either
prints it as JSON or renders it as tables, so the two outputs always carry the same numbers.
Tables use colors and box lines on a terminal, and plain ASCII without escape codes when the
output is piped (:mod:`.console`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console

from packtool.growth import relative_size
from packtool.planner import forecast, tasks_to_come
from packtool.records import TaskResult

from .console import count, pct, show_table, temperature

if TYPE_CHECKING:
    from packtool import Pack, TaskFreeEvaluation


# -- init -------------------------------------------------------------------------------------


def show_created(console: Console, pack: Pack, path: str) -> None:
    spec = pack.spec
    size = "x".join(map(str, spec.input_size))
    layers = len(pack.shared)
    plan = f", planned for {pack.planned_tasks} tasks" if pack.planned_tasks else ""
    console.print(f"Created {path}: {spec.arch} on {size} inputs, {count(pack.prunable_weights)} "
                  f"prunable weights in {layers} layers, policy {pack.policy}{plan}.",
                  markup=False)


# -- add-task ---------------------------------------------------------------------------------


#: Why a task's prune ratio is what it is, for tables.
REASONS = {"fixed": "as given", "reserve": "raised to keep room for more tasks (--reserve)",
           "tolerance": "the largest within the tolerance (--prune auto)"}


def _skipped(doc: dict[str, Any], shown: int = 3) -> str:
    """The count of files left out, and the first few of them."""
    files = doc.get("skipped_files", [])
    more = f", and {len(files) - shown} more" if len(files) > shown else ""
    return f"{count(doc['skipped_images'])}: {', '.join(files[:shown])}{more}" if files else (
        count(doc["skipped_images"]))


def _prune(doc: dict[str, Any], share: float) -> str:
    """The ratio and why; where the reserve raised it in some layers, the share released
    overall too (the ratio alone would not match the weights owned)."""
    reason = REASONS.get(doc["prune_reason"], "")
    released = doc["free_fraction"] / (doc["free_fraction"] + share)  # of the free weights
    if doc["prune_reason"] == "reserve" and released > doc["prune"] + 0.005:
        reason = f"raised to {released:.2f} overall to keep room for more tasks (--reserve)"
    return f"{doc['prune']:g}, {reason}"


def show_task_summary(console: Console, doc: dict[str, Any], pack: Pack, path: str) -> None:
    share = doc["weights_owned"] / pack.prunable_weights
    rows = [
        ("prune ratio", _prune(doc, share)),
        ("accuracy before pruning", pct(doc["accuracy_before_prune"])),
        ("accuracy after pruning", pct(doc["accuracy_after_prune"])),
        ("accuracy after fine-tuning", pct(doc["accuracy"])),
        ("weights owned", f"{count(doc['weights_owned'])} ({share:.1%})"),
        ("free capacity left", pct(doc["free_fraction"])),
        *([("unreadable images left out", _skipped(doc))] if doc["skipped_images"] else []),
        *_growth_rows(doc, pack),
        *([("refit", "trained again on training + validation images")]
          if pack.task(doc["task"]).hparams.get("refit") else []),
        ("temperature (task-free inference)", temperature(doc["temperature"])),
        ("time", f"{doc['seconds']:.1f} s"),
    ]
    title = f"Task {doc['task']!r} (#{doc['index']}) saved to {path}"
    show_table(console, title, ("", "value"), rows, header=False)
    if doc.get("prune_search"):
        show_search(console, doc["prune_search"], doc["prune"])
    for key in TaskResult.WARNING_KEYS:
        if doc.get(key):
            console.print(f"Note: {doc[key]}", markup=False)
    classes = len(pack.task(doc["task"]).classes)
    for split, absent in (doc.get("missing_classes") or {}).items():
        console.print(f"Note: {_missing_classes(split, absent, classes)}", markup=False)


def _missing_classes(split: str, absent: list[str], classes: int) -> str:
    """The note on a split without an image of some classes (``missing_classes``)."""
    one = len(absent) == 1
    shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
    return (f"no {split} image of class{'' if one else 'es'} {shown} ({len(absent)} of the "
            f"{classes} classes): {split} accuracy leaves {'it' if one else 'them'} out")


def _growth_rows(doc: dict[str, Any], pack: Pack) -> list[tuple[str, str]]:
    """Where the network grew: whether it grew for this task (``--grow auto``: with the
    validation accuracy of each trial) and the size the task runs at."""
    rows, widths = [], doc.get("widths") or {}
    if doc.get("grow_search"):  # --grow auto ran trials (none when no growth fitted)
        before = pack.widths_of(doc["index"] - 1)
        trials = ", ".join(f"{t['grow']:g}: " + ("no room" if t["val_accuracy"] is None
                                                 else pct(t["val_accuracy"]))
                           for t in doc["grow_search"])
        grew = "grown" if widths != before else "not grown"
        rows.append(("growth (--grow auto)", f"{grew} (validation accuracy by growth: "
                                             f"{trials})"))
    if widths:
        size = relative_size(pack.growth(), pack.shapes, widths)
        rows.append(("network size", f"{size:.2f}x its original prunable weights"))
    return rows


def show_reserve_tip(console: Console) -> None:
    """After ``--prune auto`` without ``--reserve`` or a plan: it weighed this task alone."""
    console.print("Tip: --prune auto weighed this task alone; if more tasks will follow, "
                  "--reserve N (the number still to come) or init --tasks keeps room for them "
                  "(docs/planner.md).", markup=False)


def show_search(console: Console, search: list[dict[str, Any]], chosen: float) -> None:
    """The planner's candidates: validation accuracy pruned, and fine-tuned where tried."""
    rows = [(f"{c['ratio']:g}", pct(c["val_pruned"]),
             "-" if c["val_finetuned"] is None else pct(c["val_finetuned"]),
             "chosen" if c["ratio"] == chosen else "") for c in search]
    show_table(console, "Prune search (validation accuracy)",
               ("ratio", "pruned", "fine-tuned", ""), rows)


# -- eval -------------------------------------------------------------------------------------


def show_eval(console: Console, doc: dict[str, Any]) -> None:
    rows = [(str(r["index"]), r["task"], pct(r["accuracy"]), count(r["samples"]))
            for r in doc["tasks"]]
    show_table(console, "Accuracy on each task's held-out split",
               ("#", "task", "accuracy", "samples"), rows, left=2)


def task_free_doc(rows: Sequence[TaskFreeEvaluation], pack: Pack, *, group: int,
                  score: str) -> dict[str, Any]:
    """``eval --task-free --json``: per task and the mean over tasks."""
    docs = [r.to_dict() for r in rows]
    keys = ("task_accuracy", "accuracy", "oracle_accuracy")
    return {
        "group": group, "task_score": score,
        "uncalibrated": [t.name for t in pack.tasks if t.temperature is None],
        "tasks": docs,
        "mean": {k: sum(d[k] for d in docs) / len(docs) for k in keys},
    }


def show_task_free(console: Console, doc: dict[str, Any]) -> None:
    unit = "image" if doc["group"] == 1 else f"group of {doc['group']} images"
    rows = [(str(r["index"]), r["task"], count(r["groups"]), pct(r["task_accuracy"]),
             pct(r["accuracy"]), pct(r["oracle_accuracy"])) for r in doc["tasks"]]
    mean = doc["mean"]
    rows.append(("", "mean", "", pct(mean["task_accuracy"]), pct(mean["accuracy"]),
                 pct(mean["oracle_accuracy"])))
    show_table(console, f"Without the task id: one task per {unit} ({doc['task_score']} score)",
               ("#", "task", "groups" if doc["group"] > 1 else "images", "task identified",
                "accuracy", "with task id"), rows, left=2)
    if doc["uncalibrated"]:
        console.print(f"Not calibrated (temperature 1): {', '.join(doc['uncalibrated'])}.",
                      markup=False)
    if "unknown" in doc:
        u = doc["unknown"]
        console.print(f"Unknown images ({u['data']}, {count(u['samples'])}): {pct(u['rejected'])} "
                      f"rejected, AUROC {u['auroc']:.4f}; known test images wrongly rejected: "
                      f"{pct(u['known_rejected'])}.", markup=False)


# -- info -------------------------------------------------------------------------------------


def info_doc(pack: Pack, share: float | None = None, growable: bool = False
             ) -> dict[str, Any]:
    capacity = pack.capacity()
    private = pack.private_values
    return {
        "arch": pack.spec.arch,
        "input_size": list(pack.spec.input_size),
        "prunable_weights": pack.prunable_weights,
        "free_fraction": pack.free_fraction,
        "free_init": pack.free_init,
        "planned_tasks": pack.planned_tasks,
        "private_values": private,
        "private_share": private / (private + pack.prunable_weights),
        "private_tensors": [{"name": k, "shape": list(shape)}
                            for k, shape in pack.private_state_spec.items() if len(shape) >= 2],
        "tasks": [
            {"task": t.name, "index": t.index, "classes": list(t.classes),
             "weights_owned": sum(layer.owned[t.index - 1] for layer in capacity),
             "private_values": t.stored_values, "data": t.data, "prune": t.prune,
             "prune_reason": t.prune_reason, "prune_search": t.prune_search,
             "temperature": t.temperature, **({"widths": t.widths} if t.widths else {})}
            for t in pack.tasks
        ],
        "capacity": [{"layer": layer.name, "shape": list(layer.shape), "weights": layer.total,
                      "free": layer.free, "owned": list(layer.owned)} for layer in capacity],
        "forecast": forecast(capacity, share).to_dict(),
        **({"widths": pack.widths} if pack.widths else {}),
        **({"growable": [w.to_dict() for w in pack.growth()]} if growable else {}),
    }


def describe_data(spec: dict[str, Any], names: Sequence[str] = (), shown: int = 6) -> str:
    """A task's data and, for a subset of its classes, which: by ``names`` (the classes as the
    folder or dataset spells them, in the task's order) where given, else the recorded
    indices; the first ``shown`` of them and a count."""
    text = str(spec.get("data", "?"))
    if spec.get("classes") is not None:
        chosen = list(names) if len(names) == len(spec["classes"]) else spec["classes"]
        more = f" (+{len(chosen) - shown} more)" if len(chosen) > shown else ""
        text += f" classes {','.join(map(str, chosen[:shown]))}{more}"
    return text


def show_info(console: Console, doc: dict[str, Any], pack: Pack, path: str) -> None:
    size = "x".join(map(str, doc["input_size"]))
    console.print(f"{path}: {doc['arch']} on {size} inputs, policy {pack.policy}, "
                  f"{count(doc['prunable_weights'])} prunable weights, "
                  f"{pct(doc['free_fraction'])} free (a new task starts them: "
                  f"{doc['free_init']})", markup=False)
    console.print(f"Per task, besides the weights it owns: {count(doc['private_values'])} private "
                  f"values ({pct(doc['private_share'])} of the backbone) and its head.",
                  markup=False)
    matrices = doc["private_tensors"]
    if matrices:
        shown = ", ".join(f"{m['name']} {'x'.join(map(str, m['shape']))}" for m in matrices[:4])
        more = f" and {len(matrices) - 4} more" if len(matrices) > 4 else ""
        console.print(f"Kept per task, not packed: {shown}{more}.", markup=False)
    rows = []
    for t in doc["tasks"]:
        record = pack.task(t["task"])
        prune = f"{record.prune:g}" + ("" if record.prune_reason == "fixed" else
                                        f" ({record.prune_reason})")
        rows.append((str(t["index"]), t["task"], describe_data(t["data"], t["classes"]),
                     str(len(t["classes"])), prune, count(t["weights_owned"]),
                     count(t["private_values"]), pct(record.metrics.get("accuracy")),
                     temperature(t["temperature"])))
    if rows:
        show_table(console, "Tasks", ("#", "task", "data", "classes", "prune", "weights owned",
                                      "private values", "accuracy", "temperature"), rows, left=3)
        if any(t["temperature"] is None for t in doc["tasks"]):
            console.print("Tasks without a temperature were added before calibration: task-free "
                          "inference treats them as temperature 1.", markup=False)
    else:
        console.print("No tasks yet: add one with `packtool add-task`.", markup=False)
    show_capacity(console, doc)
    show_widths(console, doc, pack)
    show_plan(console, doc)
    show_forecast(console, doc["forecast"])


def show_plan(console: Console, doc: dict[str, Any]) -> None:
    """Where the pack stands against its plan (``init --tasks``), if it has one."""
    planned, added = doc["planned_tasks"], len(doc["tasks"])
    if planned is None:
        return
    ahead = tasks_to_come(planned, added)
    where = (f"{ahead} still to come" if ahead else "all added" if added == planned
             else f"{added} added, {added - planned} past the plan")
    console.print(f"Planned: {planned} tasks (init --tasks), {where}.", markup=False)


def show_widths(console: Console, doc: dict[str, Any], pack: Pack) -> None:
    """The growable widths (with --growable) and the ones that grew, with their units."""
    grown = doc.get("widths", {})
    if "growable" in doc:
        rows = [(f"{w['producer']} -> {w['consumer']}", count(w["units"]),
                 count(grown.get(w["producer"], w["units"])), ", ".join(w["norms"]) or "-")
                for w in doc["growable"]]
        if rows:
            show_table(console, "Growable widths (add-task --grow)",
                       ("layer -> reads it", "units", "now", "norms widened"), rows, left=1)
        else:
            console.print(f"No growable width in {pack.spec.arch} (see docs/growth.md).",
                          markup=False)
    elif grown:
        console.print("Grown widths (units now): " + ", ".join(
            f"{name} {count(units)}" for name, units in grown.items()), markup=False)


def show_forecast(console: Console, doc: dict[str, Any]) -> None:
    """How many more tasks fit, at the median share so far and at --share."""
    lines = [f"Forecast: {pct(doc['free_fraction'])} of the prunable weights are free"]
    if doc["median_share"] is not None:
        fit, share = doc["tasks_fit"], pct(doc["median_share"])
        lines.append(f"no room for one more task owning {share} of every layer (the median "
                     "share so far): the next one gets less" if not fit else
                     f"room for {fit} more task{'s' if fit > 1 else ''} owning {share} of every "
                     "layer (the median share so far)")
    if doc["share"] is not None:
        lines.append(f"for {doc['tasks_fit_at_share']} owning {pct(doc['share'])} (--share)")
    console.print("; ".join(lines) + ".", markup=False)


def show_capacity(console: Console, doc: dict[str, Any]) -> None:
    """Each layer's shape (which layer a module path like ``0.4`` is) and who owns it."""
    headers = ["layer", "shape", "weights", *(f"#{t['index']} {t['task']}" for t in doc["tasks"]),
               "free"]
    rows = []
    for layer in doc["capacity"]:
        owned = [pct(n / layer["weights"]) for n in layer["owned"]]
        rows.append((layer["layer"].removesuffix(".weight"), "x".join(map(str, layer["shape"])),
                     count(layer["weights"]), *owned, pct(layer["free"] / layer["weights"])))
    show_table(console, "Capacity per layer (share of each layer's weights)", headers, rows,
               left=2)


# -- export -----------------------------------------------------------------------------------


def show_export(console: Console, doc: dict[str, Any]) -> None:
    if doc["files"]:
        rows = [(f["task"] if f["task"] is not None else f"all {len(f['tasks'])} tasks",
                 f["path"], count(f["bytes"]),
                 "not verified" if f["max_abs_diff"] is None else f"{f['max_abs_diff']:.2e}")
                for f in doc["files"]]
        show_table(console, "ONNX files", ("task", "path", "bytes", "max |diff|"), rows, left=2)
        for f in doc["files"]:
            if "precision" in f:
                show_reduced(console, f)
    if doc["archive"] is not None:
        a = doc["archive"]
        console.print(f"Archive {a['path']}: {count(a['bytes'])} bytes", markup=False)
        if "half_precision" in a:
            show_half_precision(console, a["half_precision"])


def show_reduced(console: Console, file: dict[str, Any]) -> None:
    """What a reduced-precision ONNX file costs on the task's test split."""
    if file["accuracy_change"] is None:
        console.print(f"{file['precision']}: accuracy change not measured (no test data)",
                      markup=False)
        return
    console.print(f"{file['precision']}: test accuracy {pct(file['accuracy_float32'])} -> "
                  f"{pct(file['accuracy'])} ({file['accuracy_change']:+.2f} pts)", markup=False)


def show_half_precision(console: Console, changes: list[dict[str, Any]]) -> None:
    """Each task's test accuracy in float32 and from the float16 archive."""
    def acc(value: float | None) -> str:
        return "no data" if value is None else pct(value)

    rows = []
    for c in changes:
        measured = c["accuracy"] is not None
        change = f"{(c['accuracy_half'] - c['accuracy']) * 100:+.2f} pts" if measured else "-"
        rows.append((c["task"], acc(c["accuracy"]), acc(c["accuracy_half"]), change,
                     str(c["samples"]), f"{c['max_abs_diff']:.2e}"))
    show_table(console, "float16 archive against float32",
               ("task", "float32", "float16", "change", "samples", "max |logit diff|"), rows,
               left=1)


# -- run --------------------------------------------------------------------------------------


def show_sequence(console: Console, doc: dict[str, Any]) -> None:
    """The accuracy matrix (a row per task added, a column per task), then the summary."""
    names = [t["task"] for t in doc["tasks"]]
    rows = [[name, *("-" if v is None else pct(v) for v in row),
             *[""] * (len(names) - len(row))] for name, row in zip(names, doc["matrix"])]
    show_table(console, "Test accuracy of each task (columns) after each task was added (rows)",
               ("after", *names), rows)
    summary = [("average accuracy", pct(doc["avg_accuracy"])),
               ("backward transfer", f"{100 * doc['backward_transfer']:+.2f} points"),
               ("time", f"{doc['seconds']:.1f} s")]
    references = [t for t in doc["tasks"] if "reference_accuracy" in t]
    show_table(console, None, ("", ""), summary, header=False)
    if references:
        show_table(console, "Each task alone on a fresh network, against packed",
                   ("task", "alone", "packed", "cost of packing"),
                   [(t["task"], pct(t["reference_accuracy"]), pct(t["accuracy"]),
                     f"{100 * t['packing_cost']:+.2f} points") for t in references])
