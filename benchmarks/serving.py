"""Serving many tasks from one file: mixed-task batches, unknown inputs, compact statistics.

Three measurements (issue 29):

* **mixed**: a batch of 32 whose rows' tasks are drawn at random among 5, through the
  multi-task ONNX in one call (``task`` ``[32]``), against the same file called once per task
  present on its rows (``task`` ``[1]``: what a server had to do before mixed batches), and
  against each task's per-task ONNX file called on its rows (the per-task files need no mask
  in the graph; the README's deploying measurements compare the forms); and a batch of one
  task through the file against the file without the task loop (as files were before): what
  the loop costs a batch that does not need it. Medians of interleaved calls, onnxruntime CPU
  provider, default session options. Target: mixed / split <= 1.2.
* **unknown**: a task left out of the pack, served task-free with ``--reject``: split-digits
  packs its first four pairs, {8, 9} is unknown; permuted-digits packs its five
  permutations, a sixth is unknown (quality schedule, prune 0.75). AUROC of the reject ratio
  (unknown vs every task's test images), the share of unknown images rejected, the share of
  known images wrongly rejected (the thresholds accept 95% of each task's validation images).
* **stats**: the archive's task-free statistics (``features/*``) and their share of the archive
  at 3, 5 and 10 tasks, against the statistics packtool stored before (rank up to 256,
  float32, the fixed shrinkage ``max(0.1, D / (N + D))`` before the Ledoit-Wolf estimate), with
  the per-image task identification rate of each: the digits MLP 64-256-256
  (the permuted sequence, ten permutations) and ResNet-18 (split-digits pairs at 3x64x64, one
  epoch a task; past five tasks the pairs repeat, so identification is not measured there).
  Target: <= 20% of the archive on the MLP, identification within 0.5 points of before.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort

from packtool import Pack
from packtool.data import task_data
from packtool.exporters import multi_task_onnx, task_onnx, with_mixed_batches
from packtool.formats.archive import archive_payload
from packtool.identification import score_task_free, score_unknown, split_logits
from packtool.taskfree import TaskFreeNet, fit_feature_stats, head_inputs, task_free_net

from . import cost, quality
from .common import fmt, fmt_int, interleaved_medians, markdown_table, median

CPU = "CPUExecutionProvider"
BATCH = 32
DRAWS = 8  # task vectors timed in turn
MLP_TASKS = (3, 5, 10)


def run(mode: str, log: Any = None) -> dict[str, Any]:
    log = log or (lambda _text: None)
    return {"mixed": _mixed(mode, log), "unknown": _unknown(mode, log),
            "stats": _stats(mode, log)}


# ------------------------------------------------------------------------------------------------
# Mixed-task batches
# ------------------------------------------------------------------------------------------------


def _mixed(mode: str, log: Any) -> list[dict[str, Any]]:
    cases = {"smoke": [cost.MLP_SMOKE], "quick": [cost.LENET],
             "full": [cost.LENET, cost.RESNET]}[mode]
    budget = {"smoke": 0.5, "quick": 5.0, "full": 20.0}[mode]
    rows = []
    for case in cases:
        pack, _ = cost.build_pack(case)
        rows.append(_time_mixed(pack, case.name, budget))
        log(f"serving mixed {case.name}: mixed / split {rows[-1]['mixed_ratio']:.3f}, "
            f"one task with / without the loop {rows[-1]['loop_ratio']:.3f}")
    return rows


def _time_mixed(pack: Pack, name: str, budget: float) -> dict[str, Any]:
    def session(model: Any) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), providers=[CPU])

    tasks = len(pack.tasks)
    one_trace = multi_task_onnx(pack, mixed=False)  # the file as it was before mixed batches
    mixed, plain = session(with_mixed_batches(one_trace)), session(one_trace)
    singles = [session(task_onnx(pack, r.name)) for r in pack.tasks]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *pack.spec.input_size)).astype(np.float32)
    draws = [rng.integers(1, tasks + 1, size=BATCH) for _ in range(DRAWS)]
    turn = {"mixed": 0, "split": 0, "files": 0, "loop": 0, "no_loop": 0}

    def nxt(key: str) -> int:
        turn[key] += 1
        return turn[key]

    def split() -> None:  # the same file, one call per task present on its rows
        vector = draws[nxt("split") % DRAWS]
        for t in np.unique(vector):
            mixed.run(None, {"input": x[vector == t], "task": np.array([t])})

    def files() -> None:  # each task's own per-task file, one call per task present
        vector = draws[nxt("files") % DRAWS]
        for t in np.unique(vector):
            singles[t - 1].run(None, {"input": x[vector == t]})

    def one(sess: ort.InferenceSession, key: str) -> None:
        sess.run(None, {"input": x, "task": np.array([nxt(key) % tasks + 1])})

    medians, rounds = interleaved_medians({
        "mixed": lambda: mixed.run(None, {"input": x, "task": draws[nxt("mixed") % DRAWS]}),
        "split": split,
        "per_task_files": files,
        "one_task_loop": lambda: one(mixed, "loop"),
        "one_task_no_loop": lambda: one(plain, "no_loop"),
    }, budget)
    return {"pack": name, "tasks": tasks, "batch": BATCH, "rounds": rounds,
            "ms": {k: 1000 * v for k, v in medians.items()},
            "tasks_present": float(np.mean([len(np.unique(d)) for d in draws])),
            "mixed_ratio": medians["mixed"] / medians["split"],
            "files_ratio": medians["mixed"] / medians["per_task_files"],
            "loop_ratio": medians["one_task_loop"] / medians["one_task_no_loop"]}


# ------------------------------------------------------------------------------------------------
# A task left out
# ------------------------------------------------------------------------------------------------


def _unknown(mode: str, log: Any) -> list[dict[str, Any]]:
    settings = quality.SETTINGS[mode]
    rows = []
    for name, seq in _left_out_sequences(mode).items():
        tasks = quality.load_sequence(seq)
        known, outside = replace(seq, tasks=seq.tasks[:-1]), tasks[-1]
        per_seed = []
        for seed in settings.seeds:
            pack, _ = quality.build_pack(known, tasks[:-1], settings.config(seed), seed, 0.75)
            nets = [task_free_net(pack, r.name) for r in pack.tasks]
            table = [split_logits(nets, d.test, r.name, r.index)
                     for r, d in zip(pack.tasks, tasks[:-1])]
            result = score_unknown(table, split_logits(nets, outside.test, "unknown", 0),
                                   [float(r.feature_stats["reject"]) for r in pack.tasks])
            per_seed.append(result.to_dict())
            log(f"serving unknown {name} seed {seed}: AUROC {result.auroc:.4f}, rejected "
                f"{result.rejected:.3f}, known rejected {result.known_rejected:.3f}")
        rows.append({"sequence": name, "left_out": outside.name, "known_tasks": len(known.tasks),
                     "seeds": per_seed,
                     **{k: median([s[k] for s in per_seed])
                        for k in ("auroc", "rejected", "known_rejected")}})
    return rows


def _left_out_sequences(mode: str) -> dict[str, quality.SequenceSpec]:
    """The sequences with the left-out task last."""
    split = quality.SEQUENCES["split-digits"]
    permuted = quality.SEQUENCES["permuted-digits"]
    extra = quality.TaskSpec("P6", tuple(range(10)), 5)
    seqs = {"split-digits": split,
            "permuted-digits": replace(permuted, tasks=(*permuted.tasks, extra))}
    if mode == "smoke":  # two known tasks
        seqs = {k: replace(s, tasks=(*s.tasks[:2], s.tasks[-1])) for k, s in seqs.items()}
    train_images = quality.SETTINGS[mode].train_images
    seqs = {k: replace(s, train_images=train_images) for k, s in seqs.items()}
    return seqs


# ------------------------------------------------------------------------------------------------
# Statistics' bytes
# ------------------------------------------------------------------------------------------------


def _stats(mode: str, log: Any) -> list[dict[str, Any]]:
    settings = quality.SETTINGS[mode]
    counts = {"smoke": (3,), "quick": MLP_TASKS, "full": MLP_TASKS}[mode]
    mlp = replace(quality.SEQUENCES["long-permuted-digits"], kwargs={"hidden": 256},
                  train_images=settings.train_images)
    tasks = quality.load_sequence(mlp)
    rows = []
    for count in counts:
        seq = replace(mlp, tasks=mlp.tasks[:count])
        pack, _ = quality.build_pack(seq, tasks[:count], settings.config(0), 0, 0.75)
        rows.append(_stats_row("mlp 64-256-256", pack, [t.val for t in tasks[:count]],
                               [t.test for t in tasks[:count]]))
        log(f"serving stats mlp x{count}: {rows[-1]['share']:.3f} of the archive")
    for count in {"smoke": (), "quick": (3, 5), "full": MLP_TASKS}[mode]:
        case = replace(cost.RESNET, tasks=count)
        pack, _ = cost.build_pack(case)
        datas = [task_data(pack, r.name) for r in pack.tasks]
        distinct = count <= 5  # past five tasks the digit pairs repeat
        rows.append(_stats_row("resnet18 3x64x64", pack, [d.val for d in datas],
                               [d.test for d in datas] if distinct else None))
        log(f"serving stats resnet18 x{count}: {rows[-1]['share']:.4f} of the archive")
    return rows


def _stats_row(name: str, pack: Pack, vals: list[Any], tests: list[Any] | None
               ) -> dict[str, Any]:
    """The archive's statistics bytes now and as stored before, and the identification rate
    of each (``tests``: the tasks' test splits; None: not measured)."""
    before = copy.deepcopy(pack)
    for record, val in zip(before.tasks, vals):
        _, features, labels = head_inputs(pack, record.name, val)
        record.feature_stats = _as_before(features, labels)
    now, old = _archive_stats(pack), _archive_stats(before)
    row = {"network": name, "tasks": len(pack.tasks), **now,
           "before": old, "identified": None, "identified_before": None}
    if tests is not None:
        row["identified"] = _identified(pack, tests)
        row["identified_before"] = _identified(before, tests)
    return row


def _as_before(features: Any, labels: Any) -> dict[str, Any]:
    """The statistics packtool stored before they were compacted: rank up to 256, float32,
    shrunk by the fixed ``max(0.1, D / (N + D))`` it used before the Ledoit-Wolf estimate."""
    n, d = features.shape
    return fit_feature_stats(features, labels, rank=256, compact=False,
                             shrink=max(0.1, d / (n + d)))


def _archive_stats(pack: Pack) -> dict[str, Any]:
    tensors, _ = archive_payload(pack)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    stats = sum(t.numel() * t.element_size() for k, t in tensors.items()
                if k.startswith("features/"))
    return {"archive_tensor_bytes": total, "stats_bytes": stats, "share": stats / total}


def _identified(pack: Pack, tests: list[Any]) -> float:
    """Per-image task identification (mahalanobis), mean over tasks."""
    classifier = pack.anatomy().classifier
    nets = [TaskFreeNet(pack.model_for(r.name), classifier, r.feature_stats).eval()
            for r in pack.tasks]
    table = [split_logits(nets, test, r.name, r.index) for r, test in zip(pack.tasks, tests)]
    rows = score_task_free(table, [1.0] * len(nets), score="mahalanobis")
    return sum(r.task_accuracy for r in rows) / len(rows)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{"target": f"{r['pack']}: mixed batch of {r['batch']} (tasks among {r['tasks']}) "
                      "<= 1.2x one call of the file per task present",
            "measured": f"{r['mixed_ratio']:.3f}x", "ok": r["mixed_ratio"] <= 1.2}
           for r in result["mixed"]]
    for r in result["stats"]:
        if r["network"].startswith("mlp"):
            change = None if r["identified"] is None else 100 * (r["identified"]
                                                                 - r["identified_before"])
            out.append({"target": f"{r['network']}, {r['tasks']} tasks: statistics <= 20% of "
                                  "the archive, identification within 0.5 points",
                        "measured": f"{100 * r['share']:.1f}%, {fmt(change, 2)} points",
                        "ok": r["share"] <= 0.2 and change is not None and change >= -0.5})
    return out


def markdown(result: dict[str, Any]) -> str:
    mixed = [[r["pack"], str(r["tasks"]), fmt(r["tasks_present"], 1),
              fmt(r["ms"]["mixed"], 3), fmt(r["ms"]["split"], 3), fmt(r["mixed_ratio"], 3),
              fmt(r["ms"]["per_task_files"], 3),
              fmt(r["ms"]["one_task_loop"], 3), fmt(r["ms"]["one_task_no_loop"], 3),
              fmt(r["loop_ratio"], 3)] for r in result["mixed"]]
    unknown = [[r["sequence"], str(r["known_tasks"]), r["left_out"], fmt(r["auroc"], 4),
                fmt(100 * r["rejected"], 1), fmt(100 * r["known_rejected"], 1)]
               for r in result["unknown"]]
    stats = [[r["network"], str(r["tasks"]), fmt_int(r["archive_tensor_bytes"]),
              fmt_int(r["stats_bytes"]), fmt(100 * r["share"], 1),
              fmt_int(r["before"]["stats_bytes"]), fmt(100 * r["before"]["share"], 1),
              fmt(None if r["identified"] is None else 100 * r["identified"], 2),
              fmt(None if r["identified_before"] is None else 100 * r["identified_before"], 2)]
             for r in result["stats"]]
    checks_rows = [[c["target"], c["measured"], "yes" if c["ok"] else "NO"]
                   for c in checks(result)]
    return "\n\n".join([
        f"Batch of {BATCH}, medians in ms (onnxruntime CPU). Mixed: the multi-task file, rows' "
        "tasks drawn among the pack's, one call; split: the same file, one call per task "
        "present; per-task files: each task's own file, one call per task present.\n\n"
        + markdown_table(["pack", "tasks", "tasks present", "mixed", "split", "ratio",
                          "per-task files", "one task, loop", "one task, no loop", "ratio"],
                         mixed),
        "A task left out of the pack, served with `--reject` (medians over seeds; shares in "
        "%).\n\n" + markdown_table(["sequence", "known tasks", "left out", "AUROC",
                                   "unknown rejected", "known rejected"], unknown),
        "Task-free statistics in the archive (tensor bytes; before: rank up to 256, "
        "float32, the fixed shrinkage max(0.1, D / (N + D)) before the Ledoit-Wolf estimate), "
        "and per-image task identification (mahalanobis, %).\n\n"
        + markdown_table(["network", "tasks", "archive", "statistics", "share %",
                          "before", "share % before", "identified", "identified before"],
                         stats),
        "### Targets\n\n" + markdown_table(["target", "measured", "met"], checks_rows,
                                           ["l", "l", "l"]),
    ])
