"""CIFAR ResNet-(6n+2) of He et al. (2016, Sec. 4.2), ResNet-32 (n = 5) by default.

Three stages of n basic blocks with `width`, 2·width and 4·width channels (16/32/64 for the paper's
ResNet-32) on 32x32 inputs, global average pooling, one linear classifier. `forward` returns
`(logits, features)`: the features h(x) are the pooled (B, 4·width) vector the meta model reads.

Shortcut: option A of the original paper (identity; when the shape changes, stride-2 subsampling and
zero-padded channels), parameter-free as in the ResNet-32 of MW-Net and MLC, so the parameter count
matches theirs (0.46 M for ResNet-32 on 10 classes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pad = out_channels - in_channels   # option A: extra channels of the shortcut are zeros
        self.stride = stride

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 32, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(channels, out_channels, stride=2 if stage > 0 and b == 0 else 1))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn(self.conv(x)))
        out = self.layers(out)
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)   # (B, 4·width): h(x)
        return self.fc(features), features                          # (B, K), (B, 4·width)


def build_resnet(name: str, num_classes: int, width: int = 16) -> CifarResNet:
    """`name` is "resnet{6n+2}" (resnet32 by default in the config)."""
    if not name.startswith("resnet") or not name[6:].isdigit():
        raise ValueError(f"model must be named resnet<depth> (e.g. resnet32), got {name!r}")
    return CifarResNet(int(name[6:]), num_classes, width)
