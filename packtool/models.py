"""Architectures: build a network from a plain spec and split it into PackNet's parts.

A network is described by an :class:`ArchSpec` of plain values (no pickled code), so a pack can
rebuild it anywhere. PackNet sees three kinds of tensors in it:

* **prunable weights** - every weight matrix, whichever module holds it. They are shared by all
  tasks; each element has one owner (see :mod:`packtool.method`). The rule
  (:func:`is_weight_matrix`):

  1. the ``weight`` of every convolution (``Conv*d``, ``ConvTranspose*d``) and ``Linear``
     (subclasses included, e.g. attention's ``out_proj``), whatever its size;
  2. the projections of ``nn.MultiheadAttention``: ``in_proj_weight``, or ``q_proj_weight``,
     ``k_proj_weight`` and ``v_proj_weight`` when keys and values have their own sizes;
  3. any other parameter a module registers itself with at least two dimensions, none of size
     1, and at least :data:`MIN_BARE_WEIGHTS` elements.

  Rule 3 keeps per task what acts like a bias or a per-channel scale rather than a weight
  matrix: a dimension of size 1 marks a broadcast tensor (ViT's class token ``[1, 1, D]`` and
  position embedding ``[1, N, D]``, ConvNeXt's layer scale ``[C, 1, 1]``), and tensors under
  :data:`MIN_BARE_WEIGHTS` are lookup tables such as Swin's relative-position bias
  ``[169, heads]``, whose private copy costs a task a few kilobytes. ``packtool info`` lists
  the multi-dimensional parameters a model keeps private.
* **the classifier** - the last ``nn.Linear`` in module order. Every task has its own head.
* **task-private state** - everything else (biases, norm layers' parameters and statistics, the
  tensors rule 3 leaves out, any other buffer). Each task keeps its own copy, or, under the
  paper's policy, task 1's copy is frozen and used by all tasks.

A pack records the names of its prunable weights, so a pack made under an earlier rule (which
packed only convolutions and ``Linear``) keeps its split when it is loaded again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.preprocess import check_input
from .errors import ArchitectureError, PackToolError, one_line

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: Rule 3's size floor: 64 KiB of float32 (Swin-B's largest relative-position table is 5,408).
MIN_BARE_WEIGHTS = 16_384
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: ``weights`` that asks for torchvision's pretrained weights (from the local hub cache).
PRETRAINED = "DEFAULT"


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a network, as plain values.

    Attributes:
        arch: torchvision model name (``vgg16``), built-in (``mlp``, ``lenet``) or
            ``package.module:function`` returning an ``nn.Module``.
        input_size: ``(C, H, W)`` of one input image.
        kwargs: keyword arguments for the builder (JSON-able).
        mean, std: per-channel normalization applied to inputs scaled to 0..1.
    """

    arch: str
    input_size: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        channels = int(self.input_size[0]) if len(self.input_size) else 0
        default_mean, default_std = _default_norm(channels)
        size, mean, std = check_input(self.input_size, self.mean or default_mean,
                                      self.std or default_std)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_size": list(self.input_size),
            "kwargs": dict(self.kwargs),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        return cls(
            arch=str(d["arch"]),
            input_size=tuple(d["input_size"]),
            kwargs=dict(d.get("kwargs", {})),
            mean=tuple(d.get("mean", ())),
            std=tuple(d.get("std", ())),
        )


def _default_norm(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # ImageNet statistics for RGB (what pretrained torchvision weights expect), else 0.5/0.5.
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


DEFAULT_INPUT_SIZE = (3, 224, 224)


def native_input_size(arch: str, kwargs: dict[str, Any] | None = None) -> tuple[int, int, int]:
    """The input size ``arch`` is built for: ``(3, s, s)``.

    ``s`` is the builder's ``image_size`` keyword if given (ViT takes one), else the crop size
    of torchvision's default pretrained weights for the name (224 for most models, 300 for
    ``efficientnet_b3``), else 224.
    """
    size = (kwargs or {}).get("image_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (3, size, size)
    if ":" not in arch and arch not in BUILTINS:
        crop = _torchvision_crop_size(arch)
        if crop is not None:
            return (3, crop, crop)
    return DEFAULT_INPUT_SIZE


def _torchvision_crop_size(name: str) -> int | None:
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms
    except (ValueError, KeyError, AttributeError):  # not a torchvision name, or no weights
        return None
    crop = getattr(transforms, "keywords", {}).get("crop_size")
    return crop if isinstance(crop, int) else None


# --------------------------------------------------------------------------------------------
# Built-in small networks
# --------------------------------------------------------------------------------------------


def mlp(input_size: tuple[int, int, int], num_classes: int = 10, hidden: int = 256,
        depth: int = 2) -> nn.Module:
    """``depth`` hidden Linear+ReLU layers of width ``hidden`` on the flattened image."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_size[0] * input_size[1] * input_size[2]
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet(input_size: tuple[int, int, int], num_classes: int = 10, width: int = 20) -> nn.Module:
    """LeNet-5 style: two 5x5 conv + BatchNorm + ReLU + 2x2 max-pool blocks, then two Linear.

    Padding keeps the spatial size until pooling, so any image of at least 4x4 works.
    """
    channels, height, wide = input_size
    c1, c2 = width, int(width * 2.5)
    features = nn.Sequential(
        nn.Conv2d(channels, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
    )
    flat = c2 * (height // 4) * (wide // 4)
    if flat == 0:
        raise ArchitectureError(f"lenet needs images of at least 4x4, got {height}x{wide}")
    return nn.Sequential(
        features, nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes)
    )


BUILTINS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "lenet": lenet}


def build_network(spec: ArchSpec) -> nn.Module:
    """Build the full network of ``spec`` (original classifier included), randomly initialized.

    Raises:
        ArchitectureError: unknown name, a builder that fails, or a network that cannot run on
            ``spec.input_size``.
    """
    kwargs = dict(spec.kwargs)
    try:
        if spec.arch in BUILTINS:
            net = BUILTINS[spec.arch](spec.input_size, **kwargs)
        elif ":" in spec.arch:
            net = _import_builder(spec.arch)(**kwargs)
        else:
            net = _torchvision_model(spec.arch, kwargs)
    except ArchitectureError:
        raise
    except Exception as exc:  # a user's builder or torchvision can raise anything
        raise ArchitectureError(f"cannot build {spec.arch!r}: {one_line(exc, first=True)}") from exc
    if not isinstance(net, nn.Module):
        raise ArchitectureError(f"{spec.arch!r} returned {type(net).__name__}, not an nn.Module")
    return net


def _torchvision_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ArchitectureError(
            f"unknown architecture {name!r}: use a torchvision classification model "
            f"(e.g. vgg16, resnet18), mlp, lenet, or package.module:function"
        )
    # weights=None: nothing is downloaded; pretrained weights come from a local file.
    return torchvision.models.get_model(name, weights=None, **kwargs)


def pretrained_weights_file(arch: str) -> Path:
    """torchvision's DEFAULT weights for ``arch`` if they are already in the local torch hub cache.

    Nothing is downloaded: without a cached copy this raises a PackToolError that says where to
    put the file (or to give it as ``weights``).
    """
    import torchvision  # only for a torchvision name (see _torchvision_model)

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise PackToolError(
            f"`weights={PRETRAINED}`: {arch!r} has no pretrained torchvision weights; "
            "pass `weights=FILE` (a local state_dict) or none"
        ) from None
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise PackToolError(
            f"`weights={PRETRAINED}`: torchvision's {arch} weights are not cached at {cached} "
            f"and packtool downloads nothing; fetch {url} on a machine with network access and "
            "pass `weights=FILE` (or copy it to that path)"
        )
    return cached


def _import_builder(target: str) -> Callable[..., nn.Module]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        builder = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ArchitectureError(f"cannot import {target!r}: {one_line(exc, first=True)}") from exc
    if not callable(builder):
        raise ArchitectureError(f"{target!r} is not callable")
    return builder



# --------------------------------------------------------------------------------------------
# Anatomy of a network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Where PackNet's parts live in a network (qualified names from ``named_modules``).

    Attributes:
        classifier: name of the classifier ``nn.Linear`` (replaced by each task's head).
        in_features, head_bias: the classifier's input width and whether it has a bias.
        prunable: ``state_dict`` keys of the prunable weights (``features.0.weight``,
            ``encoder.layers.0.self_attention.in_proj_weight``), in module order.
        private: ``state_dict`` keys of the backbone's task-private tensors.
    """

    classifier: str
    prunable: tuple[str, ...]
    private: tuple[str, ...]
    in_features: int
    head_bias: bool


def is_weight_matrix(module: nn.Module, name: str, param: torch.Tensor) -> bool:
    """Whether ``module``'s own parameter ``name`` is packed (the rule in the module docstring)."""
    if isinstance(module, PRUNABLE_TYPES):
        return name == "weight"
    if isinstance(module, nn.MultiheadAttention):
        return name in ATTENTION_WEIGHTS
    return param.dim() >= 2 and 1 not in param.shape and param.numel() >= MIN_BARE_WEIGHTS


def anatomy(net: nn.Module, prunable: Sequence[str] | None = None) -> Anatomy:
    """Find the classifier, the prunable weights and the task-private tensors of ``net``.

    Args:
        prunable: the prunable weights' keys as a pack recorded them; default: the rule.

    Raises:
        ArchitectureError: no ``nn.Linear`` classifier, nothing to prune, a recorded key that
            is not a parameter of ``net``, or a prunable weight shared by two modules.
    """
    linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ArchitectureError("the network has no nn.Linear classifier for per-task heads")
    classifier = linears[-1]
    head_prefix = classifier + "."
    params = dict(net.named_parameters())
    if prunable is None:
        prunable = [f"{prefix}{'.' if prefix else ''}{name}"
                    for prefix, module in net.named_modules() if prefix != classifier
                    for name, p in module.named_parameters(recurse=False)
                    if is_weight_matrix(module, name, p)]
    prunable = tuple(prunable)
    if not prunable:
        raise ArchitectureError("the network has no weight matrix to pack besides the classifier")
    unknown = [k for k in prunable if k not in params or k.startswith(head_prefix)]
    if unknown:
        raise ArchitectureError(f"{unknown[0]} is not a prunable parameter of the network")
    _check_not_tied(net, prunable)
    shared = set(prunable)
    private = tuple(key for key in net.state_dict(keep_vars=True)
                    if key not in shared and not key.startswith(head_prefix))
    head = net.get_submodule(classifier)
    return Anatomy(classifier=classifier, prunable=prunable, private=private,
                   in_features=head.in_features, head_bias=head.bias is not None)


def recorded_anatomy(net: nn.Module, shapes: Mapping[str, Sequence[int]]) -> Anatomy:
    """:func:`anatomy` with the prunable weights a pack recorded (key -> shape).

    Raises:
        ArchitectureError: as :func:`anatomy`, or a recorded weight of another shape.
    """
    anat = anatomy(net, prunable=list(shapes))
    params = dict(net.named_parameters())
    for key, shape in shapes.items():
        if params[key].shape != tuple(shape):
            raise ArchitectureError(f"{key} is {list(shape)} in the pack, "
                                    f"{list(params[key].shape)} in the network")
    return anat


def _check_not_tied(net: nn.Module, prunable: Sequence[str]) -> None:
    """A weight two modules share (tied weights) would be masked in one place only."""
    names: dict[int, list[str]] = {}
    for key, p in net.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(key)
    params = dict(net.named_parameters())
    for key in prunable:
        tied = names[id(params[key])]
        if len(tied) > 1:
            raise ArchitectureError(f"{' and '.join(tied)} are one tied parameter; packtool "
                                    "cannot pack tied weights")


def new_head(anat: Anatomy, num_classes: int) -> nn.Linear:
    """A freshly initialized head like the classifier, with ``num_classes`` outputs (CPU)."""
    return nn.Linear(anat.in_features, num_classes, bias=anat.head_bias)


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state_dict that must fit ``net`` exactly; ArchitectureError says what does not."""
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


def check_runs(net: nn.Module, spec: ArchSpec) -> None:
    """Run one zero batch through ``net`` so a size mismatch fails at ``init``, not mid-training."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *spec.input_size))
    except Exception as exc:
        raise ArchitectureError(
            f"{spec.arch} cannot run on inputs of size {'x'.join(map(str, spec.input_size))}: "
            f"{one_line(exc, first=True)}"
        ) from exc
    finally:
        net.train(was_training)
