"""The multi-task ONNX: every task in one graph, the task an input (issue 16)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_helpers import assert_error, invoke, ok_json, sha256
from conftest import build_pack
from PIL import Image

from packtool import Pack
from packtool.errors import PackToolError, TaskError
from packtool.exporters import (
    export_multi_task,
    export_onnx,
    multi_task_onnx,
    predict,
    tasks_metadata,
    with_mixed_batches,
)
from packtool.multitask import multi_task_net, pack_planes, planes_at_most
from packtool.taskfree import task_free_net

# Three tasks of different class counts, so logits are padded.
TASKS = [(3, 0.5), (5, 0.75), (4, 0.5)]


@pytest.fixture(scope="module")
def lenet_pack():
    return build_pack("lenet", (1, 8, 8), {}, TASKS)


@pytest.fixture(scope="module")
def multi_file(lenet_pack, tmp_path_factory):
    path = tmp_path_factory.mktemp("multi") / "pack.onnx"
    result = export_multi_task(lenet_pack, path)
    return path, result


def _run(sess, x, task):
    return sess.run(None, {"input": x, "task": np.array([task], dtype=np.int64)})


def _inputs(pack, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *pack.spec.input_size, generator=g)


@pytest.mark.slow
def test_every_task_matches_its_per_task_onnx_and_pytorch(lenet_pack, multi_file, tmp_path):
    path, result = multi_file
    assert result.tasks == tuple(lenet_pack.task_names) and result.bytes == path.stat().st_size
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _inputs(lenet_pack, 6)
    for record in lenet_pack.tasks:
        single = tmp_path / f"{record.index}.onnx"
        export_onnx(lenet_pack, record.name, single)
        expected = ort.InferenceSession(str(single), providers=["CPUExecutionProvider"]).run(
            None, {"input": x.numpy()})[0]
        with torch.no_grad():
            logits, distance = task_free_net(lenet_pack, record.name, "cpu").eval()(x)
        logits_multi, distance_multi = _run(sess, x.numpy(), record.index)
        classes = len(record.classes)
        assert logits_multi.shape == (6, max(c for c, _ in TASKS))
        np.testing.assert_allclose(logits_multi[:, :classes], expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(logits_multi[:, :classes], logits.numpy(), rtol=0, atol=1e-5)
        assert np.all(np.isneginf(logits_multi[:, classes:]))
        np.testing.assert_allclose(distance_multi, distance.numpy(), rtol=1e-4)  # sums of squares


def test_dynamic_batch_and_checker(lenet_pack, multi_file):
    path, _ = multi_file
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input", "task"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    big = _inputs(lenet_pack, 5).numpy()
    whole = _run(sess, big, 2)[0]
    for i in range(5):  # batch 1, one image at a time, gives the same rows
        np.testing.assert_allclose(_run(sess, big[i:i + 1], 2)[0], whole[i:i + 1], atol=1e-6)


@pytest.mark.parametrize("task", [0, 4, -1, 2**40])
def test_task_outside_the_pack_is_an_error(multi_file, lenet_pack, task):
    path, _ = multi_file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="out of"):
        _run(sess, _inputs(lenet_pack, 2).numpy(), task)


def test_metadata_lists_every_task(lenet_pack, multi_file):
    path, _ = multi_file
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    metas = tasks_metadata(props, str(path))
    assert [m.task for m in metas] == lenet_pack.task_names
    for meta, record in zip(metas, lenet_pack.tasks):
        assert list(meta.classes) == record.classes
        assert meta.temperature == record.temperature
        assert meta.input_size == lenet_pack.spec.input_size


def test_shared_weights_are_stored_once(lenet_pack, multi_file):
    """One float copy of the packed weights and the owner index in bit planes, plus what each
    task has of its own: not T copies of the network."""
    path, _ = multi_file
    model = onnx.load(str(path))

    def stored(dtype):
        dense = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == dtype)
        return dense + sum(int(np.prod(s.values.dims)) for s in model.graph.sparse_initializer
                           if s.values.data_type == dtype)

    packed = sum(w.numel() for w in lenet_pack.shared.values())
    own = sum(v.numel() for r in lenet_pack.tasks
              for v in [*r.head.values(), *r.feature_stats.values()])
    own += len(lenet_pack.tasks) * lenet_pack.private_values
    nonzero = sum(int((w != 0).sum()) for w in lenet_pack.shared.values())
    width = lenet_pack.anatomy().in_features
    fill = 3 * width  # the padding rows of heads, means and bases
    assert nonzero <= stored(onnx.TensorProto.FLOAT) <= packed + own + fill + 1000
    # 3 tasks: owners 0..3 in two bit planes, a quarter of a byte per weight, and the byte ->
    # eight mask values lookup.
    table = 256 * 8
    assert packed / 4 <= stored(onnx.TensorProto.UINT8) <= packed / 4 + table + 1000


def test_owner_planes_round_trip():
    owners = torch.randint(0, 6, (7, 5), dtype=torch.uint8)
    planes = pack_planes(owners, 3)
    assert planes.shape == (3, 5)  # 35 values -> 5 bytes per plane
    bits = np.unpackbits(planes.numpy(), axis=1)[:, :35]
    rebuilt = sum(bits[j].astype(np.int64) << j for j in range(3))
    assert np.array_equal(rebuilt, owners.reshape(-1).numpy())


@pytest.mark.parametrize("arch, size, policy", [
    ("nets:tiny_transformer", (1, 8, 8), "per_task"),  # attention reads out_proj.weight
    ("nets:tiny_resnet", (3, 8, 8), "frozen"),  # norm state shared, stored once
])
@pytest.mark.slow
def test_other_networks_in_pytorch_and_onnx(arch, size, policy):
    pack = build_pack(arch, size, {}, [(2, 0.5), (3, 0.5)], policy=policy)
    net = multi_task_net(pack)
    x = _inputs(pack, 3)
    model = multi_task_onnx(pack)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for record in pack.tasks:
        with torch.no_grad():
            expected = pack.model_for(record.name)(x)
            ours = net(x, torch.tensor([record.index]))[0]
        classes = len(record.classes)
        torch.testing.assert_close(ours[:, :classes], expected, rtol=0, atol=1e-5)
        onnx_logits = _run(sess, x.numpy(), record.index)[0][:, :classes]
        np.testing.assert_allclose(onnx_logits, expected.numpy(), rtol=0, atol=1e-5)
    if policy == "frozen":
        names = {i.name for i in model.graph.initializer}
        assert not any(n.endswith("running_mean_stack") for n in names)


def test_the_mixed_batch_file_is_the_one_task_file_with_the_loop_added(lenet_pack, multi_file):
    """One trace gives both files (the serving benchmark compares them)."""
    one_trace = multi_task_onnx(lenet_pack, mixed=False)
    assert len(one_trace.graph.input[1].type.tensor_type.shape.dim) == 1
    assert one_trace.graph.input[1].type.tensor_type.shape.dim[0].dim_value == 1
    assert not any(n.op_type == "Loop" for n in one_trace.graph.node)
    mixed = with_mixed_batches(one_trace).SerializeToString()
    assert mixed == multi_task_onnx(lenet_pack).SerializeToString()
    assert mixed == multi_file[0].read_bytes()


def test_a_pack_without_tasks_is_refused():
    with pytest.raises(PackToolError, match="no tasks"):
        multi_task_onnx(Pack.create("lenet", (1, 8, 8)))


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_predict_serves_named_tasks_and_auto(lenet_pack, multi_file, tmp_path, images):
    path, _ = multi_file
    single = tmp_path / "task2.onnx"
    export_onnx(lenet_pack, "task 2", single)
    one = predict(single, images, top=3)
    many = predict(path, images, task="task 2", top=3)
    assert many.task == "task 2"
    for a, b in zip(one.predictions, many.predictions):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]],
                                   [t["probability"] for t in b["top"]], atol=1e-5)
    auto = predict(path, images, task="auto", top=1)
    from_pack = predict(_saved(lenet_pack, tmp_path), images, task="auto", top=1)
    assert auto.task_score == from_pack.task_score == "mahalanobis"
    assert [p["task"] for p in auto.predictions] == [p["task"] for p in from_pack.predictions]
    assert predict(path, images, task="auto", same_task=True).task in lenet_pack.task_names


def _saved(pack, folder):
    path = folder / "model.pt"
    pack.save(path)
    return path


def test_predict_errors_name_the_tasks(multi_file, images):
    path, _ = multi_file
    with pytest.raises(TaskError, match="task 1, task 2, task 3"):
        predict(path, images)
    with pytest.raises(TaskError, match="no task 'cars'"):
        predict(path, images, task="cars")


@pytest.mark.slow
def test_cli_export_multi_task(lenet_pack, tmp_path):
    model = _saved(lenet_pack, tmp_path)
    out = tmp_path / "pack.onnx"
    doc = ok_json("export", model, "--multi-task", "--out", out)
    [item] = doc["files"]
    assert item["task"] is None and item["tasks"] == lenet_pack.task_names
    assert item["path"] == str(out) and item["bytes"] == out.stat().st_size
    assert doc["archive"] is None


@pytest.mark.parametrize("args", [
    ("--multi-task",),  # needs --out
    ("--multi-task", "--out", "x.onnx", "--dense"),
    ("--multi-task", "--out", "x.onnx", "--task", "task 1"),
    ("--multi-task", "--out", "x.onnx", "--int8"),
])
def test_cli_multi_task_usage_errors(lenet_pack, tmp_path, args):
    model = _saved(lenet_pack, tmp_path)
    before = sha256(model)
    assert_error(invoke("export", model, *args), code=2)
    assert sha256(model) == before and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("tasks", [1, 3, 40, 255])
def test_packed_comparison_is_owner_at_most_task(tasks):
    """The in-graph mask: ``owner <= task`` on bit planes, for every task of large packs."""
    owners = torch.randint(0, tasks + 1, (1003,), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(tasks))
    bits = tasks.bit_length()
    planes = pack_planes(owners, bits)
    for task in range(1, tasks + 1):
        task_bits = [torch.tensor([255 if task >> j & 1 else 0], dtype=torch.uint8)
                     for j in range(bits)]
        mask = np.unpackbits(planes_at_most(planes, task_bits).numpy())[:1003]
        assert np.array_equal(mask.astype(bool), (owners <= task).numpy()), task


@pytest.mark.parametrize("tasks", ['not json', '[]', '[{"task": "a"}]', '{"task": "a"}'])
def test_damaged_task_metadata_is_a_clear_error(multi_file, tmp_path, images, tasks):
    path, _ = multi_file
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "packtool.tasks":
            prop.value = tasks
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    with pytest.raises(PackToolError, match=r"invalid packtool\.tasks metadata"):
        predict(damaged, images, task="task 1")


# ------------------------------------------------------------------------------------------------
# Mixed-task batches (issue 29): one task per row
# ------------------------------------------------------------------------------------------------


def _per_row(pack, x, tasks):
    """Row i through ``model_for(tasks[i])``: the reference for a mixed batch."""
    rows = []
    for i, t in enumerate(tasks):
        with torch.no_grad():
            rows.append(pack.model_for(t)(x[i:i + 1])[0])
    return rows


@pytest.mark.parametrize("arch,size,kwargs", [
    ("lenet", (1, 8, 8), {}),
    ("mlp", (1, 4, 4), {"hidden": 16}),
    ("nets:tiny_transformer", (1, 8, 8), {}),
    ("nets:tiny_resnet", (3, 8, 8), {}),
])
@pytest.mark.slow
def test_a_mixed_task_vector_gives_each_row_its_tasks_output(arch, size, kwargs, tmp_path):
    pack = build_pack(arch, size, kwargs, [(2, 0.5), (3, 0.5), (4, 0.5)])
    sess = ort.InferenceSession(multi_task_onnx(pack).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    singles = {}
    for record in pack.tasks:
        export_onnx(pack, record.name, tmp_path / f"{record.index}.onnx")
        singles[record.index] = ort.InferenceSession(str(tmp_path / f"{record.index}.onnx"),
                                                     providers=["CPUExecutionProvider"])
    for batch in (1, 5, 9):  # dynamic batch
        x = _inputs(pack, batch, seed=batch).numpy()
        tasks = np.random.default_rng(batch).integers(1, 4, size=batch)
        logits = sess.run(None, {"input": x, "task": tasks})[0]
        assert logits.shape == (batch, 4)
        for i, t in enumerate(tasks):
            own = singles[int(t)].run(None, {"input": x[i:i + 1]})[0][0]
            np.testing.assert_allclose(logits[i, :len(own)], own, rtol=0, atol=1e-5)
            assert np.all(np.isneginf(logits[i, len(own):]))
    x = _inputs(pack, 4).numpy()
    whole = sess.run(None, {"input": x, "task": np.array([2])})[0]  # the [1] form: every row
    each = sess.run(None, {"input": x, "task": np.array([2, 2, 2, 2])})[0]
    np.testing.assert_array_equal(whole, each)


@pytest.mark.parametrize("tasks", [[1, 2, 0, 3], [4, 1, 1, 1], [1, 2, 3, -1], [1, 2]])
def test_a_task_outside_the_pack_anywhere_in_the_vector_is_an_error(multi_file, lenet_pack,
                                                                     tasks):
    path, _ = multi_file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"out of|invalid expand"):
        sess.run(None, {"input": _inputs(lenet_pack, 4).numpy(),
                        "task": np.array(tasks, dtype=np.int64)})


def test_the_python_module_matches_model_for_row_by_row(lenet_pack):
    net = multi_task_net(lenet_pack)
    x = _inputs(lenet_pack, 7)
    tasks = [3, 1, 2, 2, 1, 3, 3]
    with torch.no_grad():
        logits, distance = net(x, torch.tensor(tasks))
    for i, (row, expected) in enumerate(zip(logits, _per_row(lenet_pack, x, tasks))):
        torch.testing.assert_close(row[:len(expected)], expected, rtol=0, atol=1e-6)
        assert torch.isneginf(row[len(expected):]).all()
        with torch.no_grad():
            own = task_free_net(lenet_pack, tasks[i])(x[i:i + 1])[1]
        torch.testing.assert_close(distance[i:i + 1], own, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # [1]: every row; one task per row gives the same
        torch.testing.assert_close(net(x, torch.tensor([2]))[0], net(x, torch.tensor([2] * 7))[0],
                                   rtol=0, atol=0)
    empty = net(x[:0], torch.tensor([1]))[0]
    assert empty.shape == (0, 5)


@pytest.mark.parametrize("tasks,match", [([0], "outside 1..3"), ([1, 4, 1], "outside 1..3"),
                                         ([1, 2], "2 task indices for 3 rows"),
                                         ([1.0], "integers")])
def test_the_python_module_refuses_a_bad_task_vector(lenet_pack, tasks, match):
    with pytest.raises(TaskError, match=match):
        multi_task_net(lenet_pack)(_inputs(lenet_pack, 3), torch.tensor(tasks))


def test_gradients_reach_the_inputs_and_no_frozen_weight(lenet_pack):
    net = multi_task_net(lenet_pack)
    x = _inputs(lenet_pack, 4).requires_grad_()
    tasks = [1, 3, 2, 3]
    logits, _ = net(x, torch.tensor(tasks))
    finite = torch.where(torch.isfinite(logits), logits, 0.0)
    finite.sum().backward()
    assert all(not t.requires_grad and t.grad is None
               for t in [*net.parameters(), *net.buffers()])
    for i, t in enumerate(tasks):  # the input gradient is each row's own task's
        xi = x.detach()[i:i + 1].clone().requires_grad_()
        lenet_pack.model_for(t)(xi).sum().backward()
        torch.testing.assert_close(x.grad[i:i + 1], xi.grad, rtol=1e-5, atol=1e-6)
