"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Rows are ground truth, columns predictions. Ignored pixels never enter the matrix. A class whose
union (ground truth + predicted pixels) is empty over the split has IoU/Dice NaN, a class with no
ground-truth pixels has accuracy NaN, and NaNs are left out of the means.

How much a split's mIoU would move with other images of the same kind: ``bootstrap_miou`` resamples the
images (with replacement) and recomputes the split-level mIoU from their summed matrices, the same
statistic as above; ``paired_bootstrap_miou`` does it for two models on the same resampled images, whose
difference is much tighter than two separate intervals suggest (the images that are hard are hard for both).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


class ConfusionMatrix:
    """nc x nc int64 confusion matrix filled with one vectorised bincount per update."""

    def __init__(self, nc: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.nc, self.ignore_index = nc, ignore_index
        self.mat = torch.zeros(nc, nc, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add predicted class ids ``pred`` against ``target`` (same shape; ignore_index skipped); returns the
        matrix of this update alone."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        t, p = target.reshape(-1).to(self.mat.device), pred.reshape(-1).to(self.mat.device)
        keep = (t != self.ignore_index) & (t >= 0) & (t < self.nc)
        idx = t[keep].long() * self.nc + p[keep].long()
        m = torch.bincount(idx, minlength=self.nc**2).reshape(self.nc, self.nc)
        self.mat += m
        return m

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sum the matrix over distributed ranks (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    def compute(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Per-class and mean metrics (see module docstring)."""
        return metrics_from_confusion(self.mat.cpu(), names)


def _nanmean(values: torch.Tensor) -> float:
    v = values[~torch.isnan(values)]
    return float(v.mean()) if v.numel() else float("nan")


def class_iou(mat: torch.Tensor) -> torch.Tensor:
    """Per-class IoU of one matrix (C, C) or a stack of them (..., C, C); NaN where a class's union is empty."""
    m = mat.double()
    tp = m.diagonal(dim1=-2, dim2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def metrics_from_confusion(mat: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, pixel_acc, mean_acc, mDice and per_class {name: {iou, acc, dice, pixels}} from ``mat``."""
    m = mat.double()
    tp = m.diag()
    gt, pr = m.sum(1), m.sum(0)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = class_iou(m)
    dice = torch.where(gt + pr > 0, 2 * tp / (gt + pr).clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = m.sum()
    names = list(names) if names is not None else [str(i) for i in range(mat.shape[0])]
    return {
        "mIoU": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": _nanmean(acc),
        "mDice": _nanmean(dice),
        "per_class": {n: {"iou": float(iou[i]), "acc": float(acc[i]), "dice": float(dice[i]), "pixels": int(gt[i])}
                      for i, n in enumerate(names)},
    }


def _resampled_mious(per_image: Sequence[torch.Tensor], resamples: int, seed: int,
                     chunk: int = 256) -> list[torch.Tensor]:
    """mIoU of each model over ``resamples`` bootstrap draws of the images, the same draws for every model.

    ``per_image``: one (N, C, C) stack of per-image matrices per model, images in the same order.
    """
    n = per_image[0].shape[0]
    if n == 0 or any(p.shape != per_image[0].shape for p in per_image):
        raise ValueError(f"per-image matrices must be non-empty and of one shape, got {[tuple(p.shape) for p in per_image]}")
    flat = [p.reshape(n, -1).double() for p in per_image]
    c = per_image[0].shape[-1]
    g = torch.Generator().manual_seed(seed)
    out: list[list[torch.Tensor]] = [[] for _ in per_image]
    for start in range(0, resamples, chunk):  # bounded memory: chunk x N weights at a time
        b = min(chunk, resamples - start)
        draws = torch.randint(n, (b, n), generator=g)
        weights = torch.zeros(b, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(b, n, dtype=torch.float64))
        for k, f in enumerate(flat):
            iou = class_iou((weights @ f).reshape(b, c, c))
            out[k].append(iou.nanmean(-1))  # classes absent from a draw leave its mean, as for the full split
    return [torch.cat(v) for v in out]


def _bounds(values: torch.Tensor, level: float) -> tuple[float, float]:
    # a draw of only fully ignored images has no mIoU (NaN): it is left out, not allowed to void the interval
    tail = (1.0 - level) / 2
    q = torch.nanquantile(values, torch.tensor([tail, 1.0 - tail], dtype=values.dtype))
    return float(q[0]), float(q[1])


def _check_bootstrap(resamples: int, level: float) -> None:
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap needs resamples >= 1 and 0 < level < 1, got {resamples} and {level}")


def bootstrap_miou(per_image: torch.Tensor, resamples: int = 1000, level: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval of the split's mIoU from its (N, C, C) per-image matrices."""
    _check_bootstrap(resamples, level)
    (vals,) = _resampled_mious([per_image], resamples, seed)
    lo, hi = _bounds(vals, level)
    return {"mIoU": _nanmean(class_iou(per_image.sum(0))), "lo": lo, "hi": hi, "level": level,
            "resamples": resamples, "images": int(per_image.shape[0])}


def paired_bootstrap_miou(per_image_a: torch.Tensor, per_image_b: torch.Tensor, resamples: int = 1000,
                          level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """mIoU of model A minus model B on the same images, with a paired percentile bootstrap interval and the
    share of draws in which A scores higher (``a_ahead``; ties count for neither)."""
    _check_bootstrap(resamples, level)
    va, vb = _resampled_mious([per_image_a, per_image_b], resamples, seed)
    diff = va - vb
    lo, hi = _bounds(diff, level)
    a, b = _nanmean(class_iou(per_image_a.sum(0))), _nanmean(class_iou(per_image_b.sum(0)))
    return {"mIoU_a": a, "mIoU_b": b, "diff": a - b, "lo": lo, "hi": hi, "a_ahead": float((diff > 0).double().mean()),
            "level": level, "resamples": resamples, "images": int(per_image_a.shape[0])}


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Per-class table (class, pixels, IoU, Acc, Dice) and a summary line."""

    def f(v: float) -> str:
        return "   nan" if math.isnan(v) else f"{v:6.4f}"

    rows = [f"{'class':<20} {'pixels':>12} {'IoU':>7} {'Acc':>7} {'Dice':>7}"]
    for name, c in metrics["per_class"].items():
        rows.append(f"{name:<20} {c['pixels']:>12,} {f(c['iou']):>7} {f(c['acc']):>7} {f(c['dice']):>7}")
    rows.append(f"{'all':<20} {sum(c['pixels'] for c in metrics['per_class'].values()):>12,} "
                f"{f(metrics['mIoU']):>7} {f(metrics['mean_acc']):>7} {f(metrics['mDice']):>7}")
    rows.append(f"mIoU {f(metrics['mIoU']).strip()}  pixel_acc {f(metrics['pixel_acc']).strip()}  "
                f"mean_acc {f(metrics['mean_acc']).strip()}  mDice {f(metrics['mDice']).strip()}")
    return "\n".join(rows)
