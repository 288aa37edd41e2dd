"""Position-sensitive attention (C2PSA, YOLO11's stride-32 self-attention block).

Layout after the published YOLO11 so backbone parameter counts match it exactly:

* ``PSAttention(c, heads)``: one 1x1 conv gives per head a query and key of ``head_dim / 2`` channels and a
  value of ``head_dim`` channels; softmax(q^T k / sqrt(key_dim)) over all H*W positions mixes the values,
  plus a depthwise 3x3 positional encoding of the values, then a 1x1 projection.
* ``PSABlock``: x + attention(x), then x + FFN(x) (1x1 to 2c, 1x1 back).
* ``C2PSA(c1, c2, n)``: split a 1x1 conv's output in two halves, run ``n`` PSABlocks on one, concat, 1x1.

Attention over every position is quadratic in H*W: this block belongs at stride 32 only (1/1024 of the
pixels), as in YOLO11.
"""
from __future__ import annotations

import torch
from torch import nn

from models.conv import Conv
from models.registry import MODULES


class PSAttention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, with a conv positional encoding."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = torch.softmax((q.transpose(-2, -1) @ k) * self.scale, dim=-1)  # b, heads, hw, hw
        y = (v @ attn.transpose(-2, -1)).reshape(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(y)


class PSABlock(nn.Module):
    """Residual attention then residual feed-forward."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True) -> None:
        super().__init__()
        self.attn = PSAttention(c, num_heads, attn_ratio)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


@MODULES.register()
class C2PSA(nn.Module):
    """CSP wrapper around ``n`` PSABlocks (64 channels per head); output channels equal the input's."""

    repeat_arg = True

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        if c1 != c2:
            raise ValueError(f"C2PSA keeps its width: input {c1} channels, asked for {c2}")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(1, self.c // 64)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))
