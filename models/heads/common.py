"""Helpers shared by the heads: resizing to a reference map and per-stride decoder widths."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref``.

    Unconditional on purpose: a shape test here would be frozen into a traced or exported graph.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to ``ref``'s size, always (no Python branch, so a traced or exported graph
    resizes at every input size; at equal sizes bilinear sampling is the identity)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def level_width(stride: int, width: int, ref_stride: int, max_width: int) -> int:
    """Decoder width at ``stride``: ``width`` at ``ref_stride``, doubling per coarser level, capped."""
    return max(8, min(max_width, width * stride // ref_stride))
