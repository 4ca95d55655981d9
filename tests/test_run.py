"""``packtool run PLAN.toml`` (issue 27): a whole sequence from one plan file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_error, invoke, ok, sha256
from crash import forked

from packtool.formats import model_file
from packtool.plan import read_plan

#: Three digit tasks, one epoch of each phase (digits {0,1} and {2,3}: 9 batches an epoch).
PLAN = """
[network]
arch = "lenet"
input_size = "1x8x8"

[defaults]
prune = 0.5
epochs = 1
finetune_epochs = 1
lr = 0.05
finetune_lr = 0.01
device = "cpu"

[[tasks]]
name = "a"
data = "digits"
classes = "0,1"

[[tasks]]
name = "b"
data = "digits"
classes = [2, 3]
epochs = 2

[[tasks]]
name = "c"
data = "digits"
classes = "4-5"
prune = 0
"""
STEPS = 9


def _plan(folder: Path, text: str = PLAN) -> Path:
    path = folder / "plan.toml"
    path.write_text(text)
    return path


def _same_model(a: Path, b: Path) -> None:
    """Bit for bit but the tasks' creation times."""
    left, right = model_file.content(model_file.load(a)), model_file.content(model_file.load(b))
    for content in (left, right):
        meta = json.loads(content.pop("meta"))
        for task in meta["tasks"]:
            task.pop("created")
        content["meta"] = meta
        content.pop("digest")
    assert left["meta"] == right["meta"]
    for key in left:
        if key != "meta":
            assert repr(left[key]) == repr(right[key]), key
    for key, value in left["shared"].items():
        assert torch.equal(value, right["shared"][key])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The plan run once; MODEL in a folder that did not exist (run creates it)."""
    folder = tmp_path_factory.mktemp("run")
    ok("run", _plan(folder), "--model", folder / "out" / "model.pt")
    return folder / "out"


@pytest.mark.slow
def test_a_plan_is_init_tasks_and_add_task_calls(uninterrupted, tmp_path):
    by_hand = tmp_path / "model.pt"
    ok("init", by_hand, "--arch", "lenet", "--input-size", "1x8x8", "--tasks", "3")
    common = ("--epochs", "1", "--finetune-epochs", "1", "--lr", "0.05", "--finetune-lr", "0.01",
              "--device", "cpu")
    for name, classes, prune, extra in (("a", "0,1", "0.5", ()), ("b", "2,3", "0.5",
                                        ("--epochs", "2")), ("c", "4,5", "0", ())):
        ok("add-task", by_hand, "--data", "digits", "--classes", classes, "--task", name,
           "--prune", prune, *common, *extra)
    _same_model(uninterrupted / "model.pt", by_hand)


def test_results_are_the_accuracy_matrix(uninterrupted):
    doc = json.loads((uninterrupted / "results.json").read_text())
    assert [t["task"] for t in doc["tasks"]] == ["a", "b", "c"]
    assert [len(row) for row in doc["matrix"]] == [1, 2, 3]
    diagonal = [doc["matrix"][i][i] for i in range(3)]
    assert diagonal == [t["accuracy"] for t in doc["tasks"]]
    for j in range(3):  # measured after every later task: PackNet forgets nothing
        assert all(row[j] == doc["matrix"][j][j] for row in doc["matrix"][j:])
    assert doc["backward_transfer"] == 0.0
    assert doc["avg_accuracy"] == pytest.approx(sum(doc["matrix"][-1]) / 3)
    lines = (uninterrupted / "results.csv").read_text().splitlines()
    assert lines[0] == "after,a,b,c" and len(lines) == 4


def test_run_again_adds_nothing_and_reports_the_same(uninterrupted, tmp_path):
    before = sha256(uninterrupted / "model.pt")
    again = json.loads(ok("run", uninterrupted.parent / "plan.toml", "--model",
                          uninterrupted / "model.pt", "--json").stdout)
    assert sha256(uninterrupted / "model.pt") == before
    recorded = json.loads((uninterrupted / "results.json").read_text())
    assert again["matrix"] == recorded["matrix"] and again["tasks"] == recorded["tasks"]


@pytest.mark.slow
def test_killed_during_the_second_task_then_run_again(uninterrupted, tmp_path):
    model = tmp_path / "model.pt"
    plan = _plan(tmp_path)
    args = ["run", str(plan), "--model", str(model)]
    assert forked(args, kill=f"step:{2 * STEPS + STEPS + 4}", cwd=tmp_path) == -9  # in b
    assert model_file.load(model).task_names == ["a"]  # b not saved, its checkpoint beside
    assert forked(args, cwd=tmp_path, out=tmp_path / "out") == 0
    _same_model(model, uninterrupted / "model.pt")
    done, reference = (json.loads((folder / "results.json").read_text())
                       for folder in (tmp_path, uninterrupted))
    for doc in (done, reference):
        doc.pop("seconds")
        doc.pop("model_sha256")  # the files differ in the tasks' creation times (above)
        for task in doc["tasks"]:
            task.pop("seconds")
    assert done == reference


BAD_PLANS = {
    "unknown key": (PLAN.replace("epochs = 1\n", "epochs = 1\nepochz = 2\n", 1),
                    "unknown key `epochz` (did you mean `epochs`? known: prune"),
    "unknown key, nothing close": (PLAN.replace("epochs = 1\n", "epochs = 1\nxyz = 2\n", 1),
                                   "unknown key `xyz` (known: prune"),
    "wrong type": (PLAN.replace("epochs = 1\n", 'epochs = "one"\n', 1), "epochs"),
    "missing data": (PLAN.replace('data = "digits"\nclasses = "0,1"', 'classes = "0,1"'),
                     "`data` is required"),
    "duplicate names": (PLAN.replace('name = "b"', 'name = "a"'), "given twice"),
    "grow out of range": (PLAN.replace("epochs = 1\n", "epochs = 1\ngrow = -0.5\n", 1), "grow"),
    "max_size without grow": (PLAN.replace("epochs = 1\n", "epochs = 1\nmax_size = 2\n", 1),
                              "`max_size` needs `grow`"),
    "bad prune": (PLAN.replace("prune = 0.5", "prune = 1.5"), "prune"),
    "not TOML": ("[network\narch = ", "not a readable TOML plan"),
    "no tasks": (PLAN[:PLAN.index("[[tasks]]")], "at least one task"),
    "an untrained task": (PLAN.replace("prune = 0\n", "prune = 0\nepochs = 0\n"
                                       "finetune_epochs = 0\n"), "task 3: this task would not "
                          "train at all: `epochs` and `finetune_epochs` are both 0"),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plans_are_usage_errors(tmp_path, case):
    text, words = BAD_PLANS[case]
    model = tmp_path / "model.pt"
    ok("init", model, "--arch", "lenet", "--input-size", "1x8x8")
    before = sha256(model)
    result = invoke("run", _plan(tmp_path, text), "--model", model)
    assert_error(result, code=2, match=words)
    assert result.stderr.count("\n") == 1 and "Usage:" not in result.stderr
    assert sha256(model) == before


@pytest.mark.parametrize(("change", "words"), [
    (('input_size = "1x8x8"', 'input_size = "1x16x16"'), "input_size"),
    (('name = "a"', 'name = "z"'), "task 1 is 'z'"),
    (('classes = "0,1"', 'classes = "0,2"'), "classes"),
])
def test_a_plan_that_contradicts_the_pack_is_refused(uninterrupted, tmp_path, change, words):
    model = tmp_path / "model.pt"
    model.write_bytes((uninterrupted / "model.pt").read_bytes())
    before = sha256(model)
    result = invoke("run", _plan(tmp_path, PLAN.replace(*change)), "--model", model)
    assert_error(result, code=2, match=words)
    assert sha256(model) == before


def test_every_tasks_data_is_checked_before_the_first_trains(tmp_path, monkeypatch):
    """A wrong folder in the last task fails at once: no model file is created, nor its
    folder."""
    from packtool import lifecycle

    monkeypatch.setattr(lifecycle, "prepare", lambda *a, **k: pytest.fail("it trained"))
    model = tmp_path / "out" / "model.pt"
    text = PLAN.replace('classes = "4-5"\n', "")  # task c: every class of its folder
    for data, words in ((tmp_path / "missing", "missing is not a folder"),
                        (_one_class_folder(tmp_path / "one"), "at least two classes")):
        plan = text.replace('name = "c"\ndata = "digits"', f'name = "c"\ndata = "{data}"')
        assert f'data = "{data}"' in plan
        result = invoke("run", _plan(tmp_path, plan), "--model", model)
        assert_error(result, code=1, match="plan task 'c': ")
        assert words in result.stderr and not model.parent.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine lacks")
def test_a_plan_asking_for_a_missing_gpu_is_refused_before_anything(tmp_path):
    model = tmp_path / "out" / "model.pt"
    text = PLAN.replace('name = "b"', 'name = "b"\ndevice = "cuda"')
    assert 'device = "cuda"' in text
    result = invoke("run", _plan(tmp_path, text), "--model", model)
    line = assert_error(result, code=2, match="plan task 'b': CUDA was requested")
    assert "`device=cpu`" in line and not model.parent.exists()


def _one_class_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 60 * i).save(root / split / "cat" / f"{i}.png")
    return root


def test_reference_trains_each_task_alone_from_the_plans_network(tmp_path, monkeypatch):
    """``--reference``: each task alone on a fresh copy of the starting network, the plan's
    weights included."""
    from packtool import Pack, sequence

    weights = tmp_path / "start.pt"
    start = Pack.create("lenet", (1, 8, 8)).build({}).state_dict()
    torch.save(start, weights)
    text = PLAN.replace('input_size = "1x8x8"\n',
                        f'input_size = "1x8x8"\nweights = "{weights}"\n')
    text = text[:text.index("[[tasks]]", text.index("[[tasks]]") + 1)]  # task a only
    starts = []
    real = sequence.add_task

    def spy(pack, name, data, prune, **kwargs):
        starts.append({k: v.clone() for k, v in pack.shared.items()})
        return real(pack, name, data, prune, **kwargs)

    monkeypatch.setattr(sequence, "add_task", spy)
    result = sequence.run_plan(read_plan(_plan(tmp_path, text)), tmp_path / "model.pt",
                               reference=True)
    [alone] = result.reference
    assert 0.5 <= alone <= 1.0  # digits 0 and 1, one epoch: far above chance
    assert result.to_dict()["tasks"][0]["reference_accuracy"] == alone
    [shared] = starts
    assert shared and all(torch.equal(v, start[k]) for k, v in shared.items())


def test_a_missing_plan_file(tmp_path):
    assert_error(invoke("run", tmp_path / "nope.toml"), code=2, match="does not exist")


def test_the_examples_are_valid_plans():
    root = Path(__file__).resolve().parents[1] / "examples"
    assert [t.name for t in read_plan(root / "split_digits.toml").tasks] == [
        "digits-0-1", "digits-2-3", "digits-4-5", "digits-6-7", "digits-8-9"]
    paper = read_plan(root / "paper_vgg16.toml")
    assert [t.name for t in paper.tasks] == ["imagenet", "cubs", "cars", "flowers"]
    assert paper.network["policy"] == "frozen"


@pytest.mark.slow
def test_logs_are_tensorboard_events_and_csv(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plan = _plan(tmp_path, PLAN[:PLAN.index('[[tasks]]\nname = "c"')])  # tasks a and b
    ok("run", plan, "--model", tmp_path / "model.pt", "--log-dir", tmp_path / "logs")
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"a/train/loss", "a/train/val_accuracy", "a/finetune/loss",
                    "a/finetune/val_accuracy", "b/train/loss", "b/train/val_accuracy",
                    "b/finetune/loss", "b/finetune/val_accuracy", "sequence/prune",
                    "sequence/free_fraction"}
    assert [e.step for e in events.Scalars("b/train/loss")] == [1, 2]  # b trains 2 epochs
    assert [e.step for e in events.Scalars("sequence/prune")] == [1, 2]
    rows = (tmp_path / "logs" / "scalars.csv").read_text().splitlines()
    assert rows[0] == "tag,step,value" and len(rows) == 1 + 2 + 2 + 4 + 2 + 2 * 2


def test_a_second_model_in_the_folder_does_not_take_the_first_ones_results(uninterrupted,
                                                                            tmp_path):
    """results.json belongs to the model it was written for: a run of another model beside it
    is refused before any work (exit 2, nothing written), not left to overwrite it."""
    results = uninterrupted / "results.json"
    before = results.read_bytes()
    doc = json.loads(before)
    assert doc["model"] == "model.pt" and doc["model_sha256"] == sha256(uninterrupted / "model.pt")
    other = uninterrupted / "other.pt"
    line = assert_error(invoke("run", uninterrupted.parent / "plan.toml", "--model", other), 2,
                        "holds the results of model.pt, not other.pt")
    assert "folder of its own" in line
    assert not other.exists() and results.read_bytes() == before


def test_rows_are_reused_only_for_the_model_file_they_describe(tmp_path):
    """An earlier run's rows are reused while the model file is the one they were measured on;
    once it changed outside a run, the rows come from the pack's own records."""
    two = PLAN[:PLAN.index('[[tasks]]\nname = "c"')]
    model = tmp_path / "model.pt"
    ok("run", _plan(tmp_path, two), "--model", model)
    results = tmp_path / "results.json"
    doc = json.loads(results.read_text())
    doc["matrix"][1][0] = 0.125  # a value no measurement gave: seen only if the row is reused
    results.write_text(json.dumps(doc))
    again = json.loads(ok("run", tmp_path / "plan.toml", "--model", model, "--json").stdout)
    assert again["matrix"][1][0] == 0.125  # the same file: its recorded rows
    pack = model_file.load(model)
    pack.tasks[0].metrics["note"] = 1.0  # the file changes (as an add-task outside a run would)
    model_file.save(pack, model)
    again = json.loads(ok("run", tmp_path / "plan.toml", "--model", model, "--json").stdout)
    assert again["matrix"][1][0] == pack.tasks[0].metrics["accuracy"] != 0.125
    assert again["model_sha256"] == sha256(model)


def test_notes_name_the_plans_keys(tmp_path):
    """A plan's user reads its keys, not add-task's flags, in every note of the run."""
    plan = PLAN.replace("prune = 0.5\n", 'prune = "auto"\nauto_trials = 1\n', 1)
    plan = plan[:plan.index("[[tasks]]\nname = \"b\"")]  # task "a" only
    result = ok("run", _plan(tmp_path, plan), "--model", tmp_path / "model.pt")
    assert ("more validation images (`val_fraction`) or a larger `tolerance` make it firmer"
            in result.output)
    assert not re.search(r"(^|[\s(])--[a-z]", result.output)  # no flag named anywhere


def test_an_extended_plan_keeps_room_for_its_tasks_to_come(tmp_path):
    """A plan run again with more tasks records its new length, as a new plan would: task b
    (prune 0) leaves room for c, which a pack still planned for one task would not have kept
    (b would take every free weight, and c would find none)."""
    model = tmp_path / "model.pt"
    extended = PLAN.replace("epochs = 2\n", "prune = 0\n")
    ok("run", _plan(tmp_path, extended[:extended.index('[[tasks]]\nname = "b"')]),
       "--model", model)
    assert json.loads(ok("info", model, "--json").stdout)["planned_tasks"] == 1
    ran = ok("run", _plan(tmp_path, extended), "--model", model, "--json")
    doc = json.loads(ok("info", model, "--json").stdout)
    assert doc["planned_tasks"] == 3 and [t["task"] for t in doc["tasks"]] == ["a", "b", "c"]
    b = doc["tasks"][1]
    assert b["prune_reason"] == "reserve" and b["weights_owned"] > 0
    assert doc["tasks"][2]["weights_owned"] > 0
    assert "past the plan" not in ran.stderr


def test_errors_during_a_run_name_the_plans_keys(tmp_path):
    """Task a keeps every weight (prune 0, no reserve): b finds none free, and the error says
    what to set in the plan (`grow`), not a flag of add-task."""
    plan = PLAN.replace("prune = 0.5\n", "prune = 0\nreserve = 0\n", 1)
    result = invoke("run", _plan(tmp_path, plan), "--model", tmp_path / "model.pt")
    line = assert_error(result, 1, "no free weights are left for another task")
    assert line.endswith("(prune earlier tasks harder, or grow the network: `grow`)")
