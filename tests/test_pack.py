"""Pack files, capacity, task selection and the add-task lifecycle (issue 3)."""

from __future__ import annotations

import json
import os
import pickle
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from formats.make_v1 import CONFIG as V1_CONFIG
from formats.make_v1 import Task as V1Task
from safetensors.torch import save_file

from packtool import (
    ArchitectureError,
    CapacityError,
    DataError,
    Measurement,
    Pack,
    PackFormatError,
    PackToolError,
    Progress,
    TaskError,
    TrainConfig,
    add_task,
    evaluate,
)
from packtool.fileio import atomic_write
from packtool.formats import model_file
from packtool.formats.model_file import FORMAT_VERSION

FAST = TrainConfig(epochs=1, finetune_epochs=1, lr=0.05, batch_size=16, device="cpu")


@pytest.fixture
def pack3(make_task) -> Pack:
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    for t, ratio in enumerate((0.5, 0.75, 0.0)):
        pack, _ = add_task(pack, f"t{t + 1}", make_task(2 + t, seed=t), ratio, FAST)
    return pack


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


# -- files --------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bitwise(pack3, tmp_path):
    path = tmp_path / "model.pt"
    pack3.save(path)
    loaded = Pack.load(path)
    assert model_file.meta(loaded) == model_file.meta(pack3)
    for part in ("shared", "owners", "initial_private"):
        a, b = getattr(pack3, part), getattr(loaded, part)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key])
    for old, new in zip(pack3.tasks, loaded.tasks):
        assert old.meta() == new.meta()
        for key in old.head:
            assert torch.equal(old.head[key], new.head[key])
        for key in old.private:
            assert torch.equal(old.private[key], new.private[key])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for name in pack3.task_names:
            assert torch.equal(loaded.model_for(name)(x), pack3.model_for(name)(x))
    loaded.save(tmp_path / "again.pt")
    assert _bytes(tmp_path / "again.pt") == _bytes(path)


def test_file_holds_only_tensors_and_plain_values(pack3, tmp_path):
    path = tmp_path / "model.pt"
    pack3.save(path)
    state = torch.load(path, weights_only=True)
    assert state["format"] == "packtool.pack" and state["version"] == 5  # rejection thresholds
    assert json.loads(state["meta"])["tasks"][0]["name"] == "t1"


def test_pack_moves_between_devices(pack3):
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = pack3.model_for("t2")(x)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        pack3.to(device)
        assert pack3.device.type == device
        with torch.no_grad():
            out = pack3.model_for("t2")(x.to(device)).cpu()
        assert torch.allclose(out, expected, atol=1e-5)
    pack3.to("cpu")
    with torch.no_grad():
        assert torch.equal(pack3.model_for("t2")(x), expected)


def test_save_is_atomic_when_writing_fails(pack3, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    pack3.save(path)
    before = _bytes(path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pack3.save(path)
    assert _bytes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_ctrl_c_during_a_write_completes_it_then_interrupts(tmp_path):
    """torch.save turns a KeyboardInterrupt raised inside its writer into a RuntimeError (the
    CLI then said "internal error"); a Ctrl-C that lands in a write is held until the file is
    whole, then interrupts."""
    target, state = tmp_path / "state.pt", {"w": torch.randn(1000)}

    def write(f):
        os.kill(os.getpid(), signal.SIGINT)
        torch.save(state, f)

    # Python's own handler, as in a terminal: a suite started in the background (``cmd &``)
    # inherits SIGINT ignored, and then there is no Ctrl-C to hold.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(target, write)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.equal(torch.load(target, weights_only=True)["w"], state["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def _bad_files(pack: Pack, tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    pack.save(good)
    data = _bytes(good)
    files = {
        "empty": b"",
        "random": os.urandom(4096),
        "truncated": data[: len(data) // 2],
        "onnx-like": b"\x08\x09\x12\x07pytorch" + os.urandom(200),
    }
    paths = {name: tmp_path / f"{name}.pt" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    paths["state_dict"] = tmp_path / "state_dict.pt"
    state = model_file.content(pack)
    state["version"] = FORMAT_VERSION + 1
    torch.save(state, tmp_path / "future.pt")
    paths["future"] = tmp_path / "future.pt"
    state = model_file.content(pack)
    state["shared"][next(iter(state["shared"]))][0] += 1.0  # tampered value
    torch.save(state, tmp_path / "tampered.pt")
    paths["tampered"] = tmp_path / "tampered.pt"
    return paths


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "not a packtool model file"),
        ("random", "not a packtool model file"),
        ("truncated", "not a packtool model file"),
        ("onnx-like", r"not a packtool model file but an ONNX file \(serve it with "
                      r"`packtool predict`"),
        ("state_dict", "plain state_dict"),
        ("future", "newer than this packtool"),
        ("tampered", "checksum"),
    ],
)
def test_bad_files_get_one_line_errors(pack3, tmp_path, kind, message):
    path = _bad_files(pack3, tmp_path)[kind]
    with pytest.raises(PackFormatError, match=message) as info:
        Pack.load(path)
    assert "\n" not in str(info.value)


def test_a_file_for_another_command_is_named(pack3, tmp_path):
    """What ``add-task`` (a model file only) says of an archive or a plan given in its place."""
    from packtool.formats.archive import write_archive

    archive = tmp_path / "pack.safetensors"
    write_archive(pack3, archive)
    with pytest.raises(PackFormatError, match=r"but a safetensors file \(an archive serves its "
                                              r"tasks but is not trained further"):
        model_file.load(archive)
    assert Pack.load(archive).task_names == pack3.task_names  # what serves it
    plan = tmp_path / "plan.toml"
    plan.write_text("[network]\narch = 'mlp'\n")
    with pytest.raises(PackFormatError, match=r"but a TOML file \(a plan\? run it with "
                                              r"`packtool run`"):
        Pack.load(plan)


class _Payload:
    def __reduce__(self):
        marker = os.environ["PACKTOOL_TEST_MARKER"]
        return (open, (marker, "w"))


def test_pickle_payload_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PACKTOOL_TEST_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"format": "packtool.pack", "x": _Payload()}, path)
    with pytest.raises(PackFormatError, match="refused"):
        Pack.load(path)
    assert not marker.exists()
    with pytest.raises(PackFormatError):  # a raw pickle stream, not a torch zip
        path.write_bytes(pickle.dumps(_Payload()))
        Pack.load(path)
    assert not marker.exists()


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PackToolError, match="does not exist"):
        Pack.load(tmp_path / "nope.pt")
    with pytest.raises(PackToolError, match="directory"):
        Pack.load(tmp_path)


# -- capacity and tasks -------------------------------------------------------------------------


def test_capacity_counts_are_exact(pack3):
    rows = pack3.capacity()
    for row in rows:
        assert row.free + sum(row.owned) == row.total
        free0 = row.total
        t1 = free0 - round(0.5 * free0)
        t2 = (free0 - t1) - round(0.75 * (free0 - t1))
        t3 = free0 - t1 - t2  # ratio 0 keeps everything left
        assert row.owned == (t1, t2, t3) and row.free == 0
    for key, own in pack3.owners.items():
        assert torch.equal(pack3.shared[key][own == 0], torch.zeros(int((own == 0).sum())))
    assert pack3.free_fraction == 0.0


def test_full_pack_refuses_another_task(pack3, make_task):
    before = model_file.to_bytes(pack3)
    with pytest.raises(CapacityError, match=r"no free weights .* owned by one of the 3 tasks"):
        add_task(pack3, "t4", make_task(2, seed=9), 0.5, FAST)
    assert model_file.to_bytes(pack3) == before


def test_a_task_without_two_classes_or_two_validation_images_is_refused_before_training(
        make_task, monkeypatch):
    """calibrate() fits a spread on the validation images: one image has none, and failing
    there would come after the whole training."""
    from torch.utils.data import Subset

    from packtool import lifecycle

    monkeypatch.setattr(lifecycle, "prepare", lambda *a, **k: pytest.fail("it trained"))
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    with pytest.raises(DataError, match=r"at least two classes to tell apart; the data has 1 "
                                        r"\(c0\)"):
        add_task(pack, "one", make_task(1, seed=0), 0.5, FAST)
    tiny = make_task(2, seed=0)
    tiny.val = Subset(tiny.val, [0])
    with pytest.raises(DataError, match=r"validation split has 1 image.*`val_fraction`"):
        add_task(pack, "tiny", tiny, 0.5, FAST)
    assert not pack.tasks


@pytest.mark.parametrize(("name", "ratio", "error"), [
    ("t1", 0.5, "already exists"),
    ("new", 1.0, r"\[0, 1\)"),
    ("new", -0.1, r"\[0, 1\)"),
    ("", 0.5, "empty"),
])
def test_bad_task_settings(make_task, name, ratio, error):
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    pack, _ = add_task(pack, "t1", make_task(2, seed=0), 0.5, FAST)
    with pytest.raises(TaskError, match=error):
        add_task(pack, name, make_task(2, seed=1), ratio, FAST)
    assert pack.task_names == ["t1"]


def test_diverging_training_is_a_clear_error(make_task):
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    pack, _ = add_task(pack, "t1", make_task(2, seed=0), 0.5, FAST)
    before = model_file.to_bytes(pack)
    with pytest.raises(TaskError, match="training diverged: the loss became NaN or infinite"):
        add_task(pack, "boom", make_task(2, seed=5), 0.5, replace(FAST, lr=1e30))
    assert model_file.to_bytes(pack) == before


def test_unknown_task_lists_known(pack3):
    with pytest.raises(TaskError, match="known tasks: t1, t2, t3"):
        pack3.model_for("nope")


def test_selecting_an_old_task_while_training_changes_nothing(make_task):
    pack = Pack.create("lenet", (1, 8, 8), kwargs={"width": 4})
    pack, _ = add_task(pack, "t1", make_task(2, seed=0), 0.5, FAST)
    pack, _ = add_task(pack, "t2", make_task(3, seed=1), 0.5, FAST)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = pack.model_for("t1")(x)
    seen = []

    class Probe(Progress):
        def batch_end(self, batch, loss, accuracy):
            with torch.no_grad():
                seen.append(torch.equal(pack.model_for("t1")(x), expected))

    pack, _ = add_task(pack, "t3", make_task(2, seed=2), 0.5, FAST, progress=Probe())
    assert seen and all(seen)
    with torch.no_grad():
        assert torch.equal(pack.model_for("t1")(x), expected)


def test_interrupted_add_task_leaves_pack_unchanged(pack3, make_task):
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    pack, _ = add_task(pack, "t1", make_task(2, seed=0), 0.5, FAST)
    before = model_file.to_bytes(pack)

    class Interrupt(Progress):
        def epoch_end(self, *args):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_task(pack, "t2", make_task(2, seed=1), 0.5, FAST, progress=Interrupt())
    assert model_file.to_bytes(pack) == before


class _Counting(torch.utils.data.Dataset):
    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]


def test_model_selection_reads_validation_not_test(make_task):
    data = make_task(3, seed=0)
    data.val, data.test = _Counting(data.val), _Counting(data.test)
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    config = TrainConfig(epochs=3, finetune_epochs=2, lr=0.05, device="cpu")
    pack, result = add_task(pack, "t1", data, 0.5, config)
    # test: measured before pruning, after pruning and at the end - never per epoch
    assert data.test.reads == 3 * len(data.test)
    # validation: every epoch of both phases and calibration (the pruned network is no
    # candidate of fine-tuning: test_finetuning_keeps_a_finetuned_epoch)
    assert data.val.reads == (3 + 2 + 1) * len(data.val)
    assert evaluate(pack.model_for("t1"), data.test).accuracy == result.accuracy


def test_finetuning_keeps_a_finetuned_epoch(make_task, monkeypatch):
    """The pruned network scores like training's best epoch, the maximum over all of them,
    and on a small validation split it beat every fine-tuned epoch by luck (fine-tuning was
    silently skipped). Here every fine-tuning epoch scores lower than the one before: the
    first is kept, not the pruned network."""
    from packtool import training

    original, calls = training.Training.evaluate, []

    def falling(self, dataset):
        score = original(self, dataset)
        if dataset is self.data.val:
            calls.append(score)
            if len(calls) > 3:  # after training's three epochs
                return Measurement(1.0 - 0.1 * len(calls), 1.0 + len(calls))
        return score

    monkeypatch.setattr(training.Training, "evaluate", falling)
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    config = TrainConfig(epochs=3, finetune_epochs=3, lr=0.05, device="cpu")
    pack, _ = add_task(pack, "t1", make_task(3, seed=0), 0.5, config)
    assert pack.task("t1").metrics["best_epoch_finetune"] == 1


def test_score_ranks_accuracy_then_loss():
    assert Measurement(0.9, 0.5).better_than(None)
    assert Measurement(0.9, 0.5).better_than(Measurement(0.8, 0.1))  # accuracy first
    assert Measurement(0.9, 0.2).better_than(Measurement(0.9, 0.3))  # ties: lower loss
    assert not Measurement(0.9, 0.3).better_than(Measurement(0.9, 0.3))  # equal: keep the earlier
    assert not Measurement(0.9, float("nan")).better_than(Measurement(0.9, 0.3))


def test_saturated_validation_keeps_the_lowest_loss_epoch(make_task, monkeypatch):
    """Validation accuracy saturates at 100% after an epoch or two: the kept model is the tied
    epoch with the lowest validation loss, not the first one that reached 100%."""
    from packtool import training

    seen: list[Measurement] = []
    original = training.Training.evaluate

    def recording(self, dataset):
        score = original(self, dataset)
        if dataset is self.data.val:
            seen.append(score)
        return score

    monkeypatch.setattr(training.Training, "evaluate", recording)
    data = make_task(2, seed=0)
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
    # prune 0 and no fine-tuning: the final model is the training epoch that was kept
    pack, _ = add_task(pack, "t1", data, 0.0, TrainConfig(epochs=6, finetune_epochs=0, lr=0.05,
                                               device="cpu"))
    tied = [s for s in seen[:6] if s.accuracy == 1.0]
    assert len(tied) >= 3, seen
    kept = evaluate(pack.model_for("t1"), data.val)
    assert kept.accuracy == 1.0
    assert kept.loss == pytest.approx(min(s.loss for s in tied), rel=1e-6)
    assert kept.loss < tied[0].loss  # the first epoch at 100% was not the one kept


def test_same_seed_same_pack(make_task):
    def build():
        pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16})
        pack, _ = add_task(pack, "t1", make_task(2, seed=0), 0.5, FAST)
        return pack

    a, b = build(), build()
    for key in a.shared:
        assert torch.equal(a.shared[key], b.shared[key])
        assert torch.equal(a.owners[key], b.owners[key])


# -- architectures and initial weights ----------------------------------------------------------


def test_torchvision_architectures_split_into_packnet_parts():
    pack = Pack.create("resnet18", (3, 32, 32))
    anat = pack.anatomy()
    assert anat.classifier == "fc" and anat.in_features == 512
    assert "conv1.weight" in pack.shared and "fc.weight" not in pack.shared
    assert any(k.endswith("running_var") for k in anat.private)
    convs = [key.removesuffix(".weight") for key in anat.prunable]
    assert "conv1" in convs and "fc" not in convs
    assert not any(f"{name}.bias" in anat.private for name in convs)  # bias=None convs


@pytest.mark.parametrize(("arch", "error"), [
    ("no_such_net", "unknown architecture"),
    ("nosuchmodule:build", "cannot import"),
    ("nets:missing", "cannot import"),
])
def test_bad_architectures(arch, error):
    with pytest.raises(ArchitectureError, match=error):
        Pack.create(arch, (1, 8, 8))


@pytest.mark.slow
def test_network_that_cannot_run_on_the_input_size():
    with pytest.raises(ArchitectureError, match="cannot run on inputs of size 1x8x8"):
        Pack.create("vgg11", (1, 8, 8))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_weights_become_the_first_task(make_task, tmp_path, suffix):
    donor = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16, "num_classes": 3})
    data = make_task(3, seed=0)
    donor, _ = add_task(donor, "pre", data, 0.0, TrainConfig(epochs=3, lr=0.05, finetune_epochs=0,
                                                 device="cpu"))
    state = donor.model_for("pre").state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16, "num_classes": 3}, weights=path)
    pack, result = add_task(pack, "pre", data, 0.5, TrainConfig(epochs=0, finetune_epochs=0,
                                                        device="cpu"))
    assert result.accuracy_before_prune == evaluate(donor.model_for("pre"), data.test).accuracy


def test_weights_that_do_not_fit(tmp_path):
    torch.save({"0.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    with pytest.raises(ArchitectureError, match="do not fit"):
        Pack.create("mlp", (1, 8, 8), weights=tmp_path / "w.pt")


# -- one-line errors ----------------------------------------------------------------------------


def test_one_line_joins_lines_and_unwraps_worker_tracebacks():
    from packtool.errors import DataError, one_line

    assert one_line(RuntimeError("boom\n  second   line\n")) == "boom second line"
    assert one_line(RuntimeError("boom\nsecond line"), first=True) == "boom"
    assert one_line(ValueError()) == "ValueError"
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most "
               "recent call last):\n  File \"x.py\", line 1, in f\npacktool.errors.DataError: "
               "cannot read image a.png: truncated")
    assert one_line(DataError(wrapped)) == "cannot read image a.png: truncated"


def test_a_seeded_add_task_does_not_depend_on_what_was_asked_of_the_pack_before():
    """A loaded pack builds its anatomy lazily; that build used to draw from the seeded random
    stream of the first add-task only, so the same add-task on the same pack gave another
    result the second time."""
    fixture = Path(__file__).parent / "formats" / "lenet-1task.pt"
    base = Pack.load(fixture)
    first, _ = add_task(base, "second", V1Task(3, seed=1), 0.5, V1_CONFIG)
    again, _ = add_task(base, "second", V1Task(3, seed=1), 0.5, V1_CONFIG)
    asked = Pack.load(fixture)
    asked.anatomy()
    third, _ = add_task(asked, "second", V1Task(3, seed=1), 0.5, V1_CONFIG)
    for pack in (again, third):
        for key in first.shared:
            assert torch.equal(pack.shared[key], first.shared[key])
        assert torch.equal(pack.tasks[1].head["weight"], first.tasks[1].head["weight"])
