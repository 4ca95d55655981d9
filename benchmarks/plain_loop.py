"""A plain torchvision training script, run as its own process by the start-up part
(:mod:`benchmarks.startup`): what a user would write instead of ``packtool add-task``.

    python benchmarks/plain_loop.py ROOT SIZE WORKERS

``ROOT/train/<class>/*.jpg`` through ``ImageFolder`` and a ``DataLoader`` with WORKERS worker
processes, ResNet-18 at SIZE px, one epoch of SGD with the paper's recipe (resize the shorter
side to 8/7 of SIZE, random crop, random flip), then one pass over ``ROOT/test``. Its wall time
from process start, imports included, is what packtool's one-epoch task is compared with.
"""

from __future__ import annotations

import sys

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2


def main(root: str, size: int, workers: int) -> None:
    resize = round(size * 8 / 7)
    norm = v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True),
                           v2.RandomCrop(size), v2.RandomHorizontalFlip(),
                           v2.ToDtype(torch.float32, scale=True), norm])
    test_tf = v2.Compose([v2.PILToTensor(), v2.Resize(resize, antialias=True),
                          v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), norm])
    train = torchvision.datasets.ImageFolder(f"{root}/train", transform=train_tf)
    test = torchvision.datasets.ImageFolder(f"{root}/test", transform=test_tf)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=len(train.classes))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for x, y in DataLoader(train, batch_size=32, shuffle=True, num_workers=workers):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=256, num_workers=workers):
            correct += int((net(x).argmax(1) == y).sum())
    print(f"test accuracy {correct / len(test):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
