"""Modulated deformable convolution (DCNv2) and the C3 that uses it (C3_DCN)."""
from __future__ import annotations

import math

import torch
from torch import nn

from models.blocks import C3
from models.conv import Conv, autopad
from models.registry import MODULES


@MODULES.register()
class DCNConv(nn.Module):
    """DCNv2 unit -> BN -> SiLU, a drop-in for a k x k ``Conv``.

    A plain Conv2d(c1, 3*k*k, k) with the same stride and padding predicts, per output pixel, k*k (dy, dx)
    offsets and k*k modulation masks (sigmoid). It starts at zero, so training starts from the regular
    sampling grid with every tap weighted 0.5.
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = s, autopad(k, p, d), d
        self.weight = nn.Parameter(torch.empty(c2, c1 // g, k, k))
        self.bias = nn.Parameter(torch.empty(c2))
        self.offset = nn.Conv2d(c1, 3 * k * k, k, s, self.padding, dilation=d, bias=True)
        self.bn: nn.Module = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the kernel as nn.Conv2d initialises its own; the offset predictor at zero (regular grid)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling offsets (N, 2*k*k, H', W') and modulation mask (N, k*k, H', W') for input ``x``."""
        o1, o2, mask = self.offset(x).chunk(3, 1)
        return torch.cat((o1, o2), 1), mask.sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        from torchvision.ops import deform_conv2d  # lazily: torchvision's import costs every CLI start seconds

        y = deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, mask=mask)
        return self.act(self.bn(y))

    @staticmethod
    def thop_ops(m: "DCNConv", x: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:
        """thop rule (``thop.profile(custom_ops={DCNConv: DCNConv.thop_ops})``): multiply-accumulates of the
        offset predictor and the deformable kernel; thop alone sees only the predictor."""
        n, _, h, w = y.shape
        macs = y.numel() * m.weight[0].numel() + n * h * w * m.offset.weight.numel()
        m.total_ops += torch.tensor([float(macs)], dtype=torch.float64)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the deformable kernel and its bias (inference only)."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.weight.mul_(scale.reshape(-1, 1, 1, 1))
        self.bias.copy_((self.bias - bn.running_mean) * scale + bn.bias)
        self.bn = nn.Identity()


class DCNBottleneck(nn.Module):
    """C3's bottleneck (1x1 Conv, 3x3) with the 3x3 Conv replaced by a DCNv2 unit."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = DCNConv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@MODULES.register()
class C3_DCN(C3):  # noqa: N801 - the name YOLO YAMLs use
    """C3 whose bottlenecks use a deformable 3x3 convolution (repeats inside, like C3)."""

    def bottleneck(self, c_: int, shortcut: bool, g: int) -> nn.Module:
        return DCNBottleneck(c_, c_, shortcut, g, e=1.0)
