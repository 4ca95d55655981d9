"""Where a new task's free weights start (issue 13): reinit, kept, zero."""

from __future__ import annotations

import pytest
import torch
from conftest import StopAfter, synthetic_task

from packtool import FREE_INITS, Pack, Progress, TrainConfig, add_task, load
from packtool.exporters import archive_bytes, archive_from_bytes
from packtool.models import build_network
from packtool.training import prepare

CONFIG = TrainConfig(epochs=2, finetune_epochs=1, lr=0.05, batch_size=16, device="cpu")


def _first(free_init: str) -> Pack:
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}, free_init=free_init)
    return add_task(pack, "a", synthetic_task(2, seed=0), 0.75, CONFIG)[0]


def _start(pack: Pack) -> dict[str, torch.Tensor]:
    """The free weights task 2 starts training from."""
    session = prepare(pack, 2, synthetic_task(3, seed=1), CONFIG, torch.device("cpu"), None,
                      Progress())
    return {key: module.get_parameter(name + "_orig").detach()[pack.owners[key] == 0]
            for key, (module, name) in session.packed.items()}


def test_released_weights_are_zero_at_rest_whatever_the_setting():
    for free_init in FREE_INITS:
        pack = _first(free_init)
        for key, weight in pack.shared.items():
            assert bool((weight[pack.owners[key] == 0] == 0).all())
        assert pack.free_fraction == pytest.approx(0.75, abs=0.01)


def test_zero_starts_from_zero():
    pack = _first("zero")
    assert all(bool((v == 0).all()) for v in _start(pack).values())
    assert pack.released == {}


def test_reinit_starts_from_the_networks_own_initialization():
    pack = _first("reinit")
    with torch.random.fork_rng():
        torch.manual_seed(CONFIG.seed + 2)  # the task's seed and index
        fresh = dict(build_network(pack.spec).named_parameters())
    for key, values in _start(pack).items():
        assert torch.equal(values, fresh[key].detach()[pack.owners[key] == 0])
        assert bool((values != 0).any())


def test_kept_starts_from_what_the_releasing_task_trained(tmp_path):
    pack = _first("kept")
    assert set(pack.released) == set(pack.shared)
    for key, values in _start(pack).items():
        assert torch.equal(values, pack.released[key]) and bool((values != 0).any())
    pack.save(tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt")
    assert loaded.free_init == "kept"
    assert all(torch.equal(loaded.released[k], v) for k, v in pack.released.items())
    served = archive_from_bytes(archive_bytes(pack))  # serving only: no free values kept
    assert served.free_init == "kept" and served.released == {}


def test_kept_values_move_on_with_each_task_and_forgetting_stays_zero():
    pack = _first("kept")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = pack.model_for("a")(x)
    pack, _ = add_task(pack, "b", synthetic_task(3, seed=1), 0.5, CONFIG)
    with torch.no_grad():
        assert torch.equal(pack.model_for("a")(x), before)
    for key, values in pack.released.items():
        assert values.numel() == int((pack.owners[key] == 0).sum())


def test_kept_resumes_mid_finetuning_bit_identical(tmp_path):
    config = TrainConfig(epochs=2, finetune_epochs=3, lr=0.05, batch_size=16, device="cpu")
    data = synthetic_task(3, seed=1)
    # One first pack for all three runs: a record's creation time is part of its digest, which
    # the checkpoint checks, and two packs built a second apart differ there.
    first = _first("kept")
    reference, _ = add_task(first, "b", data, 0.5, config)
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(KeyboardInterrupt):
        add_task(first, "b", data, 0.5, config, checkpoint=ckpt,
                 progress=StopAfter(4))  # fine-tuning epoch 2
    pack, _ = add_task(first, "b", data, 0.5, config, checkpoint=ckpt, resume=True)
    for key in reference.shared:
        assert torch.equal(pack.shared[key], reference.shared[key])
        assert torch.equal(pack.released[key], reference.released[key])


def test_the_setting_is_checked():
    with pytest.raises(Exception, match="free_init"):
        Pack.create("mlp", (1, 8, 8), free_init="random")
