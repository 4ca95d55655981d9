"""Task-free inference (issue 15): temperatures fitted on validation only, the task scores, the
choice of task per image and per group, and the temperature through every file format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_task
from PIL import Image
from torch.utils.data import Dataset

from packtool import (
    DataError,
    Pack,
    PackFormatError,
    TaskError,
    TrainConfig,
    add_task,
    calibrate,
    fit_temperature,
    identify,
    task_scores,
)
from packtool.exporters import TaskMetadata, archive_bytes, archive_from_bytes, predict, task_onnx
from packtool.formats import model_file
from packtool.identification import score_task_free, split_logits
from packtool.records import from_int8_rows, int8_rows
from packtool.taskfree import (
    NOISE_FLOOR,
    TEMPERATURES,
    TaskFreeNet,
    distance_terms,
    feature_distance,
    fit_feature_stats,
    ledoit_wolf,
    task_free_net,
    temperatures_of,
)

CONFIG = TrainConfig(epochs=4, finetune_epochs=1, lr=0.05, device="cpu")


def test_the_temperature_grid_ends_exactly_at_its_bounds():
    """10 ** log10(0.05) is 0.049999...: a task calibrated to the coldest end recorded a
    temperature below the documented range."""
    assert TEMPERATURES[0].item() == 0.05 and TEMPERATURES[-1].item() == 20.0
    assert bool((TEMPERATURES[1:] > TEMPERATURES[:-1]).all())


class Unreadable(Dataset):
    """A split that fails the moment anything reads it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        raise AssertionError("the test split was read")


@pytest.fixture(scope="module")
def two_tasks():
    """Two synthetic tasks with different inputs (own class patterns), mlp 2x32."""
    tasks = [synthetic_task(4, seed=s, n=240) for s in (2, 3)]
    pack = Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 32})
    pack, _ = add_task(pack, "a", tasks[0], 0.5, CONFIG)
    pack, _ = add_task(pack, "b", tasks[1], 0.0, CONFIG)
    return pack, tasks


def _table(pack, tasks):
    nets = [task_free_net(pack, t.name) for t in pack.tasks]
    return [split_logits(nets, data.test, record.name, record.index)
            for record, data in zip(pack.tasks, tasks)]


# -- calibration --------------------------------------------------------------------------------


def test_temperature_recovers_the_scale_that_made_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / 2.0, 1), 1, generator=g)[:, 0]
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(logits * 4, labels) == pytest.approx(8.0, rel=0.1)


def test_separable_validation_keeps_a_finite_temperature():
    """Perfectly separated labels push the likelihood's optimum to T -> 0; the prior stops it
    inside the searched range, and the same input always gives the same temperature."""
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).repeat(20, 1)
    labels = torch.tensor([0, 1]).repeat(20)
    t = fit_temperature(logits, labels)
    assert 0.05 < t < 1 and fit_temperature(logits, labels) == t
    with pytest.raises(DataError, match="cannot fit a temperature"):
        fit_temperature(logits, labels[:3])


def test_calibration_reads_validation_never_test(monkeypatch):
    """add-task fits the temperature with the test split unreadable; the value is the one the
    validation split gives."""
    import packtool.lifecycle as lifecycle

    fitted = []

    def validation_only(pack, task, data, **kwargs):
        saved, data.test = data.test, Unreadable(len(data.test))
        try:
            fitted.append(calibrate(pack, task, data, **kwargs))
        finally:
            data.test = saved
        return fitted[-1]

    monkeypatch.setattr(lifecycle, "calibrate", validation_only)
    data = synthetic_task(3, seed=0)
    pack, result = add_task(Pack.create("mlp", (1, 8, 8), kwargs={"hidden": 16}), "t", data,
                            0.5, CONFIG)
    [(temperature, stats)] = fitted
    record = pack.tasks[0]
    assert temperature == result.temperature == record.temperature
    assert stats.keys() == record.feature_stats.keys() == {"means", "basis", "scale", "reject"}
    data.test = Unreadable(len(data.test))
    again = calibrate(pack, "t", data)
    assert again[0] == temperature and torch.equal(again[1]["means"], stats["means"])


# -- scores and choice --------------------------------------------------------------------------


def test_scores_prefer_the_sure_head_and_groups_sum_them():
    sure = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.1, 0.0], [4.0, 0.0]])
    for score in ("entropy", "max-prob", "energy"):
        scores = task_scores([sure, unsure], [1.0, 1.0], score)
        assert scores.shape == (2, 2)
        assert identify(scores).task.tolist() == [0, 1]
    scores = task_scores([sure, unsure], [1.0, 1.0], "entropy")
    assert scores[1, 0] == pytest.approx(-1.0)  # a uniform head: normalized entropy 1
    chosen = identify(scores, torch.tensor([0, 0]))  # one group: one task for both
    assert chosen.task.tolist() == [0, 0]
    assert np.allclose(chosen.margin, (scores[:, 0] - scores[:, 1]).sum())
    # A temperature flattens a head: the sure head at T=100 is no longer the surer one.
    assert identify(task_scores([sure, unsure], [100.0, 1.0], "max-prob")).task[0] == 1
    assert math.isnan(float(identify(scores[:, :1]).margin[0]))  # one task: no runner-up


def test_feature_stats_and_the_distance_they_give():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    features = torch.randn(300, 6, generator=g) + 4 * torch.eye(6)[labels]
    stats = fit_feature_stats(features, labels, compact=False)
    assert stats["means"].shape == (3, 6) and stats["basis"].shape == (6, 6)
    precision = stats["scale"] * torch.eye(6) - stats["basis"].T @ stats["basis"]
    residuals = features.double() - stats["means"].double()[labels]
    cov = residuals.T @ residuals / 300
    s = ledoit_wolf(residuals)
    shrunk = (1 - s) * cov + s * cov.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(precision.double(), torch.linalg.inv(shrunk), atol=1e-4)
    # As stored: the means and basis are int8 rows (at most half a step off, a step being at
    # most a 64th of the row's largest value), read back bit for bit.
    compact = fit_feature_stats(features, labels)
    for key in ("means", "basis"):
        q, step = int8_rows(compact[key])
        assert torch.equal(from_int8_rows(q, step), compact[key])
        bound = stats[key].abs().amax(1, keepdim=True) / 128
        assert bool(((compact[key] - stats[key]).abs() <= bound + 1e-7).all())
    head = torch.nn.Linear(6, 3)
    net = TaskFreeNet(torch.nn.Sequential(torch.nn.Identity(), head), "1", stats)
    x = torch.cat([stats["means"], features[:5]])
    logits, distance = net(x)
    assert torch.equal(logits, head(x)) and distance[:3].abs().max() < 1e-4
    d = x[3:, None, :].double() - stats["means"].double()[None]
    brute = torch.einsum("ncd,de,nce->nc", d, precision.double(), d).min(1).values / 6
    assert torch.allclose(distance[3:].double(), brute, rtol=1e-4)
    # A smaller rank: exact in the largest directions, their mean variance in the others.
    low = fit_feature_stats(features, labels, rank=2, compact=False)
    values, vectors = torch.linalg.eigh(shrunk)  # ascending
    rest = float(values[:4].mean())
    expected = sum((1 / values[k] - 1 / rest) * torch.outer(vectors[:, k], vectors[:, k])
                   for k in (4, 5)) + torch.eye(6, dtype=torch.float64) / rest
    assert low["basis"].shape == (2, 6) and float(low["scale"]) == pytest.approx(1 / rest)
    low_precision = low["scale"] * torch.eye(6) - low["basis"].T @ low["basis"]
    assert torch.allclose(low_precision.double(), expected, atol=1e-4)
    # Fewer images than features: the basis has at most one row per image.
    wide = fit_feature_stats(torch.randn(40, 1100, generator=g), torch.arange(40) % 2)
    assert wide["basis"].shape[0] <= 40 and wide["basis"].shape[1] == 1100
    _, far = TaskFreeNet(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(1100, 2)),
                         "1", wide)(torch.randn(3, 1100, generator=g) * 10)
    assert bool((far > 10).all())


@pytest.mark.parametrize("shape", [(300, 6), (40, 500), (143, 256), (3, 2)])
def test_ledoit_wolf_is_scikit_learns(shape):
    from sklearn.covariance import ledoit_wolf_shrinkage

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, dtype=torch.float64) @ torch.randn(
        shape[1], shape[1], generator=g, dtype=torch.float64)
    x -= x.mean(0)
    expected = ledoit_wolf_shrinkage(x.numpy(), assume_centered=True)
    assert 0 <= ledoit_wolf(x) <= 1 and ledoit_wolf(x) == pytest.approx(expected, abs=1e-12)


def test_features_without_any_spread_still_give_finite_statistics():
    """Every image of a class the same (a head that learned nothing, one image per class):
    no spread to read, so the statistics fall back to the identity's."""
    features = torch.eye(4)[torch.arange(8) % 2].repeat(1, 2)
    assert ledoit_wolf(features - features) == 1.0
    for f in (features, torch.zeros(8, 8)):  # all zero: no size either
        stats = fit_feature_stats(f, torch.arange(8) % 2)
        assert all(bool(torch.isfinite(v).all()) for v in stats.values())
        assert float(stats["scale"]) > 0


def test_unknown_score_and_bad_group_are_refused(two_tasks):
    pack, tasks = two_tasks
    with pytest.raises(TaskError, match="unknown task score 'loudest'"):
        task_scores([torch.zeros(1, 2)], [1.0], "loudest")
    with pytest.raises(TaskError, match="group must be at least 1"):
        score_task_free(_table(pack, tasks), temperatures_of(pack), group=0)


def test_tasks_with_different_inputs_are_identified(two_tasks):
    pack, tasks = two_tasks
    table = _table(pack, tasks)
    per_image = score_task_free(table, temperatures_of(pack))
    assert [r.task for r in per_image] == ["a", "b"]
    assert min(r.task_accuracy for r in per_image) >= 0.85
    features = score_task_free(table, temperatures_of(pack), score="mahalanobis")
    assert min(r.task_accuracy for r in features) >= 0.95
    groups = score_task_free(table, temperatures_of(pack), group=8)
    assert all(r.task_accuracy == 1.0 for r in groups)
    assert [r.groups for r in groups] == [math.ceil(r.samples / 8) for r in groups]
    for r in groups:  # the task is always right: no accuracy lost to the missing task id
        assert r.accuracy == r.oracle_accuracy


def test_chosen_class_is_the_single_task_prediction(two_tasks):
    pack, tasks = two_tasks
    table = _table(pack, tasks)
    for split in table:
        chosen = identify(task_scores(split.logits, temperatures_of(pack))).task
        by_features = identify(task_scores(split.logits, temperatures_of(pack), "mahalanobis",
                                           split.distances)).task
        chosen = np.concatenate([chosen, by_features])
        n = len(split.labels)
        for i, k in enumerate(chosen.tolist()):
            x = tasks[split.index - 1].test[i % n][0][None]
            with torch.no_grad():
                single = pack.model_for(pack.tasks[k].name)(x)
            assert int(single.argmax()) == int(split.logits[k][i % n].argmax())


# -- files --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_temperature_survives_save_load_archive_and_onnx(two_tasks, tmp_path):
    pack, _ = two_tasks
    expected = temperatures_of(pack)
    assert all(t is not None for t in (r.temperature for r in pack.tasks))
    pack.save(tmp_path / "m.pt")
    loaded = Pack.load(tmp_path / "m.pt")
    assert temperatures_of(loaded) == expected
    assert torch.equal(loaded.tasks[1].feature_stats["basis"],
                       pack.tasks[1].feature_stats["basis"])
    for half in (False, True):
        restored = archive_from_bytes(archive_bytes(pack, half=half))
        assert temperatures_of(restored) == expected
        for a, b in zip(restored.tasks, pack.tasks):
            for k in ("means", "basis", "scale"):
                assert torch.allclose(a.feature_stats[k], b.feature_stats[k], rtol=1e-3,
                                      atol=1e-3 * float(b.feature_stats[k].abs().max()))
                assert torch.equal(a.feature_stats[k], b.feature_stats[k]) or half
    props = {p.key: p.value for p in task_onnx(pack, "b").metadata_props}
    assert TaskMetadata.from_props(props).temperature == expected[1]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "2", True])
def test_invalid_temperature_is_refused(two_tasks, bad):
    pack, _ = two_tasks
    state = model_file.content(pack)
    meta = json.loads(state["meta"])
    meta["tasks"][0]["temperature"] = bad
    content = {k: v for k, v in state.items() if k not in ("format", "version", "digest")}
    content["meta"] = json.dumps(meta)
    with pytest.raises(PackFormatError, match="temperature"):
        model_file.from_state(model_file.encode(content), "m.pt")


def test_invalid_feature_stats_are_refused(two_tasks):
    pack, _ = two_tasks
    record = pack.tasks[0]
    good = dict(record.feature_stats)
    for bad in ({"means": good["means"]}, {**good, "means": good["means"][:, :-1]},
                {**good, "basis": good["basis"][:, :-1]}, {**good, "scale": -good["scale"]},
                {**good, "means": good["means"] * math.nan}):
        record.feature_stats = bad
        with pytest.raises(ValueError, match="invalid feature statistics"):
            record.check()
    record.feature_stats = good
    record.check()


@pytest.mark.slow
def test_predict_auto_matches_pytorch_choice(two_tasks, tmp_path):
    """predict --task auto from a model.pt and from its archive: the task the PyTorch scores
    choose, the single-task prediction of that task."""
    pack, tasks = two_tasks
    pack.save(tmp_path / "m.pt")
    (tmp_path / "a.safetensors").write_bytes(archive_bytes(pack))
    images, inputs = [], []
    for j, data in enumerate(tasks):
        for i in range(3):
            x = data.test[i][0]
            pixels = np.clip(np.round((x[0].numpy() * pack.spec.std[0] + pack.spec.mean[0])
                                      * 255), 0, 255).astype(np.uint8)
            path = tmp_path / f"t{j}-{i}.png"
            Image.fromarray(pixels).save(path)
            images.append(path)
            inputs.append(torch.from_numpy(pack.preprocess.load_image(path)))
    x = torch.stack(inputs)
    with torch.no_grad():
        outputs = [task_free_net(pack, t.name).eval()(x) for t in pack.tasks]
    logits, distances = [o[0] for o in outputs], [o[1] for o in outputs]
    for score in ("entropy", "mahalanobis"):
        chosen = identify(task_scores(logits, temperatures_of(pack), score, distances))
        assert chosen.task.tolist() == [0, 0, 0, 1, 1, 1] or score == "entropy"
        for source in (tmp_path / "m.pt", tmp_path / "a.safetensors"):
            result = predict(source, images, task="auto", top=1, task_score=score)
            assert result.task is None and result.task_score == score
            _check_choice(result, chosen, pack, logits)
    group = predict(tmp_path / "m.pt", images[:3], task="auto", same_task=True,
                    task_score="max-prob")
    assert group.task in pack.task_names
    assert {p["task"] for p in group.predictions} == {group.task}
    assert len({p["task_margin"] for p in group.predictions}) == 1


def _check_choice(result, chosen, pack, logits):
    """onnxruntime chose the tasks PyTorch's scores chose, with their margins, and predicted
    what the chosen task alone predicts."""
    margins, chosen = chosen.margin.tolist(), chosen.task.tolist()
    assert [p["task"] for p in result.predictions] == [pack.tasks[k].name for k in chosen]
    for i, (p, k) in enumerate(zip(result.predictions, chosen)):
        assert p["top"][0]["class"] == pack.tasks[k].classes[int(logits[k][i].argmax())]
        assert p["task_margin"] == pytest.approx(margins[i], rel=1e-3, abs=1e-4)


def test_variance_floor_for_a_head_that_barely_trained():
    """Features all but constant: the precision stays bounded by the noise floor."""
    g = torch.Generator().manual_seed(0)
    features = 100 + 1e-9 * torch.randn(40, 16, generator=g)
    stats = fit_feature_stats(features, torch.arange(40) % 2)
    assert float(stats["scale"]) <= 1 / (NOISE_FLOOR * 100**2) * 1.001


def test_distance_keeps_its_precision_far_from_the_origin():
    """ReLU features sit far from the origin; the expanded distance is centered first."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(200) % 4
    features = 1e3 + torch.randn(200, 32, generator=g) + labels[:, None].float()
    stats = fit_feature_stats(features, labels)
    terms = distance_terms(stats)
    f = features[:8]
    fast = feature_distance(f, **{k: terms[k] for k in (
        "center", "basis", "scale", "means", "projected_means")}, offsets=terms["offsets"])
    precision = (stats["scale"].double() * torch.eye(32)
                 - stats["basis"].double().T @ stats["basis"].double())
    diffs = f.double()[:, None, :] - stats["means"].double()[None]
    exact = torch.einsum("ncf,fg,ncg->nc", diffs, precision, diffs).min(1).values / 32
    torch.testing.assert_close(fast.double(), exact, rtol=1e-4, atol=1e-5)


def test_int8_rows_round_trip_exactly_and_code_again_to_the_same_bytes():
    g = torch.Generator().manual_seed(3)
    rows = torch.cat([torch.randn(4, 9, generator=g) * 10 ** torch.arange(-3.0, 1.0)[:, None],
                      torch.zeros(1, 9)])
    q, step = int8_rows(rows)
    assert q.dtype == torch.int8 and step.shape == (5,) and bool((q.abs() <= 127).all())
    assert bool((torch.log2(step) == torch.log2(step).round()).all())  # powers of two
    back = from_int8_rows(q, step)
    assert bool(((back - rows).abs() <= step[:, None] / 2).all())
    again, step_again = int8_rows(back)
    assert torch.equal(again, q) and torch.equal(step_again, step)
    assert torch.equal(from_int8_rows(again, step_again), back)
    empty_q, empty_step = int8_rows(torch.zeros(0, 9))  # a rank-0 basis
    assert empty_q.shape == (0, 9) and empty_step.shape == (0,)
