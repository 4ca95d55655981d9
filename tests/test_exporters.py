"""Per-task ONNX export, verification, providers and predict (issue 5)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from conftest import build_pack
from onnx import numpy_helper
from PIL import Image
from torch.onnx._internal.exporter import _registration

import packtool.exporters.onnx as onnx_export
import packtool.exporters.runtime as runtime
import packtool.exporters.torchlib_table as table
from packtool import Pack
from packtool.errors import PackFormatError, PackToolError, TaskError
from packtool.exporters import (
    TaskMetadata,
    export_all,
    export_onnx,
    export_onnx_bytes,
    predict,
    providers,
    session,
    task_filenames,
    verify_onnx,
    write_archive,
)
from packtool.formats import model_file

PACKS = {  # name: (arch, input size, kwargs, [(classes, prune), ...])
    "mlp": ("mlp", (1, 8, 8), {}, [(3, 0.75), (4, 0.5), (2, 0.0)]),
    "bn-conv": ("lenet", (1, 8, 8), {"width": 8}, [(3, 0.6), (5, 0.5)]),
    "resnet": ("nets:tiny_resnet", (3, 16, 16), {}, [(4, 0.5), (3, 0.5)]),
}


@pytest.fixture(scope="module", params=list(PACKS))
def pack(request) -> Pack:
    return build_pack(*PACKS[request.param])


@pytest.fixture(scope="module")
def mlp_pack() -> Pack:
    return build_pack(*PACKS["mlp"])


@pytest.fixture(scope="module")
def exported(mlp_pack, tmp_path_factory):
    """Task 1 of ``mlp_pack`` (3 classes, sparse initializers) as an ONNX file, and the archive."""
    out = tmp_path_factory.mktemp("exported")
    export_onnx(mlp_pack, "task 1", out / "task1.onnx")
    assert onnx.load(str(out / "task1.onnx")).graph.sparse_initializer
    return out / "task1.onnx", write_archive(mlp_pack, out / "pack.safetensors").path


def ort_logits(path_or_bytes, x: torch.Tensor) -> np.ndarray:
    return runtime.infer(session(path_or_bytes), x.numpy())


# ------------------------------------------------------------------------------------------------
# Export parity, checker, dynamic batch, metadata
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_task_matches_pytorch(pack, tmp_path):
    size = pack.spec.input_size
    files, archive = export_all(pack, tmp_path / "out", source_sha256="ab" * 32)
    stems = task_filenames(pack.task_names)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{stem}.onnx" for stem in stems] + ["pack.safetensors"])
    assert archive is not None and archive.to_dict() == {
        "path": str(tmp_path / "out" / "pack.safetensors"), "bytes": archive.path.stat().st_size}
    for record, result, stem in zip(pack.tasks, files, stems):
        path = tmp_path / "out" / f"{stem}.onnx"
        assert result.task == record.name and result.path == path
        assert result.bytes == path.stat().st_size
        assert set(result.to_dict()) == {"task", "path", "bytes", "max_abs_diff"}
        assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
        assert result.provider == "CPUExecutionProvider"
        onnx.checker.check_model(str(path))  # sparse initializers: the structural check

        net = pack.model_for(record.name)
        for batch in (1, 7):  # the batch dimension is dynamic
            x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                expected = net(x).numpy()
            actual = ort_logits(str(path), x)
            assert actual.shape == (batch, len(record.classes))
            assert np.abs(actual - expected).max() <= 1e-4
            assert (actual.argmax(1) == expected.argmax(1)).all()

        model = onnx.load(str(path))
        assert model.ir_version <= 13  # onnxruntime 1.31 reads IR <= 13 (onnx 1.23 writes 14)
        assert dict((p.key, p.value) for p in model.metadata_props) == {
            "packtool.task": record.name,
            "packtool.classes": json.dumps(record.classes),
            "packtool.input_size": "x".join(map(str, size)),
            "packtool.mean": json.dumps(list(pack.spec.mean)),
            "packtool.std": json.dumps(list(pack.spec.std)),
            "packtool.version": model_file.meta(pack)["packtool_version"],
            "packtool.source_sha256": "ab" * 32,
            "packtool.temperature": repr(record.temperature),
        }
        (inp,), (out,) = model.graph.input, model.graph.output
        assert (inp.name, out.name) == ("input", "logits")
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == list(size)
        _assert_initializers_hold_the_task(model, pack, record, net.state_dict())


def _assert_initializers_hold_the_task(model, pack, record, state) -> None:
    """Initializers keep parameter names, and no weight outside task k's mask is non-zero."""
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for sparse in model.graph.sparse_initializer:
        dense = np.zeros(int(np.prod(sparse.dims)), dtype=np.float32)
        dense[numpy_helper.to_array(sparse.indices)] = numpy_helper.to_array(sparse.values)
        tensors[sparse.values.name] = dense.reshape(tuple(sparse.dims))
    floats = {k: torch.from_numpy(v.copy()) for k, v in tensors.items() if v.dtype == np.float32}
    for name in floats:  # BatchNorm folding adds `<conv>.weight_bias`
        assert name in state or name.removesuffix("_bias") in state, name
    folded = any(k.endswith("running_mean") for k in state)
    for key, owners in pack.owners.items():
        active = (owners >= 1) & (owners <= record.index)
        assert not bool((floats[key] != 0)[~active].any()), f"{key} uses weights beyond task"
        if not folded:
            assert torch.equal(floats[key], state[key]), key
    classifier = pack.anatomy().classifier
    for name, value in record.head.items():
        assert torch.equal(floats[f"{classifier}.{name}"], value)


@pytest.mark.slow
def test_sparse_initializers_shrink_a_mostly_zero_task(tmp_path):
    pack = build_pack("mlp", (1, 16, 16), {}, [(3, 0.9)])  # task 1 keeps 10% of the weights
    (dense,), archive = export_all(pack, tmp_path / "dense", dense=True, archive=False,
                                   verify=False)
    assert archive is None and dense.max_abs_diff is None and dense.provider is None
    dense_model = onnx.load(str(dense.path))
    assert not dense_model.graph.sparse_initializer
    onnx.checker.check_model(dense_model, full_check=True)
    sparse = export_onnx(pack, "task 1", tmp_path / "sparse.onnx")
    model = onnx.load(str(sparse.path))
    assert {s.values.name for s in model.graph.sparse_initializer} == {"1.weight", "3.weight"}
    assert [i.name for i in model.graph.initializer if i.name.endswith("weight")] == ["5.weight"]
    assert all(s.indices.data_type == onnx.TensorProto.INT64 and len(s.indices.dims) == 1
               for s in model.graph.sparse_initializer)
    print(f"\nmlp 256x256, 10% kept: dense {dense.bytes} B, sparse {sparse.bytes} B "
          f"({sparse.bytes / dense.bytes:.2f}x)")
    assert sparse.bytes < 0.5 * dense.bytes
    x = torch.randn(5, 1, 16, 16)
    assert np.array_equal(ort_logits(str(dense.path), x), ort_logits(str(sparse.path), x))


@pytest.mark.slow  # exports ONNX or starts processes: seconds, not the quick loop's
def test_torchlib_table_reused_gives_the_same_bytes(mlp_pack, monkeypatch):
    """Exports after the first reuse torch.onnx's function table (a copy each): the same
    bytes as an export that built its own, and torch's method is back afterwards."""
    before = _registration.ONNXRegistry.__dict__["from_torchlib"]
    monkeypatch.setattr(table, "_TABLES", {})
    name = mlp_pack.tasks[0].name
    first = export_onnx_bytes(mlp_pack, name, verify=False)[0]
    assert table._TABLES  # kept for the next export
    assert export_onnx_bytes(mlp_pack, name, verify=False)[0] == first
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is before
    monkeypatch.setattr(table, "_registration", None)  # a torch shaped otherwise: no reuse
    assert export_onnx_bytes(mlp_pack, name, verify=False)[0] == first


def test_task_filenames_are_safe_and_distinct():
    names = ["cars", "a/b", "../etc", "Cars", "", "CON", "x" * 300, "é", "pack.safetensors"]
    stems = task_filenames(names)
    assert len({s.lower() for s in stems}) == len(names)
    for stem in stems:
        assert stem and "/" not in stem and "\\" not in stem and not stem.startswith((".", "-"))
        assert len(stem) <= 110 and stem.lower() != "con"
    assert stems[:3] == ["cars-1", "a_b", "_etc"]


def test_bad_opset_and_unknown_task_refused(mlp_pack, tmp_path):
    with pytest.raises(PackToolError, match="opset"):
        export_onnx(mlp_pack, "task 1", tmp_path / "x.onnx", opset=13)
    with pytest.raises(TaskError, match="unknown task"):
        export_onnx(mlp_pack, "nope", tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# Verification failure leaves nothing behind
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_failed_verification_writes_nothing(mlp_pack, tmp_path, monkeypatch):
    real_run = runtime.infer
    monkeypatch.setattr(onnx_export, "infer", lambda sess, x: real_run(sess, x) + 1e-3)
    new, old = tmp_path / "new.onnx", tmp_path / "old.onnx"
    old.write_bytes(b"previous export")
    for path in (new, old):
        with pytest.raises(PackToolError, match="differs from PyTorch") as info:
            export_onnx(mlp_pack, "task 2", path)
        assert "\n" not in str(info.value)
    assert not new.exists()
    assert old.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]  # no temp files


def test_nan_is_never_within_tolerance(mlp_pack, exported, monkeypatch):
    onnx_path, _ = exported
    net = mlp_pack.model_for("task 1")
    diff, provider = verify_onnx(onnx_path.read_bytes(), net, (1, 8, 8))
    assert diff <= 1e-4 and provider == "CPUExecutionProvider"
    real_run = runtime.infer
    monkeypatch.setattr(onnx_export, "infer", lambda sess, x: real_run(sess, x) * np.nan)
    with pytest.raises(PackToolError, match="nan"):
        verify_onnx(onnx_path.read_bytes(), net, (1, 8, 8), tolerance=np.inf)


@pytest.mark.slow
def test_zero_tolerance_with_perturbed_session_fails(mlp_pack, tmp_path, monkeypatch):
    real_session = runtime.session

    class Perturbed:
        def __init__(self, sess):
            self.sess = sess

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, outputs, feeds):
            return [y + np.float32(1e-6) for y in self.sess.run(outputs, feeds)]

    monkeypatch.setattr(onnx_export, "session", lambda model: Perturbed(real_session(model)))
    with pytest.raises(PackToolError, match="tolerance 0"):
        export_onnx(mlp_pack, "task 1", tmp_path / "t.onnx", tolerance=0.0)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# Providers
# ------------------------------------------------------------------------------------------------


def test_cpu_provider_without_cuda_and_no_error_logged(exported, capfd):
    assert not torch.cuda.is_available()  # this suite runs on CPU machines
    assert providers() == ["CPUExecutionProvider"]
    onnx_path, _ = exported
    capfd.readouterr()
    for source in (str(onnx_path), onnx_path.read_bytes()):
        sess = session(source)
        runtime.infer(sess, np.zeros((1, 1, 8, 8), np.float32))
        assert runtime.provider_of(sess) == "CPUExecutionProvider"
    err = capfd.readouterr().err  # onnxruntime logs to the process's stderr (fd 2)
    assert "error" not in err.lower() and "[E:" not in err, err


def test_this_machine_has_no_gpu_for_the_runtime():
    """The driver query behind providers(): no GPU here (CI has none either), so no CUDA."""
    assert runtime.cuda_devices() == 0
    assert runtime.providers() == ["CPUExecutionProvider"]


def test_cuda_requested_only_when_usable(monkeypatch):
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(runtime, "cuda_devices", lambda: 0)
    assert providers() == ["CPUExecutionProvider"]  # onnxruntime-gpu on a machine without GPU
    monkeypatch.setattr(runtime, "cuda_devices", lambda: 1)
    assert providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: listed[2:])
    assert providers() == ["CPUExecutionProvider"]  # plain onnxruntime on a GPU machine


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (mode, size) in enumerate([("L", (8, 8)), ("RGB", (20, 13)), ("RGBA", (5, 9))]):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
        paths.append(path)
    return paths


def _check_result(result, record, images, top):
    assert result.task == record.name
    assert result.provider == "CPUExecutionProvider"
    assert [p["image"] for p in result.predictions] == [str(p) for p in images]
    for prediction in result.predictions:
        probs = [t["probability"] for t in prediction["top"]]
        assert len(probs) == min(top, len(record.classes))
        assert probs == sorted(probs, reverse=True)
        assert all(t["class"] in record.classes for t in prediction["top"])
        if top >= len(record.classes):
            assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert set(result.to_dict()) == {"task", "provider", "predictions"}
    json.dumps(result.to_dict())


@pytest.mark.slow
def test_predict_from_onnx_and_from_archive(mlp_pack, exported, images):
    record = mlp_pack.task("task 1")  # 3 classes
    onnx_path, archive = exported

    from_onnx = predict(onnx_path, images, top=2)
    _check_result(from_onnx, record, images, 2)
    everything = predict(onnx_path, images, task=record.name, top=50)  # clamped to 3 classes
    _check_result(everything, record, images, 50)
    from_archive = predict(archive, images, task=record.name, top=50)
    _check_result(from_archive, record, images, 50)
    for a, b in zip(everything.predictions, from_archive.predictions):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert np.allclose([t["probability"] for t in a["top"]],
                           [t["probability"] for t in b["top"]], atol=1e-6)

    # The same numbers as PyTorch on the preprocessed images.
    x = torch.stack([torch.from_numpy(mlp_pack.preprocess.load_image(p)) for p in images])
    with torch.no_grad():
        probs = torch.softmax(mlp_pack.model_for(record.name)(x).double(), dim=1)
    for row, prediction in zip(probs, everything.predictions):
        best = prediction["top"][0]
        assert record.classes[int(row.argmax())] == best["class"]
        assert float(row.max()) == pytest.approx(best["probability"], abs=1e-5)


def test_predict_reads_a_folder_as_its_images(exported, tmp_path, images):
    onnx_path, _ = exported
    folder = tmp_path / "folder"
    (folder / "inner").mkdir(parents=True)
    copies = [folder / "inner" / "z.png", folder / "a.png", folder / "m.png"]
    for source, copy in zip(images, copies):
        copy.write_bytes(source.read_bytes())
    listed = predict(onnx_path, sorted(copies), top=3)
    assert predict(onnx_path, [folder], top=3).to_dict() == listed.to_dict()


def test_predict_errors(exported, tmp_path, images):
    onnx_path, archive = exported
    with pytest.raises(TaskError, match="`task`"):
        predict(archive, images)
    with pytest.raises(TaskError, match="unknown task"):
        predict(archive, images, task="nope")
    with pytest.raises(TaskError, match="holds task"):
        predict(onnx_path, images, task="task 2")
    with pytest.raises(PackToolError, match="top"):
        predict(onnx_path, images, top=0)

    foreign = tmp_path / "foreign.onnx"  # an ONNX model without packtool metadata
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(256))
    for bad in (foreign, garbage):
        with pytest.raises(PackFormatError) as info:
            predict(bad, images)
        assert "\n" not in str(info.value)


def test_metadata_round_trip():
    meta = TaskMetadata("cars", ("a", "b\"c"), (3, 4, 5), (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert TaskMetadata.from_props(meta.to_props()) == meta
    with pytest.raises(PackFormatError, match="not a packtool task model"):
        TaskMetadata.from_props({"packtool.task": "x"}, "m.onnx")
