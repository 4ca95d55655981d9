"""Growable widths: where a network can be widened for one task, every earlier task bit-exact.

A **growable width** is the output width of a weight layer (a ``Linear``'s features, a
convolution's channels) that reaches exactly one other weight layer's input, through layers
that treat each unit on its own: activations, dropout, pooling, per-channel BatchNorm, and a
flatten (each channel then feeds ``fan`` consecutive inputs of a ``Linear``). Units appended
to such a width change nothing for a network that masks their weights out: the old units are
computed as before, and the consumer reads the new ones through weights owned by the task that
grew them (or a later one), which every earlier task's mask excludes. So a task can have more
room without touching the tasks before it: MLP hidden layers, a ResNet block's inner channels,
a ViT block's MLP, VGG's and LeNet's convolutions.

Not growable: residual streams (an addition joins two widths), attention (``nn.MultiheadAttention``
is one module), widths a ``LayerNorm`` or ``GroupNorm`` normalizes across (new units would change
the old ones' statistics), grouped and depthwise convolutions, concatenations, and any path this
module does not know. Widths are found by tracing the network with ``torch.fx``; a network that
cannot be traced has none.

Shapes: a producer's weight ``[units, ...]`` grows along dim 0, its bias and the BatchNorms'
tensors ``[units]`` along dim 0, the consumer's weight ``[out, units * fan, ...]`` along dim 1;
new units always come after the old ones, so a narrower network is a leading slice
(:func:`narrow`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import CapacityError, TaskError
from .progress import Say

__all__ = ["DEFAULT_MAX_SIZE", "GROW_STEP", "Width", "choose_growth", "fit", "growable_widths",
           "largest_growth", "narrow", "plan_growth", "relative_size", "shapes_at", "widen",
           "widened_state"]

#: Modules that act on each unit (channel or feature) alone, with no state of their own.
UNITWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid,
            nn.Hardswish, nn.Hardtanh, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
            nn.Dropout3d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
            nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: The same as functions and tensor methods (one tensor argument).
UNITWISE_CALLS = {F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu, F.hardswish, F.dropout,
                  F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                  F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                  F.adaptive_avg_pool3d, torch.relu, torch.tanh, torch.sigmoid}
UNITWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "contiguous"}
FLATTENS = {"flatten", "view", "reshape"}
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: ``max_size`` when not given: the prunable weights may at most double.
DEFAULT_MAX_SIZE = 2.0
#: ``grow="auto"`` tries growths in steps of this fraction of the original widths.
GROW_STEP = 0.25
#: :func:`largest_growth` finds its fraction to this resolution.
GROWTH_RESOLUTION = 1 / 256


@dataclass(frozen=True)
class Width:
    """One growable width.

    Attributes:
        producer: the module whose output units these are (``Linear`` or convolution).
        consumer: the one weight layer that reads them (maybe the classifier: each task's head
            then has its own input width).
        norms: BatchNorms between the two, widened with them.
        units: the width in the network it was found in.
        fan: consumer inputs per unit (a flatten between: the positions of a channel).
    """

    producer: str
    consumer: str
    norms: tuple[str, ...]
    units: int
    fan: int = 1

    def to_dict(self) -> dict[str, object]:
        return {"producer": self.producer, "consumer": self.consumer, "norms": list(self.norms),
                "units": self.units, "fan": self.fan}


def growable_widths(net: nn.Module, input_size: tuple[int, ...]) -> list[Width]:
    """The growable widths of ``net`` for inputs ``[N, *input_size]``, in module order.

    ``net`` is traced (``torch.fx``) and one zero input is run through the trace in eval mode
    to learn the shapes; ``net``'s train/eval flags are restored. A network ``torch.fx`` cannot
    trace has no growable width.
    """
    try:
        graph = fx.symbolic_trace(net)
    except Exception:  # data-dependent control flow, untraceable builders: nothing to grow
        return []
    modes = {m: m.training for m in net.modules()}
    try:
        graph.eval()
        with torch.no_grad():
            ShapeProp(graph).propagate(torch.zeros(1, *input_size))
    except Exception:
        return []
    finally:
        for module, mode in modes.items():
            module.training = mode
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    found = []
    for node in graph.graph.nodes:
        if node.op == "call_module" and _is_weight_layer(modules[node.target]) \
                and calls[node.target] == 1:
            width = _follow(node, modules, calls)
            if width is not None:
                found.append(width)
    order = {name: i for i, name in enumerate(modules)}
    return sorted(found, key=lambda w: order[w.producer])


def _is_weight_layer(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return type(module) in CONVS and module.groups == 1 and module.padding_mode == "zeros"


def _units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _follow(start: fx.Node, modules: Mapping[str, nn.Module], calls: Mapping[str, int]
            ) -> Width | None:
    """The width ``start`` produces, if it is growable (see the module docstring)."""
    units = _units(modules[start.target])
    norms: list[str] = []
    consumer, fan = None, 1
    frontier, seen = list(start.users), set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        step = _step(node, modules, calls, units)
        if step is None:
            return None
        kind = step
        if kind == "consumer":
            if consumer is not None:
                return None
            consumer = node.target
            if isinstance(modules[consumer], nn.Linear):
                fan = modules[consumer].in_features // units
                if fan * units != modules[consumer].in_features:
                    return None
            elif modules[consumer].in_channels != units:
                return None
            continue
        if kind == "norm":
            norms.append(node.target)
        frontier.extend(node.users)
    if consumer is None:
        return None
    return Width(start.target, consumer, tuple(norms), units, fan)


def _step(node: fx.Node, modules: Mapping[str, nn.Module], calls: Mapping[str, int],
          units: int) -> str | None:
    """What ``node`` is on a width's path: ``consumer``, ``norm``, ``pass``, or ``None``
    (it ends the path: the width is not growable)."""
    if len(node.all_input_nodes) != 1:
        return None  # two tensors meet (a residual addition, a concatenation, a gate)
    if node.op == "call_module":
        module = modules[node.target]
        if _is_weight_layer(module):
            return "consumer" if calls[node.target] == 1 else None
        if type(module) in NORMS:
            ok = calls[node.target] == 1 and module.num_features == units
            return "norm" if ok else None
        if isinstance(module, nn.Flatten):
            return "pass" if module.start_dim == 1 and module.end_dim == -1 else None
        return "pass" if type(module) in UNITWISE else None
    if node.op == "call_function":
        if node.target in UNITWISE_CALLS:
            return "pass"
        if node.target is torch.flatten:
            return "pass" if _flattens_from_1(node) else None
        return None
    if node.op == "call_method":
        if node.target in UNITWISE_METHODS:
            return "pass"
        if node.target in FLATTENS:
            return "pass" if _flattens_from_1(node) else None
    return None


def _flattens_from_1(node: fx.Node) -> bool:
    """The node keeps the batch dimension and merges all the others into one (by shapes)."""
    before = node.args[0].meta.get("tensor_meta")
    after = node.meta.get("tensor_meta")
    if before is None or after is None:
        return False
    shape_in, shape_out = tuple(before.shape), tuple(after.shape)
    return (len(shape_out) == 2 and shape_out[0] == shape_in[0]
            and shape_out[1] == int(torch.tensor(shape_in[1:]).prod()))


# ------------------------------------------------------------------------------------------------
# Widening a network and narrowing tensors
# ------------------------------------------------------------------------------------------------


def widen(net: nn.Module, widths: list[Width], units: Mapping[str, int]) -> None:
    """Set every width of ``widths`` whose producer is in ``units`` to that many units, in
    place: the producer, its norms and its consumer are replaced by new modules of the new
    sizes (freshly initialized; the caller loads the values)."""
    for width in widths:
        size = units.get(width.producer)
        if size is None or size == _units(net.get_submodule(width.producer)):
            continue
        producer = net.get_submodule(width.producer)
        net.set_submodule(width.producer, _resized(producer, out=size))
        for name in width.norms:
            norm = net.get_submodule(name)
            net.set_submodule(name, type(norm)(size, norm.eps, norm.momentum, norm.affine,
                                               norm.track_running_stats))
        consumer = net.get_submodule(width.consumer)
        net.set_submodule(width.consumer, _resized(consumer, inp=size * width.fan))


def _resized(module: nn.Module, out: int | None = None, inp: int | None = None) -> nn.Module:
    """A new module like ``module`` with ``out`` outputs and/or ``inp`` inputs."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Linear(inp or module.in_features, out or module.out_features, bias=bias)
    return type(module)(inp or module.in_channels, out or module.out_channels,
                        module.kernel_size, module.stride, module.padding, module.dilation,
                        module.groups, bias, module.padding_mode)


def narrow(tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The leading ``shape`` slice of ``tensor`` (a narrower network's part of it)."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    return tensor[tuple(slice(0, n) for n in shape)]


def fit(tensor: Tensor, fresh: Tensor) -> Tensor:
    """``fresh`` (a wider network's tensor) with ``tensor`` in its leading slice: a narrower
    network's values, the new units' values from ``fresh``."""
    if tensor.shape == fresh.shape:
        return tensor
    out = fresh.detach().clone().to(device=tensor.device, dtype=tensor.dtype)
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


def widened_state(shared: Mapping[str, Tensor], owners: Mapping[str, Tensor],
                  private: Mapping[str, Tensor], fresh: Mapping[str, Tensor], keep: bool
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """A pack's ``shared`` weights, ``owners`` and initial ``private`` state at the shapes of
    ``fresh`` (the state of the network at the new widths); new weights free (owner 0).

    ``keep``: every old value stays in its leading slice, new weights zero (a task's training
    starts every free weight from the network's initialization), new private entries
    ``fresh``'s. Else (before a first task, which trains every weight as it is) ``fresh``'s
    values throughout: a new network.
    """
    def new(key: str, like: Tensor) -> Tensor:
        return fresh[key].to(device=like.device, dtype=like.dtype)

    if keep:
        weights = {k: fit(v, fresh[k].new_zeros(fresh[k].shape)) for k, v in shared.items()}
        start = {k: fit(v, fresh[k]) for k, v in private.items()}
    else:
        weights = {k: new(k, v) for k, v in shared.items()}
        start = {k: new(k, v) for k, v in private.items()}
    free = {k: fit(v, v.new_zeros(fresh[k].shape)) for k, v in owners.items()}
    return weights, free, start


# ------------------------------------------------------------------------------------------------
# How much to grow
# ------------------------------------------------------------------------------------------------


def original_units(widths: list[Width]) -> dict[str, int]:
    """Each width's units in the network as created."""
    return {w.producer: w.units for w in widths}


def step(widths: list[Width], current: Mapping[str, int], fraction: float) -> dict[str, int]:
    """Every width ``fraction`` of its original units wider than ``current`` (at least one)."""
    return {w.producer: current.get(w.producer, w.units) + max(1, round(fraction * w.units))
            for w in widths}


def shapes_at(shapes: Mapping[str, tuple[int, ...]], widths: list[Width],
              units: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The prunable weights' ``shapes`` with the widths set to ``units`` (producer -> units;
    widths not named keep their size)."""
    out = {k: list(v) for k, v in shapes.items()}
    for width in widths:
        size = units.get(width.producer)
        if size is None:
            continue
        if f"{width.producer}.weight" in out:
            out[f"{width.producer}.weight"][0] = size
        if f"{width.consumer}.weight" in out:
            out[f"{width.consumer}.weight"][1] = size * width.fan
    return {k: tuple(v) for k, v in out.items()}


def plan_growth(widths: list[Width], current: Mapping[str, int],
                shapes: Mapping[str, tuple[int, ...]], fraction: float,
                max_size: float = DEFAULT_MAX_SIZE) -> tuple[dict[str, int], float]:
    """Every width of ``widths`` ``fraction`` of its original units wider than ``current``
    (at least one unit), and the prunable weights' number then, as a multiple of the original
    (their ``shapes`` now).

    Raises:
        TaskError: nothing to grow, or ``fraction`` not positive; CapacityError: the network
            would be more than ``max_size`` times its original size.
    """
    if not widths:
        raise TaskError("the network has no growable width (`packtool info` lists them)")
    if not 0 < fraction < math.inf:
        raise TaskError(f"grow must be a positive fraction of the original widths, not "
                        f"{fraction!r}")
    units = step(widths, current, fraction)
    size = relative_size(widths, shapes, units)
    if size > max_size * (1 + 1e-9):
        raise CapacityError(f"growing by {fraction:g} would make the network {size:.2f}x its "
                            f"original size, over the maximum of {max_size:g}x (`max_size`)")
    return units, size


def largest_growth(widths: list[Width], current: Mapping[str, int],
                   shapes: Mapping[str, tuple[int, ...]], max_size: float) -> float:
    """The largest growth (a multiple of :data:`GROWTH_RESOLUTION`) that keeps the network
    within ``max_size``; 0 when none does. The size only grows with the fraction (at least
    linearly: each width widens its producer), so doubling then bisection finds it."""
    def fits(fraction: float) -> bool:
        try:
            plan_growth(widths, current, shapes, fraction, max_size)
        except CapacityError:
            return False
        return True

    low, high = 0, 1  # in steps of GROWTH_RESOLUTION
    while fits(high * GROWTH_RESOLUTION):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle * GROWTH_RESOLUTION) else (low, middle)
    return low * GROWTH_RESOLUTION


def relative_size(widths: list[Width], shapes: Mapping[str, tuple[int, ...]],
                  units: Mapping[str, int]) -> float:
    """The prunable weights' number with the widths at ``units`` (producer -> units; others as
    created), as a multiple of the network as created (``shapes``: the weights' shapes now)."""
    created = original_units(widths)
    return (_count(shapes_at(shapes, widths, {**created, **units}))
            / _count(shapes_at(shapes, widths, created)))


def _count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def choose_growth(widths: list[Width], current: Mapping[str, int],
                  shapes: Mapping[str, tuple[int, ...]],
                  trial: Callable[[float], float | None],
                  tolerance: float, max_size: float = DEFAULT_MAX_SIZE,
                  say: Say = print, at_once: bool = False
                  ) -> tuple[float, list[dict[str, float | None]]]:
    """``grow="auto"``: how much to grow for the task ``trial`` trains, and the trials.

    ``trial(fraction)`` trains the task with the network grown by ``fraction`` (0: as it is) and
    returns its validation accuracy (``None``: it cannot train at all, no free weight). Growth
    goes on in steps of :data:`GROW_STEP` while each step gains more than ``tolerance`` points
    over the last one kept and the network stays within ``max_size`` (growing by at most the
    original widths); the first step that does not pay ends the search. ``at_once``: one step
    only, to the largest growth within ``max_size`` (:func:`largest_growth`), for a first task
    with tasks to come: every task after it runs on what it grows. No trial at all when no
    step fits. Returns the fraction kept (0: no growth) and every trial,
    ``[{"grow", "val_accuracy"}]``, in order.
    """
    if not widths:
        say("grow auto: the network has no growable width")
        return 0.0, []
    limit = largest_growth(widths, current, shapes, max_size)
    steps = [limit] if at_once else [GROW_STEP * k for k in range(1, round(1 / GROW_STEP) + 1)
                                     if GROW_STEP * k <= limit]
    if not steps or not limit:
        say(f"grow auto: no growth step fits within the maximum size {max_size:g}x "
            f"(`max_size`): no trial")
        return 0.0, []
    first = trial(0.0)
    search: list[dict[str, float | None]] = [{"grow": 0.0, "val_accuracy": first}]
    best, chosen = (-math.inf if first is None else first), 0.0
    for fraction in steps:
        val = trial(fraction)
        assert val is not None  # a grown network has free weights
        search.append({"grow": fraction, "val_accuracy": val})
        gain = 100 * (val - best)
        say(f"grow {fraction:g}: validation accuracy {val:.2%} ({gain:+.2f} points; kept if "
            f"more than {tolerance:g})")
        if gain <= tolerance:
            break
        chosen, best = fraction, val
    if not at_once and steps[-1] < 1.0 and chosen == steps[-1]:
        say(f"grow auto: growing by {chosen + GROW_STEP:g} would pass the maximum size "
            f"{max_size:g}x")
    return chosen, search
