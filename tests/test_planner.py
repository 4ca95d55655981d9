"""The capacity planner (issue 13): --prune auto, --reserve and the forecast."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import StopAfter, synthetic_task
from torch.utils.data import Dataset

from packtool import (
    Pack,
    PackFormatError,
    PackToolError,
    TaskError,
    TrainConfig,
    add_task,
    forecast,
    load_task_data,
)
from packtool import phases as phases_module
from packtool.exporters import archive_bytes, archive_from_bytes
from packtool.formats import model_file
from packtool.formats.checkpoint import Checkpoint
from packtool.formats.digest import digest
from packtool.formats.model_file import FORMAT_VERSION, encode
from packtool.planner import (
    GRID,
    RESERVE,
    TOLERANCE,
    Pruning,
    candidates,
    noise_warning,
    plan,
    planned_reserve,
    target,
    tasks_to_come,
)
from packtool.progress import Progress
from packtool.records import LayerCapacity

CONFIG = TrainConfig(epochs=4, finetune_epochs=2, lr=0.05, device="cpu")


# -- the plan, with made-up scores --------------------------------------------------------------


def _plan(pruned, tuned, trials=3, reference=1.0, tolerance=1.0, ratios=GRID):
    tried = []

    def finetune(r):
        tried.append(r)
        return tuned(r), f"state {r}"

    return plan(list(ratios), reference, tolerance, trials, pruned, finetune), tried


def test_trials_gallop_then_bisect_above_the_safe_one():
    """Safe (passes pruned, not fine-tuned) up to 0.5; fine-tuned scores pass up to 0.8. The
    trials go 1, 3, 7 grid steps above the safe ratio while they pass, then bisect the gap."""
    def pruned(r):
        return 1.0 if r <= 0.5 else 0.5

    def tuned(r):
        return 1.0 if r <= 0.8 else 0.8

    decision, tried = _plan(pruned, tuned)
    assert tried == [0.55, 0.65, 0.85]
    assert (decision.ratio, decision.reason, decision.state) == (0.65, TOLERANCE, "state 0.65")
    scores = {c.ratio: c.val_finetuned for c in decision.search}
    assert scores[0.65] == 1.0 and scores[0.85] == 0.8 and scores[0.5] is None
    decision, tried = _plan(pruned, tuned, trials=5)
    assert tried == [0.55, 0.65, 0.85, 0.75, 0.8] and decision.ratio == 0.8  # converged
    assert decision.state == "state 0.8"
    decision, tried = _plan(pruned, lambda r: 1.0 if r <= 0.55 else 0.8)
    assert tried == [0.55, 0.65, 0.6] and decision.ratio == 0.55  # the gap bisected


def test_the_trial_budget_keeps_one_for_the_safe_ratio():
    decision, tried = _plan(lambda r: 1.0 if r <= 0.3 else 0.0, lambda r: 1.0 if r <= 0.3 else 0,
                            trials=2)
    assert tried == [0.35, 0.3] and decision.ratio == 0.3  # the first step missed
    assert decision.state == "state 0.3"
    decision, tried = _plan(lambda r: 1.0 if r <= 0.3 else 0.0, lambda r: 1.0, trials=1)
    assert tried == [0.3] and decision.ratio == 0.3  # one trial: the safe ratio only


def test_with_every_trial_the_choice_is_the_brute_force_one():
    pruned = {r: 1.0 - r for r in GRID}  # falls with the ratio
    tuned = {r: 1.0 - r / 4 for r in GRID}  # fine-tuning recovers three quarters
    tuned[0.25] = 0.0  # a dip: trying every ratio still finds the largest that passes
    brute = max(r for r in GRID if tuned[r] >= target(1.0, 10.0))
    decision, tried = _plan(pruned.get, tuned.get, trials=len(GRID), tolerance=10.0)
    assert decision.ratio == brute == 0.4 and decision.state == "state 0.4"
    safe = max(r for r in GRID if pruned[r] >= target(1.0, 10.0))
    assert tried == [r for r in GRID if r > safe]  # every candidate, once


def test_a_reserve_minimum_that_misses_the_tolerance_is_still_the_floor():
    ratios = candidates(Pruning(0.0, reserve=3).minimum)
    assert ratios[0] == 0.75 and ratios[1:] == [r for r in GRID if r > 0.75]
    decision, _ = _plan(lambda r: 0.5, lambda r: 0.6, ratios=ratios)
    assert (decision.ratio, decision.reason) == (0.75, RESERVE)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ratio": 1.0}, r"\[0, 1\) or 'auto'"), ({"ratio": "half"}, "or 'auto'"),
    ({"ratio": "auto", "tolerance": -1.0}, "tolerance"),
    ({"ratio": "auto", "trials": 0}, "auto_trials"), ({"ratio": 0.5, "reserve": -1}, "reserve"),
])
def test_bad_pruning_settings(kwargs, match):
    with pytest.raises(TaskError, match=match):
        Pruning(**kwargs)


# -- add_task with auto ------------------------------------------------------------------------


def test_noise_warning_when_validation_is_coarser_than_the_tolerance():
    """Two binomial standard errors of the reference accuracy, or the rule of three at 100%."""
    saturated = noise_warning(29, 1.0, 1.0)  # split-digits: 29 images, none wrong
    assert saturated is not None and "+/-10.3 points" in saturated
    assert "(29 images, 100.0% before pruning)" in saturated
    noisy = noise_warning(144, 0.97, 1.0)  # permuted-digits: 200 * sqrt(.97 * .03 / 144) = 2.8
    assert noisy is not None and "+/-2.8 points" in noisy
    assert noise_warning(144, 0.97, 3.0) is None  # a tolerance the split resolves
    assert noise_warning(10_000, 0.9, 1.0) is None and noise_warning(30_000, 1.0, 0.5) is None


def _base() -> Pack:
    """An MLP narrow enough that pruning costs accuracy on the ten digits."""
    return Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})


@pytest.fixture(scope="module")
def digits():
    return load_task_data("digits", _base().preprocess)


@pytest.mark.slow
def test_auto_is_the_largest_fixed_ratio_within_the_tolerance(digits):
    """Brute force: a fixed-ratio add-task at every grid ratio (each fine-tunes from the same
    trained state as the planner's trials); the planner, allowed every trial, agrees."""
    data = digits
    _, auto = add_task(_base(), "t", data, "auto", CONFIG, tolerance=3.0, auto_trials=len(GRID))
    reference = auto.prune_search[0]["val_pruned"]  # ratio 0 prunes nothing
    results = {r: add_task(_base(), "t", data, r, CONFIG)[1] for r in GRID}
    fixed = {r: result.val_accuracy for r, result in results.items()}
    assert all(result.prune_warning is None for result in results.values())  # auto's only
    assert "noise-limited" in auto.prune_warning  # ~130 validation images, 3-point tolerance
    tried = {c["ratio"]: c["val_finetuned"] for c in auto.prune_search
             if c["val_finetuned"] is not None}
    goal = target(reference, 3.0)
    for ratio, val in tried.items():
        if ratio == auto.prune or val < goal:  # finished: exactly the fixed-ratio fine-tuning
            assert val == fixed[ratio]
        else:  # stopped once it met the target: a score on the way to the fixed-ratio one
            assert goal <= val <= fixed[ratio]
    passing = sorted(r for r in GRID if fixed[r] >= goal)
    safe = max(c["ratio"] for c in auto.prune_search if c["val_pruned"] >= goal)
    # Every ratio above the safe one tried: the largest that passes (else the safe one).
    brute = max([safe, *(r for r in passing if r > safe)])
    assert auto.prune == brute and auto.prune_reason == TOLERANCE
    assert 0.0 < brute < 0.95 and len(tried) >= 2  # a real search: pruning costs accuracy here
    assert add_task(_base(), "t", data, "auto", CONFIG, tolerance=3.0,
                    auto_trials=len(GRID))[1].prune == auto.prune  # same seed, same choice


class _Epochs(Progress):
    """Counts the epochs of each phase."""

    def __init__(self) -> None:
        self.phase, self.epochs = "", []

    def phase_start(self, phase: str, epochs: int, batches: int) -> None:
        self.phase = phase

    def epoch_end(self, *args) -> None:
        self.epochs.append(self.phase)


@pytest.mark.slow
def test_the_chosen_trial_finishes_as_the_fixed_ratio_fine_tuning(digits):
    """Trials stop once they meet the target; the chosen one then finishes its fine-tuning
    from where it stopped, bit for bit the fixed-ratio add-task at that ratio."""
    auto_pack, auto = add_task(_base(), "t", digits, "auto", CONFIG, tolerance=3.0)
    fixed_pack, fixed = add_task(_base(), "t", digits, auto.prune, CONFIG)
    assert 0.0 < auto.prune < 0.95 and auto.val_accuracy == fixed.val_accuracy
    for key in fixed_pack.shared:
        assert torch.equal(auto_pack.shared[key], fixed_pack.shared[key])
        assert torch.equal(auto_pack.owners[key], fixed_pack.owners[key])
    assert torch.equal(auto_pack.tasks[0].head["weight"], fixed_pack.tasks[0].head["weight"])
    # A tolerance every ratio meets unpruned: 0.95 is safe, its trial stops before its first
    # epoch, and the only fine-tuning epochs are its finishing.
    progress = _Epochs()
    pack, result = add_task(_base(), "t", digits, "auto", CONFIG, tolerance=100.0,
                            progress=progress)
    assert result.prune == 0.95 and progress.epochs.count("finetune") == CONFIG.finetune_epochs
    fixed_pack, _ = add_task(_base(), "t", digits, 0.95, CONFIG)
    assert all(torch.equal(pack.shared[k], fixed_pack.shared[k]) for k in pack.shared)


class _Guarded(Dataset):
    """A test split that must not be read while the planner decides."""

    searching = False

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        if _Guarded.searching:
            raise AssertionError("the test split was read during the search")
        return self.inner[i]


def test_the_test_split_is_never_read_during_the_search(monkeypatch, digits):
    real_plan = phases_module.plan

    def guarded_plan(*args, **kwargs):
        _Guarded.searching = True
        try:
            return real_plan(*args, **kwargs)
        finally:
            _Guarded.searching = False

    monkeypatch.setattr(phases_module, "plan", guarded_plan)
    data = copy.copy(digits)
    data.test = _Guarded(digits.test)
    pack, result = add_task(_base(), "t", data, "auto", CONFIG)
    assert 0.0 <= result.accuracy_after_prune <= 1.0  # measured on test, after the decision
    assert pack.tasks[0].prune == result.prune


def test_auto_keeps_zero_forgetting_and_the_record():
    pack, _ = add_task(_base(), "a", synthetic_task(2, seed=0), "auto", CONFIG)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        before = pack.model_for("a")(x)
    pack, second = add_task(pack, "b", synthetic_task(3, seed=1), "auto", CONFIG)
    with torch.no_grad():
        assert torch.equal(pack.model_for("a")(x), before)
    record = pack.tasks[1]
    assert record.prune == second.prune and record.prune_reason == second.prune_reason
    assert record.prune_search == second.prune_search and len(record.prune_search) == len(GRID)
    assert record.versioned_meta().keys() >= {"prune_reason", "prune_search"}
    # with the rejection thresholds: version 5
    assert model_file.content(pack)["version"] == 5 == FORMAT_VERSION
    restored = archive_from_bytes(archive_bytes(pack))
    assert restored.tasks[1].prune_search == record.prune_search


@pytest.mark.parametrize("stop_after", [5, 7, 9])  # 4 training epochs, then three trials of 2
@pytest.mark.slow
def test_resume_mid_search_ends_bit_identical(tmp_path, stop_after, digits):
    data = digits
    settings = {"tolerance": 3.0, "auto_trials": 3}
    reference, expected = add_task(_base(), "t", data, "auto", CONFIG, **settings)
    assert sum(c["val_finetuned"] is not None for c in expected.prune_search) == 3
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(_base(), "t", data, "auto", CONFIG, **settings, checkpoint=ckpt,
                 progress=StopAfter(stop_after))
    saved = shutil.copy(ckpt, tmp_path / "saved.ckpt")
    pack, result = add_task(_base(), "t", data, "auto", CONFIG, **settings, checkpoint=ckpt,
                            resume=True)
    assert result.prune == expected.prune and result.prune_search == expected.prune_search
    for key in reference.shared:
        assert torch.equal(pack.shared[key], reference.shared[key])
        assert torch.equal(pack.owners[key], reference.owners[key])
    assert saved.exists()


@pytest.mark.slow
def test_resume_while_the_chosen_trial_finishes_ends_bit_identical(tmp_path, digits):
    config = replace(CONFIG, finetune_epochs=5)  # the chosen trial stops at 3 (this data)
    settings = {"tolerance": 3.0, "auto_trials": 3}
    counted = _Epochs()
    reference, expected = add_task(_base(), "t", digits, "auto", config, **settings,
                                   progress=counted)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):  # at the last epoch: the one before it was saved
        add_task(_base(), "t", digits, "auto", config, **settings, checkpoint=ckpt,
                 progress=StopAfter(len(counted.epochs)))
    assert Checkpoint.load(ckpt).search["continuing"]  # inside the finishing, after the search
    pack, result = add_task(_base(), "t", digits, "auto", config, **settings, checkpoint=ckpt,
                            resume=True)
    assert result.prune == expected.prune and result.prune_search == expected.prune_search
    for key in reference.shared:
        assert torch.equal(pack.shared[key], reference.shared[key])


# -- reserve ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("reserve", [1, 3])
def test_reserve_leaves_the_promised_free_share_in_every_layer(scope, reserve):
    config = TrainConfig(epochs=1, finetune_epochs=0, lr=0.05, device="cpu", prune_scope=scope)
    pack, _ = add_task(_base(), "a", synthetic_task(2, seed=0), 0.3, config)
    free_before = {c.name: c.free for c in pack.capacity()}
    pack, result = add_task(pack, "b", synthetic_task(2, seed=1), 0.1, config, reserve=reserve)
    for layer in pack.capacity():
        assert layer.free >= free_before[layer.name] * reserve / (reserve + 1)
    assert result.prune_reason == RESERVE and pack.tasks[1].metrics["reserve_raised_layers"] > 0


def test_a_reserve_the_ratio_already_meets_changes_nothing():
    config = TrainConfig(epochs=1, finetune_epochs=0, lr=0.05, device="cpu")
    data = synthetic_task(2, seed=0)
    plain, _ = add_task(_base(), "a", data, 0.9, config)
    reserved, result = add_task(_base(), "a", data, 0.9, config, reserve=1)
    assert result.prune_reason == "fixed"
    for key in plain.owners:
        assert torch.equal(plain.owners[key], reserved.owners[key])


def test_a_plan_reserves_for_the_tasks_still_to_come():
    """``Pack.create(planned_tasks=3)``: the first task reserves for two more, the second for
    one, the third for none, exactly as an explicit ``reserve`` would (bit for bit)."""
    config = TrainConfig(epochs=1, finetune_epochs=0, lr=0.05, device="cpu")
    planned = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}, planned_tasks=3)
    told = _base()
    for k, reserve in enumerate([2, 1, 0]):
        data = synthetic_task(2, seed=k)
        planned, by_plan = add_task(planned, f"t{k}", data, 0.1, config)
        told, by_hand = add_task(told, f"t{k}", data, 0.1, config, reserve=reserve)
        assert by_plan.prune_reason == by_hand.prune_reason == (RESERVE if reserve else "fixed")
        for key in told.owners:
            assert torch.equal(planned.owners[key], told.owners[key])
            assert torch.equal(planned.shared[key], told.shared[key])
    assert planned.planned_tasks == 3 and told.planned_tasks is None
    _, beyond = add_task(planned, "t3", synthetic_task(2, seed=3), 0.1, config)
    assert beyond.prune_reason == "fixed"  # past the plan: no reserve
    _, explicit = add_task(Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}, planned_tasks=3),
                           "a", synthetic_task(2, seed=0), 0.1, config, reserve=0)
    assert explicit.prune_reason == "fixed"  # an explicit reserve wins over the plan


def test_the_plan_counts_the_tasks_still_to_come():
    assert [tasks_to_come(3, packed) for packed in range(5)] == [3, 2, 1, 0, 0]
    assert [planned_reserve(3, packed) for packed in range(5)] == [2, 1, 0, 0, 0]
    assert tasks_to_come(None, 2) == planned_reserve(None, 0) == 0


def test_the_plan_survives_the_model_file_and_the_archive(tmp_path):
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}, planned_tasks=4)
    pack, _ = add_task(pack, "a", synthetic_task(2, seed=0), 0.5,
                       TrainConfig(epochs=1, finetune_epochs=0, device="cpu"))
    pack.save(tmp_path / "m.pt")
    assert Pack.load(tmp_path / "m.pt").planned_tasks == 4
    assert archive_from_bytes(archive_bytes(pack)).planned_tasks == 4
    unplanned = _base()
    # files without a plan are written as before
    assert "planned_tasks" not in model_file.meta(unplanned)
    for bad in (0, 256, 2.0, "3", True):
        with pytest.raises(ValueError, match="planned tasks"):
            Pack.create("mlp", (1, 8, 8), planned_tasks=bad)
    state = model_file.content(pack)
    content = {k: v for k, v in state.items() if k not in ("format", "version", "digest")}
    content["meta"] = content["meta"].replace('"planned_tasks": 4', '"planned_tasks": -1')
    with pytest.raises(PackFormatError, match="damaged: ValueError: planned tasks"):
        model_file.from_state(encode(content, state["version"]))


# -- forecast -----------------------------------------------------------------------------------


def test_forecast_counts_tasks_that_fit_in_the_fullest_layer():
    layers = [LayerCapacity("a", 100, 40, (40, 20)), LayerCapacity("b", 100, 30, (50, 20))]
    found = forecast(layers, share=0.1)
    assert found.free_fraction == 70 / 200
    assert found.median_share == pytest.approx((90 / 200 + 40 / 200) / 2)
    assert found.tasks_fit == 0  # a task of 32.5% does not fit in b's 30%
    assert found.tasks_fit_at_share == 3
    assert forecast([LayerCapacity("a", 10, 10, ())]).tasks_fit is None
    with pytest.raises(PackToolError, match="share"):
        forecast(layers, share=0.0)


def test_a_damaged_paused_trial_in_a_checkpoint_is_a_format_error(tmp_path, digits):
    """The paused trial inside a search checkpoint is checked as a checkpoint of its own: a
    file whose digest was recomputed over a broken one is refused, not half-resumed."""
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):  # 4 training epochs, a trial that passed, one more
        add_task(_base(), "t", digits, "auto", CONFIG, tolerance=3.0, checkpoint=ckpt,
                 progress=StopAfter(7))
    raw = torch.load(ckpt, weights_only=True)
    assert raw["search"]["best"]["format"] == "packtool.checkpoint"
    del raw["search"]["best"]["net"]
    raw["digest"] = digest({k: v for k, v in raw.items() if k != "digest"})
    torch.save(raw, ckpt)
    with pytest.raises(PackFormatError, match="is damaged"):
        Checkpoint.load(ckpt)
