"""The PackNet pruning method and owner-index operations (packtool.method)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from packtool import method as method_module
from packtool.method import (
    PackNetPruning,
    Phase,
    active_mask,
    assign_owners,
    bake,
    packnet_prune,
    release_count,
    select,
    smallest_k,
    trainable_mask,
)

OWNERS = torch.tensor([0, 1, 2, 3, 0, 2], dtype=torch.uint8)


@pytest.mark.parametrize(
    ("task", "phase", "active", "trainable"),
    [
        (3, Phase.TRAIN, [1, 1, 1, 0, 1, 1], [1, 0, 0, 0, 1, 0]),
        (3, Phase.FINETUNE, [0, 1, 1, 1, 0, 1], [0, 0, 0, 1, 0, 0]),
        (2, Phase.EVAL, [0, 1, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]),
        (1, Phase.EVAL, [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]),
    ],
)
def test_masks_follow_the_owner_table(task, phase, active, trainable):
    assert active_mask(OWNERS, task, phase).tolist() == [bool(v) for v in active]
    assert trainable_mask(OWNERS, task, phase).tolist() == [bool(v) for v in trainable]


def test_apply_reparametrizes_like_torch_prune():
    layer = nn.Linear(3, 2)
    owners = torch.tensor([[1, 2, 0], [2, 1, 1]], dtype=torch.uint8)
    packnet_prune(layer, "weight", owners, task=1, phase=Phase.EVAL)
    assert prune.is_pruned(layer)
    names = dict(layer.named_parameters())
    assert "weight_orig" in names and "weight" not in names
    assert layer.weight_mask.dtype == torch.float32
    assert layer.weight_owners.dtype == torch.uint8
    assert torch.equal(layer.weight_mask, (owners == 1).float())
    assert torch.equal(layer.weight, layer.weight_orig * (owners == 1))


def test_select_is_non_destructive_and_reversible():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    orig = layer.weight.detach().clone()
    owners = torch.randint(0, 4, (4, 4), dtype=torch.uint8)
    packnet_prune(layer, "weight", owners.clone(), task=3, phase=Phase.EVAL)
    x = torch.randn(2, 4)
    out3 = layer(x)
    select(layer, 1, Phase.EVAL)
    assert torch.equal(layer.weight_mask, ((owners >= 1) & (owners <= 1)).float())
    select(layer, 3, Phase.EVAL)
    assert torch.equal(layer(x), out3)
    assert torch.equal(layer.weight_orig, orig)
    assert torch.equal(layer.weight_owners, owners)


def test_apply_rejects_bad_owners_and_double_application():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="uint8"):
        PackNetPruning.apply(layer, "weight", torch.zeros(2, 3), 1, Phase.EVAL)
    packnet_prune(layer, "weight", torch.zeros(2, 3, dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="already"):
        packnet_prune(layer, "weight", torch.zeros(2, 3, dtype=torch.uint8), 1)


def test_bake_gives_plain_module_and_leaves_the_original():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    owners = torch.tensor([[1, 0, 2, 1]] * 4, dtype=torch.uint8)
    packnet_prune(net[0], "weight", owners, task=1)
    x = torch.randn(3, 4)
    expected = net(x)
    plain = bake(net)
    assert set(plain.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert not plain[0]._forward_pre_hooks
    assert torch.equal(plain(x), expected)
    assert prune.is_pruned(net)  # the original keeps its reparametrization


def test_smallest_k_exact_with_ties_broken_by_index():
    scores = torch.tensor([0.5, 0.1, 0.5, 0.5, 0.2, 0.5])
    assert smallest_k(scores, 3).tolist() == [True, True, False, False, True, False]
    assert smallest_k(torch.zeros(10), 4).tolist() == [True] * 4 + [False] * 6
    assert not smallest_k(scores, 0).any()
    assert smallest_k(scores, 6).all()


@pytest.mark.parametrize("seed", range(5))
def test_smallest_k_matches_a_stable_sort(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 20, (1000,), generator=g).float() / 7  # many ties
    k = int(torch.randint(1, 1000, (1,), generator=g))
    order = torch.sort(scores, stable=True).indices
    expected = torch.zeros(1000, dtype=torch.bool)
    expected[order[:k]] = True
    assert torch.equal(smallest_k(scores, k), expected)


@pytest.mark.parametrize("seed", range(3))
def test_chunked_selection_matches_a_stable_sort_across_chunk_borders(monkeypatch, seed):
    """Chunks of 7: ties at the cut straddle chunk borders; scores spanning many float
    exponents (and infinity) exercise both radix passes; a layer with owned weights selects
    among its free ones only."""
    monkeypatch.setattr(method_module, "CHUNK", 7)
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randint(0, 6, (200,), generator=g).float()
              * torch.tensor(10.0) ** torch.randint(-30, 30, (200,), generator=g))
    scores[::37] = float("inf")
    for k in (1, 57, 100, 199):
        expected = torch.zeros(200, dtype=torch.bool)
        expected[torch.sort(scores, stable=True).indices[:k]] = True
        assert torch.equal(smallest_k(scores, k), expected)
    weight = torch.randn(20, 10, generator=g).round(decimals=1)  # ties
    owners = (torch.rand(20, 10, generator=g) < 0.3).to(torch.uint8)
    free = owners.flatten() == 0
    new = assign_owners({"w": weight}, {"w": owners}, task=2, ratio=0.5)["w"]
    order = torch.sort(weight.flatten()[free].abs(), stable=True).indices
    released = torch.zeros(int(free.sum()), dtype=torch.bool)
    released[order[:round(0.5 * int(free.sum()))]] = True
    assert torch.equal(new.flatten()[free] == 0, released)
    assert torch.equal(new.flatten()[~free], owners.flatten()[~free])  # owned: untouched


def test_selection_refuses_nan():
    with pytest.raises(ValueError, match="without NaN"):
        smallest_k(torch.tensor([0.1, float("nan"), 0.3]), 1)


def _layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (30, 7), "b.weight": (5, 3, 3, 3), "c.weight": (11,)}
    weights = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    owners = {k: torch.randint(0, 3, s, generator=g, dtype=torch.uint8) for k, s in shapes.items()}
    return weights, owners


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 0.999])
def test_assign_owners_per_layer_exact_counts(ratio):
    weights, owners = _layers()
    before = {k: v.clone() for k, v in owners.items()}
    new = assign_owners(weights, owners, task=3, ratio=ratio)
    for key, own in owners.items():
        assert torch.equal(own, before[key]), "input owners must not be modified"
        free = int((own == 0).sum())
        released = int((new[key] == 0).sum())
        assert released == release_count(free, ratio) == round(ratio * free)
        assert int((new[key] == 3).sum()) == free - released
        # earlier tasks' weights keep their owner; owned + free = total
        assert torch.equal(new[key][own != 0], own[own != 0])
        counts = torch.bincount(new[key].flatten().long(), minlength=4)
        assert int(counts.sum()) == own.numel()
        # the kept weights are the largest in magnitude among the free ones
        kept = weights[key][new[key] == 3].abs()
        dropped = weights[key][(own == 0) & (new[key] == 0)].abs()
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max()


def test_assign_owners_global_scope_exact_total():
    weights, owners = _layers(1)
    new = assign_owners(weights, owners, task=3, ratio=0.6, scope="global")
    free = sum(int((o == 0).sum()) for o in owners.values())
    released = sum(int((n == 0).sum()) for n in new.values())
    assert released == round(0.6 * free)
    kept = torch.cat([weights[k][new[k] == 3].abs() for k in new])
    dropped = torch.cat([weights[k][(owners[k] == 0) & (new[k] == 0)].abs() for k in new])
    assert kept.min() >= dropped.max()


def test_assign_owners_rejects_bad_input():
    weights, owners = _layers()
    with pytest.raises(ValueError, match="task >= 2"):
        assign_owners(weights, owners, task=2, ratio=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        assign_owners(weights, owners, task=3, ratio=1.0)
    with pytest.raises(ValueError, match="scope"):
        assign_owners(weights, owners, task=3, ratio=0.5, scope="row")


def test_all_ones_mask_skips_the_multiply_with_the_same_values():
    layer = nn.Linear(4, 3)
    owners = torch.tensor([[1, 0, 1, 0], [0, 0, 2, 1], [1, 1, 0, 2]], dtype=torch.uint8)
    packnet_prune(layer, "weight", owners, 3, Phase.TRAIN)  # task 3: no later task, all active
    x = torch.randn(5, 4)
    out = layer(x)
    assert layer.weight.data_ptr() == layer.weight_orig.data_ptr()  # a view: nothing computed
    assert torch.equal(out, nn.functional.linear(x, layer.weight_orig, layer.bias))
    out.sum().backward()  # gradients reach the parameter as through orig * 1
    assert torch.equal(layer.weight_orig.grad, torch.ones(3, 5) @ x)

    for task, phase in ((2, Phase.TRAIN), (2, Phase.EVAL), (3, Phase.FINETUNE)):
        select(layer, task, phase)  # masks with zeros: the multiply is back
        expected = layer.weight_orig * active_mask(owners, task, phase)
        assert torch.equal(layer(x), nn.functional.linear(x, expected, layer.bias))
        assert layer.weight.data_ptr() != layer.weight_orig.data_ptr()
    select(layer, 3, Phase.TRAIN)
    assert layer.weight.data_ptr() == layer.weight_orig.data_ptr()
    baked = bake(layer)
    assert torch.equal(baked.weight, layer.weight_orig) and "weight" in dict(
        baked.named_parameters())
