"""The capacity planner: the prune ratio a task gets when it asks for ``auto``.

The lifecycle (:mod:`packtool.lifecycle`) trains the task, then hands the planner two ways to
look at the trained network, both from the same post-training state and both on the
*validation* split only (the test split is never read while the planner decides):

* ``scan(ratio)``: prune at ``ratio`` and score, without fine-tuning (an evaluation, cheap);
* ``finetune(ratio)``: prune at ``ratio``, fine-tune, and score the best epoch (a trial). The
  lifecycle stops a trial as soon as its best epoch meets the target (whether it passes is
  then known) and keeps it paused; the chosen trial finishes its fine-tuning from there, so it
  ends exactly as the fixed-ratio fine-tuning at that ratio, and a passing trial costs only the
  epochs it needed.

The task may lose at most ``tolerance`` points of validation accuracy against the trained,
unpruned network (``reference``). The plan:

1. scan every ratio of the grid (:data:`GRID`, and the reserve's minimum if there is one);
2. the largest ratio whose *pruned* score already meets the target is safe: fine-tuning keeps
   the best epoch on validation and starts from the pruned network, so it can only do better;
3. fine-tune ratios above the safe one: all of them if the trials allow (the largest that
   meets the target wins: the brute-force answer), else an exponential search, each from the
   same post-training state: 1, 3, 7, ... grid steps above the safe ratio while they meet the
   target, then a bisection of the gap below the first miss, one trial kept for the safe ratio
   until a ratio passes (this assumes fine-tuned scores fall with the ratio; three trials
   reach seven steps, where trying the ratios in order reached three). The largest ratio that
   met the target wins, else the safe one, fine-tuned.

Every decision is recorded: each candidate's scores (:class:`Candidate`) and why the ratio won.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .choices import AUTO
from .errors import TaskError
from .records import LayerCapacity

#: The ratios a search scans: 0.0, 0.05, ..., 0.95.
GRID = tuple(round(0.05 * i, 2) for i in range(20))
#: Why a ratio was used (``TaskRecord.prune_reason``).
FIXED, RESERVE, TOLERANCE = "fixed", "reserve", "tolerance"
_EPS = 1e-12  # accuracies are ratios of counts; this only absorbs float rounding of the target




@dataclass(frozen=True)
class Pruning:
    """How much of a task to prune: a fixed ``ratio`` in [0, 1), or ``"auto"`` (the planner),
    and a ``reserve`` of room for more tasks of the same size.

    Attributes:
        ratio: share of the task's trained weights released, or ``"auto"``.
        reserve: leave room for this many more tasks (see
            :func:`packtool.method.assign_owners`); raises the ratio where needed.
        tolerance: with ``auto``, points of validation accuracy the task may lose (>= 0).
        trials: with ``auto``, fine-tuning trials allowed (>= 1).

    Raises:
        TaskError: a value out of range.
    """

    ratio: float | str
    reserve: int = 0
    tolerance: float = 1.0
    trials: int = 3

    def __post_init__(self) -> None:
        ratio = self.ratio
        if ratio != AUTO and not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
                                  and math.isfinite(ratio) and 0.0 <= ratio < 1.0):
            raise TaskError(f"prune ratio must be in [0, 1) or 'auto', got {ratio!r}")
        if not (isinstance(self.reserve, int) and self.reserve >= 0):
            raise TaskError(f"`reserve` must be a whole number >= 0, got {self.reserve!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise TaskError(f"`tolerance` must be >= 0 points, got {self.tolerance!r}")
        if not (isinstance(self.trials, int) and self.trials >= 1):
            raise TaskError(f"`auto_trials` must be at least 1, got {self.trials!r}")

    @property
    def auto(self) -> bool:
        return self.ratio == AUTO

    @property
    def minimum(self) -> float:
        """The smallest ratio the reserve allows (in every layer): ``reserve / (reserve + 1)``."""
        return self.reserve / (self.reserve + 1)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match: the ratio, and the other settings where they act."""
        found: dict[str, Any] = {"prune": self.ratio if self.auto else float(self.ratio)}
        if self.reserve:
            found["reserve"] = self.reserve
        if self.auto:
            found.update(tolerance=float(self.tolerance), auto_trials=self.trials)
        return found


def target(reference: float, tolerance: float) -> float:
    """The lowest validation accuracy a ratio may reach: ``tolerance`` points below
    ``reference`` (less a rounding margin)."""
    return reference - tolerance / 100 - _EPS


@dataclass
class Candidate:
    """One ratio of a search: validation accuracy pruned (not fine-tuned), and after
    fine-tuning (``None`` where it was not tried)."""

    ratio: float
    val_pruned: float
    val_finetuned: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """The ratio used, why, every candidate (``None`` for a fixed ratio), and what the chosen
    trial left (``state``)."""

    ratio: float
    reason: str
    search: list[Candidate] | None
    state: Any
    warning: str | None = None  # the validation split cannot resolve the tolerance


def tasks_to_come(planned_tasks: int | None, packed: int) -> int:
    """The tasks of a pack's plan (``init --tasks``) not packed yet: ``planned_tasks`` less the
    ``packed`` ones; 0 without a plan or past it."""
    return max(0, planned_tasks - packed) if planned_tasks else 0


def planned_reserve(planned_tasks: int | None, packed: int) -> int:
    """The reserve a task added without one gets: the plan's tasks still to come after it."""
    return max(0, tasks_to_come(planned_tasks, packed) - 1)


def past_plan(planned_tasks: int | None, packed: int, reserve: int | None) -> str | None:
    """Why a task added to a pack of ``packed`` tasks without a ``reserve`` keeps no room for
    more (its plan gives it none): it is past the plan; ``None`` if it is not."""
    if reserve is not None or not planned_tasks or packed < planned_tasks:
        return None
    plural = "s" if planned_tasks > 1 else ""
    return (f"task {packed + 1} is past the plan of {planned_tasks} task{plural} (init "
            "--tasks): it keeps no room for more (`reserve` does)")


def noise_warning(images: int, reference: float, tolerance: float) -> str | None:
    """Why a validation split of ``images`` images is too coarse for ``tolerance``, or ``None``.

    Its accuracy ``reference`` is known to about two binomial standard errors (95%); with no
    error at all, to the rule of three (an error rate up to ``3 / images``). When that spread
    exceeds the tolerance, which ratios pass is decided by a few lucky or unlucky images: the
    planner still applies its rule, and this says so.
    """
    if reference >= 1.0:
        spread = 300 / images
    else:
        spread = 200 * math.sqrt(reference * (1 - reference) / images)
    if spread <= tolerance:
        return None
    return (f"the validation split ({images} images, {reference:.1%} before pruning) measures "
            f"accuracy to about +/-{spread:.1f} points (95%), coarser than the tolerance of "
            f"{tolerance:g}: the choice is noise-limited; more validation images "
            f"(`val_fraction`) or a larger `tolerance` make it firmer")


def candidates(minimum: float = 0.0) -> list[float]:
    """The grid ratios at or above ``minimum`` (a reserve's), and ``minimum`` itself."""
    return sorted({minimum, *(r for r in GRID if r > minimum)})


def plan(ratios: Sequence[float], reference: float, tolerance: float, trials: int,
         scan: Callable[[float], float],
         finetune: Callable[[float], tuple[float, Any]]) -> Decision:
    """Choose a ratio of ``ratios`` (ascending); see the module docstring.

    Args:
        reference: the trained network's validation accuracy (0..1).
        tolerance: points of validation accuracy the task may lose (``1.0`` = 0.01).
        trials: fine-tuning trials allowed, at least 1.
        scan: ``ratio -> validation accuracy`` pruned, not fine-tuned.
        finetune: ``ratio -> (validation accuracy, state)`` after fine-tuning; the state of
            the chosen ratio's trial is returned in the decision.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    goal = target(reference, tolerance)
    search = [Candidate(r, scan(r)) for r in ratios]
    passing = [c for c in search if c.val_pruned >= goal]
    safe = passing[-1] if passing else search[0]  # none passes: the reserve's minimum
    above = [c for c in search if c.ratio > safe.ratio]
    kept: dict[str, Any] = {}  # the state of the largest passing trial so far (states are big)

    def passes(candidate: Candidate) -> bool:
        candidate.val_finetuned, state = finetune(candidate.ratio)
        if candidate.val_finetuned >= goal or candidate is safe:
            kept["state"] = state
        return candidate.val_finetuned >= goal

    if trials > len(above):  # every candidate can be tried: the largest that passes
        winners = [c for c in above if passes(c)]
    else:
        winners = _gallop(above, trials, passes)
    winner = winners[-1] if winners else safe
    if not winners:
        passes(safe)
    reason = TOLERANCE if winner.val_finetuned >= goal else RESERVE
    return Decision(winner.ratio, reason, search, kept["state"])


def _gallop(above: Sequence[Candidate], trials: int, passes: Callable[[Candidate], bool]
            ) -> list[Candidate]:
    """The passing candidates an exponential search of ``above`` finds in ``trials`` trials
    (one kept for the safe ratio until one passes), assuming fine-tuned scores fall with the
    ratio: 1, 3, 7, ... steps above the safe ratio while they pass, then a bisection of the gap
    below the first miss. The last found is the largest."""
    found: list[Candidate] = []
    last, miss, step, tried = -1, len(above), 1, 0  # last passing index, first failing index
    while trials - tried - (not found) > 0 and miss - last > 1:
        galloping = miss == len(above)
        i = min(last + step, miss - 1) if galloping else (last + miss) // 2
        tried += 1
        if passes(above[i]):
            found.append(above[i])
            last, step = i, step * 2
        else:
            miss = i
    return found


# ------------------------------------------------------------------------------------------------
# Forecast
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """How many more tasks fit (``packtool info``).

    A task's *share* is the fraction of the network's prunable weights it owns. At the median
    share of the tasks so far (or at ``share``, given), a new task needs that share of every
    layer; ``tasks_fit`` is how many such tasks the free weights of the fullest layer hold.

    Attributes:
        free_fraction: free share of all prunable weights.
        layers: ``(layer, free share of the layer)`` in network order.
        median_share: median share per task so far (``None`` before any task).
        tasks_fit: more tasks that fit at ``median_share`` (``None`` before any task).
        share, tasks_fit_at_share: the same at a share the user gave (``None`` if none).
    """

    free_fraction: float
    layers: list[tuple[str, float]]
    median_share: float | None
    tasks_fit: int | None
    share: float | None = None
    tasks_fit_at_share: int | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["layers"] = [{"layer": name, "free_fraction": free} for name, free in self.layers]
        return doc


def forecast(capacity: Sequence[LayerCapacity], share: float | None = None) -> Forecast:
    """The forecast of a pack's :meth:`~packtool.pack.Pack.capacity` (see :class:`Forecast`)."""
    if share is not None and not 0.0 < share <= 1.0:
        raise TaskError(f"`share` must be in (0, 1], got {share!r}")
    total = sum(layer.total for layer in capacity)
    tasks = len(capacity[0].owned) if capacity else 0
    shares = [sum(layer.owned[k] for layer in capacity) / total for k in range(tasks)]
    median = statistics.median(shares) if shares else None
    return Forecast(
        free_fraction=sum(layer.free for layer in capacity) / total,
        layers=[(layer.name, layer.free / layer.total) for layer in capacity],
        median_share=median, tasks_fit=_fit(capacity, median),
        share=share, tasks_fit_at_share=_fit(capacity, share),
    )


def _fit(capacity: Sequence[LayerCapacity], share: float | None) -> int | None:
    """More tasks of ``share`` of every layer that the free weights hold (the fullest decides)."""
    if share is None or share <= 0:
        return None
    return min(math.floor(layer.free / (share * layer.total) + _EPS) for layer in capacity)
