"""The PackNet pruning method, on top of :mod:`torch.nn.utils.prune`.

Every prunable weight has a ``uint8`` *owner index* of the same shape, registered on its module as
the buffer ``<name>_owners``: ``0`` means free, ``k`` means owned by task ``k`` (1..255). The
owner index stacks all task masks in one tensor; the mask in force is derived from it for a task
and a :class:`Phase`:

=========  =========================================  ======================
phase      active (mask = 1)                          trainable
=========  =========================================  ======================
TRAIN      free or owned by tasks ``1..k-1``          free (``owner == 0``)
FINETUNE   owned by tasks ``1..k``                    owned by ``k``
EVAL       owned by tasks ``1..k``                    nothing
=========  =========================================  ======================

The module is reparametrized as by the built-in methods (``<name>_orig`` parameter, float
``<name>_mask`` buffer, the method registered as a forward pre-hook, so ``prune.is_pruned`` and
``prune.remove`` work). One difference: the masked tensor ``<name>`` is not stored by the hook
before each forward but *derived at every read*, as a property of a per-module subclass (the
mechanism of ``torch.nn.utils.parametrize``). Some modules read a child's weight without calling
the child: ``nn.MultiheadAttention`` passes ``self.out_proj.weight`` to its functional form,
torchvision's Swin passes ``self.qkv.weight`` and ``self.proj.weight``. A forward pre-hook never
runs there, and the attribute it left behind is stale (another task's mask, or a tensor from an
earlier autograd graph). A property is current wherever and however it is read, masks the task's
weights and carries gradients to ``<name>_orig``. Switching task or phase rewrites the mask in
place from the owner index: nothing is ever lost, so any task can be selected at any time.

Any parameter can be packed, not only a ``Conv``/``Linear`` ``weight``: the functions take the
parameter's name (``"in_proj_weight"`` of an ``nn.MultiheadAttention``, say).

Only :func:`assign_owners` changes an owner index, and only from ``0`` to the task being added.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

OWNER_DTYPE = torch.uint8
MAX_TASKS = 255
FREE = 0


class Phase(str, Enum):
    """What the network is being used for; decides the mask in force."""

    TRAIN = "train"
    FINETUNE = "finetune"
    EVAL = "eval"


def active_mask(owners: Tensor, task: int, phase: Phase) -> Tensor:
    """Bool tensor shaped like ``owners``: the weights task ``task`` uses in ``phase``."""
    if phase is Phase.TRAIN:
        return owners < task  # free weights and every earlier task's
    return (owners >= 1) & (owners <= task)


def trainable_mask(owners: Tensor, task: int, phase: Phase) -> Tensor:
    """Bool tensor shaped like ``owners``: the weights an optimizer may change in ``phase``."""
    if phase is Phase.TRAIN:
        return owners == FREE
    if phase is Phase.FINETUNE:
        return owners == task
    return torch.zeros_like(owners, dtype=torch.bool)


class PackNetPruning(prune.BasePruningMethod):
    """Mask a tensor by its owner index for one task and phase.

    The owner index is passed to :meth:`apply` as the importance scores, so
    :meth:`compute_mask` maps owners to a mask. ``PRUNING_TYPE = "global"`` because the mask is
    recomputed from the owners as a whole: entries may switch back on when the phase changes
    (e.g. a later task's weights are masked for an old task, active again for the new one).

    Args:
        task: the task whose view of the tensor is in force (1..255).
        phase: see :class:`Phase`.
    """

    PRUNING_TYPE = "global"

    def __init__(self, task: int, phase: Phase) -> None:
        _check_task(task)
        self.task = task
        self.phase = Phase(phase)
        self.passthrough = False  # the mask in force changes nothing (see apply_mask)

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """``t`` is the owner index (uint8, any shape); returns ``default_mask``'s dtype."""
        active = active_mask(t, self.task, self.phase)
        self.passthrough = bool(active.all())
        return active.to(dtype=default_mask.dtype)

    def apply_mask(self, module: nn.Module) -> Tensor:
        """``orig * mask``, or a view of ``orig`` itself when the mask changes nothing.

        The mask changes nothing when it is all ones (training task ``k``: no task after ``k``
        exists yet) or when every entry it masks out is exactly zero (fine-tuning task ``k``:
        the masked entries are the weights it released, zero at rest and kept zero by the
        frozen-weight guard). ``x * 1 == x`` and ``0 * 0 == 0`` exactly, so skipping the
        multiply and its backward saves two passes over the weight per step with the same
        values and the same gradients on every entry the optimizer may keep. The mask buffer
        must only change through :func:`select` (or :meth:`compute_mask`), which keeps the flag
        current.
        """
        if self.passthrough:
            orig = getattr(module, self._tensor_name + "_orig")
            return orig.view_as(orig)  # not the Parameter itself: it would alias the leaf
        return super().apply_mask(module)

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        """The forward pre-hook does nothing: the masked tensor is derived at every read."""

    @classmethod
    def apply(  # type: ignore[override]
        cls, module: nn.Module, name: str, owners: Tensor, task: int, phase: Phase
    ) -> PackNetPruning:
        """Reparametrize ``module.<name>`` and register ``owners`` as ``<name>_owners``.

        Args:
            owners: uint8 tensor shaped like the parameter; moved to its device.
        """
        weight = getattr(module, name)
        if owners.dtype != OWNER_DTYPE or owners.shape != weight.shape:
            raise ValueError(
                f"owners must be uint8 shaped {tuple(weight.shape)}, "
                f"got {owners.dtype} {tuple(owners.shape)}"
            )
        if packnet_method(module, name) is not None:
            raise ValueError(f"{name} already carries a PackNet mask; use select() to change it")
        module.register_buffer(name + "_owners", owners.to(weight.device))
        scores = module.get_buffer(name + "_owners")
        method = super().apply(module, name, task, phase, importance_scores=scores)
        del module.__dict__[name]  # the tensor prune stored; the property replaces it
        _set_derived(module, name, True)
        return method


def packnet_prune(module: nn.Module, name: str, owners: Tensor, task: int,
                  phase: Phase = Phase.EVAL) -> nn.Module:
    """Functional entry point, like ``prune.l1_unstructured``: mask ``module.<name>`` by owners.

    Returns:
        ``module``, reparametrized with ``<name>_orig``, ``<name>_mask`` and ``<name>_owners``.
    """
    PackNetPruning.apply(module, name, owners, task, Phase(phase))
    return module


def packnet_method(module: nn.Module, name: str = "weight") -> PackNetPruning | None:
    """The PackNet hook on ``module.<name>``, or ``None``."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, PackNetPruning) and hook._tensor_name == name:
            return hook
    return None


def packed_tensors(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every ``(module, name)`` of ``net`` that carries a PackNet mask, in module order."""
    return [(module, hook._tensor_name) for module in net.modules()
            for hook in module._forward_pre_hooks.values() if isinstance(hook, PackNetPruning)]


def tensor_at(net: nn.Module, key: str) -> tuple[nn.Module, str]:
    """``(module, name)`` of the ``state_dict`` key ``key`` (``"encoder.0.in_proj_weight"``)."""
    module, _, name = key.rpartition(".")
    return net.get_submodule(module), name


def select(module: nn.Module, task: int, phase: Phase, name: str = "weight") -> None:
    """Put task ``task``'s ``phase`` mask in force on ``module.<name>``, in place.

    Non-destructive: only the mask buffer changes; weights and owners are untouched. In
    ``FINETUNE``, where every masked entry is a released weight, the multiply is skipped if they
    are all exactly zero (as :func:`packtool.lifecycle.add_task` keeps them, see
    :meth:`PackNetPruning.apply_mask`).
    """
    method = packnet_method(module, name)
    if method is None:
        raise ValueError(f"{name} of {type(module).__name__} has no PackNet mask")
    _check_task(task)
    method.task, method.phase = task, Phase(phase)
    mask = module.get_buffer(name + "_mask")
    owners = module.get_buffer(name + "_owners")
    with torch.no_grad():
        mask.copy_(method.compute_mask(owners, mask))
        if not method.passthrough and method.phase is Phase.FINETUNE:
            orig = module.get_parameter(name + "_orig")
            method.passthrough = not bool(orig.masked_select(mask == 0).any())


def without_masks(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the mask buffers (``<name>_mask`` beside ``<name>_orig``), which
    :func:`select` derives from the owners. :func:`with_masks` puts ``net``'s back."""
    return {k: v for k, v in state.items() if not _is_mask(k, state)}


def with_masks(state: Mapping[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    return {**{k: v for k, v in net.state_dict().items() if _is_mask(k, state)}, **state}


def _is_mask(key: str, state: Mapping[str, Tensor]) -> bool:
    return key.endswith("_mask") and key[:-len("_mask")] + "_orig" in state


def select_all(net: nn.Module, task: int, phase: Phase) -> None:
    """:func:`select` on every PackNet-masked tensor of ``net``."""
    for module, name in packed_tensors(net):
        select(module, task, phase, name)


def bake(net: nn.Module, inplace: bool = False) -> nn.Module:
    """Turn the masks in force into plain parameters (``prune.remove``), drop the owner buffers.

    The result has the original parameter names (``layer.weight``), classes and no hooks, ready
    for evaluation or ONNX export. Copies first unless ``inplace``.
    """
    if not inplace:
        net = copy.deepcopy(net)  # derived tensors are properties: nothing non-leaf to copy
    for module, name in packed_tensors(net):
        _set_derived(module, name, False)
        prune.remove(module, name)
        del module._buffers[name + "_owners"]
    return net


def _set_derived(module: nn.Module, name: str, derived: bool) -> None:
    """Give ``module`` (or take away) the property that derives ``module.<name>`` on read.

    As ``torch.nn.utils.parametrize`` does, a reparametrized module gets a subclass of its own
    class (``isinstance`` checks still hold) with one property per packed tensor, and returns to
    its class when the last one goes. A new subclass is made at every change, never an existing
    one modified: a deep copy of the module shares its class.
    """
    cls = type(module)
    base = cls.__bases__[0] if getattr(cls, "_packnet_derived", False) else cls
    names = {k for k, v in vars(cls).items() if isinstance(v, property)} if base is not cls \
        else set()
    names = names | {name} if derived else names - {name}
    if not names:
        module.__class__ = base
        return
    body: dict[str, Any] = {n: property(functools.partial(_derive, name=n)) for n in sorted(names)}
    module.__class__ = type(f"PackNet{base.__name__}", (base,), {"_packnet_derived": True, **body})


def _derive(module: nn.Module, name: str) -> Tensor:
    method = packnet_method(module, name)
    assert method is not None, f"{name} lost its PackNet hook"
    return method.apply_mask(module)


# --------------------------------------------------------------------------------------------
# Owner-index operations: exact-count magnitude pruning
# --------------------------------------------------------------------------------------------


def check_owners(weights: Mapping[str, Tensor], owners: Mapping[str, Tensor], tasks: int) -> None:
    """The owner index's invariants, checked by every reader (model file, archive, checkpoint).

    ``owners`` names the tensors of ``weights`` (at least one), each uint8 and shaped like its
    weight, and no owner is above ``tasks``, the number of tasks. Raises ValueError.
    """
    if not owners or weights.keys() != owners.keys():
        raise ValueError("shared weights and owner indices name different layers")
    for key, own in owners.items():
        if own.dtype != OWNER_DTYPE or own.shape != weights[key].shape:
            raise ValueError(f"owner index of {key} is not uint8 shaped like the weight")
        if own.numel() and int(own.max()) > tasks:
            raise ValueError(f"owner index of {key} names a task beyond {tasks}")


def release_count(free: int, ratio: float) -> int:
    """How many of ``free`` weights a task releases at ``ratio``: ``round(ratio * free)``.

    Python's ``round`` (half to even), the rule of ``torch.nn.utils.prune``'s ``amount``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    return round(ratio * free)


def assign_owners(
    weights: Mapping[str, Tensor], owners: Mapping[str, Tensor], task: int, ratio: float,
    scope: str = "layer", reserve: int = 0,
) -> dict[str, Tensor]:
    """Give task ``task`` the largest-magnitude free weights; release the rest.

    Of the free weights (``owner == 0``) of each layer (``scope="layer"``) or of all layers
    together (``scope="global"``), exactly ``release_count(n_free, ratio)`` with the smallest
    ``|w|`` stay free; the others become owned by ``task``. Ties are broken by position (layer
    order, then flat index): the earlier element is released first, so results are
    deterministic.

    Args:
        weights: name -> float weight tensor.
        owners: name -> uint8 owner index shaped like the weight; not modified.
        task: the task being added; no owner may already be ``>= task``.
        reserve: keep room for this many more tasks of the same size: in every layer the task
            keeps at most ``n_free // (reserve + 1)`` of its ``n_free`` free weights (so at
            least ``reserve / (reserve + 1)`` of them stay free), releasing more of its
            smallest weights where the ratio alone would keep more.

    Returns:
        name -> new owner index (new tensors on the owners' devices).
    """
    _check_task(task)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, got {reserve}")
    for name, own in owners.items():
        if own.numel() and int(own.max()) >= task:
            raise ValueError(f"{name} has weights owned by task >= {task}")
    if scope == "layer":
        # One layer at a time keeps the temporaries to a single layer's size.
        return {n: _assign_layer(weights[n], own, task, ratio, reserve)
                for n, own in owners.items()}
    free = {name: (own == FREE).flatten() for name, own in owners.items()}
    total = sum(int(f.sum()) for f in free.values())
    # Every layer's free scores in turn, on the CPU (layers may sit on different devices).
    released_all = _smallest(lambda: (c.cpu() for n in owners for c in _bit_chunks(
        weights[n], free[n])), total, release_count(total, ratio))
    result, start = {}, 0
    for name, own in owners.items():
        count = int(free[name].sum())
        released = released_all[start:start + count].to(own.device)
        floor = reserved_release(count, reserve)
        if int(released.sum()) < floor:  # the reserve releases more of this layer
            chunks = functools.partial(_bit_chunks, weights[name], free[name])
            released = _smallest(chunks, count, floor) | released
        result[name] = _owners_after(own, free[name], released, task)
        start += count
    return result


def reserved_release(free: int, reserve: int) -> int:
    """How many of ``free`` weights must stay free to leave room for ``reserve`` more tasks:
    all but ``free // (reserve + 1)``."""
    return free - free // (reserve + 1) if reserve else 0


def _assign_layer(weight: Tensor, owners: Tensor, task: int, ratio: float,
                  reserve: int) -> Tensor:
    # A first task's layer is all free: no free mask at all (a bool per weight saved).
    free = (owners == FREE).flatten() if bool(owners.any()) else None
    count = owners.numel() if free is None else int(free.sum())
    released = _smallest(lambda: _bit_chunks(weight, free), count,
                         max(release_count(count, ratio), reserved_release(count, reserve)))
    return _owners_after(owners, free, released, task)


def _owners_after(owners: Tensor, free: Tensor | None, released: Tensor, task: int) -> Tensor:
    """``owners`` with the free entries (all if ``free`` is None) not in ``released`` set to
    ``task`` (a new tensor)."""
    if free is None or bool(free.all()):
        kept = ~released
    else:  # masked_scatter_ places per-free-weight decisions without int64 index tensors
        kept = torch.zeros_like(free).masked_scatter_(free, ~released)
    return owners.flatten().masked_fill(kept, task).view_as(owners)


#: Elements per pass of the magnitude selection: its temporaries stay this size (64 MB of int32)
#: however large the layer is (VGG-16's fc6 has 102M weights).
CHUNK = 1 << 24


def _bit_chunks(values: Tensor, free: Tensor | None) -> Iterator[Tensor]:
    """``|values|`` of the entries where ``free`` (flat; all if ``None``), in order, as float32
    bit patterns (int32), one chunk at a time: no full copy of the scores is ever made.

    Raises:
        ValueError: a NaN among the values.
    """
    flat = values.detach().flatten()
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start:start + CHUNK].abs().float()
        if free is not None:
            part = part[free[start:start + CHUNK]]
        if bool(torch.isnan(part).any()):
            raise ValueError("scores must be float32 without NaN")
        yield part.view(torch.int32)


def smallest_k(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` smallest entries of a flat non-negative float32 tensor.

    Exact count; ties at the cut go to the lowest indices (see :func:`_smallest`).
    """
    if scores.dtype != torch.float32:
        raise ValueError("scores must be float32 without NaN")
    return _smallest(lambda: _bit_chunks(scores, None), scores.numel(), k)


def _smallest(chunks: Callable[[], Iterator[Tensor]], n: int, k: int) -> Tensor:
    """Bool mask of the ``k`` smallest of ``n`` scores that ``chunks()`` yields (afresh on each
    call) as the int32 bit patterns of non-negative floats, which order like the floats.

    A radix select in three passes: a histogram of the high 16 bits finds the bucket of the
    ``k``-th smallest, one of that bucket's low 16 bits finds its exact bit pattern (the cut),
    then everything below the cut is marked, and ties at the cut in index order until there
    are ``k``. Temporaries are one chunk's; the result is the one tensor of ``n`` bools (no
    ``sort``/``kthvalue``, whose int64 indices take 8 bytes per weight).
    """
    device = next(chunks(), torch.empty(0)).device
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool, device=device)
    high = torch.zeros(1 << 15, dtype=torch.int64, device=device)  # +inf is 0x7F80 << 16
    for bits in chunks():
        high += torch.bincount(bits >> 16, minlength=1 << 15)
    bucket, below = _bucket_of(high, k)
    low = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    for bits in chunks():
        low += torch.bincount(bits[(bits >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    rest, below_in_bucket = _bucket_of(low, k - below)
    cut, missing = (bucket << 16) | rest, k - below - below_in_bucket
    mask, start = torch.empty(n, dtype=torch.bool, device=device), 0
    for bits in chunks():
        part = mask[start:start + bits.numel()]
        torch.lt(bits, cut, out=part)
        if missing:
            ties = (bits == cut).nonzero().flatten()[:missing]
            part[ties] = True
            missing -= ties.numel()
        start += bits.numel()
    return mask


def _bucket_of(histogram: Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the ``k``-th smallest value (1-based) and how many lie below it."""
    cumulative = histogram.cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor(k, device=cumulative.device)))
    return bucket, int(cumulative[bucket - 1]) if bucket else 0


def _check_task(task: int) -> None:
    if not 1 <= int(task) <= MAX_TASKS:
        raise ValueError(f"task index must be in 1..{MAX_TASKS}, got {task}")
