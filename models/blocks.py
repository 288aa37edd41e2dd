"""CSP-family blocks of the YOLO graphs (and of the YOLO-style head), one class each.

A block that takes its repeat count internally declares ``repeat_arg = True``; the parser passes the
scaled repeats as its third positional argument instead of stacking copies.
"""
from __future__ import annotations

import torch
from torch import nn

from models.conv import Conv
from models.registry import MODULES


@MODULES.register()
class Bottleneck(nn.Module):
    """Two convolutions with an optional residual connection."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (1, 3),
                 e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@MODULES.register()
class C3(nn.Module):
    """CSP bottleneck with three convolutions (YOLOv5)."""

    repeat_arg = True

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(self.bottleneck(c_, shortcut, g) for _ in range(n)))

    def bottleneck(self, c_: int, shortcut: bool, g: int) -> nn.Module:
        """The repeated unit; C3 variants (e.g. C3_DCN) override only this."""
        return Bottleneck(c_, c_, shortcut, g, k=(1, 3), e=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))
