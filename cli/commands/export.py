"""``packtool export``: per-task ONNX files, one multi-task ONNX file, or the archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packtool.errors import PackToolError
from packtool.evaluation import half_precision_change
from packtool.exporters.multitask import export_multi_task
from packtool.exporters.onnx import ARCHIVE_NAME, export_all, export_onnx, task_filenames
from packtool.exporters.quantize import export_reduced
from packtool.fileio import check_writable, sha256_file
from packtool.formats.archive import read_archive, write_archive
from packtool.formats.files import load

from .. import render
from ..console import console_for, print_json
from ..progress import status


def run(model: Path, name: str | None, all_tasks: bool, multi_task: bool,
        archive: str | None, out: str | None, dense: bool, opset: int, no_verify: bool,
        half: bool, int8: bool, max_drop: float | None, force: bool, data_root: str | None,
        as_json: bool, quiet: bool) -> None:
    say = status(quiet)
    pack, sha = load(model), sha256_file(model)
    onnx = {"opset": opset, "verify": not no_verify, "source_sha256": sha, "say": say}
    files: list[Any] = []
    written = None
    if archive is not None:
        _check_targets(model, [Path(archive)])
        say(f"writing the archive {archive}")
        written = write_archive(pack, archive, half=half, source_sha256=sha)
    elif all_tasks:
        assert out is not None
        stems = task_filenames(pack.task_names)
        _check_targets(model, [Path(out) / f"{s}.onnx" for s in stems]
                            + [Path(out) / ARCHIVE_NAME])
        files, written = export_all(pack, out, archive=True, dense=dense, **onnx)
    elif multi_task:
        assert out is not None
        _check_targets(model, [Path(out)])
        files = [export_multi_task(pack, out, **onnx)]
    else:
        assert name is not None
        record = pack.task(name)
        path = Path(out or ".")
        if path.is_dir():  # a folder to write in, as ``cp`` takes one
            path = path / f"{task_filenames([record.name])[0]}.onnx"
        _check_targets(model, [path])
        if half or int8:
            files = [export_reduced(
                pack, record.name, path, "int8" if int8 else "float16", force=force,
                max_drop=1.0 if max_drop is None else max_drop, data_root=data_root,
                opset=opset, source_sha256=sha, say=say)]
        else:
            files = [export_onnx(pack, record.name, path, dense=dense, **onnx)]
    doc = {"files": [f.to_dict() for f in files],
           "archive": None if written is None else written.to_dict()}
    if archive is not None and half:
        say("measuring the float16 archive on every task's test split")
        changes = half_precision_change(pack, read_archive(archive), data_root=data_root)
        doc["archive"]["half_precision"] = [c.to_dict() for c in changes]
    if as_json:
        print_json(doc)
    else:
        render.show_export(console_for(), doc)


def _check_targets(model: Path, targets: list[Path]) -> None:
    """An export must never replace the file it reads, and fails at once where it cannot
    write (not after the work)."""
    source = model.resolve()
    for target in targets:
        check_writable(target)
        if target.resolve() == source:
            raise PackToolError(f"refusing to overwrite {model} (the export's source) with "
                                f"{target}; choose another output path")
