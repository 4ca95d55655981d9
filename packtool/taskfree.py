"""Task-free inference: which task an image comes from, and its class, without a task id.

PackNet serves task ``k`` with the weights of tasks ``1..k`` and its own head, and must be told
``k``. Every task of a pack is at hand, so packtool can instead run an image through every
task's network and pick the task that scores it best: the task whose head is surest of itself,
or whose training images the image's features resemble most. Heads trained alone are not
equally sure of themselves, so each task's logits are first divided by a temperature fitted on
that task's validation split when the task is added (:func:`calibrate`; temperature scaling,
Guo et al., ICML 2017), along with the statistics of its head's input features.

Scores, per image and task (higher: more likely the image's task). ``z`` are the task's logits
``[N, C]``, ``T`` its temperature, ``p = softmax(z / T)``:

* ``entropy`` (the default for files without feature statistics): ``-H(p) / log C``, the
  entropy normalized by its maximum and
  negated, so a sure head scores near 0 and a head at chance -1 (normalized so that a 100-class
  head is not judged less sure than a 2-class head for its larger range alone);
* ``max-prob``: ``max p``;
* ``energy``: ``T * logsumexp(z / T)``, the negative free energy (Liu et al., NeurIPS 2020);
* ``mahalanobis`` (the default, :func:`default_score`): minus the squared Mahalanobis
  distance of the head's input features to the
  nearest class mean, divided by the number of features (Lee et al., NeurIPS 2018), with class
  means and a shared covariance fitted on the task's validation split when the task is added
  (:func:`fit_feature_stats`). It asks whether the image looks like the task's images, not
  how sure the head is, and heads are often sure about images of other tasks.

A group of images known to come from one task (a camera, a folder: ``same_task``,
``eval --task-free --group N``) is scored by summing its images' scores per task.

Lifecycle: :func:`calibrate` when a task is added (its record keeps the temperature and the
feature statistics); :class:`TaskFreeNet` -> :func:`packtool.task_id.task_scores` ->
:func:`packtool.task_id.identify` to serve (:func:`packtool.exporters.prediction` with
``task="auto"``);
:func:`packtool.identification.evaluate_task_free` to measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .data import TaskData
from .errors import DataError
from .pack import Pack
from .records import from_int8_rows, int8_rows
from .task_id import default_score_for

# Largest rank of the stored precision's low-rank part (see fit_feature_stats). With the
# Ledoit-Wolf shrinkage, the directions past the 30th or so add nothing: on the ten-task digits
# MLP (256 features, 143 validation images per task, seed 0) int8 rank 32 identified 94.87% of
# test images, rank 64 93.48, the full rank in float32 93.40; on split digits (LeNet, 500
# features, 29 validation images) every rank from 16 up 89.13 (the serving benchmark measures
# the bytes and the rate).
PRECISION_RANK = 32
#: Folds of :func:`fit_reject_distance`'s cross-fitted distances.
REJECT_FOLDS = 5
#: Share of a task's own validation images its rejection threshold accepts
#: (:func:`fit_reject_distance`).
ACCEPT = 0.95
# Temperatures searched by calibrate(): 481 points evenly spaced in log T (steps of 1.25%).
TEMPERATURES = torch.logspace(math.log10(0.05), math.log10(20.0), 481, dtype=torch.float64
                              ).clamp(0.05, 20.0)  # exact ends: 10 ** log10(0.05) is below 0.05
# Spread of the log-normal prior on T (see fit_temperature).
PRIOR_SIGMA = 1.0


def default_score(pack: Pack) -> str:
    """The score task-free inference uses unless told: ``mahalanobis`` where every task has
    feature statistics (it identifies tasks far better, see the README's measurements), else
    ``entropy`` (files written before packtool fitted them)."""
    return default_score_for(all(t.feature_stats for t in pack.tasks))


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature ``T`` that best explains ``labels`` by ``softmax(logits / T)``.

    ``logits`` ``[N, C]``, ``labels`` ``[N]``. Minimizes the summed negative log-likelihood
    plus a log-normal prior on ``T`` (``log T ~ N(0, PRIOR_SIGMA^2)``) over the grid
    :data:`TEMPERATURES` (0.05..20): every 16th point, then every point within 16 of the best
    (the loss is smooth and has one minimum). The prior matters only where the likelihood is
    flat: a
    head that separates its validation split perfectly keeps lowering its likelihood loss as
    ``T`` falls to 0, which would make it the surest of all heads on every input, the opposite
    of comparable confidences. Deterministic; ties go to the smaller ``T``.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise DataError(f"cannot fit a temperature to logits {list(logits.shape)} and labels "
                        f"{list(labels.shape)}")
    z = logits.detach().double().cpu()
    picked = z.gather(1, labels.long().cpu()[:, None])[:, 0]

    def best(positions: range) -> int:
        temps = TEMPERATURES[list(positions)]
        losses = torch.stack([(torch.logsumexp(z / t, 1) - picked / t).sum() for t in temps])
        losses += temps.log() ** 2 / (2 * PRIOR_SIGMA**2)
        return positions[int(losses.argmin())]

    coarse = best(range(0, len(TEMPERATURES), 16))
    return float(TEMPERATURES[best(range(max(coarse - 16, 0),
                                         min(coarse + 17, len(TEMPERATURES))))])


def calibrate(pack: Pack, task: str | int, data: TaskData, *, batch_size: int = 256,
              device: str | torch.device = "cpu") -> tuple[float, dict[str, Tensor]]:
    """Task ``task``'s temperature (:func:`fit_temperature`) and feature statistics
    (:func:`fit_feature_stats`, with ``reject`` ``[1]``: :func:`fit_reject_distance`), fitted
    on ``data.val`` (never ``data.test``).

    Raises:
        DataError: the validation split is empty.
    """
    logits, features, labels = head_inputs(pack, task, data.val, batch_size=batch_size,
                                           device=device)
    stats = fit_feature_stats(features, labels)
    stats["reject"] = torch.tensor([fit_reject_distance(features, labels)], dtype=torch.float32)
    return fit_temperature(logits, labels), stats


def head_inputs(pack: Pack, task: str | int, dataset: Dataset, *, batch_size: int = 256,
                device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Task ``task``'s logits ``[N, C]``, its classifier's input features ``[N, D]`` (float32,
    on the CPU) and the labels ``[N]`` on ``dataset``: what calibration fits."""
    model = pack.model_for(task, device)
    seen: list[Tensor] = []
    hook = model.get_submodule(pack.anatomy().classifier).register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].flatten(1).float().cpu()))
    try:
        (logits,), labels = collect_logits([model], dataset, batch_size=batch_size,
                                           device=device)
    finally:
        hook.remove()
    return logits, torch.cat(seen), labels


# ------------------------------------------------------------------------------------------------
# Feature statistics (the mahalanobis score)
# ------------------------------------------------------------------------------------------------


def fit_feature_stats(features: Tensor, labels: Tensor, *, rank: int | None = None,
                      shrink: float | None = None, compact: bool = True) -> dict[str, Tensor]:
    """Class means and a shared precision of a head's input features, for ``mahalanobis``.

    ``features`` ``[N, D]`` (the classifier's input on the validation split), ``labels``
    ``[N]``. The within-class covariance ``S`` is shrunk towards its average variance ``a``,
    ``C = (1 - s) S + s a I``, ``s`` by Ledoit and Wolf's estimate (:func:`ledoit_wolf`: a
    small split cannot estimate ``D x D`` values, and how far to trust it is read from the
    split itself). Its inverse is stored in low-rank form: exact in ``C``'s
    ``r = min(rank, ...)`` largest directions (default :data:`PRECISION_RANK`), and every other
    direction given the mean of their variances ``v`` (probabilistic PCA's choice)::

        precision = scale * I - basis.T @ basis        # scale = 1 / v

    Returns ``means`` ``[C', D]`` (the classes present), ``basis`` ``[r, D]`` and ``scale``
    ``[1]``, float32; ``means`` and ``basis`` hold int8 rows (:func:`~packtool.records.int8_rows`,
    what the files store: a few times ``D`` bytes per task, where the full matrix would take
    ``D * D`` floats; ``compact=False`` keeps float32 values, as packtool stored them before
    rejection thresholds). The average variance is at least :data:`NOISE_FLOOR` times the
    features' mean square.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1] or len(labels) < 2:
        raise DataError(f"cannot fit feature statistics to features {list(features.shape)} and "
                        f"labels {list(labels.shape)}")
    f = features.detach().double().cpu()
    labels = labels.long().cpu()
    means, residuals = _means_and_residuals(f, labels)
    n, d = f.shape
    # ``shrink`` given: a fold of a split fitted as the whole split is (fit_reject_distance).
    shrink = ledoit_wolf(residuals) if shrink is None else shrink
    _, singular, directions = torch.linalg.svd(residuals, full_matrices=False)
    variances = singular**2 / n  # eigenvalues of S, largest first
    isotropic = shrink * (float(variances.sum()) / d or 1.0)
    # A within-class spread below a thousandth of the features' size is float noise (a head
    # that barely trained): the precision would amplify the last bits of every feature.
    isotropic = max(isotropic, NOISE_FLOOR * float(f.pow(2).mean()))
    kept = int((variances > 1e-12 * float(variances[0])).sum()) if len(variances) else 0
    kept = min(kept, PRECISION_RANK if rank is None else rank)
    spread = (1 - shrink) * variances + isotropic  # C's eigenvalues; isotropic past the last
    rest = (float(spread[kept:].sum()) + (d - len(spread)) * isotropic) / max(d - kept, 1)
    rest = max(rest, isotropic)
    basis = directions[:kept] * (1 / rest - 1 / spread[:kept]).clamp_min(0).sqrt()[:, None]
    stored = (lambda t: from_int8_rows(*int8_rows(t))) if compact else (
        lambda t: t.float().contiguous())
    return {"means": stored(means), "basis": stored(basis),
            "scale": torch.tensor([1 / rest], dtype=torch.float32)}


def fit_reject_distance(features: Tensor, labels: Tensor, *, accept: float = ACCEPT,
                        rank: int | None = None) -> float:
    """The feature distance below which a task accepts ``accept`` of its own images.

    An image is nearer to statistics fitted on it than a new image is, so the distances are
    cross-fitted: the split is cut in :data:`REJECT_FOLDS` folds (every fifth image), each
    scored with the statistics of the others (:func:`fit_feature_stats` with the whole
    split's shrinkage), and the threshold is the ``accept`` quantile of those distances. A
    split of fewer than ``2 * REJECT_FOLDS`` images leaves one image out at a time (packtool
    scored such splits in-sample before: on a task of 8 validation images that threshold
    rejected 83% of its own test images, one left out 8%); a split of two, in-sample.
    """
    if not 0 < accept < 1:
        raise ValueError(f"accept must be between 0 and 1, got {accept}")
    f = features.detach().float().cpu()
    labels = labels.long().cpu()
    n = len(f)
    shrink = ledoit_wolf(_means_and_residuals(f, labels)[1])  # the whole split's, every fold
    positions = torch.arange(n)
    count = REJECT_FOLDS if n >= 2 * REJECT_FOLDS else n  # a small split: leave one out
    folds = [positions % count == k for k in range(count)] if n > 2 else [positions >= 0]
    distances = []
    for held in folds:
        kept = ~held if len(folds) > 1 else held
        stats = fit_feature_stats(f[kept], labels[kept], rank=rank, shrink=shrink)
        distances.append(feature_distance(f[held], **distance_terms(stats)))
    return float(torch.quantile(torch.cat(distances).double(), accept))


def _means_and_residuals(f: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The mean of ``f`` ``[N, D]`` per class present in ``labels`` (in class order), and ``f``
    less its class's mean, row by row."""
    present = labels.unique()
    means = torch.stack([f[labels == c].mean(0) for c in present])
    return means, f - means[torch.searchsorted(present, labels)]


def ledoit_wolf(residuals: Tensor) -> float:
    """Ledoit and Wolf's shrinkage ``s`` in [0, 1] for the covariance of ``residuals`` ``[N, D]``
    (rows centered already: here, features less their class mean), towards its average
    variance: ``(1 - s) S + s a I`` with ``S = R^T R / N``, ``a = tr(S) / D``.

    The estimate that minimizes the expected squared error of that combination (Ledoit and Wolf,
    "A well-conditioned estimator for large-dimensional covariance matrices", 2004), as
    scikit-learn's ``ledoit_wolf_shrinkage(..., assume_centered=True)`` computes it, which a
    test checks (but 1, not 0, where ``S`` is already a multiple of ``I``, zero included: with
    no spread at all, the average variance then falls back to 1); written here because
    importing ``sklearn.covariance`` costs add-task 2.4 s.
    On the digits sequences it identifies tasks 0.4-6.7 points better than the fixed
    ``max(0.1, D / (N + D))`` packtool used before.
    """
    x = residuals.detach().double().cpu()
    n, d = x.shape
    if n == 0 or d == 0:
        return 1.0
    squares = x.pow(2)
    variances = squares.sum(0) / n  # the diagonal of S
    mean_variance = float(variances.sum()) / d
    beta_sum = float(squares.sum(1).pow(2).sum())  # sum over i, j, k of x_ki^2 x_kj^2
    delta_sum = float((x.T @ x).pow(2).sum()) / n**2
    beta = (beta_sum / n - delta_sum) / (d * n)
    delta = (delta_sum - 2 * mean_variance * float(variances.sum()) + d * mean_variance**2) / d
    if delta == 0:  # S is a multiple of I already (or zero: no spread to read): any s will do
        return 1.0
    return min(beta, delta) / delta


#: Smallest average within-class variance :func:`fit_feature_stats` assumes, relative to the
#: features' mean square (a standard deviation of 1e-3 of their size).
NOISE_FLOOR = 1e-6


class TaskFreeNet(nn.Module):
    """A task's network with a second output for task-free scores.

    ``forward(x)`` returns ``(logits [N, C], distance [N])``: ``distance`` is the squared
    Mahalanobis distance of the classifier's input to the nearest class mean, divided by the
    number of features (about 1 for a typical image of the task), or NaN without ``stats``
    (:func:`fit_feature_stats`). The classifier's input is read by a forward pre-hook, so the
    network runs unchanged; the module exports to ONNX as one graph with both outputs.
    """

    def __init__(self, model: nn.Module, classifier: str, stats: dict[str, Tensor] | None
                 ) -> None:
        super().__init__()
        self.model = model
        self._seen: list[Tensor] = []
        model.get_submodule(classifier).register_forward_pre_hook(
            lambda _module, args: self._seen.append(args[0]))
        self.known = bool(stats)
        for name, value in distance_terms(stats).items():
            self.register_buffer(name, value)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        f = self._seen.pop().flatten(1)
        if not self.known:
            return logits, torch.full_like(logits[:, 0], math.nan)
        return logits, feature_distance(f, self.center, self.basis, self.scale, self.means,
                                        self.projected_means, self.offsets)


def distance_terms(stats: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """What :func:`feature_distance` needs of :func:`fit_feature_stats`' ``stats``.

    ``center`` ``[F]`` (the mean of the class means), ``means`` ``[C, F]`` less the center,
    ``basis`` ``[r, F]``, ``scale`` ``[1]``, ``projected_means`` ``[C, r]`` (the centered means
    in the basis) and ``offsets`` ``[C]`` (each mean's own term); without ``stats``,
    placeholders of one class and rank 0.
    """
    raw = stats["means"] if stats else torch.zeros(1, 1)
    basis = stats["basis"] if stats else torch.zeros(0, 1)
    scale = stats["scale"] if stats else torch.ones(1)
    center = raw.mean(0)
    means = raw - center
    projected = means @ basis.T  # [C, r]
    # |mu|_P^2 per class: scale |mu|^2 - |B mu|^2
    offsets = scale * means.pow(2).sum(1) - projected.pow(2).sum(1)
    return {"center": center, "means": means, "basis": basis, "scale": scale,
            "projected_means": projected, "offsets": offsets}


def feature_distance(f: Tensor, center: Tensor, basis: Tensor, scale: Tensor, means: Tensor,
                     projected_means: Tensor, offsets: Tensor) -> Tensor:
    """Squared Mahalanobis distance of features ``f`` ``[N, F]`` to the nearest class mean,
    divided by ``F``: ``[N]`` (the terms of :func:`distance_terms`; a class whose offset is
    ``+inf`` is never nearest).

    Expanded as ``|f|^2 - 2 f.mu + |mu|^2`` (no ``[N, C, F]`` tensor), after subtracting the
    center from ``f`` and the means: features far from the origin (every ReLU feature is
    positive) would otherwise lose the distance to cancellation in float32.
    """
    f = f - center
    fb = f @ basis.T
    cross = scale * (f @ means.T) - fb @ projected_means.T  # f P mu
    own = scale * f.pow(2).sum(1, keepdim=True) - fb.pow(2).sum(1, keepdim=True)
    squared = own - 2 * cross + offsets
    return squared.min(1).values.clamp_min(0) / f.shape[1]


# ------------------------------------------------------------------------------------------------
# Scores and the choice of task
# ------------------------------------------------------------------------------------------------


def temperatures_of(pack: Pack) -> list[float]:
    """Every task's temperature in task order; 1 for a task recorded without one."""
    return [1.0 if t.temperature is None else t.temperature for t in pack.tasks]


# ------------------------------------------------------------------------------------------------
# Measuring task-free accuracy
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_logits(models: Sequence[nn.Module], dataset: Dataset, *, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> tuple[list[Tensor], Tensor]:
    """Every model's output on ``dataset`` (on the CPU) and its labels ``[N]``.

    Each batch is read once and run through every model (in eval mode; modes are restored).
    A model's output is ``[N, C]`` logits, or a tuple of such tensors (a :class:`TaskFreeNet`:
    ``(logits, distance)``), collected as a tuple.
    """
    if len(dataset) == 0:
        raise DataError("the split is empty")
    device = torch.device(device)
    modes = [m.training for m in models]
    outputs: list[list[Any]] = [[] for _ in models]
    labels = []
    try:
        for m in models:
            m.eval()
        for inputs, targets in DataLoader(dataset, batch_size=batch_size):
            inputs = inputs.to(device, non_blocking=True)
            for out, m in zip(outputs, models):
                out.append(m(inputs))
            labels.append(torch.as_tensor(targets))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return [_concat(o) for o in outputs], torch.cat(labels)


def _concat(batches: list[Any]) -> Any:
    if isinstance(batches[0], tuple):
        return tuple(_concat(list(parts)) for parts in zip(*batches))
    return torch.cat([b.float().cpu() for b in batches])


def task_free_net(pack: Pack, task: str | int, device: str | torch.device | None = None
                  ) -> TaskFreeNet:
    """Task ``task`` of ``pack`` as a :class:`TaskFreeNet` (logits and feature distance)."""
    record = pack.task(task)
    return TaskFreeNet(pack.model_for(record.name, device), pack.anatomy().classifier,
                       record.feature_stats).to(pack.device if device is None else device)
