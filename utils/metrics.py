"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Rows are ground truth, columns predictions. Ignored pixels never enter the matrix. A class whose
union (ground truth + predicted pixels) is empty over the split has IoU/Dice NaN, a class with no
ground-truth pixels has accuracy NaN, and NaNs are left out of the means.
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

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted class ids ``pred`` against ``target`` (same shape; ignore_index skipped)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        t, p = target.reshape(-1).to(self.mat.device), pred.reshape(-1).to(self.mat.device)
        keep = (t != self.ignore_index) & (t >= 0) & (t < self.nc)
        idx = t[keep].long() * self.nc + p[keep].long()
        self.mat += torch.bincount(idx, minlength=self.nc**2).reshape(self.nc, self.nc)

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


def metrics_from_confusion(mat: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, pixel_acc, mean_acc, mDice and per_class {name: {iou, acc, dice, pixels}} from ``mat``."""
    m = mat.double()
    tp = m.diag()
    gt, pr = m.sum(1), m.sum(0)
    union = gt + pr - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
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
