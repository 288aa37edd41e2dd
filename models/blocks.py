"""CSP-family blocks of the YOLOv5/v8 graphs (and of the YOLO-style head), one class each.

How a block speaks to the YAML parser (models/parser.py) -- class attributes, no lists of names there:

- a first constructor parameter named ``c1`` receives the input channels (a list when ``from`` is a list
  and the block sets ``multi_input = True``);
- ``width_args`` (default ``("c2",)``) names the parameters that hold channel counts and are width-scaled;
- ``repeat_arg = True``: the block takes the depth-scaled repeats as its parameter ``n`` instead of being
  stacked ``n`` times.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.conv import Conv
from models.registry import MODULES

# YOLO YAMLs write `nn.Upsample`; torch's class is registered as-is (it needs no channel information).
MODULES.register("nn.Upsample")(nn.Upsample)


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


@MODULES.register()
class C2f(nn.Module):
    """CSP bottleneck with two convolutions whose every bottleneck output is kept (YOLOv8)."""

    repeat_arg = True

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


@MODULES.register()
class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k max-pools equal SPP(k, 2k-1, 3k-2)."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


@MODULES.register()
class SegOutput(nn.Module):
    """Semantic-segmentation output of a YOLO graph: any subset of P2-P5 -> class logits.

    Each input gets a 1x1 Conv to ``c_`` channels and is resized (bilinear) to the finest input; the sum
    goes through a 3x3 Conv and a 1x1 classifier. The logits come out at the finest input's stride:
    ``SegmentationModel`` upsamples them to the input size, so the graph never needs a stride-1 map.
    """

    multi_input = True
    width_args = ("c_",)

    def __init__(self, c1: int | Sequence[int], nc: int, c_: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        chans = [int(c1)] if isinstance(c1, int) else [int(c) for c in c1]
        self.lateral = nn.ModuleList(Conv(c, c_, 1) for c in chans)
        self.fuse_conv = Conv(c_, c_, 3)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c_, nc, 1)
        self.finest = 0  # index of the finest input; the parser sets it from the declared strides

    def set_input_strides(self, strides: Sequence[int]) -> None:
        """Called by the YAML parser: the finest input is chosen from the declared strides once, so the
        forward pass has no branch on tensor shapes (a traced/exported graph then works at any size)."""
        self.finest = min(range(len(strides)), key=lambda k: strides[k])

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        xs = [x] if isinstance(x, torch.Tensor) else list(x)
        ref = xs[self.finest]
        y = None
        for k, (lat, t) in enumerate(zip(self.lateral, xs)):
            t = lat(t)
            if k != self.finest:  # an index fixed at build time, not a shape test
                t = F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)
            y = t if y is None else y + t
        return self.classifier(self.drop(self.fuse_conv(y)))


@MODULES.register()
class C3k(C3):
    """C3 whose bottlenecks use two k x k convolutions (YOLO11's inner block of C3k2)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 k: int = 3) -> None:
        self.k = k  # read by bottleneck(), which C3.__init__ calls
        super().__init__(c1, c2, n, shortcut, g, e)

    def bottleneck(self, c_: int, shortcut: bool, g: int) -> nn.Module:
        return Bottleneck(c_, c_, shortcut, g, k=(self.k, self.k), e=1.0)


@MODULES.register()
class C3k2(C2f):
    """YOLO11's C2f variant: each of the ``n`` units is a C3k (``c3k=True``) or a 3x3-3x3 bottleneck at half
    width. In the YOLO11 YAMLs the reference parser turns ``c3k`` on for scales m, l and x; our
    yolo11_seg.yaml says so with a per-scale name (``scale_args``)."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, g: int = 1,
                 shortcut: bool = True) -> None:
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(C3k(self.c, self.c, 2, shortcut, g) if c3k
                               else Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=0.5) for _ in range(n))
