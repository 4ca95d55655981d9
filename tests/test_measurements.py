"""What add-task reports is what evaluating the frozen task measures, also where it measures a
network once for two figures (issue 25: nothing is paid twice)."""

from __future__ import annotations

import pytest

from packtool import Pack, TrainConfig, add_task, evaluate


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
