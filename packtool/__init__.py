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

Names are loaded on first use (:mod:`packtool._lazy`): ``import packtool`` imports nothing
heavy, and a name costs only the modules it needs.
"""

from ._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "": ("data", "exporters"),
    "._version": ("__version__",),
    ".choices": ("AUTO", "FREE_INITS", "OPTIMIZERS", "POLICIES", "SCORES"),
    ".config": ("TrainConfig", "resolve_device"),
    ".data.preprocess": ("Preprocess",),
    ".data.registry": ("DATASETS", "TaskData", "load_task_data"),
    ".errors": ("ArchitectureError", "CapacityError", "DataError", "LockError",
                "PackFormatError", "PackToolError", "TaskError", "one_line"),
    ".evaluation": ("PrecisionChange", "Score", "TaskEvaluation", "TaskFreeEvaluation",
                    "evaluate", "evaluate_task_free", "evaluate_tasks", "half_precision_change"),
    ".fileio": ("file_lock", "sha256_file"),
    ".formats.files": ("load",),
    ".job": ("add_task_to_file", "create_file"),
    ".lifecycle": ("add_task",),
    ".method": ("PackNetPruning", "Phase", "assign_owners", "bake", "packnet_prune", "select"),
    ".models": ("ArchSpec", "native_input_size"),
    ".parse": ("parse_classes", "parse_input_size"),
    ".pack": ("Pack",),
    ".planner": ("Forecast", "Pruning", "forecast", "tasks_to_come"),
    ".progress": ("Progress",),
    ".records": ("LayerCapacity", "TaskRecord", "TaskResult"),
    ".report": ("plot_accuracy", "plot_capacity"),
    ".task_id": ("Identification", "identify", "task_scores"),
    ".taskfree": ("calibrate", "default_score", "fit_temperature"),
})
