"""packtool: pack several tasks into one network with PackNet (Mallya & Lazebnik, CVPR 2018).

The public API::

    from packtool import Pack, TrainConfig, add_task, load_task_data

    pack = Pack.create("lenet", (1, 8, 8))
    data = load_task_data("digits", pack.preprocess, classes=[0, 1])
    pack, result = add_task(pack, "zero-one", data, prune=0.75, config=TrainConfig(epochs=5))
    pack.save("model.pt")
    model = Pack.load("model.pt").model_for("zero-one")   # a plain nn.Module

The lifecycle of a pack: :meth:`Pack.create` -> :func:`add_task` (train, prune, fine-tune,
freeze; again for every task) -> :meth:`Pack.model_for` or the exporters
(:mod:`packtool.exporters`). :func:`add_task_to_file` is the same on a model file, with a lock,
checkpoints and torchrun, as ``packtool add-task`` runs it.
"""

from ._version import __version__
from .config import OPTIMIZERS, TrainConfig, resolve_device
from .data import DATASETS, Preprocess, TaskData, load_task_data, parse_classes
from .errors import (
    ArchitectureError,
    CapacityError,
    DataError,
    LockError,
    PackFormatError,
    PackToolError,
    TaskError,
    one_line,
)
from .evaluate import (
    PrecisionChange,
    Score,
    TaskEvaluation,
    TaskFreeEvaluation,
    evaluate,
    evaluate_task_free,
    evaluate_tasks,
    half_precision_change,
)
from .fileio import file_lock, sha256_file
from .formats.sniff import load
from .job import add_task_to_file, create_file
from .lifecycle import add_task
from .method import PackNetPruning, Phase, assign_owners, bake, packnet_prune, select
from .models import ArchSpec, native_input_size, parse_input_size
from .pack import FREE_INITS, POLICIES, Pack
from .planner import AUTO, Forecast, Pruning, forecast, tasks_to_come
from .progress import Progress
from .records import LayerCapacity, TaskRecord, TaskResult
from .report import plot_accuracy, plot_capacity
from .taskfree import (
    SCORES,
    Identification,
    calibrate,
    default_score,
    fit_temperature,
    identify,
    task_scores,
)

__all__ = [
    "AUTO",
    "DATASETS",
    "FREE_INITS",
    "OPTIMIZERS",
    "POLICIES",
    "SCORES",
    "ArchSpec",
    "ArchitectureError",
    "CapacityError",
    "DataError",
    "Forecast",
    "Identification",
    "LayerCapacity",
    "LockError",
    "Pack",
    "PackFormatError",
    "PackNetPruning",
    "PackToolError",
    "Phase",
    "PrecisionChange",
    "Preprocess",
    "Progress",
    "Pruning",
    "Score",
    "TaskData",
    "TaskError",
    "TaskEvaluation",
    "TaskFreeEvaluation",
    "TaskRecord",
    "TaskResult",
    "TrainConfig",
    "__version__",
    "add_task",
    "add_task_to_file",
    "assign_owners",
    "bake",
    "calibrate",
    "create_file",
    "default_score",
    "evaluate",
    "evaluate_task_free",
    "evaluate_tasks",
    "file_lock",
    "fit_temperature",
    "forecast",
    "half_precision_change",
    "identify",
    "load",
    "load_task_data",
    "native_input_size",
    "one_line",
    "packnet_prune",
    "parse_classes",
    "parse_input_size",
    "plot_accuracy",
    "plot_capacity",
    "resolve_device",
    "select",
    "sha256_file",
    "task_scores",
    "tasks_to_come",
]
