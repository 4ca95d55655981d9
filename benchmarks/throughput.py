"""Throughput on image files: packtool's add-task against a plain PyTorch loop doing the same.

* **JPEG folder**: a few hundred generated JPEGs of about 500x375 in an image folder, ResNet-18
  at 224 and 128 px. One epoch plus its evaluation and its checkpoint, as add-task runs it (the
  time between two epochs' ends), against a plain loop on the same files and settings:
  ``torchvision.datasets.ImageFolder`` with the same transforms, ``DataLoader`` with the same
  workers, SGD, an evaluation of the validation split and a ``torch.save`` of the model and
  optimizer each epoch. Images per second, and their ratio (target: at least 0.9x); and the
  checkpoint's share of an epoch (target: at most 5%). packtool runs twice: with its default
  cache (images decoded and resized once, kept in memory) and with ``cache="none"`` (decoded
  every epoch, as the plain loop does).
* **Digits from image folders**: the five Split-Digits tasks as PNG folders, the whole add-task
  of each (20 + 10 epochs, model selection on validation, pruning), against the same schedule
  in a plain loop on the same network and the same tensors already in memory (no pruning, no
  masks; process start excluded). Target: at most 1.5x.

The smoke run, which only checks that all of it runs, uses MobileNetV3-Small, two epochs and
two digits tasks.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from packtool import Pack, Progress, TrainConfig, add_task, load_task_data
from packtool.data.digits import read_digits
from packtool.data.preprocess import CROP_MARGIN
from packtool.formats.checkpoint import Checkpoint
from packtool.models import ArchSpec, build_network

from .common import count_word, fmt, markdown_table


@dataclass(frozen=True)
class ThroughputSettings:
    sizes: tuple[int, ...]  # input sides of the JPEG network
    images: int  # training JPEGs (and a quarter as many for validation)
    workers: int
    digits_epochs: tuple[int, int]  # training and fine-tuning epochs per digits task
    note: str = ""
    arch: str = "resnet18"  # the JPEG network (a torchvision name)
    epochs: int = 3  # per JPEG run: the median of the epoch-to-epoch times
    digits_tasks: int = 5  # Split-Digits pairs, {0,1} first


#: How the tables name the JPEG networks.
ARCH_LABELS = {"resnet18": "ResNet-18", "mobilenet_v3_small": "MobileNetV3-Small"}

SETTINGS = {
    "smoke": ThroughputSettings((64,), 16, 0, (1, 1), note="smoke: not a measurement",
                                arch="mobilenet_v3_small", epochs=2, digits_tasks=2),
    "quick": ThroughputSettings((128,), 96, 2, (6, 3), note="quick: 128 px only, 96 images"),
    "full": ThroughputSettings((224, 128), 256, 2, (20, 10)),
}


def _jpegs(root: Path, images: int, classes: int = 4) -> None:
    """Smooth random photographs of about 500x375 in ``root/{train,val,test}/<class>/``:
    ``val`` is what both loops evaluate every epoch (packtool holds ``test`` out)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", max(images // 4, classes)),
                         ("test", classes)):
        for i in range(count):
            label = i % classes
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            low[..., label % 3] = 255  # each class has its own dominant channel
            width, height = 500 + int(rng.integers(-20, 21)), 375
            Image.fromarray(low).resize((width, height), Image.BILINEAR).save(
                folder / f"{i}.jpg", quality=90)


class _EpochClock(Progress):
    """The time between consecutive epoch ends: an epoch, its evaluation and its checkpoint."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def epoch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def packtool_epoch(settings: ThroughputSettings, root: Path, size: int, tmp: Path,
                   cache: str) -> dict[str, float]:
    """add-task's epochs (training phase) with a checkpoint after each one."""
    pack = Pack.create(settings.arch, (3, size, size), seed=0)
    data = load_task_data(str(root), pack.preprocess)
    clock = _EpochClock()
    config = TrainConfig(epochs=settings.epochs, finetune_epochs=0, lr=0.01, device="cpu",
                         workers=settings.workers, cache=cache)
    ckpt = tmp / f"run-{size}-{cache}.ckpt"
    add_task(pack, "t", data, 0.5, config, progress=clock, checkpoint=ckpt)
    return {"epoch_s": float(np.median(np.diff(clock.ends))),
            "images": len(data.train) + len(data.val), "checkpoint_s": _checkpoint_seconds(ckpt)}


def _checkpoint_seconds(path: Path) -> float:
    """How long writing that checkpoint takes: load it, time saving it again (median of 3)."""
    saved = Checkpoint.load(path)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        saved.save(path.with_suffix(".again"))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def plain_epoch(settings: ThroughputSettings, root: Path, size: int, tmp: Path
                ) -> dict[str, float]:
    """ImageFolder + DataLoader + SGD, the same recipe and settings and epochs."""
    workers = settings.workers
    resize = round(size * CROP_MARGIN)
    norm = v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True),
                           v2.RandomCrop(size), v2.RandomHorizontalFlip(),
                           v2.ToDtype(torch.float32, scale=True), norm])
    eval_tf = v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True),
                          v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), norm])
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    val = torchvision.datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    train_loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=workers, **extra)
    val_loader = DataLoader(val, batch_size=256, num_workers=workers, **extra)
    torch.manual_seed(0)
    net = torchvision.models.get_model(settings.arch, num_classes=len(train.classes))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    ends = []
    for _ in range(settings.epochs):
        net.train()
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for x, _y in val_loader:
                net(x)
        ends.append(time.perf_counter())
        torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, tmp / "plain.pt")
    return {"epoch_s": float(np.median(np.diff(ends))), "images": len(train) + len(val)}


def digits_sequence(epochs: tuple[int, int], tasks: int, tmp: Path) -> dict[str, float]:
    """Split-Digits from PNG folders (the first ``tasks`` pairs) through add-task, against a
    plain in-memory loop."""
    folders = _digits_folders(tmp / "digits", tasks)
    config = TrainConfig(epochs=epochs[0], finetune_epochs=epochs[1], lr=0.05,
                         finetune_lr=0.005, lr_decay_epochs=0, device="cpu")
    pack = Pack.create("lenet", (1, 8, 8), seed=0)
    tasks = []
    start = time.perf_counter()  # reading the folders is part of add-task
    for k, folder in enumerate(folders):
        tasks.append(load_task_data(str(folder), pack.preprocess))
        last = k == len(folders) - 1
        pack, _ = add_task(pack, f"t{k}", tasks[-1], 0.0 if last else 0.75, config)
    packtool_s = time.perf_counter() - start
    tensors = [_as_tensors(d) for d in tasks]
    start = time.perf_counter()
    for train, val in tensors:
        _plain_task(train, val, config)
    return {"packtool_s": packtool_s, "plain_s": time.perf_counter() - start}


def _digits_folders(root: Path, tasks: int) -> list[Path]:
    """The first ``tasks`` pairs of UCI digits as PNG folders, about 20% of each class in
    ``val/``."""
    images, labels = read_digits()
    pairs = [(a, a + 1) for a in range(0, 2 * tasks, 2)]
    rng = np.random.default_rng(0)
    folders = []
    for a, b in pairs:
        folder = root / f"{a}-{b}"
        for i in np.flatnonzero(np.isin(labels, (a, b))):
            split = "val" if rng.random() < 0.2 else "train"
            out = folder / split / str(labels[i])
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray((images[i] * 255 / 16).astype(np.uint8)).save(out / f"{i}.png")
        folders.append(folder)
    return folders


def _as_tensors(data: Any) -> tuple[Any, Any]:
    def stack(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(split[i] for i in range(len(split))), strict=True)
        return torch.stack(xs), torch.tensor(ys)

    return stack(data.train), stack(data.val)


def _plain_task(train: tuple, val: tuple, config: TrainConfig) -> None:
    """The same schedule as add-task's: train, fine-tune, each phase keeping its best epoch on
    validation, and a final evaluation."""
    torch.manual_seed(0)
    net = build_network(ArchSpec("lenet", (1, 8, 8), {"num_classes": 2}))
    x, y = train
    for epochs, lr in ((config.epochs, config.lr), (config.finetune_epochs, config.finetune_lr)):
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        best, best_state = -1.0, None
        for _ in range(epochs):
            net.train()
            for batch in torch.randperm(len(y)).split(config.batch_size):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                acc = (net(val[0]).argmax(1) == val[1]).float().mean().item()
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(best_state)


def run(mode: str, log: Any = None) -> dict[str, Any]:
    settings = SETTINGS[mode]
    rows = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        _jpegs(tmp / "jpegs", settings.images)
        for size in settings.sizes:
            plain = plain_epoch(settings, tmp / "jpegs", size, tmp)
            for cache in ("auto", "none"):
                ours = packtool_epoch(settings, tmp / "jpegs", size, tmp, cache)
                rows.append({"size": size, "cache": cache, "packtool": ours, "plain": plain,
                             "ratio": plain["epoch_s"] / ours["epoch_s"],
                             "checkpoint_share": ours["checkpoint_s"] / ours["epoch_s"]})
            if log:
                log(f"throughput: {settings.arch} at {size} px done")
        digits = digits_sequence(settings.digits_epochs, settings.digits_tasks, tmp)
        if log:
            log("throughput: digits sequence done")
    return {"settings": asdict(settings), "jpegs": rows, "digits": digits}


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    parts = [f"_{settings['note']}_"] if settings.get("note") else []
    label = ARCH_LABELS[settings.get("arch", "resnet18")]  # records from before: ResNet-18
    parts.append(
        f"### {label} on {settings['images']} JPEGs of about 500x375 (workers "
        f"{settings['workers']})\n\nOne epoch, its evaluation of the validation split and its "
        "checkpoint (median over epochs):\n\n" + markdown_table(
            ["input", "cache", "packtool img/s", "plain loop img/s", "packtool / plain",
             "checkpoint s", "checkpoint / epoch"],
            [[f"{r['size']} px", r["cache"],
              fmt(r["packtool"]["images"] / r["packtool"]["epoch_s"]),
              fmt(r["plain"]["images"] / r["plain"]["epoch_s"]), f"{r['ratio']:.2f}",
              fmt(r["packtool"]["checkpoint_s"], 2), f"{100 * r['checkpoint_share']:.1f}%"]
             for r in result["jpegs"]]))
    d = result["digits"]
    epochs = settings["digits_epochs"]
    count = settings.get("digits_tasks", 5)  # records from before the setting ran five
    tasks = count_word(count)
    parts.append(
        f"### Split-Digits from PNG folders, {tasks} tasks of {epochs[0]} + {epochs[1]} "
        "epochs\n\n"
        + markdown_table(["what", "seconds", "packtool / plain"],
                         [[f"packtool add-task x{count} (from files, pruning, masks)",
                           fmt(d["packtool_s"]), f"{d['packtool_s'] / d['plain_s']:.2f}"],
                          ["plain loop on tensors in memory", fmt(d["plain_s"]), "1.00"]]))
    return "\n\n".join(parts)
