"""The pack: one network's shared weights, their owner index, and every task's private state.

File format (``model.pt``, format version 1)
--------------------------------------------
A ``torch.save`` file of tensors and plain values only, read back with
``torch.load(weights_only=True)`` (no code can run on load)::

    {
      "format": "packtool.pack",        # marker: anything else is a foreign file
      "version": 1,                     # format version; newer versions are refused
      "meta": "<JSON string>",          # spec, policy, tasks' metadata (see Pack.meta())
      "shared":  {"<layer>.weight": float tensor},   # prunable weights, free entries are 0
      "owners":  {"<layer>.weight": uint8 tensor},   # same shapes; 0 free, k task k
      "initial_private": {key: tensor},  # task-private state before any task (from --weights)
      "pretrained_head": {key: tensor},  # the original classifier, if weights were given
      "heads":   [{"weight", "bias"}],   # per task, in task order
      "private": [{key: tensor}],        # per task (empty for tasks > 1 under policy 'frozen')
      "digest":  "<sha256 hex>",        # over meta and every tensor (name, dtype, shape, bytes)
    }

Invariants (checked on load): owners are uint8 with the shapes of ``shared``; every owner is
``<= len(tasks)``; task ``k`` is ``tasks[k-1]`` with ``index == k``; names are unique; the digest
matches. Free weights (owner 0) are zero at rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._version import __version__
from .errors import ArchitectureError, PackFormatError, PackToolError, TaskError
from .fileio import atomic_write, load_weights_only
from .method import FREE, MAX_TASKS, OWNER_DTYPE, Phase, bake, packnet_prune, tensor_at
from .models import (
    Anatomy,
    ArchSpec,
    anatomy,
    build_network,
    check_runs,
    native_input_size,
    new_head,
)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from .data import Preprocess, TaskData
    from .training import Progress, TaskResult, TrainConfig

FORMAT = "packtool.pack"
FORMAT_VERSION = 1
POLICIES = ("per_task", "frozen")


@dataclass
class TaskRecord:
    """One task in a pack.

    Attributes:
        name: unique task name.
        index: 1-based task index; the owner value of the weights it owns.
        classes: class names in logit order (``len(classes)`` = head outputs).
        data: the data spec that rebuilds its dataset (see :func:`packtool.data.load_task_data`).
        prune: ratio of its trained weights released after training.
        hparams: training settings used.
        metrics: accuracies (fractions) before/after pruning and final, on the held-out split.
        created: ISO 8601 UTC time the task was added.
        head: classifier state, ``weight`` ``[classes, in_features]`` and ``bias`` ``[classes]``.
        private: task-private backbone state (biases, norm layers' parameters and statistics).
    """

    name: str
    index: int
    classes: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    prune: float = 0.0
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    head: dict[str, Tensor] = field(default_factory=dict, repr=False)
    private: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def meta(self) -> dict[str, Any]:
        """The record without tensors, as plain JSON-able values."""
        return {
            "name": self.name, "index": self.index, "classes": list(self.classes),
            "data": self.data, "prune": self.prune, "hparams": self.hparams,
            "metrics": self.metrics, "created": self.created,
        }


@dataclass(frozen=True)
class LayerCapacity:
    """Ownership of one prunable layer: ``free + sum(owned) == total``."""

    name: str
    total: int
    free: int
    owned: tuple[int, ...]  # owned[k-1]: weights owned by task k


class Pack:
    """Several tasks packed into one network with PackNet.

    Build one with :meth:`create`, add tasks with :meth:`add_task`, get any task's plain network
    with :meth:`model_for`, and persist with :meth:`save` / :meth:`load`. Methods never modify a
    task that is already in the pack.

    Attributes:
        spec: how to rebuild the network.
        policy: ``"per_task"`` (each task its own biases and norm state, the default) or
            ``"frozen"`` (the paper: task 1's are frozen and shared by all later tasks).
        shared: ``"<layer>.weight"`` -> prunable weight (float, any shape).
        owners: ``"<layer>.weight"`` -> uint8 owner index, same shape as the weight.
        tasks: task records in index order.
    """

    def __init__(
        self,
        spec: ArchSpec,
        shared: dict[str, Tensor],
        owners: dict[str, Tensor],
        initial_private: dict[str, Tensor],
        tasks: list[TaskRecord] | None = None,
        *,
        policy: str = "per_task",
        pretrained_head: dict[str, Tensor] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise TaskError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        self.spec = spec
        self.policy = policy
        self.shared = shared
        self.owners = owners
        self.initial_private = initial_private
        self.pretrained_head = pretrained_head or {}
        self.tasks: list[TaskRecord] = list(tasks or [])
        self._anatomy: Anatomy | None = None

    # ---------------------------------------------------------------------------------------
    # Construction
    # ---------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        arch: str,
        input_size: tuple[int, int, int] | None = None,
        *,
        kwargs: Mapping[str, Any] | None = None,
        weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
        policy: str = "per_task",
        seed: int = 0,
    ) -> Pack:
        """A pack with no tasks and every weight free.

        Args:
            arch, input_size, kwargs, mean, std: see :class:`~packtool.models.ArchSpec`;
                ``input_size`` defaults to the architecture's native size
                (:func:`~packtool.models.native_input_size`).
            weights: initial weights, a state_dict or a local ``.pt``/``.pth``/``.safetensors``
                file of one (e.g. ImageNet-pretrained VGG-16). Its classifier is kept as the
                head of a first task with the same number of classes.
            seed: seeds the random initialization (same seed, same pack).
        """
        if input_size is None:
            input_size = native_input_size(arch, dict(kwargs or {}))
        spec = ArchSpec(arch=arch, input_size=tuple(input_size), kwargs=dict(kwargs or {}),
                        mean=tuple(mean), std=tuple(std))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_network(spec)
        if weights is not None:
            state = load_state_dict_file(weights) if not isinstance(weights, Mapping) else weights
            _load_initial_weights(net, state)
        check_runs(net, spec)
        anat = anatomy(net)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        shared = {key: state[key] for key in anat.prunable}
        owners = {k: torch.zeros(v.shape, dtype=OWNER_DTYPE) for k, v in shared.items()}
        private = {k: state[k] for k in anat.private}
        head_prefix = anat.classifier + "."
        head = {k[len(head_prefix):]: v for k, v in state.items() if k.startswith(head_prefix)}
        pack = cls(spec, shared, owners, private, policy=policy,
                   pretrained_head=head if weights is not None else None)
        pack._anatomy = anat
        return pack

    # ---------------------------------------------------------------------------------------
    # Tasks and capacity
    # ---------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(iter(self.shared.values())).device

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, key: str | int) -> TaskRecord:
        """The task named ``key`` (or with index ``key``); :class:`TaskError` lists the known."""
        for record in self.tasks:
            if key in (record.name, record.index) or str(key) == record.name:
                return record
        known = ", ".join(self.task_names) or "none yet"
        raise TaskError(f"unknown task {key!r}; known tasks: {known}")

    def capacity(self) -> list[LayerCapacity]:
        """Per prunable layer: total, free and per-task owned weight counts."""
        rows = []
        for name, own in self.owners.items():
            counts = torch.bincount(own.flatten().long(), minlength=len(self.tasks) + 1)
            rows.append(LayerCapacity(name, own.numel(), int(counts[FREE]),
                                      tuple(int(c) for c in counts[1:len(self.tasks) + 1])))
        return rows

    @property
    def prunable_weights(self) -> int:
        return sum(o.numel() for o in self.owners.values())

    @property
    def free_weights(self) -> int:
        return sum(int(torch.count_nonzero(o == FREE)) for o in self.owners.values())

    @property
    def free_fraction(self) -> float:
        return self.free_weights / self.prunable_weights

    @property
    def private_state_spec(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape of the task-private backbone state one task carries (heads excluded)."""
        state = self.initial_private or (self.tasks[0].private if self.tasks else {})
        return {k: tuple(v.shape) for k, v in state.items()}

    @property
    def private_values(self) -> int:
        """Values of task-private backbone state per task: biases, norms, unpacked tensors."""
        return sum(math.prod(shape) for shape in self.private_state_spec.values())

    def stored_values(self, record: TaskRecord) -> int:
        """Values stored for ``record`` alone: its head and its private state (none for tasks
        after the first under policy ``frozen``)."""
        return sum(v.numel() for part in (record.head, record.private) for v in part.values())

    @property
    def preprocess(self) -> Preprocess:
        """How images become this network's inputs (size, channels, normalization)."""
        from .data import Preprocess

        return Preprocess(self.spec.input_size, self.spec.mean, self.spec.std)

    def private_state(self, record: TaskRecord) -> dict[str, Tensor]:
        """The task-private backbone state task ``record`` runs with."""
        if self.policy == "frozen":
            return self.tasks[0].private
        return record.private

    # ---------------------------------------------------------------------------------------
    # Networks
    # ---------------------------------------------------------------------------------------

    def anatomy(self) -> Anatomy:
        if self._anatomy is None:
            self._anatomy = self._checked_anatomy(build_network(self.spec))
        return self._anatomy

    def network(
        self,
        task: int,
        phase: Phase,
        *,
        head: Mapping[str, Tensor],
        private: Mapping[str, Tensor],
        device: str | torch.device | None = None,
    ) -> nn.Module:
        """A live network for task ``task`` in ``phase``: PackNet-masked, prune-reparametrized.

        The shared weights and owners are copied, so training the network leaves the pack
        alone. ``head`` is a classifier state (``weight`` ``[classes, in]``, ``bias``).
        """
        device = torch.device(device) if device is not None else self.device
        net = build_network(self.spec)
        anat = self._checked_anatomy(net)
        classes = head["weight"].shape[0]
        net.set_submodule(anat.classifier, new_head(anat, classes))
        state = dict(self.shared)
        state.update(private)
        state.update({f"{anat.classifier}.{k}": v for k, v in head.items()})
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise PackFormatError(
                f"pack does not fit {self.spec.arch}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        net.to(device)
        for key, owners in self.owners.items():
            module, name = tensor_at(net, key)
            packnet_prune(module, name, owners.clone(), task, phase)
        return net

    def model_for(self, task: str | int, device: str | torch.device | None = None) -> nn.Module:
        """Task ``task``'s network as a plain module in eval mode (masks baked, no hooks).

        Uses the weights owned by tasks ``1..k``, head ``k`` and task ``k``'s private state.
        Non-destructive: the pack is not changed, and this can be called at any time.
        """
        record = self.task(task)
        net = self.network(record.index, Phase.EVAL, head=record.head,
                           private=self.private_state(record), device=device)
        return bake(net, inplace=True).eval()

    def task_data(self, task: str | int, *, root: str | os.PathLike | None = None) -> TaskData:
        """Task ``task``'s dataset, rebuilt from the spec recorded when it was added.

        Args:
            root: where the registered datasets live now, if not where they were (the recorded
                root, else ``$PACKTOOL_DATA``).

        Raises:
            DataError: the data is not there (or cannot be read) any more.
        """
        from .data import load_task_data

        spec = dict(self.task(task).data)
        if root is not None:
            spec["root"] = str(root)
        return load_task_data(**spec, preprocess=self.preprocess)

    def evaluate(self, task: str | int, dataset: Dataset | TaskData, *, batch_size: int = 256,
                 device: str | torch.device | None = None) -> float:
        """Top-1 accuracy (0..1) of task ``task`` on ``dataset`` (a TaskData: its test split)."""
        from .training import accuracy

        test = getattr(dataset, "test", dataset)
        return accuracy(self.model_for(task, device), test, batch_size=batch_size,
                        device=device or self.device)

    def add_task(self, name: str, data: TaskData, prune: float, config: TrainConfig | None = None,
                 *, progress: Progress | None = None, checkpoint: str | os.PathLike | None = None,
                 resume: bool = False) -> TaskResult:
        """Add a task: train free weights, prune ``prune`` of them, fine-tune, freeze.

        See :func:`packtool.training.add_task`. The pack changes only if this returns.
        """
        from .training import add_task

        return add_task(self, name, data, prune, config, progress=progress,
                        checkpoint=checkpoint, resume=resume)

    def to(self, device: str | torch.device) -> Pack:
        """Move every tensor to ``device`` (in place); returns ``self``."""
        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        self.shared, self.owners = move(self.shared), move(self.owners)
        self.initial_private, self.pretrained_head = (move(self.initial_private),
                                                      move(self.pretrained_head))
        for record in self.tasks:
            record.head, record.private = move(record.head), move(record.private)
        return self

    def _checked_anatomy(self, net: nn.Module) -> Anatomy:
        """The anatomy with the prunable weights this pack recorded (see :mod:`.models`)."""
        try:
            anat = anatomy(net, prunable=list(self.shared))
        except ArchitectureError as exc:
            raise PackFormatError(f"pack weights do not match architecture {self.spec.arch}: "
                                  f"{exc}") from exc
        params = dict(net.named_parameters())
        wrong = [k for k, v in self.shared.items() if params[k].shape != v.shape]
        if wrong:
            raise PackFormatError(
                f"pack weights do not match architecture {self.spec.arch}: {wrong[0]} is "
                f"{list(self.shared[wrong[0]].shape)} in the pack, "
                f"{list(params[wrong[0]].shape)} in the network"
            )
        return anat

    # ---------------------------------------------------------------------------------------
    # Files
    # ---------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Everything but tensors, as plain values (stored as JSON in the file)."""
        return {
            "packtool_version": __version__,
            "spec": self.spec.to_dict(),
            "policy": self.policy,
            "tasks": [t.meta() for t in self.tasks],
        }

    def state(self) -> dict[str, Any]:
        """The file's content: plain values and CPU tensors (see the module docstring)."""
        cpu = _to_cpu
        state: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "meta": json.dumps(self.meta(), sort_keys=True),
            "shared": cpu(self.shared),
            "owners": cpu(self.owners),
            "initial_private": cpu(self.initial_private),
            "pretrained_head": cpu(self.pretrained_head),
            "heads": [cpu(t.head) for t in self.tasks],
            "private": [cpu(t.private) for t in self.tasks],
        }
        state["digest"] = _digest(state)
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Write the pack to ``path`` atomically (temp file, fsync, rename)."""
        state = self.state()
        atomic_write(path, lambda f: torch.save(state, f))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Pack:
        """Read and validate a pack written by :meth:`save`.

        Raises:
            PackFormatError: the file is foreign, truncated, tampered with, holds anything but
                tensors and plain values, or comes from a newer packtool.
        """
        path = Path(path)
        if not path.exists():
            raise PackToolError(f"{path} does not exist (create it with `packtool init`)")
        if path.is_dir():
            raise PackToolError(f"{path} is a directory, not a model file")
        state = _torch_load(path)
        return cls.from_state(state, source=str(path)).to(device)

    @classmethod
    def from_state(cls, state: Any, source: str = "pack") -> Pack:
        """Validate a loaded state (see the module docstring) and build the pack."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            hint = ""
            if isinstance(state, dict) and state and all(isinstance(v, Tensor)
                                                         for v in state.values()):
                hint = " (it looks like a plain state_dict: pass it to `packtool init --weights`)"
            raise PackFormatError(f"{source} is not a packtool model file{hint}")
        version = state.get("version")
        if not isinstance(version, int) or version < 1:
            raise PackFormatError(f"{source} has an invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise PackFormatError(
                f"{source} uses pack format {version}, newer than this packtool "
                f"({__version__}, format {FORMAT_VERSION}); upgrade packtool to read it"
            )
        try:
            return _from_valid_state(state, source)
        except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
            raise PackFormatError(f"{source} is damaged: {type(exc).__name__}: {exc}") from exc


def _from_valid_state(state: dict[str, Any], source: str) -> Pack:
    if state.get("digest") != _digest({k: v for k, v in state.items() if k != "digest"}):
        raise PackFormatError(
            f"{source} failed its checksum: the file is corrupted or was modified"
        )
    meta = json.loads(state["meta"])
    spec = ArchSpec.from_dict(meta["spec"])
    shared, owners = _tensor_dict(state["shared"]), _tensor_dict(state["owners"])
    if shared.keys() != owners.keys() or not shared:
        raise ValueError("shared weights and owner indices name different layers")
    n_tasks = len(meta["tasks"])
    if n_tasks > MAX_TASKS or len(state["heads"]) != n_tasks or len(state["private"]) != n_tasks:
        raise ValueError("task tables have different lengths")
    for key, own in owners.items():
        if own.dtype != OWNER_DTYPE or own.shape != shared[key].shape:
            raise ValueError(f"owner index of {key} is not uint8 shaped like the weight")
        if own.numel() and int(own.max()) > n_tasks:
            raise ValueError(f"owner index of {key} names a task beyond {n_tasks}")
    tasks = []
    for i, (m, head, private) in enumerate(zip(meta["tasks"], state["heads"], state["private"]),
                                           start=1):
        if m["index"] != i:
            raise ValueError(f"task {m['name']!r} has index {m['index']}, expected {i}")
        tasks.append(TaskRecord(head=_tensor_dict(head), private=_tensor_dict(private), **m))
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError("task names are not unique")
    return Pack(spec, shared, owners, _tensor_dict(state["initial_private"]), tasks,
                policy=meta["policy"], pretrained_head=_tensor_dict(state["pretrained_head"]))


def _torch_load(path: Path, expected: str = "a packtool model file") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear line.

    ``expected`` names what the file should have been, for the message.
    """
    try:
        return load_weights_only(path)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # a class or function reference, i.e. code
            raise PackFormatError(
                f"{path} was refused: it holds Python objects other than tensors and plain "
                "values (possibly code), so it was not loaded"
            ) from exc
        raise PackFormatError(f"{path} is not {expected} (unreadable)") from exc
    except Exception as exc:  # hostile bytes can break the reader in many ways
        raise PackFormatError(
            f"{path} is not {expected} (unreadable, truncated or another format)"
        ) from exc


def _tensor_dict(obj: Any) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise TypeError("expected a mapping of names to tensors")
    return obj


def _to_cpu(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}


def _digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over every value of ``state`` (tensors by name, dtype, shape and raw bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        _hash_value(h, key, state[key])
    return h.hexdigest()


def _hash_value(h: Any, name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        for key in sorted(value):
            _hash_value(h, f"{name}/{key}", value[key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _hash_value(h, f"{name}[{i}]", item)
    else:
        h.update(f"{name}={value!r}|".encode())


# ------------------------------------------------------------------------------------------------
# Initial weights
# ------------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state_dict from a local ``.pt``/``.pth`` (weights_only) or ``.safetensors`` file.

    A checkpoint that nests the state_dict under ``state_dict`` or ``model`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise PackToolError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise PackFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    obj = _torch_load(path, "a state_dict file (.pt, .pth or .safetensors)")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    try:
        return _tensor_dict(obj)
    except TypeError:
        raise PackFormatError(f"{path} does not hold a state_dict of tensors") from None


def _load_initial_weights(net: nn.Module, state: Mapping[str, Tensor]) -> None:
    try:
        result = net.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).strip().splitlines()
        raise ArchitectureError(
            f"weights do not fit the architecture: {detail[-1].strip() if detail else exc}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ArchitectureError(
            "weights do not fit the architecture: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
