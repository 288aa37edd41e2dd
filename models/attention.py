"""Attention gates: squeeze-and-excitation (SE), spatial + channel SE (scSE) and CBAM.

Each gate maps C channels to C channels at the same size, so it can follow any conv block: the heads
take one per decoder block with ``--head-args attention=scse`` (or ``cbam``), and YAML graphs use the
registered rows ``SE``, ``scSE`` and ``CBAM`` (args: [reduction], output channels = input channels).

* SE    - Hu et al. 2018, "Squeeze-and-Excitation Networks": x * sigmoid(W2 relu(W1 avgpool(x))).
* scSE  - Roy et al. 2018, "Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional
          Networks": x * cSE(x) + x * sSE(x), with cSE the SE gate above and sSE = sigmoid(conv1x1(x) -> 1).
* CBAM  - Woo et al. 2018, "CBAM: Convolutional Block Attention Module": channel gate
          sigmoid(MLP(avgpool x) + MLP(maxpool x)) (one shared MLP), then spatial gate
          sigmoid(conv7x7([mean_c x, max_c x])) on the channel-gated map.

Global pools are ``mean``/``amax`` over H, W: they trace to the same ONNX graph at every input size.
"""
from __future__ import annotations

import torch
from torch import nn

from models.registry import MODULES
from utils.errors import UserError


def hidden_width(c: int, reduction: int) -> int:
    """Bottleneck width of a gate's MLP: c // reduction, at least 1 (tiny test widths)."""
    return max(1, int(c) // int(reduction))


@MODULES.register()
class SE(nn.Module):
    """Channel squeeze-and-excitation gate (1x1 convs as the two fully connected layers)."""

    width_args = ()  # output channels = input channels

    def __init__(self, c1: int, reduction: int = 16) -> None:
        super().__init__()
        h = hidden_width(c1, reduction)
        self.fc1 = nn.Conv2d(c1, h, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(h, c1, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel weights, N x C x 1 x 1."""
        return torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@MODULES.register("scSE")
class SCSE(nn.Module):
    """Concurrent spatial and channel SE: the sum of the channel-gated and the pixel-gated maps."""

    width_args = ()

    def __init__(self, c1: int, reduction: int = 16) -> None:
        super().__init__()
        self.cse = SE(c1, reduction)
        self.sse = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse.gate(x) + x * torch.sigmoid(self.sse(x))


@MODULES.register()
class CBAM(nn.Module):
    """Channel attention (shared MLP over avg- and max-pooled descriptors), then spatial attention."""

    width_args = ()

    def __init__(self, c1: int, reduction: int = 16, k: int = 7) -> None:
        super().__init__()
        h = hidden_width(c1, reduction)
        self.mlp = nn.Sequential(nn.Conv2d(c1, h, 1), nn.ReLU(inplace=True), nn.Conv2d(h, c1, 1))
        self.spatial = nn.Conv2d(2, 1, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ca = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        x = x * ca
        desc = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)
        return x * torch.sigmoid(self.spatial(desc))


ATTENTION = {"scse": SCSE, "cbam": CBAM, "se": SE}


def check_attention(kind: str | None, flag: str = "--head-args attention") -> None:
    """Refuse an unknown attention name with one line listing the valid ones."""
    if kind is not None and str(kind).lower() not in (*ATTENTION, "none"):
        raise UserError(f"{flag}={kind}: unknown attention gate; choose from: {', '.join(sorted(ATTENTION))} "
                        f"(or leave it out for none)")


def make_attention(kind: str | None, c: int) -> nn.Module | None:
    """The gate named ``kind`` for ``c`` channels, or None when ``kind`` is None / 'none'."""
    if kind is None or str(kind).lower() == "none":
        return None
    check_attention(kind)
    return ATTENTION[str(kind).lower()](c)
