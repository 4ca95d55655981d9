"""``packtool``: the command line (commands, options and ``--json`` shapes of the contract v1).

Commands parse their options, call the public API of :mod:`packtool` and
:mod:`packtool.exporters`, and render the result (tables, or one JSON document with ``--json``).
Every error is one ``Error: ...`` line on stderr with exit status 1 (2 for usage errors), and no
command writes MODEL unless it succeeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from packtool import (
    AUTO,
    DATASETS,
    FREE_INITS,
    OPTIMIZERS,
    POLICIES,
    SCORES,
    Pack,
    PackToolError,
    __version__,
    add_task_to_file,
    create_file,
    default_score,
    evaluate_task_free,
    evaluate_tasks,
    exporters,
    load,
    plot_accuracy,
    plot_capacity,
    sha256_file,
)

from . import params, render
from .errors import ErrorHandlingGroup
from .progress import training_progress


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="packtool")
@click.option("--debug", is_flag=True, envvar="PACKTOOL_DEBUG",
              help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Pack several tasks into one network with PackNet and export per-task ONNX models.

    MODEL defaults to model.pt in the current directory.
    """


# -- init -------------------------------------------------------------------------------------


@main.command()
@params.model_argument
@click.option("--arch", required=True, metavar="ARCH",
              help="torchvision model name (vgg16, resnet18, ...), mlp, lenet, or "
                   "package.module:function.")
@click.option("--weights", metavar="PATH|DEFAULT",
              help="Initial weights: a local .pt/.pth/.safetensors state_dict, or DEFAULT for "
                   "torchvision's pretrained weights (only from the local torch hub cache).")
@click.option("--input-size", metavar="CxHxW", callback=params.input_size,
              help="Input image size [default: the architecture's native size: image_size= "
                   "if given, else torchvision's crop size for the name, else 3x224x224].")
@click.option("--policy", type=click.Choice(POLICIES), default="per_task",
              show_default=True,
              help="per_task: each task its own biases and norm state; frozen: the paper's "
                   "(task 1's are frozen and shared).")
@click.option("--free-init", type=click.Choice(FREE_INITS), default=FREE_INITS[0],
              show_default=True,
              help="How each new task's free weights start: fresh values of the network's own "
                   "initialization (reinit), the values the task that released them trained "
                   "(kept), or zero.")
@click.option("--kwarg", "kwargs", multiple=True, metavar="KEY=VALUE", callback=params.kwargs,
              help="Keyword argument for the architecture builder (repeatable), e.g. hidden=64.")
@click.option("--tasks", "planned_tasks", type=click.IntRange(1, 255), metavar="N",
              help="How many tasks MODEL is meant to hold, pretrained one included: each "
                   "add-task without --reserve keeps room for the rest of the plan.")
@click.option("--force", is_flag=True, help="Overwrite an existing MODEL.")
def init(model: Path, arch: str, weights: str | None, input_size: tuple[int, int, int] | None,
         policy: str, free_init: str, kwargs: dict[str, Any], planned_tasks: int | None,
         force: bool) -> None:
    """Create MODEL: a network with every weight free and no tasks."""
    pack = create_file(model, arch, input_size=input_size, kwargs=kwargs, weights=weights,
                       policy=policy, free_init=free_init, planned_tasks=planned_tasks,
                       force=force)
    render.show_created(render.console_for(), pack, str(model))


# -- add-task ---------------------------------------------------------------------------------


@main.command("add-task")
@params.model_argument
@click.option("--data", required=True, metavar="DATA",
              help=f"Registered dataset ({', '.join(DATASETS)}) or an image folder with train/ "
                   "and val/ or test/.")
@click.option("--prune", type=params.PruneRatio(), required=True, metavar="RATIO|auto",
              help="Fraction of the task's trained weights to release, [0, 1), or auto: the "
                   "largest that keeps validation accuracy within --tolerance.")
@click.option("--tolerance", type=params.FiniteRange(min=0), metavar="PP",
              help="With --prune auto: validation accuracy points the task may lose [default: "
                   "1.0].")
@click.option("--auto-trials", type=click.IntRange(min=1), metavar="N",
              help="With --prune auto: fine-tuning trials at most [default: 3].")
@click.option("--reserve", type=click.IntRange(min=0), metavar="N",
              help="Keep room for N more tasks of this size in every layer (raises the ratio "
                   "where needed). With --prune auto, give the number of tasks still to come "
                   "if you know it [default: the rest of init --tasks, else 0].")
@click.option("--task", "name", metavar="NAME",
              help="Task name [default: DATA plus the classes, e.g. digits-0-1].")
@click.option("--classes", callback=params.classes, metavar="LIST",
              help="Subset of the dataset's classes, e.g. 0,1 or 0-4.")
@click.option("--epochs", type=click.IntRange(min=0), default=20, show_default=True,
              metavar="N", help="Training epochs on the free weights.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=10, show_default=True,
              metavar="M", help="Fine-tuning epochs after pruning.")
@click.option("--lr", type=params.FiniteRange(min=0, min_open=True), metavar="LR",
              help="Training learning rate [default: 0.001, the paper's, for a network with "
                   "pretrained weights; else 0.05, from scratch].")
@click.option("--finetune-lr", type=params.FiniteRange(min=0, min_open=True), metavar="LR",
              help="Fine-tuning learning rate [default: 0.0001 with pretrained weights; else "
                   "0.005].")
@click.option("--lr-decay-epochs", type=click.IntRange(min=0), default=10, show_default=True,
              metavar="N", help="Multiply the training lr by 0.1 every N epochs (0: never).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              metavar="B")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd",
              show_default=True)
@click.option("--momentum", type=params.FiniteRange(min=0), default=0.9, show_default=True,
              metavar="M", help="SGD momentum.")
@click.option("--weight-decay", type=params.FiniteRange(min=0), default=0.0, show_default=True,
              metavar="WD")
@click.option("--global-prune", "prune_scope", flag_value="global", default="layer",
              help="Rank weights across all layers when pruning (default: the exact ratio in "
                   "every layer, as the paper).")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=params.Workers(), default="auto", show_default=True,
              metavar="auto|W", help="Data loading worker processes (auto: none for data in "
                                     "memory or small, else the CPUs available, at most 8).")
@click.option("--cache", type=params.Cache(), default="auto", show_default=True,
              metavar="auto|none|GB", help="Keep the images decoded in memory when they fit "
                                           "(auto: a quarter of the free memory, at most 4 GiB).")
@click.option("--amp", is_flag=True,
              help="Mixed precision: bfloat16 on the CPU, float16 (or bfloat16) on CUDA.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S",
              help="Seeds initialization, shuffling, augmentation and the validation split.")
@click.option("--val-fraction", type=params.FiniteRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Share of the training data held out for model selection.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder holding the registered datasets [default: $PACKTOOL_DATA].")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out image files that cannot be read (every file's header is checked "
                   "before training; without this flag, bad files stop the add-task).")
@click.option("--checkpoint-every", type=params.FiniteRange(min=0), default=0, show_default=True,
              metavar="MIN", help="Minutes between checkpoints (0: after every epoch); longer "
                                  "saves time on large networks, and a resume repeats more.")
@click.option("--resume", is_flag=True,
              help="Continue the add-task interrupted on MODEL from its last checkpoint.")
@click.option("--restart", is_flag=True,
              help="Discard the checkpoint of an interrupted add-task and start over.")
@params.json_option
def add_task(model: Path, data: str, prune: float | str, tolerance: float | None,
             auto_trials: int | None, reserve: int | None, name: str | None,
             classes: list[int] | None, data_root: str | None, val_fraction: float,
             skip_bad_images: bool, checkpoint_every: float, resume: bool, restart: bool,
             as_json: bool, **options: Any) -> None:
    """Train a new task on the free weights, prune, fine-tune, and save MODEL.

    Progress is checkpointed beside MODEL after every epoch; after a crash or Ctrl-C, rerun the
    same command with --resume. Under torchrun, every process trains (DDP) and rank 0 saves.
    """
    if resume and restart:
        raise click.UsageError("use either --resume or --restart, not both")
    if prune != AUTO and (tolerance is not None or auto_trials is not None):
        raise click.UsageError("--tolerance and --auto-trials apply to --prune auto only")
    settings = {k: v for k, v in options.items() if v is not None}  # unset: the pack decides
    planner = {"tolerance": 1.0 if tolerance is None else tolerance,
               "auto_trials": 3 if auto_trials is None else auto_trials}
    click.get_current_context().meta["interrupted"] = (
        f"{model} was not changed; rerun with --resume to continue from the last completed epoch"
    )
    with training_progress(as_json) as progress:
        done = add_task_to_file(model, data, prune, settings=settings, reserve=reserve, **planner,
                                name=name, classes=classes, data_root=data_root,
                                val_fraction=val_fraction, skip_bad_images=skip_bad_images,
                                checkpoint_every=60 * checkpoint_every, resume=resume,
                                restart=restart, progress=progress)
    if done is None:  # a torchrun rank other than 0: rank 0 reports
        return
    pack, result = done
    doc = render.add_task_doc(result)
    if as_json:
        render.print_json(doc)
    else:
        console = render.console_for()
        render.show_task_summary(console, doc, pack, str(model))
        if prune == AUTO and reserve is None and pack.planned_tasks is None:
            render.show_reserve_tip(console)


# -- eval -------------------------------------------------------------------------------------


@main.command("eval")
@params.model_argument
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="Task to evaluate (repeatable) [default: all].")
@click.option("--all", "all_tasks", is_flag=True, help="Evaluate every task (the default).")
@click.option("--data", metavar="DATA",
              help="Evaluate on this dataset's test split instead of the task's own.")
@click.option("--classes", callback=params.classes, metavar="LIST",
              help="With --data: subset of its classes.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder holding the registered datasets [default: recorded, $PACKTOOL_DATA].")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              metavar="B")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also write an accuracy chart (needs matplotlib).")
@click.option("--task-free", is_flag=True,
              help="Serve every task's test split without its task id: how often the task is "
                   "identified, and the class accuracy without it.")
@click.option("--group", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With --task-free: identify the task of groups of N images of one task.")
@click.option("--task-score", type=click.Choice(SCORES),
              help="With --task-free: how tasks are scored [default: mahalanobis where every "
                   "task has feature statistics, else entropy].")
@params.json_option
def eval_(model: Path, tasks: tuple[str, ...], all_tasks: bool, data: str | None,
          classes: list[int] | None, data_root: str | None, device: str, batch_size: int,
          plot: str | None, task_free: bool, group: int, task_score: str | None,
          as_json: bool) -> None:
    """Re-evaluate tasks on their held-out test split.

    MODEL may be a model.pt or an archive.
    """
    if tasks and all_tasks:
        raise click.UsageError("use either --task or --all, not both")
    if classes is not None and data is None:
        raise click.UsageError("--classes needs --data")
    if task_free:
        return _eval_task_free(load(model), tasks, all_tasks, data, plot, group=group,
                               score=task_score, root=data_root, batch_size=batch_size,
                               device=device, as_json=as_json)
    rows = [row.to_dict() for row in evaluate_tasks(
        load(model), tasks, data=data, classes=classes, root=data_root, batch_size=batch_size,
        device=device)]
    doc = {"tasks": rows}
    if plot:
        plot_accuracy(rows, plot)
    if as_json:
        render.print_json(doc)
    else:
        render.show_eval(render.console_for(), doc)


def _eval_task_free(pack: Pack, tasks: tuple[str, ...], all_tasks: bool, data: str | None,
                    plot: str | None, *, as_json: bool, **settings: Any) -> None:
    if tasks or all_tasks or data or plot:
        raise click.UsageError("--task-free serves every task on its own test split: it takes "
                               "no --task, --all, --data or --plot")
    settings["score"] = settings["score"] or default_score(pack)
    rows = evaluate_task_free(pack, **settings)
    doc = render.task_free_doc(rows, pack, group=settings["group"], score=settings["score"])
    if as_json:
        render.print_json(doc)
    else:
        render.show_task_free(render.console_for(), doc)


# -- info -------------------------------------------------------------------------------------


@main.command()
@params.model_argument
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also write a per-layer capacity chart (needs matplotlib).")
@click.option("--share", type=params.FiniteRange(0, 1, min_open=True), metavar="S",
              help="Also forecast how many tasks fit that each own this share of every layer.")
@params.json_option
def info(model: Path, plot: str | None, share: float | None, as_json: bool) -> None:
    """Show MODEL's tasks and how much of each layer each task owns.

    MODEL may be a model.pt or an archive.
    """
    pack = load(model)
    doc = render.info_doc(pack, share)
    if plot:
        plot_capacity(pack, plot)
    if as_json:
        render.print_json(doc)
    else:
        render.show_info(render.console_for(), doc, pack, str(model))


# -- export -----------------------------------------------------------------------------------


@main.command()
@params.model_argument
@click.option("--task", "name", metavar="NAME", help="Export this task to ONNX.")
@click.option("--all", "all_tasks", is_flag=True,
              help="Export every task to ONNX, plus the archive, into --out DIR.")
@click.option("--multi-task", is_flag=True,
              help="Export every task to one ONNX file (--out FILE.onnx) with a task input.")
@click.option("--archive", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write only the shared-weight archive of every task.")
@click.option("--out", type=click.Path(), metavar="PATH",
              help="ONNX file (--task, --multi-task) [--task default: <task>.onnx] or folder "
                   "(--all).")
@click.option("--dense", is_flag=True, help="Store every weight dense (default: sparse where "
                                            "smaller).")
@click.option("--opset", type=click.IntRange(min=1), default=18, show_default=True,
              metavar="N", help="ONNX opset (18 or newer).")
@click.option("--no-verify", is_flag=True,
              help="Skip comparing onnxruntime's outputs with PyTorch's.")
@click.option("--half", is_flag=True,
              help="float16 weights (--task, --archive); reports the accuracy change on the "
                   "test split.")
@click.option("--int8", is_flag=True,
              help="With --task: int8 through onnxruntime.quantization (static, calibrated on "
                   "training images, for conv nets); reports the accuracy change.")
@click.option("--max-drop", type=params.FiniteRange(min=0), default=None, metavar="PP",
              help="With --task --int8/--half: refuse to write if test accuracy drops by more "
                   "than PP points [default: 1.0].")
@click.option("--force", is_flag=True,
              help="With --task --int8/--half: write even past --max-drop, or without data to "
                   "measure on.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DIR",
              help="With --half/--int8: where the tasks' datasets live [default: recorded, "
                   "$PACKTOOL_DATA].")
@params.json_option
def export(model: Path, name: str | None, all_tasks: bool, multi_task: bool,
           archive: str | None, out: str | None, dense: bool, opset: int, no_verify: bool,
           half: bool, int8: bool, max_drop: float | None, force: bool, data_root: str | None,
           as_json: bool) -> None:
    """Export tasks to ONNX (one file per task, or one for every task), or every task to one
    shared-weight archive.

    MODEL may be a model.pt or an archive.
    """
    params.check_export_mode(name, all_tasks, multi_task, archive, out)
    params.check_export_options(name, multi_task, archive, dense, half, int8, max_drop, force,
                          data_root)
    pack, sha = load(model), sha256_file(model)
    onnx = {"opset": opset, "verify": not no_verify, "source_sha256": sha}
    files: list[Any] = []
    written = None
    if archive is not None:
        _refuse_overwriting(model, [Path(archive)])
        written = exporters.write_archive(pack, archive, half=half, source_sha256=sha)
    elif all_tasks:
        assert out is not None
        stems = exporters.task_filenames(pack.task_names)
        _refuse_overwriting(model, [Path(out) / f"{s}.onnx" for s in stems]
                            + [Path(out) / exporters.ARCHIVE_NAME])
        files, written = exporters.export_all(pack, out, archive=True, dense=dense, **onnx)
    elif multi_task:
        assert out is not None
        _refuse_overwriting(model, [Path(out)])
        files = [exporters.export_multi_task(pack, out, **onnx)]
    else:
        assert name is not None
        record = pack.task(name)
        path = Path(out or f"{exporters.task_filenames([record.name])[0]}.onnx")
        _refuse_overwriting(model, [path])
        if half or int8:
            files = [exporters.export_reduced(
                pack, record.name, path, "int8" if int8 else "float16", force=force,
                max_drop=1.0 if max_drop is None else max_drop, data_root=data_root,
                opset=opset, source_sha256=sha)]
        else:
            files = [exporters.export_onnx(pack, record.name, path, dense=dense, **onnx)]
    doc = {"files": [f.to_dict() for f in files],
           "archive": None if written is None else written.to_dict()}
    if archive is not None and half:
        changes = exporters.half_precision_change(pack, exporters.read_archive(archive),
                                                  data_root=data_root)
        doc["archive"]["half_precision"] = [c.to_dict() for c in changes]
    if as_json:
        render.print_json(doc)
    else:
        render.show_export(render.console_for(), doc)


def _refuse_overwriting(model: Path, targets: list[Path]) -> None:
    """An export must never replace the file it reads."""
    source = model.resolve()
    for target in targets:
        if target.resolve() == source:
            raise PackToolError(f"refusing to overwrite {model} (the export's source) with "
                                f"{target}; choose another output path")


# -- predict ----------------------------------------------------------------------------------


@main.command()
@click.argument("source", metavar="FILE", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...",
                type=click.Path(path_type=Path))
@click.option("--task", "name", metavar="NAME|auto",
              help="Task to run (required with a pack file or a multi-task ONNX); auto: every "
                   "task runs and each image goes to the task that scores it best.")
@click.option("--same-task", is_flag=True,
              help="With --task auto: the IMAGEs come from one task, chosen by their summed "
                   "scores.")
@click.option("--task-score", type=click.Choice(SCORES),
              help="With --task auto: how tasks are scored [default: mahalanobis where every "
                   "task has feature statistics, else entropy].")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, metavar="K",
              help="How many classes to show per image.")
@params.json_option
def predict(source: Path, images: tuple[Path, ...], name: str | None, same_task: bool,
            task_score: str | None, top: int, as_json: bool) -> None:
    """Classify IMAGEs with an exported ONNX file or a pack file (archive or model.pt)."""
    if same_task and name != AUTO:
        raise click.UsageError("--same-task needs --task auto")
    result = exporters.predict(source, list(images), task=name, top=top, same_task=same_task,
                               task_score=task_score)
    doc = result.to_dict()
    if as_json:
        render.print_json(doc)
    else:
        render.show_predict(render.console_for(), doc)
