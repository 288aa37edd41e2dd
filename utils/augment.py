"""Paired image + mask pipelines (albumentations). Masks are always resized nearest and padded with
the ignore index; images stay uint8 RGB (normalisation happens inside the model)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation strengths (CLI: --scale-range, --fliplr, --color-jitter, --crop)."""

    scale_min: float = 0.5
    scale_max: float = 2.0
    fliplr: float = 0.5
    color_jitter: float = 0.3
    crop: tuple[int, int] | None = None  # (H, W) training crop; None: the image size itself


def train_transform(img_size: tuple[int, int], ignore_index: int, aug: AugmentConfig = AugmentConfig()) -> A.Compose:
    """Resize to ``img_size`` (H, W), random scale, pad with ignore/crop to ``aug.crop`` (default: back to
    ``img_size``), flip, colour jitter.

    A crop smaller than the image size trains on patches at the scale the model will see at inference
    (validation resizes to ``img_size``), so a step costs crop area / image area of a full one.
    """
    h, w = img_size
    steps: list[A.BasicTransform] = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    if aug.crop is not None:
        h, w = aug.crop
    if (aug.scale_min, aug.scale_max) != (1.0, 1.0):
        steps.append(A.RandomScale(scale_limit=(aug.scale_min - 1.0, aug.scale_max - 1.0), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    steps += [
        A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index,
                      position="random"),
        A.RandomCrop(h, w),
    ]
    if aug.fliplr > 0:
        steps.append(A.HorizontalFlip(p=aug.fliplr))
    if aug.color_jitter > 0:
        j = aug.color_jitter
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 6, 0.5), p=0.8))
    return A.Compose(steps, seed=0)


def val_transform(img_size: tuple[int, int]) -> A.Compose:
    """Resize the image to ``img_size`` (H, W). The mask is left at its original size (metrics use it)."""
    h, w = img_size
    return A.Compose([A.Resize(h, w, interpolation=cv2.INTER_LINEAR)], seed=0)


def reseed(transform: A.Compose, seed: int) -> None:
    """Make the next call of ``transform`` a pure function of ``seed``.

    The Compose and all its steps draw from one stream seeded with ``seed``, one after the other:
    albumentations' own ``set_random_seed`` would give every step a generator of its own with the same
    seed (tying e.g. the flip decision to the scale draw), and a generator per step costs more than a
    96x96 image's augmentation itself.
    """
    rng, py = np.random.default_rng(seed), random.Random(seed)
    for t in (transform, *transform.transforms):
        t.seed, t.random_generator, t.py_random = seed, rng, py
