"""Cost: what PackNet's masking, pruning and packed storage cost, each a ratio from one run.

* masking overhead: a training step of PackNet (task 2, masks and the frozen-weight guard) vs
  the same dense network, interleaved (:mod:`benchmarks.masking_overhead`);
* pruning: time and peak memory of one PackNet prune of a whole network, in a subprocess so the
  peak is its own (:mod:`benchmarks.prune_vgg16`);
* ONNX bytes per task, sparse initializers vs dense (the same exported graph);
* the archive of all tasks vs ``T`` separate dense ONNX models, vs the information floor (owned
  weights x 4 bytes + every prunable weight x ``ceil(log2(T + 1))`` bits + heads + private
  state + the tasks' feature statistics), vs the entropy floor (the same with each layer's
  owner index at its empirical entropy; issue 16's target: at most 1.02x), and vs
  ``model.pt``;
* inference latency of one task, onnxruntime (CPU provider, the exported sparse file) vs
  PyTorch eager (``Pack.model_for``, inference mode), batch 1 and 32, interleaved.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packtool import Pack, Preprocess, TaskData, TrainConfig, add_task, load_task_data
from packtool.formats import model_file

from . import masking_overhead, prune_vgg16
from .common import fmt, fmt_int, interleaved_medians, markdown_table

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class PackCase:
    """A pack to export: five Split-Digits tasks (``ratio`` each, the last 0) on ``arch``."""

    name: str
    arch: str
    input_size: tuple[int, int, int]
    kwargs: dict[str, Any]
    ratio: float
    epochs: int
    finetune_epochs: int
    tasks: int = 5
    note: str = ""


LENET = PackCase("lenet-1x8x8", "lenet", (1, 8, 8), {}, 0.75, 2, 1,
                 note="trained 2+1 epochs per task")
# One epoch per task: a task must train the free weights it keeps, or it owns zeros.
RESNET = PackCase("resnet18-3x64x64", "resnet18", (3, 64, 64), {}, 0.75, 1, 0,
                  note="digits resized to 3x64x64, trained 1 epoch per task")
#: The smoke runs' pack (cost, serving, deploy): the smallest network, one epoch per task.
MLP_SMOKE = PackCase("mlp-1x8x8", "mlp", (1, 8, 8), {}, 0.75, 1, 0, tasks=2,
                     note="trained 1 epoch per task")


@dataclass(frozen=True)
class CostSettings:
    masking_cases: tuple[str, ...]
    masking_steps: int
    prune_arch: str
    packs: tuple[PackCase, ...]
    latency_budget_s: float  # per case and batch size, split over the interleaved calls
    note: str = ""
    #: Prune in this process (the smoke run: no interpreter start, the peak not the prune's own).
    prune_here: bool = False


SETTINGS = {
    "smoke": CostSettings(("mlp-1x28x28",), 3, "mobilenet_v3_small", (MLP_SMOKE,), 0.3,
                          note="smoke: tiny cases only; not a measurement", prune_here=True),
    "quick": CostSettings(("lenet-3x32x32", "mlp-1x28x28"), 10, "resnet18", (LENET,), 3.0,
                          note="quick: prune on resnet18 (11.2M weights), not VGG-16; "
                               "no resnet18 export case"),
    "full": CostSettings(tuple(masking_overhead.CASES), 30, "vgg16", (LENET, RESNET), 10.0),
}


# ------------------------------------------------------------------------------------------------
# Masking and pruning
# ------------------------------------------------------------------------------------------------


def masking(settings: CostSettings) -> list[dict[str, Any]]:
    return [masking_overhead.measure(case, steps=settings.masking_steps)
            for case in settings.masking_cases]


def prune(arch: str) -> dict[str, Any]:
    """One prune of ``arch`` (ratio 0.5) in a fresh interpreter: its peak RSS is its own."""
    script = Path(__file__).with_name("prune_vgg16.py")
    done = subprocess.run([sys.executable, str(script), arch], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"prune benchmark failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Packs: ONNX sizes, archive, latency
# ------------------------------------------------------------------------------------------------


def build_pack(case: PackCase) -> tuple[Pack, float]:
    """Split-Digits tasks on ``case.arch``; returns the pack and the seconds it took."""
    start = time.perf_counter()
    pack = Pack.create(case.arch, case.input_size, kwargs=case.kwargs, seed=0)
    preprocess = Preprocess(pack.spec.input_size, pack.spec.mean, pack.spec.std)
    config = TrainConfig(epochs=case.epochs, finetune_epochs=case.finetune_epochs, lr=0.05,
                         finetune_lr=0.005, lr_decay_epochs=0, device="cpu", seed=0)
    for k in range(case.tasks):
        a = 2 * (k % 5)  # past five tasks, the pairs again (as new tasks)
        data: TaskData = load_task_data("digits", preprocess, classes=[a, a + 1])
        ratio = case.ratio if k < case.tasks - 1 else 0.0
        name = f"{a}/{a + 1}" if k < 5 else f"{a}/{a + 1} #{k // 5 + 1}"
        pack, _ = add_task(pack, name, data, ratio, config)
    return pack, time.perf_counter() - start


def onnx_sizes(pack: Pack) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Per task: the exported graph's bytes dense and with sparse initializers (the shipped
    file, verified against PyTorch in onnxruntime). Returns the rows and each sparse file."""
    from packtool.exporters import sparsify_initializers, task_onnx, verify_onnx

    rows, files = [], {}
    for record in pack.tasks:
        dense = task_onnx(pack, record.name, dense=True)
        dense_bytes = dense.SerializeToString()
        sparse = copy.deepcopy(dense)
        converted = sparsify_initializers(sparse)
        sparse_bytes = sparse.SerializeToString()
        network = pack.model_for(record.name)
        diff, provider = verify_onnx(sparse_bytes, network, pack.spec.input_size,
                                     name=record.name)
        weights = [network.get_parameter(k) for k in pack.anatomy().prunable]
        zeros = sum(int((w == 0).sum()) for w in weights)
        rows.append({
            "task": record.name,
            "index": record.index,
            "zero_fraction": zeros / sum(w.numel() for w in weights),  # in the task's network
            "dense_bytes": len(dense_bytes),
            "sparse_bytes": len(sparse_bytes),
            "ratio": len(sparse_bytes) / len(dense_bytes),
            "sparse_initializers": len(converted),
            "max_abs_diff": diff,
            "provider": provider,
        })
        files[record.name] = sparse_bytes
    return rows, files


def _entropy_bits(owners: torch.Tensor) -> float:
    """The empirical entropy of one layer's owner index, in bits, times its size."""
    counts = torch.bincount(owners.flatten().long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum()) * owners.numel()


def archive_floor(pack: Pack) -> dict[str, Any]:
    """The archive's bytes against its information and entropy floors (each task's head,
    private state and feature statistics counted as the archive stores them)."""
    from packtool.exporters import archive_bytes, owner_bits
    from packtool.records import stored_stats

    bits = owner_bits(len(pack.tasks))
    owned = sum(int((o != 0).sum()) for o in pack.owners.values())
    per_task = sum(v.numel() * v.element_size()
                   for record in pack.tasks
                   for part in (record.head, pack.private_state(record), stored_stats(record))
                   for v in part.values())
    floor = owned * 4 + math.ceil(pack.prunable_weights * bits / 8) + per_task
    entropy_bits = sum(_entropy_bits(o) for o in pack.owners.values())  # per-layer models
    entropy_floor = owned * 4 + math.ceil(entropy_bits / 8) + per_task
    archive = len(archive_bytes(pack))
    return {
        "tasks": len(pack.tasks),
        "prunable_weights": pack.prunable_weights,
        "owned_weights": owned,
        "owner_bits": bits,
        "archive_bytes": archive,
        "floor_bytes": floor,
        "owner_entropy_bits": entropy_bits / pack.prunable_weights,
        "entropy_floor_bytes": entropy_floor,
        "archive_over_entropy_floor": archive / entropy_floor,
        "archive_over_floor": archive / floor,
    }


def storage(pack: Pack, onnx_rows: list[dict[str, Any]]) -> dict[str, Any]:
    floors = archive_floor(pack)
    archive = floors["archive_bytes"]
    dense_onnx = sum(r["dense_bytes"] for r in onnx_rows)
    sparse_onnx = sum(r["sparse_bytes"] for r in onnx_rows)
    model_pt = len(model_file.to_bytes(pack))
    return {
        **floors,
        "separate_dense_onnx_bytes": dense_onnx,
        "separate_sparse_onnx_bytes": sparse_onnx,
        "model_pt_bytes": model_pt,
        "archive_over_separate_dense": archive / dense_onnx,
        "model_pt_over_separate_dense": model_pt / dense_onnx,
    }


def latency(pack: Pack, files: dict[str, bytes], budget_s: float) -> list[dict[str, Any]]:
    """The last task (it uses every owned weight): onnxruntime CPU vs PyTorch eager."""
    import onnxruntime as ort

    record = pack.tasks[-1]
    model = pack.model_for(record.name, device="cpu")
    # onnxruntime's default session options, CPU provider only (as a CPU-only user gets).
    sess = ort.InferenceSession(files[record.name], providers=[CPU])
    provider = sess.get_providers()[0]
    if provider != CPU:
        raise RuntimeError(f"onnxruntime ran on {provider}, expected {CPU}")
    input_name = sess.get_inputs()[0].name
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, *pack.spec.input_size, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()

        def eager(x: torch.Tensor = x) -> Any:
            with torch.inference_mode():
                return model(x)

        def onnxruntime(xn: np.ndarray = xn) -> Any:
            return sess.run(None, {input_name: xn})[0]

        t, repeats = interleaved_medians({"torch": eager, "ort": onnxruntime}, budget_s)
        rows.append({
            "task": record.name, "batch": batch, "repeats": repeats,
            "torch_ms": 1e3 * t["torch"], "ort_ms": 1e3 * t["ort"],
            "ort_over_torch": t["ort"] / t["torch"], "provider": provider,
            "torch_threads": torch.get_num_threads(),
        })
    return rows


def pack_case(case: PackCase, settings: CostSettings, log: Any = None) -> dict[str, Any]:
    pack, seconds = build_pack(case)
    if log:
        log(f"cost {case.name}: pack of {len(pack.tasks)} tasks built in {seconds:.1f} s")
    onnx_rows, files = onnx_sizes(pack)
    return {
        "case": case.name, "arch": case.arch, "input_size": list(case.input_size),
        "ratio": case.ratio, "note": case.note,
        "onnx": onnx_rows,
        "storage": storage(pack, onnx_rows),
        "latency": latency(pack, files, settings.latency_budget_s),
    }


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    result: dict[str, Any] = {"settings": {**asdict(settings), "packs": [asdict(p)
                                                                       for p in settings.packs]}}
    result["masking"] = masking(settings)
    if log:
        log("cost: masking overhead done")
    result["prune"] = (prune_vgg16.measure(settings.prune_arch) if settings.prune_here
                       else prune(settings.prune_arch))
    if log:
        log(f"cost: prune of {settings.prune_arch} done")
    result["packs"] = [pack_case(case, settings, log) for case in settings.packs]
    return result


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    parts = [f"_{settings['note']}_"] if settings.get("note") else []
    parts.append("### Training step: PackNet masking vs dense (median ms, interleaved)\n\n"
                 + markdown_table(
                     ["case", "batch", "dense ms", "PackNet train ms", "train / dense",
                      "PackNet fine-tune ms", "fine-tune / dense"],
                     [[m["case"], m["batch"], m["dense_ms"], m["packnet_ms"], m["ratio"],
                       m["finetune_ms"], m["finetune_ratio"]] for m in result["masking"]])
                 + "\n\nTraining task k, its mask is all ones (no later task exists): the "
                   "prune hook passes the weight through. Fine-tuning: the released weights "
                   "are zero at rest, as add-task leaves them, so the hook skips the "
                   "multiply there too. Both run the frozen-weight guard after every step.")
    p = result["prune"]
    parts.append(
        "### Pruning one network (ratio 0.5, own process)\n\n" + markdown_table(
            ["arch", "prunable weights", "model MB", "prune s", "peak RSS MB",
             "(peak - baseline) / model"],
            [[p["arch"], fmt_int(p["prunable_weights"]), _mb(p["model_bytes"]), p["seconds"],
              _mb(p["peak_rss_bytes"]), p["peak_over_model"]]]))
    for case in result["packs"]:
        s = case["storage"]
        parts.append(
            f"### {case['case']}: {s['tasks']} Split-Digits tasks, prune {case['ratio']} "
            f"(last 0); {case['note']}\n\nONNX per task (dense vs sparse initializers; the "
            "sparse file checked in onnxruntime against PyTorch):\n\n" + markdown_table(
                ["task", "zero weights", "dense bytes", "sparse bytes", "sparse / dense",
                 "max abs diff"],
                [[r["task"], f"{100 * r['zero_fraction']:.1f}%", fmt_int(r["dense_bytes"]),
                  fmt_int(r["sparse_bytes"]), f"{r['ratio']:.3f}", f"{r['max_abs_diff']:.1e}"]
                 for r in case["onnx"]]))
        parts.append(
            f"Storage of all {s['tasks']} tasks ({fmt_int(s['prunable_weights'])} prunable "
            f"weights, {fmt_int(s['owned_weights'])} owned, {s['owner_bits']}-bit owners):"
            "\n\n" + markdown_table(
                ["what", "bytes", "archive / this"],
                [["archive (pack.safetensors)", fmt_int(s["archive_bytes"]), "1.000"],
                 ["information floor (owners bit-packed)", fmt_int(s["floor_bytes"]),
                  f"{s['archive_over_floor']:.3f}"],
                 [f"entropy floor (owners at {s['owner_entropy_bits']:.2f} bits)",
                  fmt_int(s["entropy_floor_bytes"]), f"{s['archive_over_entropy_floor']:.3f}"],
                 [f"{s['tasks']} separate dense ONNX", fmt_int(s["separate_dense_onnx_bytes"]),
                  f"{s['archive_over_separate_dense']:.3f}"],
                 [f"{s['tasks']} separate sparse ONNX",
                  fmt_int(s["separate_sparse_onnx_bytes"]),
                  f"{s['archive_bytes'] / s['separate_sparse_onnx_bytes']:.3f}"],
                 ["model.pt (training state)", fmt_int(s["model_pt_bytes"]),
                  f"{s['archive_bytes'] / s['model_pt_bytes']:.3f}"]]))
        parts.append(
            f"Inference latency of task {case['latency'][0]['task']!r} (median ms, "
            "interleaved; onnxruntime CPU provider vs PyTorch eager):\n\n" + markdown_table(
                ["batch", "calls", "PyTorch ms", "onnxruntime ms", "onnxruntime / PyTorch"],
                [[r["batch"], r["repeats"], fmt(r["torch_ms"], 3), fmt(r["ort_ms"], 3),
                  f"{r['ort_over_torch']:.3f}"] for r in case["latency"]]))
    return "\n\n".join(parts)
