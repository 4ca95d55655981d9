"""Quality: PackNet against the usual baselines on real data (scikit-learn's digits), on CPU.

Two task sequences, both with task labels known at test time (one head per task):

* **split-digits** - the digits split into five two-class tasks {0,1}, {2,3}, ..., {8,9}, on
  packtool's ``lenet`` (1x8x8). Easy: every method can learn each task well.
* **permuted-digits** - five ten-class tasks: task 1 is the digits as they are, task ``t`` shows
  the same images with the 64 pixels shuffled by a fixed permutation drawn from seed ``t``
  (the digits version of permuted MNIST). The network is a narrow ``mlp`` (two hidden layers of
  16 units, 1,280 prunable weights): five unrelated input mappings must share little capacity,
  so fine-tuning forgets, joint training competes for capacity, and PackNet's later tasks get
  few free weights.

Data: :func:`packtool.load_task_data` (``digits``, the fixed stratified 20% test split, 10% of
the training part carved off for validation), materialized once into tensors (the same values)
so that data loading does not dominate the timings. Every method and seed sees the same splits.

Rows (same network, optimizer and epoch budget; see :mod:`benchmarks.baselines`): packtool's
PackNet at prune ratio 0.5 and 0.75 (the last task keeps all remaining free weights, ratio 0),
separate networks, fine-tuning, joint training, and ``auto`` (compared with the fixed ratios seed
by seed, over ten seeds, in :mod:`benchmarks.planner`). Columns: each task's test accuracy after
the last task, their mean, the mean forgetting over all but the last task (accuracy right after
learning the task minus after the last task, in points), the floating-point values stored to
serve every task, and wall time. Every figure is the median over the seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from packtool import (
    FREE_INITS,
    Pack,
    Preprocess,
    TaskData,
    TrainConfig,
    add_task,
    evaluate,
    load_task_data,
)
from packtool.models import ArchSpec

from . import baselines
from .baselines import SequenceRun, TaskTensors
from .common import fmt, fmt_int, markdown_table, median

PACKNET_RATIOS = (0.5, 0.75)
METHODS = {
    "packnet-0.5": "PackNet, prune 0.5 (packtool)",
    "packnet-0.75": "PackNet, prune 0.75 (packtool)",
    "packnet-auto": "PackNet, prune auto (packtool)",
    "separate": "Separate networks (upper bound)",
    "finetune": "Fine-tuning, new head per task",
    "joint": "Joint training, multi-head",
}
#: Where a new task's free weights start (``init --free-init``), compared at prune 0.75 on the
#: sequences that have ``init_study``.
FREE_INIT_METHODS = {f"packnet-0.75@{init}": f"PackNet 0.75, free weights start {label}"
                     for init, label in (("zero", "at zero"), ("kept", "as trained (kept)"),
                                         ("reinit", "re-initialized"))}
#: A method suffix: every task is told how many tasks are still to come (``reserve``).
RESERVE = "+reserve"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    classes: tuple[int, ...]
    permutation: int | None = None  # seed of the pixel permutation; None: the images as they are


@dataclass(frozen=True)
class SequenceSpec:
    name: str
    description: str
    arch: str
    input_size: tuple[int, int, int]
    kwargs: dict[str, Any]
    tasks: tuple[TaskSpec, ...]
    init_study: bool = False  # also compare where the free weights start (FREE_INIT_METHODS)
    #: At most this many training images per task, spread over the split (None: all): the
    #: smoke run's, which checks that every row runs, not what it measures.
    train_images: int | None = None

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec(self.arch, self.input_size, dict(self.kwargs))


SEQUENCES = {
    "split-digits": SequenceSpec(
        "split-digits", "digits as five two-class tasks {0,1} ... {8,9}, lenet 1x8x8",
        "lenet", (1, 8, 8), {},
        tuple(TaskSpec(f"{a}/{a + 1}", (a, a + 1)) for a in range(0, 10, 2)),
    ),
    "permuted-digits": SequenceSpec(
        "permuted-digits", "five ten-class tasks, task t's pixels shuffled by a fixed "
        "permutation (task 1 unpermuted), mlp 2x16 hidden (capacity pressure)",
        "mlp", (1, 8, 8), {"hidden": 16},
        tuple(TaskSpec(f"P{t + 1}", tuple(range(10)), None if t == 0 else t) for t in range(5)),
    ),
    "long-permuted-digits": SequenceSpec(
        "long-permuted-digits", "ten ten-class tasks as permuted-digits, mlp 2x32 hidden "
        "(capacity runs out)",
        "mlp", (1, 8, 8), {"hidden": 32},
        tuple(TaskSpec(f"P{t + 1}", tuple(range(10)), None if t == 0 else t)
              for t in range(10)),
        init_study=True,
    ),
}


@dataclass(frozen=True)
class QualitySettings:
    """The epoch budget and seeds of a run mode (packtool's TrainConfig fields)."""

    seeds: tuple[int, ...]
    epochs: int
    finetune_epochs: int
    lr_decay_epochs: int
    lr: float = 0.05
    finetune_lr: float = 0.005
    batch_size: int = 32
    momentum: float = 0.9
    sequences: tuple[str, ...] = tuple(SEQUENCES)
    #: The first tasks of each sequence only (None: all); the smoke run, which only checks
    #: that every row runs, takes two and skips the untimed warm-up (:func:`warm_up`).
    tasks: int | None = None
    #: At most this many training images per task (None: all; :attr:`SequenceSpec.train_images`).
    train_images: int | None = None

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, finetune_epochs=self.finetune_epochs,
                           lr=self.lr, finetune_lr=self.finetune_lr,
                           lr_decay_epochs=self.lr_decay_epochs, optimizer="sgd",
                           momentum=self.momentum, weight_decay=0.0,
                           batch_size=self.batch_size, device="cpu", seed=seed)


SETTINGS = {
    # Permuted-digits runs the long sequence's code (an MLP) without its free-init study.
    "smoke": QualitySettings(seeds=(0,), epochs=1, finetune_epochs=1, lr_decay_epochs=0,
                             sequences=("split-digits", "long-permuted-digits"), tasks=2,
                             train_images=64),
    "quick": QualitySettings(seeds=(0, 1, 2), epochs=6, finetune_epochs=3, lr_decay_epochs=0),
    # The paper's schedule shape: 20 epochs (x0.1 after 10), prune, fine-tune 10 at lr/10.
    "full": QualitySettings(seeds=(0, 1, 2), epochs=20, finetune_epochs=10, lr_decay_epochs=10),
}


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def sequence(name: str, settings: QualitySettings) -> SequenceSpec:
    """The sequence ``name`` as ``settings`` run it (its first ``settings.tasks`` tasks)."""
    seq = SEQUENCES[name]
    return replace(seq, tasks=seq.tasks[:settings.tasks], train_images=settings.train_images)


def load_sequence(seq: SequenceSpec, val_fraction: float = 0.1) -> list[TaskTensors]:
    """The sequence's tasks as tensors; ``val_fraction`` of each training part validates (the
    test split does not depend on it)."""
    spec = seq.spec
    preprocess = Preprocess(spec.input_size, spec.mean, spec.std)
    tasks = []
    for task in seq.tasks:
        data = load_task_data("digits", preprocess, classes=list(task.classes),
                              val_fraction=val_fraction)
        perm = None
        if task.permutation is not None:
            rng = np.random.default_rng([20180618, task.permutation])
            perm = torch.from_numpy(rng.permutation(int(np.prod(spec.input_size))))
        tasks.append(TaskTensors(
            name=task.name, classes=list(data.classes),
            train=_tensors(data.train, perm, seq.train_images), val=_tensors(data.val, perm),
            test=_tensors(data.test, perm),
        ))
    return tasks


def _tensors(dataset: Any, perm: torch.Tensor | None, most: int | None = None
             ) -> TensorDataset:
    """``dataset`` as tensors, pixels permuted by ``perm``; at most ``most`` images, evenly
    spaced over it (every class keeps its share)."""
    n = len(dataset)
    picked = range(n) if most is None or most >= n else (i * n // most for i in range(most))
    xs, ys = zip(*(dataset[i] for i in picked), strict=True)
    x, y = torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
    if perm is not None:
        x = x.flatten(1)[:, perm].reshape(x.shape)
    return TensorDataset(x, y)


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------


def build_pack(seq: SequenceSpec, tasks: Sequence[TaskTensors], config: TrainConfig,
               seed: int, ratio: float | str, free_init: str = FREE_INITS[0],
               reserve_ahead: bool = False, options: dict[str, Any] | None = None,
               reserve_rule: Callable[[Pack, int], int] | None = None,
               first: dict[str, Any] | None = None) -> tuple[Pack, list[float]]:
    """packtool's PackNet on the sequence: ``ratio`` (a number, or ``auto``: the planner at its
    defaults) for every task but the last, which keeps the rest (0). With ``reserve_ahead``,
    each task is told how many tasks are still to come (``reserve``: it keeps at most an equal
    share of the free weights with them); ``reserve_rule(pack so far, tasks to come)`` gives
    another reserve instead. ``options`` go to every :func:`packtool.add_task` (``grow``,
    ``max_size``, ``tolerance``, ``refit``), ``first``'s over them to the first task. Returns
    the pack and each task's held-out accuracy right after it was frozen."""
    pack = Pack.create(seq.arch, seq.input_size, kwargs=seq.kwargs, seed=seed,
                       free_init=free_init)
    just = []
    for k, (task, data) in enumerate(zip(seq.tasks, tasks)):
        task_data = TaskData(train=data.train, val=data.val, test=data.test,
                             classes=data.classes, augment=False,
                             spec={"data": "digits", "classes": list(task.classes),
                                   "permutation": task.permutation})
        ahead = len(tasks) - 1 - k
        prune = ratio if ahead else 0.0
        reserve = reserve_rule(pack, ahead) if reserve_rule and ahead else (
            ahead if reserve_ahead else 0)
        pack, result = add_task(pack, task.name, task_data, prune, config, reserve=reserve,
                                **{**(options or {}), **((first or {}) if not k else {})})
        just.append(result.accuracy)
    return pack, just


def run_packnet(seq: SequenceSpec, tasks: Sequence[TaskTensors], config: TrainConfig,
                seed: int, ratio: float | str, free_init: str = FREE_INITS[0],
                reserve_ahead: bool = False, options: dict[str, Any] | None = None
                ) -> SequenceRun:
    """:func:`build_pack`, measured: final accuracies, the values stored, the ratios used."""
    pack, just = build_pack(seq, tasks, config, seed, ratio, free_init, reserve_ahead, options)
    final = [evaluate(pack.model_for(d.name), d.test).accuracy for d in tasks]
    stored = sum(w.numel() for w in pack.shared.values()) + sum(
        v.numel()
        for record in pack.tasks
        for part in (record.head, pack.private_state(record))
        for v in part.values() if v.is_floating_point()
    )
    return SequenceRun(final, just, stored, [record.prune for record in pack.tasks[:-1]])


def run_method(method: str, seq: SequenceSpec, tasks: Sequence[TaskTensors],
               settings: QualitySettings, seed: int) -> dict[str, Any]:
    """One method on one seed: ``packnet-<ratio|auto>[@<free_init>][+reserve]`` (``+reserve``:
    each task told the tasks still to come) or a baseline's name."""
    config = settings.config(seed)
    start = time.perf_counter()
    if method.startswith("packnet-"):
        spec = method.removeprefix("packnet-").removesuffix(RESERVE)
        ratio, _, free_init = spec.partition("@")
        run = run_packnet(seq, tasks, config, seed, ratio if ratio == "auto" else float(ratio),
                          free_init or FREE_INITS[0], reserve_ahead=method.endswith(RESERVE))
    else:
        runner = {"separate": baselines.run_separate, "finetune": baselines.run_finetune,
                  "joint": baselines.run_joint}[method]
        run = runner(seq.spec, tasks, config, seed)
    seconds = time.perf_counter() - start
    forgetting = [None if j is None else j - f
                  for j, f in zip(run.just_learned[:-1], run.final[:-1], strict=True)]
    return {
        "seed": seed,
        "final": run.final,
        "just_learned": run.just_learned,
        "forgetting": forgetting,
        "avg_accuracy": sum(run.final) / len(run.final),
        "avg_forgetting": (None if any(f is None for f in forgetting)
                           else sum(forgetting) / len(forgetting)),  # type: ignore[arg-type]
        "stored_values": run.stored_values,
        "ratios": run.ratios,
        "seconds": seconds,
    }


def run_sequence(name: str, settings: QualitySettings, log: Any = None) -> dict[str, Any]:
    seq = sequence(name, settings)
    tasks = load_sequence(seq)
    warm_up(seq, tasks, settings)
    methods = {**METHODS, **(FREE_INIT_METHODS if seq.init_study else {})}
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in settings.seeds:  # seeds outside: a slow spell of the machine hits every method
        for method in methods:
            result = run_method(method, seq, tasks, settings, seed)
            per_method[method].append(result)
            if log:
                log(f"quality {name} seed {seed} {method}: avg accuracy "
                    f"{result['avg_accuracy']:.4f}, {result['seconds']:.1f} s")
    rows = []
    for method, label in methods.items():
        per_seed = per_method[method]
        rows.append({
            "method": method,
            "label": label,
            "final": [median([s["final"][j] for s in per_seed]) for j in range(len(tasks))],
            "avg_accuracy": median([s["avg_accuracy"] for s in per_seed]),
            "avg_forgetting": median([s["avg_forgetting"] for s in per_seed]),
            "stored_values": median([s["stored_values"] for s in per_seed]),
            "seconds": median([s["seconds"] for s in per_seed]),
            "seeds": per_seed,
        })
    return {
        "sequence": name,
        "description": seq.description,
        "arch": seq.arch,
        "input_size": list(seq.input_size),
        "kwargs": seq.kwargs,
        "tasks": [t.name for t in seq.tasks],
        "samples": [{"train": len(t.train), "val": len(t.val), "test": len(t.test)}
                    for t in tasks],
        "rows": rows,
    }


def warm_up(seq: SequenceSpec, tasks: Sequence[TaskTensors],
            settings: QualitySettings) -> None:
    """One untimed short run of each code path: lazy imports and first-call setup are not
    charged to whichever method happens to run first (not in a smoke run: nothing is timed)."""
    if settings.tasks is not None:
        return
    tiny = replace(settings, epochs=1, finetune_epochs=1)
    for method in ("packnet-0.5", "separate", "joint"):
        run_method(method, seq, tasks[:2], tiny, seed=0)


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    return {
        "settings": asdict(settings),
        "sequences": [run_sequence(name, settings, log) for name in settings.sequences],
    }


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, measured: PackNet forgets exactly nothing; on split-digits its average
    accuracy is within 1 point of separate networks."""
    out = []
    for seq in result["sequences"]:
        for row in seq["rows"]:
            if not row["method"].startswith("packnet-"):
                continue
            values = [f for s in row["seeds"] for f in s["forgetting"]]
            out.append({
                "target": f"{seq['sequence']}: {row['method']} forgetting exactly 0.0 "
                          f"(every task but the last, every seed)",
                "measured": f"max abs forgetting = {max(abs(v) for v in values)!r}",
                "ok": all(v == 0.0 for v in values),
            })
        if seq["sequence"] == "split-digits":
            rows = {r["method"]: r for r in seq["rows"]}
            sep = rows["separate"]["avg_accuracy"]
            for ratio in PACKNET_RATIOS:
                pn = rows[f"packnet-{ratio}"]["avg_accuracy"]
                gap = 100 * (sep - pn)
                out.append({
                    "target": f"split-digits: packnet-{ratio} average accuracy within 1 point of "
                              "separate networks",
                    "measured": f"{100 * pn:.2f} vs {100 * sep:.2f} ({gap:+.2f} points behind)",
                    "ok": gap <= 1.0,
                })
    return out


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    parts = [
        f"Seeds {list(settings['seeds'])} (median shown); every method: {settings['epochs']} "
        f"epochs at lr {settings['lr']}"
        + (f" (x0.1 every {settings['lr_decay_epochs']})" if settings["lr_decay_epochs"] else "")
        + f", then {settings['finetune_epochs']} at {settings['finetune_lr']}; SGD momentum "
        f"{settings['momentum']}, batch {settings['batch_size']}; best epoch on validation."
    ]
    for seq in result["sequences"]:
        headers = ["method", *seq["tasks"], "avg acc", "avg forgetting", "values stored",
                   "wall s"]
        rows = [[
            r["label"], *(fmt(100 * a) for a in r["final"]), fmt(100 * r["avg_accuracy"], 2),
            fmt(None if r["avg_forgetting"] is None else 100 * r["avg_forgetting"], 2),
            fmt_int(r["stored_values"]), fmt(r["seconds"]),
        ] for r in seq["rows"]]
        test = sum(s["test"] for s in seq["samples"])
        parts.append(f"### {seq['sequence']}: {seq['description']}\n\n"
                     f"Test accuracy (%) of each task after the last one ({test} test images "
                     f"in all); forgetting in points.\n\n" + markdown_table(headers, rows)
                     + "\n\nValues stored: floating-point values needed to serve every task. "
                     "PackNet also keeps one owner per prunable weight (uint8 in model.pt, "
                     f"{math.ceil(math.log2(len(seq['tasks']) + 1))} bits in the archive).")
    check_rows = [[c["target"], c["measured"], "yes" if c["ok"] else "NO"]
                  for c in checks(result)]
    parts.append("### Targets\n\n" + markdown_table(["target", "measured", "met"], check_rows,
                                                    ["l", "l", "l"]))
    return "\n\n".join(parts)
