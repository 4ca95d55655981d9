"""Small networks for tests, importable as ``nets:<function>`` architectures."""

from torch import nn
from torchvision.models.resnet import BasicBlock


def tiny_resnet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Two torchvision BasicBlocks (bias=None convs, BatchNorm, residual adds, a downsample)."""
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        BasicBlock(8, 8),
        BasicBlock(8, 16, stride=2, downsample=downsample),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
