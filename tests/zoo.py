"""Hand-written third-party architectures in different styles, each with the stages a person names.

Every entry is (factory, input size, expected stages as tuples of block names). Inputs are
3-channel squares; the nets are tiny so the whole zoo traces in well under a second.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn_conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """torchvision's `downsample`: a 1x1 conv and BN where the shape changes, else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_bn_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


# 1. torchvision-style ResNet: projection shortcuts in `downsample`, `out = out + identity`
class TvBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = _bn_conv(cin, cout, stride=stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _bn_conv(cout, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ProjectionResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = _bn_conv(3, 8), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(TvBlock(8, 8), TvBlock(8, 8))
        self.layer2 = nn.Sequential(TvBlock(8, 16, 2), TvBlock(16, 16))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# 2. pre-activation ResNet: functional F.relu, shortcut taken after the first BN-ReLU, `+=`
class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _bn_conv(cin, cout, stride=stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _bn_conv(cout, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_bn_conv(cin, cout, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class PreActResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = _bn_conv(3, 8)
        self.layer1 = nn.Sequential(PreActBlock(8, 8), PreActBlock(8, 8))
        self.layer2 = nn.Sequential(PreActBlock(8, 16, 2), PreActBlock(16, 16))
        self.bn = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = self.layer2(self.layer1(self.conv1(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(out.view(out.size(0), -1))


# 3. MobileNetV2-style inverted residuals: depthwise convs, no shortcut where the shape changes
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1):
        super().__init__(_bn_conv(cin, cout, k, stride), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [ConvBNReLU(cin, hidden, 1)] if expand != 1 else []
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            _bn_conv(hidden, cout, 1), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(3, 8),
            InvertedResidual(8, 8, 1, 1),
            InvertedResidual(8, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            ConvBNReLU(24, 32, 1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# 4. DenseNet-style: dense layers concatenate their input, transitions halve the size
class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), _bn_conv(cin, growth)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), _bn_conv(cin, cout, 1)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class TinyDenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = _bn_conv(3, 8)
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.trans1 = Transition(16, 8)
        self.block2 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.norm, self.fc = nn.BatchNorm2d(16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return self.fc(torch.flatten(x, 1))


# 5. squeeze-excitation ResNet: linear SE gate multiplied into the residual branch
class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        b, c = x.shape[0], x.shape[1]
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        return x * s


class SEBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = _bn_conv(cin, cout, stride=stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _bn_conv(cout, cout), nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_bn_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class SEResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_bn_conv(3, 8), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(SEBlock(8, 8), SEBlock(8, 8))
        self.stage2 = nn.Sequential(SEBlock(8, 16, 2), SEBlock(16, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(x.mean((2, 3)))


# 6. functional style: F.conv2d with a Parameter, F.relu, ModuleList, x.view(x.size(0), -1)
class FunctionalBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn(F.conv2d(x, self.weight, padding=1)))


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([FunctionalBlock(8), FunctionalBlock(8)])
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.blocks2 = nn.ModuleList([FunctionalBlock(16)])
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.down(x))
        for block in self.blocks2:
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


# 7. VGG-like flat nn.Sequential, torch.flatten into a Linear classifier
class VGGish(nn.Module):
    def __init__(self):
        super().__init__()

        def unit(cin, cout):
            return [_bn_conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *unit(3, 8), *unit(8, 8), nn.MaxPool2d(2), *unit(8, 16), *unit(16, 16), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


# 8. ResNeXt-style grouped bottleneck written with `out += identity`, stages nested in a Sequential
class GroupedBlock(nn.Module):
    def __init__(self, cin, cout, stride=1, groups=4):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _bn_conv(cin, mid, 1), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = _bn_conv(mid, mid, 3, stride, groups), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _bn_conv(mid, cout, 1), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class PlusEqualsResNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_bn_conv(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(
            nn.Sequential(GroupedBlock(16, 16), GroupedBlock(16, 16)),
            nn.Sequential(GroupedBlock(16, 32, 2), GroupedBlock(32, 32)),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


# 9. residual units written inline in the model's own forward: no module per block
class InlineResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c5, self.c6 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.c2(F.relu(self.c1(x)))
        x = x + self.c4(F.relu(self.c3(x)))
        x = self.pool(x)
        x = x + self.c6(F.relu(self.c5(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# 10. the residual add written in the parent's loop: blocks hold only their branch
class Branch(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = _bn_conv(channels, channels), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = _bn_conv(channels, channels), nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class ParentAddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _bn_conv(3, 8)
        self.blocks = nn.ModuleList([Branch(8), Branch(8)])
        self.down = _bn_conv(8, 16, 3, 2)
        self.deep = nn.ModuleList([Branch(16)])
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        x = self.down(x)
        for block in self.deep:
            x = F.relu(x + block(x))
        return self.fc(x.mean((2, 3)))


ZOO = {
    "ProjectionResNet": (ProjectionResNet, 16, [("layer1.0", "layer1.1"), ("layer2.0", "layer2.1")]),
    "PreActResNet": (PreActResNet, 16, [("layer1.0", "layer1.1"), ("layer2.0", "layer2.1")]),
    "MobileNetV2ish": (
        MobileNetV2ish, 16, [("features.1",), ("features.2", "features.3"), ("features.4", "features.5")]
    ),
    "TinyDenseNet": (TinyDenseNet, 16, [("block1.0", "block1.1"), ("block2.0", "block2.1")]),
    "SEResNet": (SEResNet, 16, [("stage1.0", "stage1.1"), ("stage2.0", "stage2.1")]),
    "FunctionalNet": (FunctionalNet, 16, [("blocks.0", "blocks.1"), ("blocks2.0",)]),
    "VGGish": (VGGish, 16, [("features.0", "features.3"), ("features.7", "features.10")]),
    "PlusEqualsResNeXt": (
        PlusEqualsResNeXt, 16, [("stages.0.0", "stages.0.1"), ("stages.1.0", "stages.1.1")]
    ),
    "InlineResidualNet": (InlineResidualNet, 16, [("c1", "c3"), ("c5",)]),
    "ParentAddNet": (ParentAddNet, 16, [("blocks.0", "blocks.1"), ("deep.0",)]),
}
