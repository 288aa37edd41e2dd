"""Convolution building blocks shared by heads and YAML graphs."""
from __future__ import annotations

import torch
from torch import nn

from models.registry import ACTIVATIONS, MODULES


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'same' padding for an odd kernel ``k`` with dilation ``d`` unless ``p`` is given."""
    if p is not None:
        return p
    return d * (k - 1) // 2


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return one Conv2d equal to ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.data.copy_(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused.requires_grad_(False)


# The activation a YAML graph's blocks use: SiLU as built, or another one named by the file's top-level
# `activation:` key (models/parser.py swaps it into the freshly built rows). ReLU-family activations
# matter for deployment: ONNX Runtime folds Conv + ReLU into one kernel in fp32, and in INT8 the ReLU
# disappears into the convolution's requantisation, where SiLU stays two extra int8 ops per layer.
ACTIVATIONS.register("SiLU")(nn.SiLU)
ACTIVATIONS.register("ReLU")(lambda: nn.ReLU(inplace=True))
ACTIVATIONS.register("LeakyReLU")(lambda: nn.LeakyReLU(0.1, inplace=True))  # YOLOv7-tiny's slope
ACTIVATIONS.register("Hardswish")(lambda: nn.Hardswish(inplace=True))


@MODULES.register()
class Conv(nn.Module):
    """Conv2d -> BatchNorm2d -> activation (SiLU by default, as in the YOLO family)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (inference only)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()
            self.forward = self.forward_fuse  # type: ignore[method-assign]


class ConvBNReLU(Conv):
    """Conv -> BN -> ReLU, the activation torchvision-style heads use."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1) -> None:
        super().__init__(c1, c2, k, s, act=nn.ReLU(inplace=True))


@MODULES.register()
class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
