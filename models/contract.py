"""The one backbone contract every head is built from.

A backbone maps an image batch to a list of feature maps ordered by stride (finest first) and
declares, before any forward pass, the channels and strides of that list. Heads receive only
``channels`` and ``strides``; they never look at a backbone's name.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from utils.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class of feature extractors.

    Subclasses set ``channels`` and ``strides`` (same length, strides strictly increasing) and the
    normalisation ``mean``/``std`` their weights expect, and implement ``forward(x) -> list[Tensor]``.
    """

    channels: list[int]
    strides: list[int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def can_dilate(self) -> bool:
        """Whether ``dilate`` can lower this backbone's output stride (trading strides for dilation)."""
        return False

    def dilate(self, output_stride: int) -> None:
        """Make the deepest level come out at ``output_stride`` by dilating instead of striding.

        Levels that were coarser then all report ``output_stride`` (strides become non-decreasing).
        The default refuses: only backbones that declare they can (ResNets) override it.
        """
        raise UserError(f"--head-args output_stride={output_stride}: the {self.label()} backbone cannot reach stride "
                        f"{output_stride} by dilation (only ResNets can); use output_stride={max(self.strides)}")

    def label(self) -> str:
        """Short name for messages."""
        return type(self).__name__

    def check_contract(self) -> None:
        """Raise ValueError when the declared channels/strides are inconsistent."""
        if len(self.channels) != len(self.strides) or not self.strides:
            raise ValueError(f"{type(self).__name__}: channels {self.channels} and strides {self.strides} differ in length")
        # equal strides only come from dilation (dilate): the deepest levels then share the output stride
        if any(b < a for a, b in zip(self.strides, self.strides[1:])):
            raise ValueError(f"{type(self).__name__}: strides {self.strides} must be increasing")


class Head(nn.Module):
    """Base class of segmentation heads: ``forward(features) -> logits`` at ``self.out_stride``.

    The model wrapper upsamples the logits to the input size, so a head only needs to report the
    stride of the map it returns.
    """

    out_stride: int

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def select_levels(strides: Sequence[int], min_stride: int, max_stride: int = 1 << 30) -> list[int]:
    """Indices of the contract levels whose stride lies in [min_stride, max_stride]."""
    idx = [i for i, s in enumerate(strides) if min_stride <= s <= max_stride]
    if not idx:
        raise ValueError(f"no backbone level with stride in [{min_stride}, {max_stride}] (have {list(strides)})")
    return idx
