"""``packtool info FILE.onnx``: what an exported file holds, read with onnxruntime alone (no
torch: a serving machine can ask)."""

from __future__ import annotations

from pathlib import Path

from packtool.exporters.fileinfo import onnx_info

from ..console import console_for, print_json, show_onnx_info


def run(model: Path, as_json: bool) -> None:
    doc = onnx_info(model).to_dict()
    if as_json:
        print_json(doc)
    else:
        show_onnx_info(console_for(), doc)
