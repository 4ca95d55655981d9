"""Growing the network for one task, every earlier task bit-exact (issue 28)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import invoke
from conftest import synthetic_task
from crash import assert_same_pack, forked

from packtool import Pack, TrainConfig, add_task
from packtool.errors import CapacityError, TaskError
from packtool.exporters import export_onnx
from packtool.formats import model_file
from packtool.growth import Width, choose_growth, growable_widths, largest_growth, plan_growth
from packtool.models import ArchSpec, build_network

CONFIG = TrainConfig(epochs=1, finetune_epochs=1, lr=0.05, finetune_lr=0.01, device="cpu")


def _widths(arch: str, size: tuple[int, int, int], kwargs: dict | None = None) -> list[Width]:
    spec = ArchSpec(arch, size, kwargs or {})
    return growable_widths(build_network(spec), size)


# ------------------------------------------------------------------------------------------------
# Found by tracing
# ------------------------------------------------------------------------------------------------


def test_mlp_hidden_layers_are_growable():
    assert _widths("mlp", (1, 8, 8), {"hidden": 32}) == [
        Width("1", "3", (), 32), Width("3", "5", (), 32)]  # the last reaches the classifier


def test_lenet_convolutions_and_the_flatten():
    found = _widths("lenet", (1, 16, 16), {"width": 4})
    assert found == [
        Width("0.0", "0.4", ("0.1",), 4),
        Width("0.4", "2", ("0.5",), 10, fan=16),  # 10 channels of 4x4 feed 160 inputs
        Width("2", "4", (), 500),
    ]


def test_resnet_blocks_grow_inside_not_along_the_residual_stream():
    found = _widths("resnet18", (3, 32, 32))
    assert [w.producer for w in found] == [f"layer{i}.{j}.conv1" for i in (1, 2, 3, 4)
                                           for j in (0, 1)]
    assert all(w.consumer == w.producer.replace("conv1", "conv2") for w in found)
    assert all(w.norms == (w.producer.replace("conv1", "bn1"),) for w in found)


def test_a_vit_grows_its_mlp_width_only():
    found = _widths("nets:tiny_vit", (3, 8, 8))
    mlp = "encoder.layers.encoder_layer_0.mlp"
    assert found == [Width(f"{mlp}.0", f"{mlp}.3", (), 32)]


def test_vgg_grows_every_convolution_and_the_classifier_widths():
    found = _widths("vgg11", (3, 32, 32))
    convs = [w for w in found if w.producer.startswith("features.")]
    assert len(convs) == 8  # every convolution; the last reaches classifier.0 through a flatten
    assert convs[-1].consumer == "classifier.0" and convs[-1].fan == 49
    assert [w.producer for w in found[8:]] == ["classifier.0", "classifier.3"]


def test_layer_norms_residuals_and_untraceable_networks_are_not_grown():
    class Normed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = (torch.nn.Linear(4, 8), torch.nn.LayerNorm(8),
                                         torch.nn.Linear(8, 2))

        def forward(self, x):
            return self.b(self.norm(self.a(x.flatten(1))))

    class Branchy(Normed):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                return self.b(self.a(x.flatten(1)))
            return self.b(self.a(x.flatten(1)))

    assert growable_widths(Normed(), (1, 2, 2)) == []
    assert growable_widths(Branchy(), (1, 2, 2)) == []


def test_tracing_leaves_the_network_in_its_mode():
    net = build_network(ArchSpec("lenet", (1, 8, 8), {"width": 4}))
    net.train()
    growable_widths(net, (1, 8, 8))
    assert all(m.training for m in net.modules())


# ------------------------------------------------------------------------------------------------
# Earlier tasks bit-exact, the grown task using its new units
# ------------------------------------------------------------------------------------------------

NETS = {  # name: (arch, input size, kwargs)
    "mlp": ("mlp", (1, 8, 8), {"hidden": 16}),
    "lenet": ("lenet", (1, 8, 8), {"width": 4}),
    "resnet18": ("resnet18", (3, 16, 16), {}),
    "vit": ("nets:tiny_vit", (3, 8, 8), {}),
}


def _grown_pair(name: str, fraction: float = 0.5) -> tuple[Pack, Pack]:
    arch, size, kwargs = NETS[name]
    pack = Pack.create(arch, size, kwargs=kwargs)
    pack, _ = add_task(pack, "t1", synthetic_task(3, seed=0, shape=size), 0.75, CONFIG)
    grown, result = add_task(pack, "t2", synthetic_task(4, seed=1, shape=size), 0.5, CONFIG,
                             grow=fraction, max_size=3.0)
    assert result.widths == grown.widths and grown.widths
    return pack, grown


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "mlp" else pytest.mark.slow)
                                  for n in NETS])
def test_earlier_tasks_are_bit_exact_after_a_growth(name, tmp_path):
    before, grown = _grown_pair(name)
    size = NETS[name][1]
    x = torch.randn(6, *size)
    with torch.no_grad():
        assert torch.equal(grown.model_for("t1")(x), before.model_for("t1")(x))
    # Its ONNX file: exported at its own, narrower shape, the same bytes.
    export_onnx(before, "t1", tmp_path / "before.onnx")
    export_onnx(grown, "t1", tmp_path / "after.onnx")
    assert (tmp_path / "before.onnx").read_bytes() == (tmp_path / "after.onnx").read_bytes()
    # The shared weights grew; task 1's are the leading slice, unchanged.
    for key, old in before.shared.items():
        new = grown.shared[key]
        assert all(a <= b for a, b in zip(old.shape, new.shape))
        owned = before.owners[key] == 1
        sliced = new[tuple(slice(0, n) for n in old.shape)]
        assert torch.equal(sliced[owned], old[owned])
    assert any(grown.shared[k].shape != v.shape for k, v in before.shared.items())


def test_the_grown_task_uses_its_new_units():
    _, grown = _grown_pair("mlp")
    net = grown.model_for("t2")
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        out = net(x)
        first = net.get_submodule("1")  # the first hidden layer: 16 units grown by 8
        assert first.out_features == 24
        first.weight[16:] = 0
        first.bias[16:] = 0
        assert not torch.equal(net(x), out)


def test_a_grown_pack_saves_and_loads(tmp_path):
    _, grown = _grown_pair("mlp")
    path = tmp_path / "m.pt"
    grown.save(path)
    state = torch.load(path, weights_only=True)
    assert state["version"] == 5  # widths need 4; rejection thresholds, 5
    assert json.loads(state["meta"])["tasks"][1]["widths"] == grown.widths
    loaded = Pack.load(path)
    assert loaded.widths == grown.widths and loaded.task("t1").widths == {}
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for task in ("t1", "t2"):
            assert torch.equal(loaded.model_for(task)(x), grown.model_for(task)(x))
    assert model_file.to_bytes(loaded) == model_file.to_bytes(grown)


def test_a_task_after_a_growth_runs_at_the_grown_widths():
    _, grown = _grown_pair("mlp")
    third, result = add_task(grown, "t3", synthetic_task(2, seed=2), 0.5, CONFIG)
    assert third.task("t3").widths == grown.widths and result.widths == grown.widths
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for task in ("t1", "t2"):
            assert torch.equal(third.model_for(task)(x), grown.model_for(task)(x))


def test_a_first_task_grown_trains_a_wider_new_network():
    """Before a first task the network is created at the grown widths: every weight starts
    from the network's initialization (none zero), and the task uses the new units."""
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    grown, result = add_task(pack, "t1", synthetic_task(3, seed=0), 0.5, CONFIG, grow=1.5,
                             max_size=10.0)
    assert result.widths == grown.widths == grown.task("t1").widths == {"1": 40, "3": 40}
    start = pack.grown({"1": 40, "3": 40}, seed=CONFIG.seed + 1)
    assert all((w != 0).all() for w in start.shared.values())
    assert {k: tuple(v.shape) for k, v in start.shared.items()} == {
        "1.weight": (40, 64), "3.weight": (40, 40)}
    net = grown.model_for("t1")
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        out = net(x)
        net.get_submodule("1").weight[16:] = 0
        assert not torch.equal(net(x), out)
    # A later task adds as usual, task 1 bit-exact.
    second, _ = add_task(grown, "t2", synthetic_task(2, seed=1), 0.0, CONFIG)
    with torch.no_grad():
        assert torch.equal(second.model_for("t1")(x), grown.model_for("t1")(x))


def test_a_pack_grown_at_its_first_task_saves_archives_and_exports(tmp_path):
    from packtool.exporters import read_archive, write_archive

    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    grown, _ = add_task(pack, "t1", synthetic_task(3, seed=0), 0.5, CONFIG, grow=0.5)
    grown, _ = add_task(grown, "t2", synthetic_task(2, seed=1), 0.0, CONFIG)
    grown.save(tmp_path / "m.pt")
    write_archive(grown, tmp_path / "pack.safetensors")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for loaded in (Pack.load(tmp_path / "m.pt"), read_archive(tmp_path / "pack.safetensors")):
            assert loaded.task("t1").widths == loaded.task("t2").widths == {"1": 24, "3": 24}
            for task in ("t1", "t2"):
                assert torch.equal(loaded.model_for(task)(x), grown.model_for(task)(x))
    export_onnx(grown, "t1", tmp_path / "t1.onnx")  # checked against the network at export
    assert (tmp_path / "t1.onnx").stat().st_size > 0


GROWING_PLAN = """
tasks = [{name = "a", data = "digits", classes = "0,1"},
         {name = "b", data = "digits", classes = "2,3"}]

[network]
arch = "mlp"
input_size = "1x8x8"
kwargs = {hidden = 16}

[defaults]
prune = "auto"
grow = "auto"
max_size = 2
epochs = 1
finetune_epochs = 1
device = "cpu"
"""


@pytest.mark.parametrize("how", ["run", "init --tasks"])
def test_a_planned_first_task_tries_the_whole_room_by_default(tmp_path, how):
    """The defaults a plan gives (a reserve for the tasks to come): one trial at --max-size."""
    model = tmp_path / "m.pt"
    if how == "run":
        (tmp_path / "plan.toml").write_text(GROWING_PLAN)
        result = invoke("run", tmp_path / "plan.toml", "--model", model)
    else:
        assert invoke("init", model, "--arch", "mlp", "--input-size", "1x8x8", "--kwarg",
                      "hidden=16", "--tasks", "2").exit_code == 0
        result = invoke("add-task", model, "--data", "digits", "--classes", "0,1", "--prune",
                        "auto", "--grow", "auto", "--max-size", "2", "--epochs", "1",
                        "--finetune-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    pack = Pack.load(model)
    limit = largest_growth(pack.growth(), {}, Pack.create("mlp", (1, 8, 8), kwargs={
        "hidden": 16}).shapes, 2.0)
    assert [t["grow"] for t in pack.task(1).grow_search] == [0.0, limit]


def test_auto_searches_for_a_first_task_too():
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    grown, result = add_task(pack, "t1", synthetic_task(3, seed=0), 0.5, CONFIG, grow="auto",
                             max_size=3.0, tolerance=0.0)
    assert [s["grow"] for s in result.grow_search][:2] == [0.0, 0.25]
    assert grown.task("t1").grow_search == result.grow_search


def test_a_first_task_with_tasks_to_come_tries_the_whole_room_at_once():
    """With a reserve (a plan), every later task runs on what the first one grows: auto tries
    the largest growth within max_size in one step."""
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    _, result = add_task(pack, "t1", synthetic_task(3, seed=0), 0.5, CONFIG, grow="auto",
                         max_size=3.0, reserve=4)
    limit = largest_growth(pack.growth(), {}, pack.shapes, 3.0)
    assert [s["grow"] for s in result.grow_search] == [0.0, limit]
    gains = {0.0: 0.5, limit: 0.52}  # kept when it gains more than the tolerance
    for tolerance, kept in ((1.0, limit), (3.0, 0.0)):
        chosen, search = choose_growth(pack.growth(), {}, pack.shapes, gains.__getitem__,
                                       tolerance, 3.0, say=lambda _: None, at_once=True)
        assert chosen == kept and [s["grow"] for s in search] == [0.0, limit]
    units, size = plan_growth(pack.growth(), {}, pack.shapes, limit, 3.0)
    assert size <= 3.0 and units == {"1": 16 + round(limit * 16), "3": 16 + round(limit * 16)}


def test_largest_growth_is_the_last_that_fits():
    widths = _widths("mlp", (1, 8, 8), {"hidden": 16})
    shapes = {"1.weight": (16, 64), "3.weight": (16, 16)}
    assert largest_growth(widths, {}, shapes, 1.0) == 0.0
    for max_size in (1.2, 2.0, 3.0, 10.0):
        fraction = largest_growth(widths, {}, shapes, max_size)
        assert fraction > 0 and plan_growth(widths, {}, shapes, fraction, max_size)
        with pytest.raises(CapacityError):
            plan_growth(widths, {}, shapes, fraction + 1 / 256, max_size)


def test_auto_runs_no_trial_when_no_step_fits():
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    pack, _ = add_task(pack, "t1", synthetic_task(3, seed=0), 0.5, CONFIG)
    new, result = add_task(pack, "t2", synthetic_task(2, seed=1), 0.5, CONFIG, grow="auto",
                           max_size=1.0)
    assert new.widths == {} and result.grow_search is None


# ------------------------------------------------------------------------------------------------
# How much, and when growing is refused
# ------------------------------------------------------------------------------------------------


def test_max_size_is_never_exceeded():
    widths = _widths("mlp", (1, 8, 8), {"hidden": 16})
    shapes = {"1.weight": (16, 64), "3.weight": (16, 16)}
    units, size = plan_growth(widths, {}, shapes, 0.5, max_size=2.0)
    assert units == {"1": 24, "3": 24} and size == pytest.approx((24 * 64 + 24 * 24) / 1280)
    grown = {"1.weight": (24, 64), "3.weight": (24, 24)}
    with pytest.raises(CapacityError, match=r"over the maximum of 1\.5x"):
        plan_growth(widths, units, grown, 0.5, max_size=1.5)
    with pytest.raises(TaskError, match="fraction"):
        plan_growth(widths, {}, shapes, 0.0)


def test_growing_is_refused_where_it_cannot_keep_its_promise(tmp_path):
    data = synthetic_task(3, seed=0)
    torch.save(build_network(ArchSpec("mlp", (1, 8, 8), {"hidden": 16})).state_dict(),
               tmp_path / "w.pt")
    pretrained = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}, weights=tmp_path / "w.pt")
    with pytest.raises(TaskError, match="pretrained network's first task"):
        add_task(pretrained, "t1", data, 0.5, CONFIG, grow=0.5)
    # auto, as a plan's defaults may give it to every task, leaves it as it is
    first, result = add_task(pretrained, "t1", data, 0.5, CONFIG, grow="auto")
    assert first.widths == {} and result.grow_search is None
    for options in ({"policy": "frozen"}, {"free_init": "kept"}):
        pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}, **options)
        pack, _ = add_task(pack, "t1", data, 0.5, CONFIG)
        with pytest.raises(TaskError, match="per_task and free_init reinit"):
            add_task(pack, "t2", synthetic_task(2, seed=1), 0.5, CONFIG, grow=0.5)


# ------------------------------------------------------------------------------------------------
# The command line; resuming a growth
# ------------------------------------------------------------------------------------------------


def _cli_pack(model, first_task: bool = True) -> None:
    assert invoke("init", model, "--arch", "mlp", "--input-size", "1x8x8",
                  "--kwarg", "hidden=16").exit_code == 0
    if first_task:
        assert invoke("add-task", model, "--data", "digits", "--classes", "0,1", "--prune",
                      "0.75", "--epochs", "1", "--finetune-epochs", "1",
                      "--device", "cpu").exit_code == 0


GROW_ARGS = ["--data", "digits", "--classes", "2,3", "--prune", "0.5", "--grow", "0.5",
             "--max-size", "2", "--epochs", "3", "--finetune-epochs", "2", "--lr", "0.05",
             "--device", "cpu", "--seed", "4", "--json"]


def test_cli_grow_reports_the_widths_and_info_lists_them(tmp_path):
    model = tmp_path / "m.pt"
    _cli_pack(model)
    info = json.loads(invoke("info", model, "--json").stdout)
    assert "growable" not in info and "widths" not in info  # tracing only when asked
    info = json.loads(invoke("info", model, "--growable", "--json").stdout)
    assert [w["producer"] for w in info["growable"]] == ["1", "3"]
    result = invoke("add-task", model, *GROW_ARGS)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["widths"] == {"1": 24, "3": 24}
    info = json.loads(invoke("info", model, "--json").stdout)
    assert [t.get("widths") for t in info["tasks"]] == [None, {"1": 24, "3": 24}]
    assert info["widths"] == {"1": 24, "3": 24}
    assert "Grown widths (units now): 1 24, 3 24" in invoke("info", model).stdout
    text = invoke("info", model, "--growable").stdout
    assert "Growable widths" in text and "1 -> 3" in text
    result = invoke("export", model, "--all", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [
        ".onnx", ".onnx", ".safetensors"]
    assert json.loads(invoke("info", tmp_path / "out" / "pack.safetensors", "--json").stdout)[
        "widths"] == {"1": 24, "3": 24}


def test_the_add_task_table_says_how_the_network_grew(tmp_path):
    """The table (not only --json): the size a grown task runs at, --grow auto's trials and
    whether it grew, and a refit; none of it for a task that neither grew nor refit."""
    model = tmp_path / "m.pt"
    _cli_pack(model)
    assert "network size" not in invoke("info", model).stdout
    table = invoke("add-task", model, *[a for a in GROW_ARGS if a != "--json"]).stdout
    # 64 x 24 + 24 x 24 prunable weights now, 64 x 16 + 16 x 16 before
    assert "| network size" in table and "1.65x its original prunable weights" in table
    assert "--grow auto" not in table and "refit" not in table
    table = invoke("add-task", model, "--data", "digits", "--classes", "4,5", "--prune", "0.5",
                   "--grow", "auto", "--max-size", "3", "--refit", "--epochs", "1",
                   "--finetune-epochs", "1", "--device", "cpu").stdout
    assert "| growth (--grow auto)" in table and "(validation accuracy by growth: 0: " in table
    assert "| refit " in table and "trained again on training + validation images" in table


@pytest.mark.parametrize(("flags", "message"), [
    (["--grow", "0"], "--grow"), (["--grow", "inf"], "--grow"), (["--grow", "x"], "--grow"),
    (["--max-size", "0.5"], "--max-size"), (["--max-size", "2"], "--max-size needs --grow"),
])
def test_cli_bad_growth_values_are_usage_errors(tmp_path, flags, message):
    model = tmp_path / "m.pt"
    _cli_pack(model)
    before = model.read_bytes()
    result = invoke("add-task", model, "--data", "digits", "--classes", "2,3", "--prune", "0.5",
                    *flags)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert model.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("first_task", [True, False], ids=["later-task", "first-task"])
def test_a_growth_killed_mid_training_resumes_bit_identical(tmp_path, first_task):
    reference, killed = tmp_path / "ref.pt", tmp_path / "killed.pt"
    _cli_pack(reference, first_task)
    killed.write_bytes(reference.read_bytes())
    assert forked(["add-task", str(reference), *GROW_ARGS], out=tmp_path / "ref.json") == 0
    args = ["add-task", str(killed), *GROW_ARGS]
    assert forked(args, kill="step:5", out=tmp_path / "killed.json") == -9
    assert forked([*args, "--resume"], out=tmp_path / "resumed.json") == 0
    assert_same_pack(Pack.load(killed), Pack.load(reference))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "mlp" else pytest.mark.slow)
                                  for n in ("mlp", "lenet", "resnet18")])
def test_the_archive_of_a_grown_pack_serves_every_task_as_before(name, tmp_path):
    from safetensors import safe_open

    from packtool.exporters import read_archive, write_archive

    before, grown = _grown_pair(name)
    path = tmp_path / "pack.safetensors"
    write_archive(grown, path)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format_version"] == "6"  # widths need 5; rejection thresholds, 6
    archive = read_archive(path)
    assert archive.widths == grown.widths and archive.task("t1").widths == {}
    x = torch.randn(4, *NETS[name][1])
    with torch.no_grad():
        for task in ("t1", "t2"):
            assert torch.equal(archive.model_for(task)(x), grown.model_for(task)(x))
        assert torch.equal(archive.model_for("t1")(x), before.model_for("t1")(x))
    write_archive(before, tmp_path / "before.safetensors")  # never grown: no widths
    with safe_open(str(tmp_path / "before.safetensors"), "pt") as f:
        assert f.metadata()["format_version"] == "6" and "widths" not in f.metadata()["tasks"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "mlp" else pytest.mark.slow)
                                  for n in ("mlp", "lenet", "vit")])
def test_the_multi_task_network_of_a_grown_pack_is_every_task(name, tmp_path):
    from packtool.exporters import export_multi_task
    from packtool.multitask import multi_task_net

    _, grown = _grown_pair(name)
    net = multi_task_net(grown)
    x = torch.randn(5, *NETS[name][1])
    with torch.no_grad():
        for record in grown.tasks:
            out = net(x, torch.tensor([record.index]))
            logits = out[0] if isinstance(out, tuple) else out
            expected = grown.model_for(record.name)(x)
            assert torch.allclose(logits[:, :len(record.classes)], expected, atol=1e-5)
    export_multi_task(grown, tmp_path / "all.onnx")  # checked in onnxruntime against PyTorch
    assert (tmp_path / "all.onnx").stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# --grow auto
# ------------------------------------------------------------------------------------------------


def test_auto_does_not_grow_a_network_the_task_fits():
    """Two easy classes on a roomy MLP: growing gains nothing over the tolerance."""
    config = TrainConfig(epochs=6, finetune_epochs=1, lr=0.05, finetune_lr=0.01, device="cpu")
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 64})
    pack, _ = add_task(pack, "t1", synthetic_task(2, seed=0), 0.5, config)
    new, result = add_task(pack, "t2", synthetic_task(2, seed=1, n=240), 0.5, config,
                           grow="auto", tolerance=1.0)
    assert result.grow_search[0]["val_accuracy"] == 1.0
    assert result.widths is None and new.widths == {}
    assert [s["grow"] for s in result.grow_search] == [0.0, 0.25]
    assert new.task("t2").grow_search == result.grow_search


def test_auto_grows_a_network_too_small_for_the_task():
    """Task 1 kept every weight: the network is full, and only growing gives task 2 room."""
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 4})
    pack, _ = add_task(pack, "t1", synthetic_task(2, seed=0), 0.0, CONFIG)
    assert pack.free_weights == 0
    with pytest.raises(CapacityError, match="grow"):
        add_task(pack, "t2", synthetic_task(6, seed=1), 0.5, CONFIG)
    config = TrainConfig(epochs=4, finetune_epochs=1, lr=0.05, finetune_lr=0.01, device="cpu")
    new, result = add_task(pack, "t2", synthetic_task(6, seed=1, n=240), 0.5, config,
                           grow="auto", max_size=3.0)
    assert result.grow_search[0] == {"grow": 0.0, "val_accuracy": None}  # no room as it is
    assert new.widths and new.widths == result.widths
    assert len(new.shared) == len(pack.shared)
    weights = [sum(v.numel() for v in p.shared.values()) for p in (new, pack)]
    assert weights[0] <= 3.0 * weights[1]
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(new.model_for("t1")(x), pack.model_for("t1")(x))


def test_auto_never_passes_max_size():
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 4})
    pack, _ = add_task(pack, "t1", synthetic_task(2, seed=0), 0.0, CONFIG)
    new, result = add_task(pack, "t2", synthetic_task(6, seed=1), 0.5, CONFIG, grow="auto",
                           tolerance=0.0, max_size=1.3)
    original = sum(v.numel() for v in pack.shared.values())
    assert sum(v.numel() for v in new.shared.values()) <= 1.3 * original
    assert all(s["grow"] <= 0.25 for s in result.grow_search)


def _killed_near_the_end_and_resumed(tmp_path, args: list[str]) -> tuple[dict, dict]:
    """``add-task MODEL *args`` uninterrupted, and killed (SIGKILL) ten optimizer steps before
    its end then resumed: the same pack. The last traced event is the last checkpoint write,
    after every step, so ten steps before it the run's last phase is under way (after any
    trials). Returns both ``--json`` documents."""
    reference, killed = tmp_path / "ref.pt", tmp_path / "killed.pt"
    _cli_pack(reference)
    killed.write_bytes(reference.read_bytes())
    trace = tmp_path / "trace"
    assert forked(["add-task", str(reference), *args], out=tmp_path / "ref.json",
                  trace=trace) == 0
    steps = int(trace.read_text().splitlines()[-1].split()[1])
    assert forked(["add-task", str(killed), *args], kill=f"step:{steps - 10}",
                  out=tmp_path / "killed.json") == -9
    assert forked(["add-task", str(killed), *args, "--resume"],
                  out=tmp_path / "resumed.json") == 0
    assert_same_pack(Pack.load(killed), Pack.load(reference))
    return (json.loads((tmp_path / "ref.json").read_text()),
            json.loads((tmp_path / "resumed.json").read_text()))


@pytest.mark.slow
def test_an_auto_growth_killed_after_its_trials_resumes_bit_identical(tmp_path):
    args = [a if a != "0.5" or i != GROW_ARGS.index("--grow") + 1 else "auto"
            for i, a in enumerate(GROW_ARGS)]
    ref, resumed = _killed_near_the_end_and_resumed(tmp_path, args)
    assert len(ref["grow_search"]) >= 2
    assert resumed["grow_search"] == ref["grow_search"]
    # The checkpoint holds the decision: the resumed run does not train the trials again.
    said = (tmp_path / "resumed.json.err").read_text()
    assert "grow auto: training the task" not in said
    assert f"after {len(ref['grow_search'])} trials (not repeated)" in said


# ------------------------------------------------------------------------------------------------
# --refit
# ------------------------------------------------------------------------------------------------

REFIT_CONFIG = TrainConfig(epochs=5, finetune_epochs=3, lr=0.05, finetune_lr=0.01, device="cpu")


def test_refit_trains_on_validation_too_with_the_choices_made_on_it():
    base = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    data = synthetic_task(3, seed=0, n=120)
    chosen, first = add_task(base, "t", data, 0.5, REFIT_CONFIG)
    refit, result = add_task(base, "t", data, 0.5, REFIT_CONFIG, refit=True)
    record = refit.task("t")
    epochs = (chosen.task("t").metrics["best_epoch_train"],
              chosen.task("t").metrics["best_epoch_finetune"])
    # The refit ran exactly the epochs the first pass kept, and kept its last ones.
    assert (record.metrics["best_epoch_train"], record.metrics["best_epoch_finetune"]) == epochs
    assert record.hparams["refit"] is True and result.prune == first.prune == 0.5
    assert result.val_accuracy == first.val_accuracy  # the choice's validation accuracy
    # Another network than the first pass's: trained on more images.
    assert any(not torch.equal(refit.shared[k], chosen.shared[k]) for k in refit.shared)


def test_refit_joins_validation_images_to_the_training_split():
    from packtool.data import load_task_data, with_validation_in_training

    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    data = load_task_data("digits", pack.preprocess, classes=[0, 1], seed=0)
    joined = with_validation_in_training(data)
    assert len(joined.train) == len(data.train) + len(data.val)
    assert set(joined.train.indices) == set(data.train.indices) | set(data.val.indices)
    assert joined.val is data.val and joined.test is data.test
    _, label = joined.train[len(data.train)]  # a validation image, read as a training one
    assert label == data.val[0][1]


@pytest.mark.slow
def test_a_refit_killed_mid_way_resumes_bit_identical(tmp_path):
    args = [*GROW_ARGS[:GROW_ARGS.index("--grow")], *GROW_ARGS[GROW_ARGS.index("--epochs"):],
            "--refit"]
    _killed_near_the_end_and_resumed(tmp_path, args)  # in the refit's fine-tuning
    assert not list(tmp_path.glob("*.ckpt*"))
