"""packtool: pack several tasks into one network with PackNet (Mallya & Lazebnik, CVPR 2018).

::

    import packtool

    pack = packtool.create("lenet", (1, 8, 8))
    data = packtool.load_task_data("digits", pack.preprocess, classes=[0, 1])
    pack, result = packtool.add_task(pack, "zero-one", data, prune=0.75,
                                     config=packtool.TrainConfig(epochs=5))
    packtool.save(pack, "model.pt")
    model = packtool.load("model.pt").model_for("zero-one")   # a plain nn.Module

The lifecycle of a pack: :func:`create` -> :func:`add_task` (train, prune, fine-tune, freeze;
again for every task) -> :meth:`Pack.model_for`, :func:`evaluate_tasks`, or the exporters
(:mod:`packtool.exporters`: ONNX files, the archive, serving). :func:`create_file` and
:func:`add_task_to_file` are the same on a model file, with a lock, checkpoints and torchrun, as
``packtool init`` and ``packtool add-task`` run them. ``docs/api.md`` describes every name here.

Names are loaded on first use (:mod:`packtool._lazy`): ``import packtool`` imports nothing
heavy, and a name costs only the modules it needs.
"""

from ._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, {
    "": ("data", "exporters"),
    "._version": ("__version__",),
    ".config": ("TrainConfig",),
    ".data.preprocess": ("Preprocess",),
    ".data.registry": ("DATASETS", "TaskData", "load_task_data", "task_data"),
    ".errors": ("ArchitectureError", "CapacityError", "DataError", "LockError",
                "PackFormatError", "PackToolError", "TaskError"),
    ".evaluation": ("TaskEvaluation", "evaluate", "evaluate_tasks"),
    ".formats.files": ("load", "save"),
    ".identification": ("TaskFreeEvaluation", "evaluate_task_free", "evaluate_unknown"),
    ".job": ("add_task_to_file", "create_file"),
    ".lifecycle": ("add_task",),
    ".pack": ("Pack", "create"),
    ".progress": ("Progress",),
    ".records": ("TaskRecord", "TaskResult"),
}, kept={  # names of earlier versions' packtool namespace: import them from their modules
    ".choices": ("AUTO", "FREE_INITS", "OPTIMIZERS", "POLICIES", "SCORES"),
    ".device": ("resolve_device",),
    ".errors": ("one_line",),
    ".evaluation": ("Measurement", "PrecisionChange", "half_precision_change"),
    ".fileio": ("file_lock", "sha256_file"),
    ".formats.weights": ("read_weights",),
    ".method": ("PackNetPruning", "Phase", "assign_owners", "bake", "packnet_prune", "select"),
    ".models": ("ArchSpec", "native_input_size"),
    ".parse": ("parse_classes", "parse_input_size"),
    ".planner": ("Forecast", "Pruning", "forecast", "tasks_to_come"),
    ".records": ("LayerCapacity",),
    ".report": ("plot_accuracy", "plot_capacity"),
    ".task_id": ("Identification", "identify", "task_scores"),
    ".taskfree": ("calibrate", "default_score", "fit_temperature"),
})
