"""Split-Digits through packtool's Python API: five two-class tasks of scikit-learn's digits
packed into one LeNet, evaluated, saved and exported (the same as examples/split_digits.sh).

    python examples/python_api.py [WORK_DIR]        # default ./split-digits-api
"""

from __future__ import annotations

import argparse
from pathlib import Path

import packtool
from packtool import PackToolError, TrainConfig, add_task, evaluate, load_task_data
from packtool.exporters import export_all, export_multi_task, export_reduced

PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", nargs="?", type=Path, default=Path("split-digits-api"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    pack = packtool.create("lenet", (1, 8, 8))
    config = TrainConfig(epochs=args.epochs, finetune_epochs=args.finetune_epochs, lr=0.05,
                         finetune_lr=0.005, lr_decay_epochs=0, device="cpu")
    data = {}
    for a, b in PAIRS:
        name = f"digits-{a}-{b}"
        data[name] = load_task_data("digits", pack.preprocess, classes=[a, b])
        prune = 0.0 if (a, b) == PAIRS[-1] else 0.75  # the last task keeps every free weight
        pack, result = add_task(pack, name, data[name], prune, config)
        print(f"added {name}: test accuracy {result.accuracy:.4f}, "
              f"{result.weights_owned} weights owned, {result.free_fraction:.1%} still free")

    model = args.work_dir / "model.pt"
    packtool.save(pack, model)
    pack = packtool.load(model)  # what a later session sees: every task, bit-identical
    print(f"\n{'task':<12} {'before prune':>12} {'after prune':>12} {'when added':>11} "
          f"{'now':>7}")
    for record in pack.tasks:
        # A non-destructive re-evaluation of every task, after all of them were added.
        now = evaluate(pack.model_for(record.name), data[record.name].test).accuracy
        m = record.metrics
        print(f"{record.name:<12} {m['accuracy_before_prune']:>12.4f} "
              f"{m['accuracy_after_prune']:>12.4f} {m['accuracy']:>11.4f} {now:>7.4f}")

    files, archive = export_all(pack, args.work_dir / "export")
    for f in files:
        print(f"{f.path}: {f.bytes} bytes, max |onnxruntime - PyTorch| {f.max_abs_diff:.1e}")
    if archive is not None:
        print(f"{archive.path}: {archive.bytes} bytes (all {len(pack.tasks)} tasks)")
    multi = export_multi_task(pack, args.work_dir / "export" / "all-tasks.onnx")
    print(f"{multi.path}: {multi.bytes} bytes, every task in one graph (input `task`)")
    # int8, measured on the task's test split; refused (nothing written) past 1 point lost.
    first = pack.tasks[0].name
    try:
        int8 = export_reduced(pack, first, args.work_dir / "export" / f"{first}-int8.onnx",
                              "int8")
        print(f"{int8.path}: {int8.bytes} bytes, test accuracy change "
              f"{int8.change.accuracy_change:+.2f} points")
    except PackToolError as exc:
        print(f"int8 not written: {exc}")


if __name__ == "__main__":
    main()
