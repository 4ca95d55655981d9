"""packtool's benchmarks: quality on real data and the costs of packing, on CPU.

Run from the repository root::

    python -m benchmarks --quick                 # a few minutes on 2 cores
    python -m benchmarks                         # the full run (3 seeds, paper-shaped schedule)
    python -m benchmarks --only quality --json-out results.json

* :mod:`benchmarks.quality` - PackNet vs separate networks, fine-tuning and joint training on
  Split-Digits and Permuted-Digits (scikit-learn's digits): accuracy, forgetting, storage, time.
* :mod:`benchmarks.cost` - masking overhead, prune time and memory, ONNX and archive bytes,
  onnxruntime vs PyTorch latency. Each figure is a ratio measured within one run.

Every table is printed as markdown; ``--json-out`` also writes every measured value.
"""
