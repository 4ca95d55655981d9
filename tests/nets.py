"""Small networks for tests, importable as ``nets:<function>`` architectures."""

import torch
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


class TinyTransformer(nn.Module):
    """Patch embeddings -> ``nn.TransformerEncoderLayer`` x ``depth`` -> class token -> Linear.

    The encoder layers hold ``nn.MultiheadAttention``, which reads ``out_proj.weight`` without
    calling ``out_proj``; the class token and the position embedding are bare parameters.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 patch: int = 4, dim: int = 96, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        tokens = (image_size // patch) ** 2
        self.patches = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.head(self.norm(self.encoder(x))[:, 0])


def tiny_transformer(num_classes: int = 10, **kwargs) -> nn.Module:
    return TinyTransformer(num_classes, **kwargs)


class ReadsChildWeight(nn.Module):
    """A module that reads its child's weight without calling the child, as
    ``nn.MultiheadAttention`` does with ``out_proj``: ``proj``'s forward never runs."""

    def __init__(self, num_classes: int = 10, features: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.linear(x.flatten(1), self.proj.weight, self.proj.bias)
        return self.head(torch.relu(hidden))


def reads_child_weight(num_classes: int = 10, **kwargs) -> nn.Module:
    return ReadsChildWeight(num_classes, **kwargs)


# Tiny instances of torchvision's modern classifiers: the same classes and code paths as
# convnext_tiny, efficientnet_b0 and mobilenet_v3_large, small enough to train in a test.


def tiny_convnext(num_classes: int = 10) -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)],
                    num_classes=num_classes)


def tiny_efficientnet(num_classes: int = 10) -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    settings = [MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(4, 3, 2, 8, 16, 1)]
    return EfficientNet(settings, dropout=0.0, num_classes=num_classes, last_channel=32)


def tiny_mobilenet_v3(num_classes: int = 10) -> nn.Module:
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

    settings = [InvertedResidualConfig(8, 3, 16, 8, True, "RE", 1, 1, 1.0),
                InvertedResidualConfig(8, 3, 32, 16, True, "HS", 2, 1, 1.0)]
    return MobileNetV3(settings, last_channel=32, num_classes=num_classes)


def tiny_vit(num_classes: int = 10, image_size: int = 8, patch: int = 4) -> nn.Module:
    """torchvision's VisionTransformer, one encoder block of width 16 (MLP width 32)."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=image_size, patch_size=patch, num_layers=1, num_heads=2,
                             hidden_dim=16, mlp_dim=32, num_classes=num_classes)
