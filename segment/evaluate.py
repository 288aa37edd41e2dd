"""Scoring a model on a dataset split: the evaluation loop used by val.py and the trainer's validation.

Predictions come from the one inference path (segment/inference.py): logits or TTA probabilities are
resized to each mask's original size before the argmax, so the numbers are those of the native resolution.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import torch
from torch import nn
from tqdm import tqdm

from segment.inference import Backend, InferenceConfig, as_backend, combine, infer_members
from segment.common import preprocess
from utils.augment import val_transform
from utils.dataconfig import DataConfig
from utils.dataset_check import preflight
from utils.datasets import SegDataset, build_loader
from utils.distributed import sum_dict
from utils.metrics import ConfusionMatrix


@dataclass
class EvalResult:
    """Metrics of one pass over a split, plus what plots need."""

    metrics: dict[str, Any]
    confusion: torch.Tensor
    loss: float = float("nan")
    num_images: int = 0
    speed_ms: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    per_image: torch.Tensor | None = None  # (N, nc, nc) int32, in loader order, when asked for


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module | Backend, loader: torch.utils.data.DataLoader, data: DataConfig, device: torch.device,
             loss_fn: nn.Module | None = None, amp: bool = False, keep_examples: int = 0,
             desc: str = "val", progress: bool = True, infer: InferenceConfig | None = None,
             per_image: bool = False) -> EvalResult:
    """Run ``model`` (a module or a backend) over ``loader`` and score it against the original-resolution masks.

    Predictions are those of the inference path with ``infer`` (default: whole image): scores are
    resized from the evaluation size back to each mask's own size before the argmax. The loss is
    computed from plain logits only (not for TTA, whose scores are probabilities). ``per_image`` also
    keeps each image's confusion matrix (for bootstrap intervals; this process's images only).
    """
    cfg = infer or InferenceConfig()
    was_training = model.training if isinstance(model, nn.Module) else False
    backend = as_backend(model, amp)
    cm = ConfusionMatrix(data.nc, data.ignore_index, device)
    t_pre = t_inf = t_post = 0.0
    loss_sum, loss_n, n_img = 0.0, 0, 0
    examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    kept: list[torch.Tensor] = []
    for images, masks, _ in tqdm(loader, desc=desc, leave=False, disable=not progress, file=sys.stdout):
        t0 = time.perf_counter()
        x = preprocess(images, device)
        _sync(device)
        t1 = time.perf_counter()
        members = infer_members(backend, x, cfg, strided=True)
        _sync(device)
        t2 = time.perf_counter()
        for i, target in enumerate(masks):
            target = target.to(device, non_blocking=True)
            scores = combine(members, i, target.shape[-2:], probs=cfg.tta)[None]
            pred = scores.argmax(1)[0]
            m = cm.update(pred, target)
            if per_image:
                kept.append(m.to("cpu", torch.int32))
            if loss_fn is not None and not cfg.tta:
                loss_sum += float(loss_fn(scores, target[None])[0])
                loss_n += 1
            if len(examples) < keep_examples:
                examples.append((images[i], target.cpu(), pred.cpu()))
        _sync(device)
        t3 = time.perf_counter()
        t_pre, t_inf, t_post = t_pre + t1 - t0, t_inf + t2 - t1, t_post + t3 - t2
        n_img += len(masks)
    cm.all_reduce()
    if loss_fn is not None:  # the validation loss of every rank's shard
        tot = sum_dict({"sum": loss_sum, "n": float(loss_n)}, device)
        loss_sum, loss_n = tot["sum"], int(tot["n"])
    if isinstance(model, nn.Module):
        model.train(was_training)
    per = 1000.0 / max(n_img, 1)
    return EvalResult(cm.compute(data.names), cm.mat.cpu(), loss_sum / loss_n if loss_n else float("nan"), n_img,
                      {"pre": t_pre * per, "inference": t_inf * per, "post": t_post * per}, examples,
                      torch.stack(kept) if per_image and kept else None)


def eval_loader(data: DataConfig, split: str, img_size: tuple[int, int] | None, batch_size: int, workers: int,
                skip_bad: bool = False, cache: str | None = None, log=print, rank: int = 0, world_size: int = 1
                ) -> torch.utils.data.DataLoader:
    """Checked, un-augmented loader over ``split`` (images resized to ``img_size``, masks original).

    ``img_size=None`` keeps images at their native size (sliding windows); images of different sizes
    cannot share a batch then, so use ``batch_size=1`` unless they all agree.
    """
    report = preflight(data, [split], skip_bad=skip_bad, workers=max(workers, 1), log=log)[split]
    transform = val_transform(img_size) if img_size is not None else A.Compose([], seed=0)
    ds = SegDataset(report.items, data.mask_spec, transform, train=False, cache=cache)
    return build_loader(ds, batch_size, workers, shuffle=False, rank=rank, world_size=world_size)
