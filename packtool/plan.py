"""A task sequence in one file: the plan ``packtool run PLAN.toml`` reads (spec: ``docs/plans.md``).

A plan names the network (``[network]``, as ``packtool init``), defaults for every add-task
option (``[defaults]``) and the tasks in order (``[[tasks]]``, each with its own options on top).
:func:`read_plan` parses and checks all of it before anything runs: an unknown key, a value of
the wrong type or range, a missing ``name`` or ``data``, a name given twice, each is a
:class:`PlanError` naming the key. :meth:`Plan.check_against` compares a plan with the pack it
continues: the same network, and the pack's tasks the plan's first ones, in order, with the same
data and classes.

Options are spelled as ``add-task``'s flags with underscores (``finetune_epochs``), with the
same defaults; ``classes`` is a list of indices or the ``--classes`` text.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .choices import AUTO, DATASET_NAMES, FREE_INITS, POLICIES
from .config import TrainConfig, check_trains
from .errors import PackToolError, PlanError, UsageError, did_you_mean
from .parse import parse_classes, parse_input_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: ``[network]`` keys: ``packtool init``'s options.
NETWORK_KEYS = ("arch", "input_size", "weights", "kwargs", "policy", "free_init")
#: How a task's prune ratio is chosen (:func:`packtool.lifecycle.add_task`).
PRUNING_KEYS = ("prune", "reserve", "tolerance", "auto_trials", "grow", "max_size", "refit")
#: How a task's data is read (:func:`packtool.data.load_task_data`).
DATA_KEYS = ("classes", "data_root", "val_fraction", "skip_bad_images")
#: The training settings (:class:`packtool.config.TrainConfig`).
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))
# The settings with one type (workers and cache take a number or a word: TrainConfig checks them).
_TRAIN_KINDS = tuple((f.name, type(f.default)) for f in fields(TrainConfig)
                     if type(f.default) in (int, float, str, bool))
#: Everything a task (or ``[defaults]``) may set; ``checkpoint_every`` in minutes, as the flag.
TASK_KEYS = (*PRUNING_KEYS, *DATA_KEYS, *TRAIN_KEYS, "checkpoint_every")


@dataclass(frozen=True)
class PlanTask:
    """One task of a plan: its name, its data, and its options (``[defaults]`` merged)."""

    name: str
    data: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[int] | None:
        return self.options.get("classes")

    @property
    def settings(self) -> dict[str, Any]:
        """The TrainConfig settings given (unset ones: the pack's schedule decides)."""
        return {k: v for k, v in self.options.items() if k in TRAIN_KEYS}


@dataclass(frozen=True)
class Plan:
    """A parsed, checked plan (see the module docstring)."""

    network: dict[str, Any]
    tasks: list[PlanTask]
    source: str = "plan"

    def check_against(self, pack: Any) -> None:
        """PlanError naming the first difference between this plan and ``pack`` (the pack this
        plan continues): its network, then its tasks in order, by name, data and classes."""
        spec = pack.spec
        wanted = {"arch": self.network["arch"], "kwargs": self.network.get("kwargs", {})}
        have = {"arch": spec.arch, "kwargs": dict(spec.kwargs)}
        if "input_size" in self.network:
            wanted["input_size"] = tuple(self.network["input_size"])
            have["input_size"] = tuple(spec.input_size)
        for key, value in wanted.items():
            if have[key] != value:
                raise PlanError(f"{self.source}: the network's {key} is {value!r} but the "
                                f"model holds {have[key]!r}")
        if len(pack.tasks) > len(self.tasks):
            raise PlanError(f"{self.source} names {len(self.tasks)} tasks but the model holds "
                            f"{len(pack.tasks)}")
        for k, (record, task) in enumerate(zip(pack.tasks, self.tasks), start=1):
            recorded = record.data.get("classes")
            if record.name != task.name:
                raise PlanError(f"{self.source}: task {k} is {task.name!r} but the model's "
                                f"task {k} is {record.name!r} (a plan keeps its order)")
            if record.data.get("data") != task.data:
                raise PlanError(f"{self.source}: task {task.name!r} reads {task.data} but the "
                                f"model's was trained on {record.data.get('data')}")
            if (recorded or None) != (task.classes or None):
                raise PlanError(f"{self.source}: task {task.name!r} takes classes "
                                f"{task.classes} but the model's took {recorded}")


def read_plan(path: str | os.PathLike) -> Plan:
    """Parse and check the plan at ``path``; relative data folders are read from the plan's
    folder. PlanError, naming the file and the key, if anything is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise PlanError(f"{path} is not a readable TOML plan: {reason}") from None
    return parse_plan(doc, source=str(path), base=path.parent)


def parse_plan(doc: Mapping[str, Any], *, source: str = "plan", base: Path | None = None) -> Plan:
    """A plan from a TOML document already parsed (see :func:`read_plan`)."""
    _only(doc, ("network", "defaults", "tasks"), source)
    network = _network(_table(doc, "network", source, required=True), source)
    defaults = _options(_table(doc, "defaults", source), f"{source} [defaults]", base)
    listed = doc.get("tasks")
    if not isinstance(listed, list) or not listed or not all(isinstance(t, dict)
                                                             for t in listed):
        raise PlanError(f"{source}: [[tasks]] must list at least one task")
    tasks, names = [], set()
    for k, entry in enumerate(listed, start=1):
        where = f"{source} task {k}"
        for key in ("name", "data"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise PlanError(f"{where}: `{key}` is required (a non-empty string)")
        if entry["name"] in names:
            raise PlanError(f"{where}: the name {entry['name']!r} is given twice")
        names.add(entry["name"])
        own = _options({k: v for k, v in entry.items() if k not in ("name", "data")}, where,
                       base)
        options = {**defaults, **own}
        if "prune" not in options:
            raise PlanError(f"{where}: `prune` is required (in the task or in [defaults])")
        _check_settings(options, where)
        try:
            check_trains(options.get("epochs", 1), options.get("finetune_epochs", 1),
                         pretrained_head=k == 1 and network.get("weights") is not None)
        except UsageError as exc:
            raise PlanError(f"{where}: {exc}") from None
        tasks.append(PlanTask(entry["name"], _data(entry["data"], base), options))
    return Plan(network, tasks, source)


def _network(table: Mapping[str, Any], source: str) -> dict[str, Any]:
    where = f"{source} [network]"
    _only(table, NETWORK_KEYS, where)
    if not isinstance(table.get("arch"), str) or not table["arch"]:
        raise PlanError(f"{where}: `arch` is required (a string)")
    network = dict(table)
    if "input_size" in network:
        size = network["input_size"]
        try:
            network["input_size"] = (parse_input_size(size) if isinstance(size, str) else
                                     parse_input_size("x".join(str(int(v)) for v in size)))
        except (PackToolError, TypeError, ValueError) as exc:
            raise PlanError(f"{where}: `input_size` {size!r}: {exc}") from None
    for key, choices in (("policy", POLICIES), ("free_init", FREE_INITS)):
        if key in network and network[key] not in choices:
            raise PlanError(f"{where}: `{key}` must be one of {', '.join(choices)}")
    if "kwargs" in network and not isinstance(network["kwargs"], dict):
        raise PlanError(f"{where}: `kwargs` must be a table")
    if "weights" in network and not isinstance(network["weights"], str):
        raise PlanError(f"{where}: `weights` must be a path or DEFAULT")
    return network


def _options(table: Mapping[str, Any], where: str, base: Path | None) -> dict[str, Any]:
    _only(table, TASK_KEYS, where)
    options = dict(table)
    prune = options.get("prune")
    if "prune" in options and prune != AUTO and not (
            isinstance(prune, (int, float)) and not isinstance(prune, bool)
            and 0 <= prune < 1):
        raise PlanError(f"{where}: `prune` must be a number in [0, 1) or \"auto\"")
    if "classes" in options:
        classes = options["classes"]
        try:
            options["classes"] = (parse_classes(classes) if isinstance(classes, str) else
                                  parse_classes(",".join(_class_item(c) for c in classes)))
        except (PackToolError, TypeError, ValueError) as exc:
            raise PlanError(f"{where}: `classes` {classes!r}: {exc}") from None
    if "data_root" in options and base is not None:
        options["data_root"] = str((base / str(options["data_root"])).expanduser())
    for key, kind in (*_TRAIN_KINDS, ("reserve", int), ("auto_trials", int),
                      ("tolerance", float), ("max_size", float),
                      ("val_fraction", float),
                      ("checkpoint_every", float), ("skip_bad_images", bool),
                      ("refit", bool)):
        if key in options and not _is(options[key], kind):
            raise PlanError(f"{where}: `{key}` must be {kind.__name__}, got "
                            f"{options[key]!r}")
    return options


def _check_settings(options: Mapping[str, Any], where: str) -> None:
    """The training settings make a TrainConfig (its own checks), and the other values are in
    range, before anything runs."""
    try:
        TrainConfig(**{k: v for k, v in options.items() if k in TRAIN_KEYS})
    except (PackToolError, TypeError) as exc:
        raise PlanError(f"{where}: {exc}") from None
    ranges = {"reserve": (0, None), "auto_trials": (1, None), "tolerance": (0, None),
              "val_fraction": (0, 1), "checkpoint_every": (0, None), "max_size": (1, None)}
    for key, (low, high) in ranges.items():
        value = options.get(key)
        if value is not None and not (value >= low and (high is None or value < high)):
            raise PlanError(f"{where}: `{key}` {value!r} is out of range")
    grow = options.get("grow")
    if grow is not None and grow != AUTO and not (_is(grow, float) and 0 < grow < math.inf):
        raise PlanError(f"{where}: `grow` must be a positive number or \"auto\"")
    if "max_size" in options and "grow" not in options:
        raise PlanError(f"{where}: `max_size` needs `grow`")


def _data(data: str, base: Path | None) -> str:
    """A registered name as is; a folder as its absolute path (relative ones from the plan's
    folder), as a task's record keeps it."""
    looks_like_path = os.sep in data or "/" in data or data.startswith(".")
    if data in DATASET_NAMES and not looks_like_path:
        return data
    path = Path(data).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path.resolve())


def _table(doc: Mapping[str, Any], key: str, source: str, required: bool = False
           ) -> dict[str, Any]:
    value = doc.get(key, None if required else {})
    if not isinstance(value, dict):
        raise PlanError(f"{source}: [{key}] is required" if value is None else
                        f"{source}: [{key}] must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        meant = did_you_mean(unknown[0], allowed, quote="`")
        raise PlanError(f"{where}: unknown key `{unknown[0]}` ({meant}known: "
                        f"{', '.join(allowed)})")


def _class_item(value: Any) -> str:
    """A plan's class list item: an index or a name (TypeError otherwise)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise TypeError(f"not a class index or name: {value!r}")


def _is(value: Any, kind: type) -> bool:
    if kind in (bool, str):
        return isinstance(value, kind)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))
