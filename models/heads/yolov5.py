"""``yolov5``: YOLOv5's top-down path of Conv / Upsample / Concat / C3 (stride 8, or 4)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.attention import make_attention
from models.blocks import C3
from models.contract import Head, select_levels
from models.conv import Concat, Conv
from models.heads.common import level_width
from models.registry import HEADS


@HEADS.register("yolov5")
class YOLOv5Head(Head):
    """YOLOv5's top-down path, then a classifier: per finer level, 1x1 Conv -> Upsample -> Concat -> C3.

    As in YOLOv5's head, the 1x1 Conv narrows the coarse map to the next level's width before it is
    upsampled and concatenated with the backbone level, and C3 (``depth`` bottlenecks, no shortcut)
    fuses them. Widths: ``width`` at stride 8, doubled per coarser level up to ``max_width``.
    ``min_stride=4`` adds one more level. ``attention`` (scse, cbam) gates every C3 output.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 128,
                 min_stride: int = 8, depth: int = 1, max_width: int = 512, dropout: float = 0.1,
                 attention: str | None = None) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        widths = [level_width(strides[i], width, 8, max_width) for i in self.levels]
        reduce, up, csp, gates = [], [], [], []
        c = channels[self.levels[-1]]
        for j in range(len(self.levels) - 2, -1, -1):
            i, coarse = self.levels[j], self.levels[j + 1]
            reduce.append(Conv(c, widths[j], 1, 1))
            up.append(nn.Upsample(scale_factor=strides[coarse] // strides[i], mode="nearest"))
            csp.append(C3(widths[j] + channels[i], widths[j], depth, False))
            gates.append(make_attention(attention, widths[j]) or nn.Identity())
            c = widths[j]
        self.reduce, self.up, self.csp = nn.ModuleList(reduce), nn.ModuleList(up), nn.ModuleList(csp)
        self.gates = nn.ModuleList(gates)
        self.concat = Concat(1)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, nc, 1)
        self.out_stride = strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[self.levels[-1]]
        for reduce, up, csp, gate, i in zip(self.reduce, self.up, self.csp, self.gates, reversed(self.levels[:-1])):
            skip = features[i]
            # the model pads its input to a multiple of the largest stride, so the sizes always agree
            x = up(reduce(x))
            x = gate(csp(self.concat([x, skip])))
        return self.classifier(self.drop(x))
