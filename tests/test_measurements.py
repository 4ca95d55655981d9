"""What add-task reports is what evaluating the frozen task measures, also where it measures a
network once for two figures (issue 25: nothing is paid twice)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import FAST, init_model, ok
from test_data import write_image
from torch.utils.data import TensorDataset

from packtool import Pack, TrainConfig, add_task, evaluate, load_task_data
from packtool.data import chance_accuracy
from packtool.evaluation import chance_warning


@pytest.mark.parametrize(("prune", "finetune"), [(0.0, 0), (0.5, 0), (0.0, 1), (0.5, 1)])
def test_reported_accuracies_are_the_frozen_networks(make_task, prune, finetune):
    data = make_task(3, seed=4)
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    config = TrainConfig(epochs=1, finetune_epochs=finetune, lr=0.05, finetune_lr=0.01,
                         device="cpu")
    pack, result = add_task(pack, "t", data, prune, config)
    assert result.accuracy == evaluate(pack.model_for("t"), data.test).accuracy
    if prune == 0.0:  # nothing released: the same network before and after pruning
        assert result.accuracy_after_prune == result.accuracy_before_prune
    if finetune == 0:  # no fine-tuning: the frozen network is the pruned one
        assert result.accuracy == result.accuracy_after_prune


# ----------------------------------------------------------------------------------------------
# A task that learned nothing is said to have (it still froze and owns weights)
# ----------------------------------------------------------------------------------------------


class _Labelled:
    """A split as chance_warning reads it: ``labels`` and a length."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)


def test_chance_is_the_most_common_class_and_the_warning_its_95_percent_band():
    split = _Labelled([0] * 60 + [1] * 20 + [2] * 20)  # always answering 0 scores 60%
    assert chance_accuracy(split) == 0.6
    band = 2 * math.sqrt(0.6 * 0.4 / 100)  # two binomial standard errors: 9.8 points
    line = chance_warning(0.6 + band - 1e-9, split)
    assert line.startswith("test accuracy 69.80% is no better than always answering the most "
                           "common class (60.00% of the 100 test images)")
    assert chance_warning(0.6 + band + 1e-9, split) is None
    assert chance_warning(0.1, split) is not None  # below chance is no better either
    assert chance_warning(0.0, _Labelled([1] * 9)) is None  # one class: missing_classes says it
    assert chance_accuracy(_Labelled([])) is None and chance_accuracy(TensorDataset()) is None


def test_add_task_says_when_its_task_learned_nothing(tmp_path):
    """Every image the same gray in both classes: nothing to learn, the test accuracy is the
    most common class's share, and add-task says so in its table and its --json."""
    for split, per_class in (("train", 12), ("test", 6)):
        for name in ("cats", "dogs"):
            for i in range(per_class):
                write_image(tmp_path / "same" / split / name / f"{i}.png", (128, 128, 128))
    model = init_model(tmp_path / "model.pt")
    args = ("add-task", model, "--data", tmp_path / "same", "--prune", "0.5", *FAST)
    result = ok(*args, "--task", "first")
    assert "Note: test accuracy 50.00% is no better than always answering the most common " \
           "class (50.00% of the 12 test images): the task learned little" in result.stdout
    result = ok(*args, "--task", "second", "--json")
    doc = json.loads(result.stdout)
    assert doc["accuracy"] == 0.5 and doc["accuracy_warning"].startswith("test accuracy 50.00%")
    assert f"warning: {doc['accuracy_warning']}" in result.stderr  # said when measured, too
    assert doc["accuracy_warning"].endswith("more --epochs, another --lr, or a network suited "
                                            "to the images may help")
    # In Python, the same note names the arguments (a plan names its keys so, too).
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 8})
    data = load_task_data(str(tmp_path / "same"), pack.preprocess)
    _, in_python = add_task(pack, "t", data, 0.5, TrainConfig(epochs=1, finetune_epochs=1,
                                                              device="cpu"))
    assert "more `epochs`, another `lr`" in in_python.accuracy_warning
