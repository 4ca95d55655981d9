"""int8 and float16 per-task ONNX: measured on the test split, refused past --max-drop."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_helpers import FAST, assert_error, invoke, ok, ok_json, sha256
from conftest import build_pack, synthetic_task

from packtool import Pack, evaluate
from packtool.data import task_data
from packtool.errors import PackToolError
from packtool.evaluation import noise_difference, precision_change
from packtool.exporters import export_reduced, session
from packtool.exporters.onnx import export_onnx_bytes
from packtool.exporters.quantize import (
    OrtModule,
    calibration_batches,
    half_weights,
    reduced_bytes,
)
from packtool.exporters.runtime import infer


@pytest.fixture(scope="module", params=["mlp", "lenet"])
def digits_model(request, tmp_path_factory):
    """A model.pt with one digits task: mlp (dynamic int8) or lenet (convs: static int8)."""
    model = tmp_path_factory.mktemp(request.param) / "model.pt"
    ok("init", model, "--arch", request.param, "--input-size", "1x8x8")
    ok("add-task", model, "--data", "digits", "--classes", "0-4", "--prune", "0.5", *FAST)
    return model


def _file_accuracy(pack, path):
    """The written file evaluated on its own, as a user would."""
    test = task_data(pack, "digits-0to4").test
    return evaluate(OrtModule(session(path)), test).accuracy


@pytest.mark.parametrize("flag, precision", [("--int8", "int8"), ("--half", "float16")])
@pytest.mark.slow
def test_reported_change_is_the_written_files(digits_model, tmp_path, flag, precision):
    out = tmp_path / f"{precision}.onnx"
    before = sha256(digits_model)
    doc = ok_json("export", digits_model, "--task", "digits-0to4", flag, "--out", out,
                  "--max-drop", "100")
    [item] = doc["files"]
    assert item["precision"] == precision and item["bytes"] == out.stat().st_size
    pack = Pack.load(digits_model)
    float32 = evaluate(pack.model_for("digits-0to4"), task_data(pack, "digits-0to4").test)
    assert item["accuracy_float32"] == float32.accuracy
    assert item["accuracy"] == _file_accuracy(pack, out)
    assert item["accuracy_change"] == pytest.approx((item["accuracy"] - float32.accuracy) * 100)
    # max |diff| is the written file's, not that of the float32 export it was made from
    file = precision_change("t", pack.model_for("digits-0to4"), OrtModule(session(out)),
                            task_data(pack, "digits-0to4").test)
    assert item["max_abs_diff"] == pytest.approx(file.max_abs_diff)
    assert item["max_abs_diff"] > 1e-4
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["packtool.precision"] == precision and props["packtool.task"] == "digits-0to4"
    assert ok_json("info", out)["precision"] == precision
    types = {i.data_type for i in model.graph.initializer}
    if precision == "float16":
        assert onnx.TensorProto.FLOAT not in types
    else:
        assert onnx.TensorProto.INT8 in types
        convs = any(n.op_type == "Conv" for n in model.graph.node)
        static = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        assert static == convs  # static (calibrated) quantization exactly for conv nets
    assert sha256(digits_model) == before
    predicted = ok_json("predict", out, _image(tmp_path), "--top", "1")
    assert predicted["task"] == "digits-0to4"


def _image(folder):
    from PIL import Image

    path = folder / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_refusal_writes_nothing(digits_model, tmp_path, monkeypatch):
    """Calibrating on images a thousand times too dark clips every activation: a real loss,
    refused, and nothing written; --force writes it."""
    from packtool.exporters import quantize

    monkeypatch.setattr(quantize, "calibration_batches",
                        lambda train: [b * 1e-3 for b in calibration_batches(train)])
    pack = Pack.load(digits_model)
    out = tmp_path / "int8.onnx"
    convs = pack.spec.arch == "lenet"
    if not convs:
        pytest.skip("dynamic quantization takes no calibration")
    with pytest.raises(PackToolError, match="more than the 1 allowed; nothing was written"):
        export_reduced(pack, "digits-0to4", out, "int8")
    assert not out.exists()
    forced = export_reduced(pack, "digits-0to4", out, "int8", force=True)
    assert out.exists() and forced.change.accuracy_change < -1


@pytest.mark.slow
def test_missing_data_needs_force(digits_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PACKTOOL_DATA", str(tmp_path / "nowhere"))
    pack = Pack.load(digits_model)
    data = dict(pack.tasks[0].data)
    pack.tasks[0].data.update({"data": "folder-that-is-gone", "root": str(tmp_path / "gone")})
    out = tmp_path / "half.onnx"
    try:
        with pytest.raises(PackToolError, match=r"cannot measure.*nothing was written"):
            export_reduced(pack, "digits-0to4", out, "float16")
        assert not out.exists()
        written = export_reduced(pack, "digits-0to4", out, "float16", force=True)
        assert written.change is None and written.to_dict()["accuracy_change"] is None
        assert written.max_abs_diff == noise_difference(
            pack.model_for("digits-0to4"), OrtModule(session(out)), pack.spec.input_size) > 0
    finally:
        pack.tasks[0].data.clear()
        pack.tasks[0].data.update(data)


def test_half_weights_cast_back_to_float32():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    w = onnx.numpy_helper.from_array(np.array([1.0, 1 / 3], np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "w"], ["y"])], "g",
                                   [x], [y], [w])
    model = half_weights(onnx.helper.make_model(graph, ir_version=10, opset_imports=[
        onnx.helper.make_opsetid("", 18)]))
    onnx.checker.check_model(model, full_check=True)
    out = session(model.SerializeToString()).run(None, {"x": np.zeros(2, np.float32)})[0]
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, float(np.float32(np.float16(1 / 3)))]


def test_bad_max_drop_is_refused(digits_model, tmp_path):
    with pytest.raises(PackToolError, match="max_drop"):
        export_reduced(Pack.load(digits_model), "digits-0to4", tmp_path / "x.onnx", "int8",
                       max_drop=float("nan"))
    result = invoke("export", digits_model, "--task", "digits-0to4", "--int8", "--max-drop",
                    "-1", "--out", tmp_path / "x.onnx")
    assert_error(result, code=2)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("arch", ["mlp", "lenet"])
def test_int8_keeps_a_pruned_tasks_zeros_sparse(arch):
    """A task owning 5% of the network: its int8 weights are mostly 0, stored sparse as the
    float32 file's are (dense int8 would outweigh sparse float32), and onnxruntime computes
    exactly what it computes from the same file dense."""
    pack = build_pack(arch, (1, 8, 8), {}, [(3, 0.95)])
    dense, _ = export_onnx_bytes(pack, "task 1", dense=True)
    train = synthetic_task(3, seed=0).train if arch == "lenet" else None
    written = reduced_bytes(dense, "int8", train)
    model = onnx.load_from_string(written)
    sparse = {s.values.name: s for s in model.graph.sparse_initializer}
    assert any(s.values.data_type == onnx.TensorProto.INT8 for s in sparse.values())
    # The same graph with every sparse initializer written out dense.
    for name, s in sparse.items():
        values = np.zeros(int(np.prod(s.dims)), onnx.helper.tensor_dtype_to_np_dtype(
            s.values.data_type))
        values[onnx.numpy_helper.to_array(s.indices)] = onnx.numpy_helper.to_array(s.values)
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            values.reshape(tuple(s.dims)), name))
    del model.graph.sparse_initializer[:]
    unpacked = model.SerializeToString()
    assert len(written) < len(unpacked)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(infer(session(written), x), infer(session(unpacked), x))
