"""``ocr``: object-contextual representations (Yuan et al. 2020, "Object-Contextual Representations for
Semantic Segmentation").

1. Pixel representations: the levels at stride >= 8 resized to the stride-8 one, concatenated, 3x3 conv.
2. Soft object regions: an auxiliary classifier on them (its own output, ``ocr_aux``, supervised with the
   main loss at weight ``aux_weight``, 0.4 as in the paper).
3. Object region representations: per class, the softmax-over-pixels weighted sum of pixel features.
4. Pixel-region relation: scaled dot-product attention of each pixel (query) over the K regions (keys,
   values); the object-contextual map is concatenated with the pixel map and fused, then classified.

Attention is over K = nc regions, not over pixels, so memory is linear in the image size (unlike
DANet-style stride-8 self-attention).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.contract import Head
from models.conv import ConvBNReLU
from models.heads.common import upsample_like
from models.heads.lraspp import nearest_level
from models.registry import HEADS

AUX_NAME = "ocr_aux"


class ObjectContext(nn.Module):
    """Pixel-region attention: pixels (N, C, H, W) attend to K region vectors (N, C, K)."""

    def __init__(self, c: int, key: int) -> None:
        super().__init__()
        self.query = nn.Sequential(ConvBNReLU(c, key, 1), ConvBNReLU(key, key, 1))
        self.key = nn.Sequential(nn.Conv1d(c, key, 1), nn.ReLU(inplace=True), nn.Conv1d(key, key, 1), nn.ReLU(inplace=True))
        self.value = nn.Sequential(nn.Conv1d(c, key, 1), nn.ReLU(inplace=True))
        self.up = ConvBNReLU(key, c, 1)
        self.scale = key ** -0.5

    def forward(self, x: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        q = self.query(x).flatten(2)  # N, key, HW
        k, v = self.key(regions), self.value(regions)  # N, key, K
        sim = torch.softmax(torch.einsum("nch,nck->nhk", q, k) * self.scale, dim=-1)  # N, HW, K
        ctx = torch.einsum("nhk,nck->nch", sim, v).reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])
        return self.up(ctx)


@HEADS.register("ocr")
class OCRHead(Head):
    """OCR head; ``forward`` returns {"out": logits, "ocr_aux": soft-region logits}, both at stride 8."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 256,
                 key_width: int = 128, min_stride: int = 8, aux_weight: float = 0.4, dropout: float = 0.1) -> None:
        super().__init__()
        strides = list(strides)
        self.base = nearest_level(strides, min_stride)
        self.levels = list(range(self.base, len(strides)))
        self.pixels = ConvBNReLU(sum(channels[i] for i in self.levels), width, 3)
        self.aux = nn.Sequential(ConvBNReLU(width, width, 1), nn.Conv2d(width, nc, 1))
        self.context = ObjectContext(width, key_width)
        self.fuse = nn.Sequential(ConvBNReLU(2 * width, width, 1), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(width, nc, 1)
        self.aux_weights = {AUX_NAME: float(aux_weight)}
        self.out_stride = strides[self.base]

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        ref = features[self.base]
        x = self.pixels(torch.cat([ref] + [upsample_like(features[i], ref) for i in self.levels[1:]], 1))
        aux = self.aux(x)
        weights = torch.softmax(aux.flatten(2), dim=-1)  # N, K, HW: each region's distribution over pixels
        regions = torch.einsum("nkh,nch->nck", weights, x.flatten(2))  # N, C, K
        out = self.classifier(self.fuse(torch.cat((self.context(x, regions), x), 1)))
        return {"out": out, AUX_NAME: aux}
