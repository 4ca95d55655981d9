"""The pack: one network's shared weights, their owner index, and every task's private state.

A :class:`Pack` is a value: the architecture spec, the prunable weights and their owner index,
the task records (heads, private state, metrics), and what follows from them: any task's network
(:meth:`Pack.network`, :meth:`Pack.model_for`) and the ownership of every layer
(:meth:`Pack.capacity`). Its invariants are checked in one place, its constructor, so every
reader (model file, archive, a task being added) gets the same checks. Adding a task makes a new
pack (:func:`packtool.lifecycle.add_task`). Files are :mod:`packtool.formats`' business: this
module imports none of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

import packtool

from .choices import FREE_INITS, POLICIES
from .data.preprocess import Preprocess
from .errors import ArchitectureError, CapacityError, PackFormatError, TaskError
from .growth import Width, fit, growable_widths, narrow, widen, widened_state
from .method import (
    FREE,
    MAX_TASKS,
    OWNER_DTYPE,
    Phase,
    bake,
    check_owners,
    packnet_prune,
    tensor_at,
)
from .models import (
    Anatomy,
    ArchSpec,
    anatomy,
    build_network,
    check_runs,
    load_weights,
    native_input_size,
    new_head,
    recorded_anatomy,
)
from .records import LayerCapacity, TaskRecord


class Pack:
    """Several tasks packed into one network with PackNet.

    Build one with :meth:`create`, add tasks with :func:`packtool.add_task` (which returns a new
    pack), get any task's plain network with :meth:`model_for`, and persist with :meth:`save` /
    :meth:`load`. Nothing modifies a task that is already in the pack.

    Attributes:
        spec: how to rebuild the network.
        policy: ``"per_task"`` (each task its own biases and norm state, the default) or
            ``"frozen"`` (the paper: task 1's are frozen and shared by all later tasks).
        shared: ``"<layer>.weight"`` -> prunable weight (float, any shape); free weights that
            a task released are zero.
        owners: ``"<layer>.weight"`` -> uint8 owner index, same shape as the weight.
        tasks: task records in index order.
        free_init: how the next task's free weights start (:data:`FREE_INITS`).
        planned_tasks: how many tasks the pack is meant to hold (``init --tasks``), if said.
        pretrained: the network started from pretrained weights (which decides the default
            schedule, :func:`packtool.config.schedule`).
        released: with ``free_init="kept"``, the trained values of the free weights, flat in
            row-major order of the positions where ``owners == 0`` (kept aside, so released
            weights stay zero at rest); empty otherwise.
        widths: the growable widths (:mod:`packtool.growth`) the network has now, producer ->
            units, where it grew (empty: never); ``shared``, ``owners`` and
            ``initial_private`` have these widths, and each task runs at its own
            (``TaskRecord.widths``), a leading slice of them.
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
        free_init: str = FREE_INITS[0],
        released: dict[str, Tensor] | None = None,
        pretrained: bool | None = None,
        planned_tasks: int | None = None,
        widths: Mapping[str, int] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise TaskError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        if free_init not in FREE_INITS:
            raise TaskError(f"unknown free_init {free_init!r}; use one of {', '.join(FREE_INITS)}")
        self.spec = spec
        self.policy = policy
        self.free_init = free_init
        self.planned_tasks = planned_tasks
        self.released = released or {}
        self.shared = shared
        self.owners = owners
        self.initial_private = initial_private
        self.pretrained_head = pretrained_head or {}
        self.pretrained = bool(self.pretrained_head) if pretrained is None else pretrained
        self.tasks: list[TaskRecord] = list(tasks or [])
        self.widths = dict(widths if widths is not None else
                           self.tasks[-1].widths if self.tasks else {})
        self._anatomy: Anatomy | None = None
        self._growth: list[Width] | None = None
        self._check()

    def _check(self) -> None:
        """The invariants every pack holds; ValueError names the first one broken.

        The owner index (:func:`~packtool.method.check_owners`); once a task was added, every
        free weight is exactly zero (released weights are zero at rest, so fine-tuning can skip
        the mask multiply); task ``k`` is ``tasks[k-1]`` with ``index == k``; at most 255 tasks
        with unique names; each record is consistent (:meth:`TaskRecord.check`).
        """
        if len(self.tasks) > MAX_TASKS:
            raise ValueError(f"a pack holds at most {MAX_TASKS} tasks, this one {len(self.tasks)}")
        if self.planned_tasks is not None and not (
                type(self.planned_tasks) is int and 1 <= self.planned_tasks <= MAX_TASKS):
            raise ValueError(f"planned tasks must be 1..{MAX_TASKS}, not {self.planned_tasks!r}")
        check_owners(self.shared, self.owners, len(self.tasks))
        if self.tasks:  # every free weight was released by a task: exactly zero at rest
            for key, weight in self.shared.items():
                if bool(weight.masked_select(self.owners[key] == FREE).any()):
                    raise ValueError(f"released weights of {key} are not zero")
        for i, record in enumerate(self.tasks, start=1):
            if record.index != i:
                raise ValueError(f"task {record.name!r} has index {record.index}, expected {i}")
            record.check()
        if len(set(self.task_names)) != len(self.tasks):
            raise ValueError("task names are not unique")
        for key, values in self.released.items():
            free = int((self.owners[key] == FREE).sum()) if key in self.owners else -1
            if values.dim() != 1 or values.numel() != free:
                raise ValueError(f"released values of {key} do not match its free weights")

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
        free_init: str = FREE_INITS[0],
        planned_tasks: int | None = None,
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
            state = weights if isinstance(weights, Mapping) else packtool.read_weights(weights)
            load_weights(net, state)
        check_runs(net, spec)
        anat = anatomy(net)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        shared = {key: state[key] for key in anat.prunable}
        owners = {k: torch.zeros(v.shape, dtype=OWNER_DTYPE) for k, v in shared.items()}
        private = {k: state[k] for k in anat.private}
        head_prefix = anat.classifier + "."
        head = {k[len(head_prefix):]: v for k, v in state.items() if k.startswith(head_prefix)}
        pack = cls(spec, shared, owners, private, policy=policy, free_init=free_init,
                   pretrained_head=head if weights is not None else None,
                   planned_tasks=planned_tasks)
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
                                      tuple(int(c) for c in counts[1:len(self.tasks) + 1]),
                                      tuple(own.shape)))
        return rows

    def check_new_task(self, name: str, room: bool = True) -> None:
        """Refuse a task ``name`` this pack cannot take: an empty or known name, a pack of
        :data:`MAX_TASKS` tasks (TaskError, CapacityError), or, with ``room``, no free weight
        left (CapacityError)."""
        if not name or not name.strip():
            raise TaskError("task name must not be empty")
        if name in self.task_names:
            raise TaskError(f"task {name!r} already exists; pick another `name`")
        if len(self.tasks) >= MAX_TASKS:
            raise CapacityError(f"a pack holds at most {MAX_TASKS} tasks")
        if room and self.free_weights == 0:
            raise CapacityError(
                "no free weights are left for another task: every weight is owned by "
                f"{'the task' if len(self.tasks) == 1 else f'one of the {len(self.tasks)} tasks'}"
                " (prune earlier tasks harder, or grow the network: `grow`)")

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The prunable weights' shapes."""
        return {k: tuple(v.shape) for k, v in self.shared.items()}

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

    @property
    def preprocess(self) -> Preprocess:
        """How images become this network's inputs (size, channels, normalization)."""
        return Preprocess(self.spec.input_size, self.spec.mean, self.spec.std)

    def private_state(self, record: TaskRecord) -> dict[str, Tensor]:
        """The task-private backbone state task ``record`` runs with."""
        return self.tasks[0].private if self.policy == "frozen" else record.private

    # ---------------------------------------------------------------------------------------
    # Networks
    # ---------------------------------------------------------------------------------------

    def anatomy(self) -> Anatomy:
        if self._anatomy is None:
            # Apart from the global random stream: a seeded add-task must draw the same values
            # whether or not this pack had been asked for its anatomy before.
            with torch.random.fork_rng(devices=[]):
                self._anatomy = self._checked_anatomy(self.build(self.widths))
        return self._anatomy

    def growth(self) -> list[Width]:
        """The growable widths of the network as created (:func:`~.growth.growable_widths`)."""
        if self._growth is None:
            with torch.random.fork_rng(devices=[]):
                self._growth = growable_widths(build_network(self.spec), self.spec.input_size)
        return self._growth

    def build(self, widths: Mapping[str, int]) -> nn.Module:
        """The network of :attr:`spec` with the growable ``widths`` (producer -> units),
        freshly initialized."""
        net = build_network(self.spec)
        if widths:
            widen(net, self.growth(), widths)
        return net

    def widths_of(self, task: int) -> dict[str, int]:
        """The widths task ``task`` runs at (a task not added yet: the pack's)."""
        return dict(self.tasks[task - 1].widths) if task <= len(self.tasks) else self.widths

    def grown(self, units: Mapping[str, int], seed: int = 0) -> Pack:
        """This pack with the growable widths ``units`` (producer -> units, none narrower
        than now): new weights free and zero (a task's training starts every free weight
        from the network's initialization), new private entries (biases, norms) as the
        network initializes them (seeded with ``seed``). Every task runs as before. Before a
        first task, the network is created at the new widths (seeded with ``seed``).

        Raises:
            TaskError: a pack that cannot grow: policy ``frozen`` or ``free_init`` other than
                ``reinit`` (new units start from the network's own initialization, with their
                own norms), or a pretrained network before its first task (which trains the
                pretrained weights as they are: grow for a later task).
        """
        if self.policy == "frozen" or self.free_init != "reinit":
            raise TaskError("growing needs policy per_task and free_init reinit (new units "
                            "start from the network's own initialization, with their own norms)")
        if self.pretrained and not self.tasks:
            raise TaskError("a pretrained network's first task trains its weights as they "
                            "are: grow it for a later task")
        widths = {**self.widths, **units}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = self.build(widths).state_dict()
        # Earlier tasks keep theirs; before a first task, a new network at the new widths.
        shared, owners, private = widened_state(self.shared, self.owners, self.initial_private,
                                                fresh, keep=bool(self.tasks))
        pack = Pack(self.spec, shared, owners, private, self.tasks, policy=self.policy,
                    pretrained_head=self.pretrained_head, free_init=self.free_init,
                    released=self.released, pretrained=self.pretrained,
                    planned_tasks=self.planned_tasks, widths=widths)
        pack._growth = self._growth
        return pack

    def network(self, task: int, phase: Phase, *, head: Mapping[str, Tensor],
                private: Mapping[str, Tensor], device: str | torch.device | None = None
                ) -> nn.Module:
        """A live network for task ``task`` in ``phase``: PackNet-masked, prune-reparametrized.

        The shared weights and owners are copied, so training the network leaves the pack
        alone. ``head`` is a classifier state (``weight`` ``[classes, in]``, ``bias``).
        """
        device = torch.device(device) if device is not None else self.device
        net = self.build(self.widths_of(task))
        anat = self._checked_anatomy(net)
        classes = head["weight"].shape[0]
        net.set_submodule(anat.classifier, new_head(anat, classes))
        # A task runs at its own widths: a leading slice of the shared weights; private state
        # from before a growth gets the new units' initial values.
        fresh = net.state_dict()
        state = {k: narrow(v, fresh[k].shape) for k, v in self.shared.items()}
        state.update({k: fit(v, fresh[k]) if k in fresh else v for k, v in private.items()})
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
            packnet_prune(module, name, narrow(owners, fresh[key].shape).clone(), task, phase)
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

    def with_task(self, record: TaskRecord, shared: dict[str, Tensor],
                  owners: dict[str, Tensor], released: dict[str, Tensor] | None = None) -> Pack:
        """A new pack: this one's tasks then ``record``, with ``shared`` weights, ``owners``
        and ``released`` values (what :func:`packtool.lifecycle.add_task` froze). This pack is
        not changed."""
        pack = Pack(self.spec, shared, owners, self.initial_private, [*self.tasks, record],
                    policy=self.policy, pretrained_head=self.pretrained_head,
                    free_init=self.free_init, released=released, pretrained=self.pretrained,
                    planned_tasks=self.planned_tasks, widths=self.widths)
        pack._anatomy, pack._growth = self._anatomy, self._growth
        return pack

    def to(self, device: str | torch.device) -> Pack:
        """Move every tensor to ``device`` (in place); returns ``self``."""
        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        self.shared, self.owners = move(self.shared), move(self.owners)
        self.initial_private, self.pretrained_head = (move(self.initial_private),
                                                      move(self.pretrained_head))
        self.released = move(self.released)
        for record in self.tasks:
            record.head, record.private = move(record.head), move(record.private)
            record.feature_stats = move(record.feature_stats)
        return self

    def _checked_anatomy(self, net: nn.Module) -> Anatomy:
        """The anatomy with the prunable weights this pack recorded (see :mod:`.models`)."""
        params = dict(net.named_parameters())
        # A task's network may be narrower than the pack's (grown after it): its leading slice.
        shapes = {k: params[k].shape if k in params and all(
            a <= b for a, b in zip(params[k].shape, v.shape)) else v.shape
            for k, v in self.shared.items()}
        try:
            return recorded_anatomy(net, shapes)
        except ArchitectureError as exc:
            raise PackFormatError(f"pack weights do not match architecture {self.spec.arch}: "
                                  f"{exc}") from exc

    # ---------------------------------------------------------------------------------------
    # Files: packtool.save and packtool.load (packtool.formats) read and write packs. These two
    # spellings, from before them, call them through the package, whose names load on first
    # use: this module imports no file format.
    # ---------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """:func:`packtool.save` ``(self, path)``."""
        packtool.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Pack:
        """:func:`packtool.load` ``(path, device)``: a model file or an archive."""
        return packtool.load(path, device)


def create(arch: str, input_size: tuple[int, int, int] | None = None, **options: Any) -> Pack:
    """A pack with no tasks and every weight free: :meth:`Pack.create`, whose arguments these
    are (``kwargs``, ``weights``, ``mean``, ``std``, ``policy``, ``free_init``,
    ``planned_tasks``, ``seed``)."""
    return Pack.create(arch, input_size, **options)
