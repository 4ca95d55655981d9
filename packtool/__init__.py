"""packtool: pack several tasks into one network with PackNet (Mallya & Lazebnik, CVPR 2018).

The public API::

    from packtool import Pack, TrainConfig, load_task_data

    pack = Pack.create("lenet", (1, 8, 8))
    data = load_task_data("digits", pack.preprocess, classes=[0, 1])
    pack.add_task("zero-one", data, prune=0.75, config=TrainConfig(epochs=5))
    pack.save("model.pt")
    model = Pack.load("model.pt").model_for("zero-one")   # a plain nn.Module
"""

from ._version import __version__
from .data import DATASETS, Preprocess, TaskData, load_task_data, parse_classes
from .errors import (
    ArchitectureError,
    CapacityError,
    DataError,
    LockError,
    PackFormatError,
    PackToolError,
    TaskError,
)
from .formats.sniff import load
from .method import PackNetPruning, Phase, assign_owners, bake, packnet_prune, select
from .models import ArchSpec
from .pack import LayerCapacity, Pack, TaskRecord
from .runner import add_task_to_file
from .training import Progress, Score, TaskResult, TrainConfig, resolve_device

__all__ = [
    "DATASETS",
    "ArchSpec",
    "ArchitectureError",
    "CapacityError",
    "DataError",
    "LayerCapacity",
    "LockError",
    "Pack",
    "PackFormatError",
    "PackNetPruning",
    "PackToolError",
    "Phase",
    "Preprocess",
    "Progress",
    "Score",
    "TaskData",
    "TaskError",
    "TaskRecord",
    "TaskResult",
    "TrainConfig",
    "__version__",
    "add_task_to_file",
    "assign_owners",
    "bake",
    "load",
    "load_task_data",
    "packnet_prune",
    "parse_classes",
    "resolve_device",
    "select",
]
