"""The seed networks of the AutoGrow paper (section 2.1), built from per-stage depths and widths.

Module names are stable and deterministic (fx targets and checkpoint keys): `conv1`, `bn1`, `relu`
(stem), `layer{i}.{j}` (block j of stage i, both from 1 and 0 as in torchvision), `avgpool`, `fc`.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from graphmorph.models.blocks import BasicBlock, Bottleneck, PlainBlock

STEMS = ("cifar", "imagenet")


class SeedNet(nn.Module):
    """Stem, then stages of blocks (the first of stage i > 0 halves the size), then pool and fc.

    `stem="cifar"` is a 3x3 stride-1 conv (CIFAR ResNets, and the paper's 4-stage nets on 32x32);
    `stem="imagenet"` is a 7x7 stride-2 conv and a 3x3 stride-2 max-pool.
    """

    family: ClassVar[str]
    block: ClassVar[type[nn.Module]]
    default_widths: ClassVar[tuple[int, ...]]

    def __init__(
        self,
        depths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] | None = None,
        stem: str = "cifar",
    ):
        super().__init__()
        widths = tuple(widths or self.default_widths)
        self.depths = tuple(depths)
        self.widths = widths
        self.stem_kind = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        channels = widths[0]
        for i, (depth, width) in enumerate(zip(self.depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(self.block(channels, width, 2 if i > 0 and j == 0 else 1))
                channels = width * self.block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_modules(self) -> list[nn.Sequential]:
        """The stages in order (`layer1`, `layer2`, ...)."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.depths))]

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in self.stage_modules():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Basic3ResNet(SeedNet):
    """The CIFAR ResNet of He et al. (Basic3ResNet-3-3-3 is ResNet-20), 16-32-64 channels."""

    family = "Basic3ResNet"
    block = BasicBlock
    default_widths = (16, 32, 64)


class Basic4ResNet(SeedNet):
    """The ImageNet ResNet with basic blocks (ResNet-18/34 style), 64-128-256-512 channels."""

    family = "Basic4ResNet"
    block = BasicBlock
    default_widths = (64, 128, 256, 512)


class Bottleneck4ResNet(SeedNet):
    """The ImageNet ResNet with bottleneck blocks (ResNet-50 style), 64-128-256-512 x 4 channels."""

    family = "Bottleneck4ResNet"
    block = Bottleneck
    default_widths = (64, 128, 256, 512)


class Plain3Net(SeedNet):
    """Basic3ResNet without shortcuts, one conv-BN-ReLU per sub-module, 16-32-64 channels."""

    family = "Plain3Net"
    block = PlainBlock
    default_widths = (16, 32, 64)


class Plain4Net(SeedNet):
    """Basic4ResNet without shortcuts, one conv-BN-ReLU per sub-module, 64-128-256-512 channels."""

    family = "Plain4Net"
    block = PlainBlock
    default_widths = (64, 128, 256, 512)


FAMILIES: dict[str, type[SeedNet]] = {
    cls.family: cls for cls in (Basic3ResNet, Basic4ResNet, Bottleneck4ResNet, Plain3Net, Plain4Net)
}
