"""Zero forgetting: old tasks stay bit-identical while new tasks are added (issue 3)."""

from __future__ import annotations

import pytest
import torch

from packtool import Pack, TrainConfig, add_task

ARCHS = {
    "mlp": ("mlp", (1, 8, 8), {"hidden": 32}),
    "bn-conv": ("lenet", (1, 8, 8), {"width": 4}),
    "resnet": ("nets:tiny_resnet", (3, 8, 8), {}),
}
OPTIMIZERS = {
    "sgd-momentum-wd": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.05},
    "adam-wd": {"optimizer": "adam", "weight_decay": 0.05},
    "adamw": {"optimizer": "adamw", "weight_decay": 0.05},
}


def _snapshot(pack: Pack, name: str, x: torch.Tensor) -> dict:
    record = pack.task(name)
    owned = {k: o == record.index for k, o in pack.owners.items()}
    with torch.no_grad():
        out = pack.model_for(name)(x)
    return {
        "out": out,
        "weights": {k: pack.shared[k][m].clone() for k, m in owned.items()},
        "owned": owned,
        "private": {k: v.clone() for k, v in pack.private_state(record).items()},
        "head": {k: v.clone() for k, v in record.head.items()},
    }


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_old_tasks_bit_identical_after_four_more(arch, optim, make_task):
    name, size, kwargs = ARCHS[arch]
    pack = Pack.create(name, size, kwargs=kwargs)
    config = TrainConfig(epochs=1, finetune_epochs=1, lr=0.05, finetune_lr=0.01,
                         batch_size=16, device="cpu", **OPTIMIZERS[optim])
    x = torch.randn(12, *size, generator=torch.Generator().manual_seed(1))
    snapshots = {}
    for t in range(5):
        data = make_task(2 + t % 3, seed=t, shape=size, n=48)
        pack, _ = add_task(pack, f"task{t + 1}", data, 0.5, config)
        snapshots[f"task{t + 1}"] = _snapshot(pack, f"task{t + 1}", x)
        for old, snap in snapshots.items():
            now = _snapshot(pack, old, x)
            assert torch.equal(now["out"], snap["out"]), f"{old} changed after task{t + 1}"
            for key, mask in snap["owned"].items():
                assert torch.equal(now["owned"][key], mask), f"{old} lost weights in {key}"
                assert torch.equal(now["weights"][key], snap["weights"][key])
            for part in ("private", "head"):
                for key, value in snap[part].items():
                    assert torch.equal(now[part][key], value), f"{old} {part} {key} drifted"


def test_paper_policy_freezes_norm_statistics_after_task_one(make_task):
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4}, policy="frozen")
    config = TrainConfig(epochs=2, finetune_epochs=1, lr=0.05, device="cpu", weight_decay=0.01)
    x = torch.randn(8, 1, 8, 8)
    pack, _ = add_task(pack, "first", make_task(3, seed=0), 0.5, config)
    stats = {k: v.clone() for k, v in pack.tasks[0].private.items()}
    with torch.no_grad():
        out = pack.model_for("first")(x)
    pack, _ = add_task(pack, "second", make_task(2, seed=1), 0.5, config)
    pack, _ = add_task(pack, "third", make_task(4, seed=2), 0.0, config)
    assert pack.tasks[1].private == {} and pack.tasks[2].private == {}
    assert any("running_mean" in k for k in stats)
    for key, value in stats.items():
        assert torch.equal(pack.tasks[0].private[key], value)
    with torch.no_grad():
        assert torch.equal(pack.model_for("first")(x), out)


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_finetuning_without_the_mask_multiply_is_bit_identical(optim, make_task, monkeypatch):
    """Released weights are zero at rest and the guard keeps them so: fine-tuning skips the
    multiply by the mask. Forcing the multiply everywhere gives bit-identical packs."""
    from torch.nn.utils import prune

    from packtool import method

    config = TrainConfig(epochs=2, finetune_epochs=2, lr=0.05, batch_size=16, device="cpu",
                         **OPTIMIZERS[optim])
    x = torch.randn(4, 1, 8, 8)

    def build() -> Pack:
        pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
        for t in range(3):
            pack, _ = add_task(pack, f"t{t}", make_task(2, seed=t), 0.5, config)
        return pack

    skipped = build()
    monkeypatch.setattr(method.PackNetPruning, "apply_mask",
                        lambda self, module: prune.BasePruningMethod.apply_mask(self, module))
    multiplied = build()
    for key in skipped.shared:
        assert torch.equal(skipped.shared[key], multiplied.shared[key])
        assert torch.equal(skipped.owners[key], multiplied.owners[key])
    with torch.no_grad():
        for name in skipped.task_names:
            assert torch.equal(skipped.model_for(name)(x), multiplied.model_for(name)(x))


def test_a_pack_whose_released_weights_are_not_zero_is_refused(make_task):
    pack, _ = add_task(Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 8}), "t",
                       make_task(2, seed=0), 0.5, TrainConfig(epochs=1, finetune_epochs=0,
                                                             device="cpu"))
    key = next(iter(pack.shared))
    shared = {k: v.clone() for k, v in pack.shared.items()}
    shared[key][pack.owners[key] == 0] = 1.0
    with pytest.raises(ValueError, match="not zero"):
        Pack(pack.spec, shared, pack.owners, pack.initial_private, pack.tasks)


def test_finetuning_skips_the_multiply_only_when_it_changes_nothing():
    from packtool.method import Phase, packnet_prune, select

    layer = torch.nn.Linear(4, 3)
    owners = torch.tensor([[1, 0, 2, 2]] * 3, dtype=torch.uint8)
    with torch.no_grad():
        layer.weight[owners == 0] = 0.0
    packnet_prune(layer, "weight", owners, 2, Phase.FINETUNE)
    select(layer, 2, Phase.FINETUNE)
    assert layer.weight.data_ptr() == layer.weight_orig.data_ptr()  # released are zero: skip
    with torch.no_grad():
        layer.weight_orig[owners == 0] = 0.5
    select(layer, 2, Phase.FINETUNE)
    assert layer.weight.data_ptr() != layer.weight_orig.data_ptr()  # not zero: multiply
    select(layer, 1, Phase.FINETUNE)  # an old task: task 2's weights are masked, not zero
    assert torch.equal(layer.weight, layer.weight_orig * (owners == 1))
