"""The closed sets of values packtool's settings take, in one module that imports nothing.

The library checks settings against these, and the command line offers them in its help and
parses them without loading torch (``packtool --help`` and a usage error cost only click).
"""

from __future__ import annotations

#: ``TrainConfig.optimizer``.
OPTIMIZERS = ("sgd", "adam", "adamw")
#: ``TrainConfig.prune_scope``: the exact ratio in every layer (the paper), or across layers.
PRUNE_SCOPES = ("layer", "global")
#: What a task keeps of its own besides weights: its biases and norm state (``per_task``), or
#: task 1's, frozen and shared (``frozen``, the paper's).
POLICIES = ("per_task", "frozen")
#: How a new task's free weights start (they were released, and zeroed, by earlier tasks):
#: ``reinit``, fresh values of the network's own initialization; ``kept``, the values the task
#: that released them had trained (kept aside, see ``Pack.released``); ``zero``.
FREE_INITS = ("reinit", "kept", "zero")
#: How a task-free input's task is told (:mod:`packtool.task_id`).
SCORES = ("entropy", "max-prob", "energy", "mahalanobis")
#: The value that asks packtool to choose: ``--prune auto``, ``--task auto``.
AUTO = "auto"
#: Reduced precisions of an exported task.
PRECISIONS = ("float16", "int8")
#: The registered datasets, in the order ``packtool add-task --help`` lists them
#: (:data:`packtool.data.DATASETS` holds one entry per name).
DATASET_NAMES = ("digits", "cubs", "cars", "flowers", "imagenet", "cifar100", "sketch",
                 "wikiart")
