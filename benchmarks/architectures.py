"""Architectures: what PackNet packs in transformers and modern conv nets, and what it costs.

Per torchvision model, by name:

* packed / backbone weights: the share of the network's parameters (its 1000-class ImageNet
  classifier aside) that are shared and owned element-wise; the rest is task-private;
* private bytes per task: the task-private backbone state (biases, norms, the tensors the
  packing rule leaves out, buffers) each task stores, and its head's bytes per class;
* the masked training step against dense (:func:`benchmarks.masking_overhead.measure_network`:
  task 2 trained on the free half, then fine-tuned with the released quarter masked);
* one task exported to ONNX and checked in onnxruntime against PyTorch, then two tasks as one
  multi-task ONNX, checked for each task (full mode).

Same targets as the conv nets: a step at most 1.15x dense.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import TensorDataset

from packtool import Pack, TaskData, TrainConfig, add_task
from packtool.exporters import export_multi_task_bytes, export_onnx_bytes
from packtool.models import ArchSpec, anatomy, build_network, native_input_size

from . import masking_overhead
from .common import fmt_int, markdown_table

ARCHS = ("vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large")


@dataclass(frozen=True)
class ArchSettings:
    timed: tuple[str, ...]  # architectures whose step is timed
    image_size: int | None  # None: native
    batch: int
    steps: int
    export: bool
    note: str = ""


SETTINGS = {
    "smoke": ArchSettings(("mobilenet_v3_large",), 32, 2, 1, False,
                          note="smoke: one tiny timing case; not a measurement"),
    "quick": ArchSettings(ARCHS, 112, 4, 3, False,
                          note="quick: 112x112 inputs, batch 4, 3 timed steps; no export"),
    "full": ArchSettings(ARCHS, None, 8, 5, True),
}


def _size(arch: str, image_size: int | None) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """Input size and builder kwargs: native, or ``image_size`` (a ViT needs it as a kwarg)."""
    if image_size is None:
        return native_input_size(arch), {}
    kwargs = {"image_size": image_size} if arch.startswith("vit") else {}
    return (3, image_size, image_size), kwargs


def parts(arch: str) -> dict[str, Any]:
    """Packed and private values of ``arch`` at its native size (shapes only, no weights)."""
    with torch.device("meta"):
        net = build_network(ArchSpec(arch, native_input_size(arch)))
    anat = anatomy(net)
    state = net.state_dict()
    params = dict(net.named_parameters())
    total = sum(p.numel() for p in params.values())
    head = sum(p.numel() for p in net.get_submodule(anat.classifier).parameters())
    packed = sum(params[k].numel() for k in anat.prunable)
    private_bytes = sum(state[k].numel() * state[k].element_size() for k in anat.private)
    unpacked = [k for k in anat.private if k in params and params[k].dim() >= 2]
    return {
        "arch": arch, "input_size": list(native_input_size(arch)), "total_weights": total,
        "backbone_weights": total - head, "packed_weights": packed,
        "packed_share": packed / (total - head),
        "private_values": sum(state[k].numel() for k in anat.private),
        "private_bytes_per_task": private_bytes,
        "head_bytes_per_class": (anat.in_features + anat.head_bias) * 4,
        "unpacked_matrices": len(unpacked),
        "unpacked_values": sum(params[k].numel() for k in unpacked),
    }


def export_check(arch: str) -> dict[str, Any]:
    """One task (ratio 0.5 on the initial weights, then one fine-tuning epoch over six random
    images: a task must train) exported and verified; then a second task (3 classes more) and
    both as one multi-task graph, verified for each task."""
    size = native_input_size(arch)
    pack = Pack.create(arch, size, seed=0)
    config = TrainConfig(epochs=0, finetune_epochs=1, batch_size=6, device="cpu")
    pack, _ = add_task(pack, "t1", _random_task(size), 0.5, config)
    start = time.perf_counter()
    data, result = export_onnx_bytes(pack, "t1")
    row = {"bytes": len(data), "max_abs_diff": result.max_abs_diff,
           "provider": result.provider, "export_s": round(time.perf_counter() - start, 1)}
    pack, _ = add_task(pack, "t2", _random_task(size, classes=6), 0.0, config)
    start = time.perf_counter()
    multi, checked = export_multi_task_bytes(pack)
    return {**row, "multi_task_bytes": len(multi), "multi_task_max_abs_diff":
            checked.max_abs_diff, "multi_task_s": round(time.perf_counter() - start, 1)}


def _random_task(size: tuple[int, int, int], classes: int = 3, n: int = 6) -> TaskData:
    g = torch.Generator().manual_seed(0)
    split = TensorDataset(torch.randn(n, *size, generator=g), torch.arange(n) % classes)
    return TaskData(train=split, val=split, test=split, classes=[str(c) for c in range(classes)],
                    spec={"data": "random"}, augment=False)


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    rows = []
    for arch in ARCHS:
        row = parts(arch)
        if arch in settings.timed:
            size, kwargs = _size(arch, settings.image_size)
            row["step"] = {"input_size": list(size), **masking_overhead.measure_network(
                arch, size, kwargs, settings.batch, settings.steps, warmup=1)}
        if settings.export:
            row["export"] = export_check(arch)
        rows.append(row)
        if log:
            log(f"architectures: {arch} done")
    return {"settings": asdict(settings), "archs": rows}


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    parts_ = [f"_{settings['note']}_"] if settings.get("note") else []
    rows = result["archs"]
    parts_.append("### What is packed (native input size)\n\n" + markdown_table(
        ["arch", "input", "backbone weights", "packed", "packed / backbone",
         "private values / task",
         "private MB / task", "head bytes / class", "unpacked matrices (values)"],
        [[r["arch"], "x".join(map(str, r["input_size"])), fmt_int(r["backbone_weights"]),
          fmt_int(r["packed_weights"]), f"{r['packed_share']:.2%}",
          fmt_int(r["private_values"]), f"{r['private_bytes_per_task'] / 1e6:.2f}",
          fmt_int(r["head_bytes_per_class"]),
          f"{r['unpacked_matrices']} ({fmt_int(r['unpacked_values'])})"] for r in rows])
        + "\n\nPrivate: biases, norm parameters and statistics, buffers, and the multi-"
          "dimensional tensors the packing rule keeps per task (ViT's class token and position "
          "embedding, Swin's relative-position tables, ConvNeXt's layer scales).")
    timed = [r for r in rows if "step" in r]
    if timed:
        parts_.append("### Training step: PackNet vs dense (median ms, interleaved)\n\n"
                      + markdown_table(
                          ["arch", "input", "batch", "dense ms", "train ms", "train / dense",
                           "fine-tune ms", "fine-tune / dense"],
                          [[r["arch"], "x".join(map(str, r["step"]["input_size"])),
                            r["step"]["batch"], r["step"]["dense_ms"], r["step"]["packnet_ms"],
                            r["step"]["ratio"], r["step"]["finetune_ms"],
                            r["step"]["finetune_ratio"]] for r in timed]))
    exported = [r for r in rows if "export" in r]
    if exported:
        parts_.append("### Exported to ONNX, checked in onnxruntime\n\nOne task (prune 0.5), "
                      "then two tasks in one multi-task graph (each task checked):\n\n"
                      + markdown_table(
            ["arch", "ONNX bytes", "max abs diff", "provider", "export s",
             "multi-task bytes", "multi-task max abs diff", "multi-task s"],
            [[r["arch"], fmt_int(r["export"]["bytes"]), f"{r['export']['max_abs_diff']:.1e}",
              r["export"]["provider"], r["export"]["export_s"],
              fmt_int(r["export"]["multi_task_bytes"]),
              f"{r['export']['multi_task_max_abs_diff']:.1e}", r["export"]["multi_task_s"]]
             for r in exported]))
    return "\n\n".join(parts_)
