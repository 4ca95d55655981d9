"""Interrupted add-task runs resume from their last epoch with the same result (issue 7)."""

from __future__ import annotations

import pytest
import torch

from packtool import Pack, PackFormatError, Progress, TaskError, TrainConfig, add_task
from packtool.formats import model_file
from packtool.formats.checkpoint import Checkpoint

CONFIG = TrainConfig(epochs=3, finetune_epochs=2, lr=0.05, finetune_lr=0.01, batch_size=16,
                     device="cpu", optimizer="adamw", weight_decay=0.01, lr_decay_epochs=2)


def _base(make_task) -> Pack:
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    pack, _ = add_task(pack, "first", make_task(2, seed=0), 0.5, CONFIG)
    return pack


class _InterruptAt(Progress):
    def __init__(self, phase: str, epoch: int):
        self.phase, self.epoch, self.current = phase, epoch, None

    def phase_start(self, phase, epochs, batches):
        self.current = phase

    def epoch_end(self, epoch, loss, accuracy, val_accuracy):
        if (self.current, epoch) == (self.phase, self.epoch):
            raise KeyboardInterrupt


def _assert_same(a: Pack, b: Pack) -> None:
    assert model_file.to_bytes(a) != b""
    assert model_file.meta(a)["tasks"][-1]["metrics"] == model_file.meta(b)["tasks"][-1]["metrics"]
    for key in a.shared:
        assert torch.equal(a.shared[key], b.shared[key])
        assert torch.equal(a.owners[key], b.owners[key])
    for ra, rb in zip(a.tasks, b.tasks):
        for part in ("head", "private"):
            for key, value in getattr(ra, part).items():
                assert torch.equal(value, getattr(rb, part)[key])


@pytest.mark.parametrize(("phase", "epoch"), [("train", 1), ("train", 3), ("finetune", 1)])
def test_resumed_run_matches_uninterrupted(make_task, tmp_path, phase, epoch):
    data = make_task(3, seed=1)
    reference = _base(make_task)
    reference, _ = add_task(reference, "second", data, 0.5, CONFIG,
                            checkpoint=tmp_path / "ref.ckpt")

    pack = _base(make_task)
    ckpt = tmp_path / "run.ckpt"
    before = model_file.to_bytes(pack)
    with pytest.raises(KeyboardInterrupt):
        add_task(pack, "second", data, 0.5, CONFIG, checkpoint=ckpt,
                      progress=_InterruptAt(phase, epoch))
    assert model_file.to_bytes(pack) == before
    # An epoch reported done is saved: the resume continues after it.
    saved = Checkpoint.load(ckpt)
    assert (saved.phase, saved.epoch) == (phase, epoch)
    pack, _ = add_task(pack, "second", data, 0.5, CONFIG, checkpoint=ckpt, resume=True)
    _assert_same(pack, reference)


def test_stale_checkpoint_is_reported_not_used(make_task, tmp_path):
    pack = _base(make_task)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(pack, "second", make_task(3, seed=1), 0.5, CONFIG, checkpoint=ckpt,
                      progress=_InterruptAt("train", 2))
    stale = ckpt.read_bytes()
    with pytest.raises(TaskError, match=r"interrupted add-task \(task 'second' after 2 of 3 "
                                        r"training epochs\)"):
        add_task(pack, "second", make_task(3, seed=1), 0.5, CONFIG, checkpoint=ckpt)
    assert ckpt.read_bytes() == stale
    with pytest.raises(TaskError, match="prune differ"):
        add_task(pack, "second", make_task(3, seed=1), 0.75, CONFIG, checkpoint=ckpt, resume=True)
    assert len(pack.tasks) == 1


def test_resume_without_checkpoint_starts_over(make_task, tmp_path):
    pack = _base(make_task)
    messages = []

    class Collect(Progress):
        def message(self, text):
            messages.append(text)

    pack, _ = add_task(pack, "second", make_task(3, seed=1), 0.5, CONFIG,
                       checkpoint=tmp_path / "c.ckpt", resume=True, progress=Collect())
    assert any("starting from the beginning" in m for m in messages)
    assert pack.task_names == ["first", "second"]


def test_checkpoints_store_no_masks_and_the_best_epoch_once(make_task, tmp_path):
    """Format 2: masks are derived from the owners, and a best epoch that is the last one is
    the network itself; both stay out of the file, and resuming restores them."""
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(_base(make_task), "second", make_task(3, seed=1), 0.5, CONFIG,
                 checkpoint=ckpt, progress=_InterruptAt("finetune", 2))
    raw = torch.load(ckpt, weights_only=True)
    assert raw["version"] == 2 and raw["net"] and not any(k.endswith("_mask") for k in raw["net"])
    assert (raw["best_state"] is None) == raw["best_is_net"]
    saved = Checkpoint.load(ckpt)
    assert saved.best_state is not None  # the network's, when it was stored once
    # A best epoch before the last one is stored apart, and read back as stored.
    earlier = {k: v + 1 if v.is_floating_point() else v for k, v in saved.net.items()}
    saved.best_state, saved.best_is_net = earlier, False
    saved.save(tmp_path / "again.ckpt")
    again = Checkpoint.load(tmp_path / "again.ckpt")
    assert all(torch.equal(again.best_state[k], earlier[k]) for k in earlier)


def test_a_checkpoint_keeps_the_growth_decision_and_refuses_a_damaged_one(make_task, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(_base(make_task), "second", make_task(3, seed=1), 0.5, CONFIG,
                 checkpoint=ckpt, progress=_InterruptAt("finetune", 1), grow="auto")  # trials
    # have no fine-tuning: this is the task's own run
    saved = Checkpoint.load(ckpt)
    assert saved.grown["grow"] >= 0 and len(saved.grown["search"]) >= 2
    for bad in ({"grow": "x", "search": []}, {"grow": 0.25}, [0.25]):
        saved.grown = bad
        saved.save(ckpt)  # a fresh digest: the content itself is wrong
        with pytest.raises(PackFormatError, match="growth decision is not"):
            Checkpoint.load(ckpt)


def test_a_checkpoint_of_a_newer_format_is_refused_as_such(make_task, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(_base(make_task), "second", make_task(3, seed=1), 0.5, CONFIG,
                 checkpoint=ckpt, progress=_InterruptAt("train", 2))
    raw = torch.load(ckpt, weights_only=True)
    raw["version"] = 3
    torch.save(raw, ckpt)
    with pytest.raises(PackFormatError, match="written by a newer packtool"):
        Checkpoint.load(ckpt)
