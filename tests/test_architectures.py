"""Every weight matrix is packed, whichever module holds it (issue 11): transformers and
modern conv nets, attention included."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import synthetic_task
from torch import nn

from packtool import Pack, Phase, TrainConfig, add_task
from packtool.exporters import archive_bytes, archive_from_bytes, export_onnx_bytes
from packtool.method import active_mask, trainable_mask
from packtool.models import ArchSpec, anatomy, build_network, native_input_size

FAST = TrainConfig(epochs=2, finetune_epochs=1, lr=0.01, batch_size=16, device="cpu")


# -- a module that reads a pruned child's weight without calling it ------------------------------


@pytest.mark.slow
def test_a_weight_read_without_calling_its_module_is_masked_and_trained():
    pack = Pack.create("nets:reads_child_weight", (1, 8, 8))
    before = pack.shared["proj.weight"].clone()
    pack, _ = add_task(pack, "a", synthetic_task(2, seed=0), 0.5, FAST)
    pack, _ = add_task(pack, "b", synthetic_task(3, seed=1), 0.5, FAST)
    owners, weight = pack.owners["proj.weight"], pack.shared["proj.weight"]
    # Trained: gradients reached the packed weight in both tasks' training.
    for task in (1, 2):
        owned = owners == task
        assert bool(owned.any()) and not torch.equal(weight[owned], before[owned])

    x = torch.randn(5, 1, 8, 8)
    for record in pack.tasks:  # evaluated with the task's mask in force
        model = pack.model_for(record.name)
        mask = active_mask(owners, record.index, Phase.EVAL)
        expected = model.head(torch.relu(nn.functional.linear(
            x.flatten(1), weight * mask, model.proj.bias)))
        with torch.no_grad():
            assert torch.equal(model(x), expected)

    # A live fine-tuning network: the mask of task 2 in force, gradients only where it trains.
    record = pack.tasks[1]
    net = pack.network(2, Phase.FINETUNE, head=record.head, private=record.private)
    net(x).sum().backward()
    proj = net.get_submodule("proj")
    assert torch.equal(proj.weight, proj.weight_orig * active_mask(owners, 2, Phase.FINETUNE))
    grad = proj.weight_orig.grad
    active = active_mask(owners, 2, Phase.FINETUNE)
    assert bool((grad[~active] == 0).all()) and bool((grad[trainable_mask(
        owners, 2, Phase.FINETUNE)] != 0).any())


# -- a small transformer built through package.module:function ----------------------------------


@pytest.fixture(scope="module")
def transformer_packs() -> tuple[Pack, torch.Tensor, torch.Tensor]:
    """A tiny transformer after its first task and after its second, plus task 1's outputs."""
    pack = Pack.create("nets:tiny_transformer", (1, 8, 8))
    pack, _ = add_task(pack, "a", synthetic_task(3, seed=0), 0.5, FAST)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = pack.model_for("a")(x)
    shared_after_a = {k: v.clone() for k, v in pack.shared.items()}
    pack, _ = add_task(pack, "b", synthetic_task(4, seed=1), 0.5, FAST)
    return pack, x, first, shared_after_a


def test_transformer_packs_its_attention_weights(transformer_packs):
    pack, *_ = transformer_packs
    keys = set(pack.shared)
    for layer in range(2):
        prefix = f"encoder.layers.{layer}."
        assert {f"{prefix}self_attn.in_proj_weight", f"{prefix}self_attn.out_proj.weight",
                f"{prefix}linear1.weight", f"{prefix}linear2.weight"} <= keys
    assert "patches.weight" in keys and "head.weight" not in keys
    assert {"class_token", "position"} <= set(pack.private_state_spec)  # broadcast [1, N, D]


def test_transformer_second_task_leaves_the_first_bit_identical(transformer_packs):
    pack, x, first, shared_after_a = transformer_packs
    with torch.no_grad():
        assert torch.equal(pack.model_for("a")(x), first)
    for key, old in shared_after_a.items():  # attention weights included
        owned = pack.owners[key] == 1
        assert bool(owned.any()) and torch.equal(pack.shared[key][owned], old[owned])
    total = sum(p.numel() for p in build_network(pack.spec).parameters())
    for record in pack.tasks:
        private = sum(v.numel() for v in record.private.values())
        assert private < 0.02 * total


@pytest.mark.slow
def test_transformer_exports_to_onnx_and_the_archive_stores_attention_once(transformer_packs):
    pack, x, *_ = transformer_packs
    for name in pack.task_names:
        _, result = export_onnx_bytes(pack, name, tolerance=1e-4)
        assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    data = archive_bytes(pack)
    names = tensor_names(data)
    attention = [n for n in names
                 if "in_proj_weight" in n and not n.startswith(("owners/", "owner_counts/"))]
    assert attention == ["shared/encoder.layers.0.self_attn.in_proj_weight",
                         "shared/encoder.layers.1.self_attn.in_proj_weight"]  # once, shared
    read = archive_from_bytes(data)
    with torch.no_grad():
        for name in pack.task_names:
            assert torch.equal(read.model_for(name)(x), pack.model_for(name)(x))


def tensor_names(data: bytes) -> list[str]:
    """The tensor names of a safetensors file's bytes (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return sorted(k for k in json.loads(data[8:8 + size]) if k != "__metadata__")


# -- torchvision's classifiers by name ----------------------------------------------------------

#: Multi-dimensional parameters each model keeps per task, by the documented rule, and its
#: classifier.
TORCHVISION = {
    "vit_b_16": ("heads.head", lambda k: k in ("class_token", "encoder.pos_embedding")),
    "swin_t": ("head", lambda k: k.endswith(".relative_position_bias_table")),
    "convnext_tiny": ("classifier.2", lambda k: k.endswith(".layer_scale")),
    "efficientnet_b0": ("classifier.1", lambda k: False),
    "mobilenet_v3_large": ("classifier.3", lambda k: False),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_torchvision_models_pack_every_weight_matrix(arch):
    classifier, private = TORCHVISION[arch]
    with torch.device("meta"):  # shapes only: no weights are drawn
        net = build_network(ArchSpec(arch, native_input_size(arch)))
    anat = anatomy(net)
    assert anat.classifier == classifier
    matrices = {k for k, p in net.named_parameters() if p.dim() >= 2}
    expected = {k for k in matrices if not k.startswith(classifier + ".") and not private(k)}
    assert set(anat.prunable) == expected
    assert {k for k in matrices if private(k)} <= set(anat.private)
    total = sum(p.numel() for p in net.parameters())
    packed = sum(net.get_parameter(k).numel() for k in anat.prunable)
    head = sum(p.numel() for p in net.get_submodule(classifier).parameters())
    assert packed / (total - head) > 0.98  # what stays private per task is small


def test_native_input_sizes():
    assert native_input_size("vit_b_16") == (3, 224, 224)
    assert native_input_size("vit_b_16", {"image_size": 384}) == (3, 384, 384)
    assert native_input_size("efficientnet_b3") == (3, 300, 300)
    assert native_input_size("lenet") == (3, 224, 224)


#: Tiny instances of the same torchvision classes, to train and export in a test.
FAMILIES = {
    "vit": ("torchvision.models.vision_transformer:VisionTransformer",
            {"image_size": 16, "patch_size": 8, "num_layers": 1, "num_heads": 2,
             "hidden_dim": 16, "mlp_dim": 32}),
    "swin": ("torchvision.models.swin_transformer:SwinTransformer",
             {"patch_size": [4, 4], "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2],
              "window_size": [2, 2]}),
    "convnext": ("nets:tiny_convnext", {}),
    "efficientnet": ("nets:tiny_efficientnet", {}),
    "mobilenet_v3": ("nets:tiny_mobilenet_v3", {}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.slow
def test_torchvision_families_take_tasks_and_export(family):
    arch, kwargs = FAMILIES[family]
    pack = Pack.create(arch, kwargs=kwargs) if "image_size" in kwargs else \
        Pack.create(arch, (3, 16, 16), kwargs=kwargs)
    assert pack.spec.input_size == (3, 16, 16)
    shape = pack.spec.input_size
    pack, _ = add_task(pack, "a", synthetic_task(2, seed=0, shape=shape, n=48), 0.5, FAST)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        first = pack.model_for("a")(x)
    pack, _ = add_task(pack, "b", synthetic_task(3, seed=1, shape=shape, n=48), 0.5, FAST)
    with torch.no_grad():
        assert torch.equal(pack.model_for("a")(x), first)  # zero forgetting
        assert pack.model_for("b")(x).shape == (3, 3)  # task b's own head
    _, result = export_onnx_bytes(pack, "b")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4


@pytest.mark.slow
def test_vit_b_16_by_name_on_the_command_line(tmp_path):
    """ViT-B/16 itself, by name: its native size from ``image_size=``, a task, the info report
    of what it keeps private, and a verified ONNX export with attention."""
    from cli_helpers import ok, ok_json

    model = tmp_path / "vit.pt"
    ok("init", model, "--arch", "vit_b_16", "--kwarg", "image_size=32")
    ok("add-task", model, "--data", "digits", "--classes", "0,1", "--prune", "0.5",
       "--epochs", "0", "--finetune-epochs", "1", "--batch-size", "64", "--device", "cpu")
    info = ok_json("info", model)
    assert info["input_size"] == [3, 32, 32]
    assert {t["name"] for t in info["private_tensors"]} == {"class_token",
                                                            "encoder.pos_embedding"}
    assert info["private_share"] < 0.01
    export = ok_json("export", model, "--task", "digits-0-1", "--out", tmp_path / "vit.onnx")
    assert export["files"][0]["max_abs_diff"] <= 1e-4
