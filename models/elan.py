"""ELAN-family blocks: RepConv and the GELAN blocks of YOLOv9, and the tiny ELAN blocks of YOLOv7-tiny.

Parameter layouts follow the published implementations so backbone parameter counts match them exactly.
See models/blocks.py for the class attributes the YAML parser reads (``width_args``, ``repeat_arg``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import C3, Bottleneck
from models.conv import Conv, fuse_conv_bn
from models.registry import MODULES


def _act(act: bool | nn.Module) -> nn.Module:
    return nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()


def conv_equivalent(m: Conv) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the single convolution equal to a Conv's conv+BN, fused or not."""
    conv = fuse_conv_bn(m.conv, m.bn) if isinstance(m.bn, nn.BatchNorm2d) else m.conv
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
    return conv.weight.detach(), bias.detach()


@MODULES.register()
class RepConv(nn.Module):
    """Re-parameterisable conv (RepVGG): k x k Conv-BN + 1x1 Conv-BN (+ identity BN), then SiLU.

    ``fuse()`` folds the branches into one k x k convolution with bias for inference.
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p: int = 1, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True, bn: bool = False) -> None:
        super().__init__()
        if k != 3 or p != 1:
            raise ValueError(f"RepConv supports k=3, p=1 only (got k={k}, p={p})")
        self.c1, self.c2, self.g, self.s, self.k, self.p = c1, c2, g, s, k, p
        self.act = _act(act)
        self.bn = nn.BatchNorm2d(c1) if bn and c1 == c2 and s == 1 else None
        self.conv1 = Conv(c1, c2, k, s, p=p, g=g, act=False)
        self.conv2 = Conv(c1, c2, 1, s, p=p - k // 2, g=g, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = 0 if self.bn is None else self.bn(x)
        return self.act(self.conv1(x) + self.conv2(x) + identity)

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def fuse(self) -> None:
        """Fold both branches (and their BNs) into one convolution; a no-op once fused."""
        if not hasattr(self, "conv1"):
            return
        w, b = conv_equivalent(self.conv1)
        w1, b1 = conv_equivalent(self.conv2)
        w = w + F.pad(w1, [self.k // 2] * 4)
        b = b + b1
        if self.bn is not None:
            # identity as a k x k kernel with a 1 at the centre of each channel's own input (per group)
            cpg = self.c1 // self.g
            eye = torch.zeros_like(w)
            for i in range(self.c2):
                eye[i, i % cpg, self.k // 2, self.k // 2] = 1.0
            scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
            w = w + eye * scale.reshape(-1, 1, 1, 1)
            b = b + self.bn.bias - self.bn.running_mean * scale
        conv = nn.Conv2d(self.c1, self.c2, self.k, self.s, self.p, groups=self.g, bias=True).to(w.device)
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(b.detach())
        self.conv = conv.requires_grad_(False)
        del self.conv1, self.conv2
        self.bn = None
        self.forward = self.forward_fuse  # type: ignore[method-assign]


class RepBottleneck(Bottleneck):
    """Bottleneck whose first 3x3 Conv is a RepConv (YOLOv9)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3),
                 e: float = 0.5) -> None:
        super().__init__(c1, c2, shortcut, g, k, e)
        self.cv1 = RepConv(c1, int(c2 * e), k[0], 1)


@MODULES.register()
class RepCSP(C3):
    """C3 with RepBottlenecks (YOLOv9)."""

    def bottleneck(self, c_: int, shortcut: bool, g: int) -> nn.Module:
        return RepBottleneck(c_, c_, shortcut, g, e=1.0)


@MODULES.register()
class RepNCSPELAN4(nn.Module):
    """CSP-ELAN (YOLOv9 GELAN): split, two RepCSP+Conv stages chained on one half, concatenate all four."""

    width_args = ("c2", "c3", "c4")

    def __init__(self, c1: int, c2: int, c3: int, c4: int, n: int = 1) -> None:
        super().__init__()
        self.c = c3 // 2
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2, self.cv3 = self.stages(c3 // 2, c4, n)
        self.cv4 = Conv(c3 + 2 * c4, c2, 1, 1)

    def stages(self, c_in: int, c4: int, n: int) -> tuple[nn.Module, nn.Module]:
        """The two chained stages; ELAN1 replaces them with plain 3x3 Convs."""
        return (nn.Sequential(RepCSP(c_in, c4, n), Conv(c4, c4, 3, 1)),
                nn.Sequential(RepCSP(c4, c4, n), Conv(c4, c4, 3, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in (self.cv2, self.cv3))
        return self.cv4(torch.cat(y, 1))


@MODULES.register()
class ELAN1(RepNCSPELAN4):
    """The light ELAN of YOLOv9-t/s: RepNCSPELAN4's layout with plain 3x3 Convs in place of its stages."""

    def __init__(self, c1: int, c2: int, c3: int, c4: int) -> None:
        super().__init__(c1, c2, c3, c4)

    def stages(self, c_in: int, c4: int, n: int) -> tuple[nn.Module, nn.Module]:
        return Conv(c_in, c4, 3, 1), Conv(c4, c4, 3, 1)


@MODULES.register()
class AConv(nn.Module):
    """Downsampling by 2: a 2x2 average pool (stride 1) then a stride-2 3x3 Conv (YOLOv9-t/s)."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.cv1 = Conv(c1, c2, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv1(F.avg_pool2d(x, 2, 1, 0, False, True))


@MODULES.register()
class ADown(nn.Module):
    """Downsampling by 2 (YOLOv9-c): half the channels through a stride-2 3x3 Conv, half through max-pool + 1x1."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1 // 2, self.c, 3, 2, 1)
        self.cv2 = Conv(c1 // 2, self.c, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = F.avg_pool2d(x, 2, 1, 0, False, True).chunk(2, 1)
        return torch.cat((self.cv1(x1), self.cv2(F.max_pool2d(x2, 3, 2, 1))), 1)


@MODULES.register()
class SPPELAN(nn.Module):
    """SPP as an ELAN: a 1x1 Conv then three chained max-pools, all four concatenated (YOLOv9)."""

    width_args = ("c2", "c3")

    def __init__(self, c1: int, c2: int, c3: int, k: int = 5) -> None:
        super().__init__()
        self.c = c3
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv3 = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv4 = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv5 = Conv(4 * c3, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(m(y[-1]) for m in (self.cv2, self.cv3, self.cv4))
        return self.cv5(torch.cat(y, 1))


# --- YOLOv7-tiny ------------------------------------------------------------------------------------

@MODULES.register()
class ConvLeaky(Conv):
    """Conv -> BN -> LeakyReLU(0.1), the convolution of YOLOv7-tiny."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1) -> None:
        super().__init__(c1, c2, k, s, p, g, d, act=nn.LeakyReLU(0.1))


@MODULES.register()
class MP(nn.Module):
    """k x k max-pool with stride k (YOLOv7's downsampling row)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@MODULES.register()
class SP(nn.Module):
    """Size-preserving k x k max-pool (YOLOv7's SPP branch)."""

    def __init__(self, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@MODULES.register()
class TinyELAN(nn.Module):
    """YOLOv7-tiny ELAN: two 1x1 branches, two chained 3x3 Convs on the second, concat of all four, 1x1.

    One row here stands for the seven rows (Conv, Conv, Conv, Conv, Concat, Conv) of the published YAML,
    with the same parameters.
    """

    width_args = ("c2", "c3")

    def __init__(self, c1: int, c2: int, c3: int) -> None:
        super().__init__()
        self.cv1 = ConvLeaky(c1, c3, 1)
        self.cv2 = ConvLeaky(c1, c3, 1)
        self.cv3 = ConvLeaky(c3, c3, 3)
        self.cv4 = ConvLeaky(c3, c3, 3)
        self.cv5 = ConvLeaky(4 * c3, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x), self.cv2(x)
        c = self.cv3(b)
        d = self.cv4(c)
        return self.cv5(torch.cat((d, c, b, a), 1))


@MODULES.register()
class TinySPPCSP(nn.Module):
    """YOLOv7-tiny SPPCSPC: a 1x1 shortcut branch and a 1x1 + max-pools (5, 9, 13) branch, joined by 1x1s."""

    def __init__(self, c1: int, c2: int, k: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        self.cv1 = ConvLeaky(c1, c2, 1)
        self.cv2 = ConvLeaky(c1, c2, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv3 = ConvLeaky(c2 * (len(k) + 1), c2, 1)
        self.cv4 = ConvLeaky(2 * c2, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x), self.cv2(x)
        y = self.cv3(torch.cat([m(b) for m in reversed(self.m)] + [b], 1))
        return self.cv4(torch.cat((y, a), 1))
