"""One network that serves every task of a pack, with the task as an input.

:class:`MultiTaskNet` serves a pack from Python and is what ``packtool export --multi-task``
translates to ONNX. ``forward(x, task)`` takes the inputs ``[N, ...]`` and ``task``, int64
``[N]`` (1-based, one task per row; ``[1]``: every row's), and returns each row's task's logits
``[N, C_max]``, padded with ``-inf`` past the task's own class count (``C_max``: the largest),
and, when every task has feature statistics, the feature distance ``[N]`` of
:class:`packtool.taskfree.TaskFreeNet`. A row of task ``k`` gets exactly what
:meth:`Pack.model_for` ``(k)`` gives it. Rows are grouped by task (:meth:`MultiTaskNet.run_task`
runs one group; the exporter traces it and loops over the tasks present around it).

Nothing in it trains (packed weights, heads and task state are buffers, values every task
shares frozen parameters): gradients reach the inputs, never a weight.

What it holds, per packed weight of ``n`` values (its buffers are the ONNX file's initializers):

* ``<name>_shared``: float32, the weight as the pack stores it: every task's values, free
  weights zero;
* ``<name>_planes``: uint8 ``[b, ceil(n / 8)]``, bit ``j`` of every weight's owner, eight weights
  a byte (first weight in the high bit), ``b = ceil(log2(T + 1))`` planes. The task's mask
  ``owner <= task`` is compared on the packed bytes (bitwise, most significant plane first),
  expanded by a lookup table and multiplied in when the layer reads its weight, so one layer's
  mask exists at a time.

Why dense values and not only the owned ones (what the archive stores): a runtime rebuilds a
compact tensor by folding constants when it loads the model, and onnxruntime keeps every
intermediate of that folding alive until it is done; measured on ResNet-18, a compact file was
1.5% larger than the archive but took 4x a single task's memory after loading (see the
README's "Deploying" measurements), against 1.1x for this layout.

Per-task tensors (head, biases, norm state, unpacked parameters) are stacked ``[T, ...]`` and
gathered at ``task - 1``; one that every task shares (the ``frozen`` policy) is stored once. A
``task`` outside ``1..T`` gathers at index ``T``, out of bounds, so a runtime that checks
bounds (onnxruntime on the CPU) fails the call instead of answering for a wrong task.

The tensors are read through properties, as :mod:`packtool.method` reads packed weights, so a
module that reads a child's weight without calling the child (``nn.MultiheadAttention``'s
``out_proj``) gets the task's weight too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import TaskError
from .formats.owner_code import PLANE_BITS, pack_planes
from .growth import fit
from .method import tensor_at
from .pack import Pack
from .records import INT8_STATS, from_int8_rows, int8_rows
from .taskfree import feature_distance


class _TaskContext:
    """The call's task, shared by every property: its gather index and its bits as bytes.
    Outside a call it is task 1 (so that reading a tensor, e.g. by ``repr``, works)."""

    def __init__(self, tasks: int, table: Tensor) -> None:
        self.width = tasks.bit_length()
        self.set(torch.ones(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), table)

    def set(self, task: Tensor, index: Tensor, table: Tensor) -> None:
        """``table``: the network's byte -> mask lookup, where the network is now."""
        self.index = index
        self.bits = [((task >> j) & 1).to(torch.uint8) * 255 for j in range(self.width)]
        self.table = table


class MultiTaskNet(nn.Module):
    """Every task of ``pack`` in one module: ``forward(x, task)`` (see the module docstring)."""

    def __init__(self, pack: Pack) -> None:
        super().__init__()
        if not pack.tasks:
            raise ValueError("the pack has no tasks")
        anat = pack.anatomy()
        self.tasks = len(pack.tasks)
        self.classes = [len(r.classes) for r in pack.tasks]
        # A grown network at its widest; an earlier task's new units compute zeros (their
        # weights are masked, their padded private values zero) and are read by masked weights.
        self.net = pack.build(pack.widths).eval()
        self.net.set_submodule(anat.classifier,
                               nn.Linear(anat.in_features, max(self.classes)).eval())
        # Row b: the bits of byte b, first weight (the high bit) first; stored as bytes (a
        # quarter of the file space), made float once per call (a runtime folds that at load).
        self.register_buffer("bit_table", ((torch.arange(256)[:, None] & torch.tensor(
            PLANE_BITS)) != 0).to(torch.uint8))
        self._context = _TaskContext(self.tasks, self.bit_table)
        getters: dict[nn.Module, dict[str, Callable[[nn.Module], Tensor]]] = {}
        bits = self.tasks.bit_length()
        for key, owners in pack.owners.items():
            module, name = tensor_at(self.net, key)
            getters.setdefault(module, {})[name] = self._packed(
                module, name, pack.shared[key], owners, bits)
        for key, stack in self._private_stacks(pack).items():
            module, name = tensor_at(self.net, key)
            getters.setdefault(module, {})[name] = self._per_task(module, name, stack)
        classifier = self.net.get_submodule(anat.classifier)
        getters[classifier] = self._head(pack, classifier)
        for module, named in getters.items():
            # A subclass with one property per tensor: reads go through the task.
            module.__class__ = type(f"MultiTask{type(module).__name__}", (type(module),),
                                    {n: property(g) for n, g in named.items()})
        # Values every task shares (loaded as parameters) are frozen too: nothing here trains.
        self.net.requires_grad_(False)
        self.distance = _distance_tables(pack)
        if self.distance is not None:
            self._features: list[Tensor] = []
            self.net.get_submodule(anat.classifier).register_forward_pre_hook(
                lambda _module, args: self._features.append(args[0]))

    def _packed(self, module: nn.Module, name: str, weight: Tensor, owners: Tensor,
                bits: int) -> Callable[[nn.Module], Tensor]:
        _detach(module, name)
        module.register_buffer(name + "_shared", weight.detach().cpu().float().contiguous())
        module.register_buffer(name + "_planes", pack_planes(owners.cpu(), bits))
        shape, n, context = tuple(weight.shape), weight.numel(), self._context

        def read(m: nn.Module) -> Tensor:
            packed = planes_at_most(m._buffers[name + "_planes"], context.bits)
            # A byte's eight mask values in one lookup: one gather and one multiply per
            # weight, the cheapest way onnxruntime offers (a where or a broadcast bit test
            # costs several times more).
            mask = context.table.float().index_select(0, packed.long()).reshape(-1)[:n]
            return m._buffers[name + "_shared"] * mask.reshape(shape)

        return read

    def _per_task(self, module: nn.Module, name: str, stack: Tensor
                  ) -> Callable[[nn.Module], Tensor]:
        _detach(module, name)
        module.register_buffer(f"{name}_stack", stack)
        context = self._context
        return lambda m: m._buffers[f"{name}_stack"].index_select(0, context.index).squeeze(0)

    def _private_stacks(self, pack: Pack) -> dict[str, Tensor]:
        """Key -> ``[T, ...]`` for per-task tensors; shared ones loaded into the network."""
        stacks, shared = {}, {}
        states = [pack.private_state(r) for r in pack.tasks]
        widest = self.net.state_dict()
        for key in states[0]:
            values = [_padded(s[key].detach().cpu(), widest[key].shape) for s in states]
            if not values[0].is_floating_point() or all(torch.equal(values[0], v)
                                                        for v in values[1:]):
                shared[key] = values[0]
            else:
                stacks[key] = torch.stack(values)
        self.net.load_state_dict(shared, strict=False)
        return stacks

    def _head(self, pack: Pack, classifier: nn.Module) -> dict[str, Callable[[nn.Module], Tensor]]:
        """Getters of the classifier's weight and bias: the task's rows of tables of every
        task's rows, padded (zero weights, ``-inf`` bias) to the largest class count."""
        heads = [r.head for r in pack.tasks]
        features = classifier.in_features  # a grown task's, the widest
        weight, rows = row_table([_padded(h["weight"].detach().cpu().float(),
                                          (len(h["weight"]), features)) for h in heads], 0.0)
        bias, _ = row_table([h["bias"].detach().cpu().float() if "bias" in h else
                             torch.zeros(h["weight"].shape[0]) for h in heads], -math.inf)
        for name, table in (("weight", weight), ("bias", bias)):
            _detach(classifier, name)
            classifier.register_buffer(f"{name}_rows", table)
        classifier.register_buffer("task_rows", rows)
        context = self._context

        def read(name: str) -> Callable[[nn.Module], Tensor]:
            return lambda m: m._buffers[f"{name}_rows"].index_select(
                0, m.task_rows.index_select(0, context.index).squeeze(0))

        return {"weight": read("weight"), "bias": read("bias")}

    def forward(self, x: Tensor, task: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Rows of ``x`` ``[N, ...]`` with their tasks: ``task`` int ``[N]`` (1-based, one
        per row) or ``[1]`` (every row). Returns ``logits`` ``[N, C_max]`` and, with feature
        statistics, ``distance`` ``[N]``; row ``i`` is what task ``task[i]``'s network gives.

        Rows are grouped by task and each group runs once, so a batch of one task costs one
        run. Raises TaskError for a task outside ``1..T`` or a vector of the wrong length.
        """
        rows = check_task_vector(task, len(x), self.tasks)
        present = rows.unique()
        if len(present) <= 1:  # one task, or no rows
            return self.run_task(x, present if len(present) else rows.new_ones(1))
        parts = [(torch.nonzero(rows == t).squeeze(1), t.reshape(1)) for t in present]
        outputs = [self.run_task(x.index_select(0, i), t) for i, t in parts]
        order = torch.cat([i for i, _ in parts])

        def gather(k: int) -> Tensor:  # the groups' k-th outputs, back in row order
            stacked = torch.cat([o[k] if isinstance(o, tuple) else o for o in outputs])
            return torch.empty_like(stacked).index_copy(0, order, stacked)

        return gather(0) if self.distance is None else (gather(0), gather(1))

    def run_task(self, x: Tensor, task: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Every row of ``x`` with the one task ``task`` (int64 ``[1]``); what the ONNX graph's
        per-task body computes. A task outside ``1..T`` fails a gather (out of bounds)."""
        task = task.reshape(1).to(torch.int64)
        valid = (task >= 1) & (task <= self.tasks)
        # Out of range: index T, past the end of every stack, so the gather fails.
        index = torch.where(valid, task - 1, torch.full_like(task, self.tasks))
        self._context.set(task, index, self.bit_table)
        try:
            logits = self.net(x)
        finally:
            self._context.set(torch.ones_like(task), torch.zeros_like(task), self.bit_table)
        if self.distance is None:
            return logits
        f = self._features.pop().flatten(1)
        return logits, _task_distance(self.distance, f, index)


class OneTask(nn.Module):
    """:meth:`MultiTaskNet.run_task` as a module's forward: what the exporter traces (a graph
    cannot branch on the tasks present; the ONNX file loops over them around this body)."""

    def __init__(self, net: MultiTaskNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, task: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.net.run_task(x, task)


def check_task_vector(task: Tensor, rows: int, tasks: int) -> Tensor:
    """``task`` as one 1-based task index per row, int64 ``[rows]``: a ``[1]`` (or scalar)
    task is every row's. TaskError for another length or a task outside ``1..tasks``."""
    task = torch.as_tensor(task).reshape(-1)
    if task.is_floating_point() or task.dtype == torch.bool:
        raise TaskError(f"task indices must be integers, got {task.dtype}")
    task = task.to(torch.int64)
    if task.numel() == 1:
        task = task.expand(rows)
    elif task.numel() != rows:
        raise TaskError(f"{task.numel()} task indices for {rows} rows: give one per row, "
                         "or one for all")
    bad = task[(task < 1) | (task > tasks)]
    if len(bad):
        raise TaskError(f"task index {int(bad[0])} is outside 1..{tasks}")
    return task


def row_table(tensors: list[Tensor], fill: float) -> tuple[Tensor, Tensor]:
    """Every task's rows in one table, and each task's row numbers in it.

    ``tensors[t]`` is ``[R_t, ...]``; returns ``table`` ``[sum R_t + 1, ...]`` (the last row all
    ``fill``) and ``rows`` int64 ``[T, max R_t]``: task ``t``'s rows, then the fill row, so
    ``table[rows[t]]`` is task ``t``'s tensor padded to ``max R_t`` rows.
    """
    width = max(t.shape[0] for t in tensors)
    filler = torch.full((1, *tensors[0].shape[1:]), fill)
    table = torch.cat([*tensors, filler])
    rows = torch.full((len(tensors), width), table.shape[0] - 1, dtype=torch.int64)
    start = 0
    for t, tensor in enumerate(tensors):
        rows[t, :tensor.shape[0]] = torch.arange(start, start + tensor.shape[0])
        start += tensor.shape[0]
    return table, rows


def _distance_tables(pack: Pack) -> nn.Module | None:
    """Every task's feature statistics as row tables (:func:`row_table`): class means (the
    fill row's offset is made infinite, so never nearest), basis rows (zero fill: no effect),
    class counts and scales; ``None`` unless every task has feature statistics."""
    if not all(r.feature_stats for r in pack.tasks):
        return None
    features = max(r.head["weight"].shape[1] for r in pack.tasks)  # zero past a task's own
    stats = [{k: _padded(v.detach().cpu().float(), (len(v), features)) if k != "scale" else
              v.detach().cpu().float() for k, v in r.feature_stats.items()}
             for r in pack.tasks]
    holder = nn.Module()
    means, class_rows = row_table([s["means"] for s in stats], 0.0)
    basis, basis_rows = row_table([s["basis"] for s in stats], 0.0)
    # A padded class: its offset is +inf, so it is never the nearest.
    pad = torch.where(class_rows == means.shape[0] - 1, math.inf, 0.0)
    counts = torch.tensor([[float(len(s["means"]))] for s in stats])
    # Statistics of int8 rows (every task calibrated with a threshold) stay int8 in the file.
    compact = all(r.rejects for r in pack.tasks)
    for name, value in (("means", means), ("class_rows", class_rows), ("class_pad", pad),
                        ("classes", counts), ("basis", basis), ("basis_rows", basis_rows),
                        ("scale", torch.stack([s["scale"] for s in stats]))):
        if compact and name in INT8_STATS:
            q, step = int8_rows(value)
            holder.register_buffer(f"{name}_int8", q)
            holder.register_buffer(f"{name}_step", step)
        else:
            holder.register_buffer(name, value)
    own = [r.head["weight"].shape[1] for r in pack.tasks]
    if len(set(own)) > 1:  # a grown network: a distance is per feature of the task's own
        holder.register_buffer("rescale", torch.tensor([[features / n] for n in own]))
    return holder


def _task_distance(tables: nn.Module, f: Tensor, index: Tensor) -> Tensor:
    """:func:`packtool.taskfree.feature_distance` with task ``index``'s statistics, their
    terms computed as :func:`packtool.taskfree.distance_terms` does."""
    def pick(name: str) -> Tensor:
        return getattr(tables, name).index_select(0, index).squeeze(0)

    raw = _rows(tables, "means", pick("class_rows"))  # padded rows are zero
    center = raw.sum(0) / pick("classes")
    means = raw - center
    basis = _rows(tables, "basis", pick("basis_rows"))
    scale = pick("scale")
    projected = means @ basis.T
    offsets = scale * means.pow(2).sum(1) - projected.pow(2).sum(1) + pick("class_pad")
    distance = feature_distance(f, center, basis, scale, means, projected, offsets)
    return distance * pick("rescale") if hasattr(tables, "rescale") else distance


def _rows(tables: nn.Module, name: str, rows: Tensor) -> Tensor:
    """Rows ``rows`` of table ``name``, float32 (from its int8 rows and steps where stored so:
    the values the task's record holds, exactly)."""
    if hasattr(tables, f"{name}_int8"):
        return from_int8_rows(getattr(tables, f"{name}_int8").index_select(0, rows),
                              getattr(tables, f"{name}_step").index_select(0, rows))
    return getattr(tables, name).index_select(0, rows)


def _padded(value: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """``value`` in the leading slice of zeros of ``shape`` (a task narrower than the widest)."""
    return fit(value, value.new_zeros(shape))


def _detach(module: nn.Module, name: str) -> None:
    """Take ``name`` out of ``module``'s parameters and buffers (a property will serve it)."""
    module._parameters.pop(name, None)
    module._buffers.pop(name, None)


def planes_at_most(planes: Tensor, task_bits: list[Tensor]) -> Tensor:
    """Packed bytes of ``owner <= task`` from owner bit planes ``[b, m]`` and the task's bits
    (uint8 0 or 255 each): the owner is greater where, from the top plane down, the planes
    agreed so far and the owner has a 1 where the task has a 0."""
    top = planes.shape[0] - 1
    greater = planes[top] & ~task_bits[top]
    equal = ~(planes[top] ^ task_bits[top])
    for j in reversed(range(top)):
        plane, bit = planes[j], task_bits[j]
        greater = greater | (equal & plane & ~bit)
        equal = equal & ~(plane ^ bit)
    return ~greater


def multi_task_net(pack: Pack) -> MultiTaskNet:
    """Every task of ``pack`` as one :class:`MultiTaskNet` on the CPU, in eval mode."""
    return MultiTaskNet(pack.to("cpu")).eval()
