"""Validate a checkpoint on a dataset split; also the evaluation code path used during training.

Usage:
    python segment/val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml
    python segment/val.py --weights best.pt --data data/camvid.yaml --split test --img-size 360 480
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from segment.common import add_common_flags, cli_entry, load_model, parse_img_size, preprocess, setup_runtime
from utils.augment import val_transform
from utils.dataconfig import DataConfig, load_data_config
from utils.dataset_check import preflight
from utils.datasets import SegDataset, build_loader
from utils.errors import UserError
from utils.files import atomic_write_text, run_dir
from utils.metrics import ConfusionMatrix, format_metrics_table
from utils.plots import default_palette, plot_confusion
from utils.torch_utils import count_params, gflops, select_device


@dataclass
class EvalResult:
    """Metrics of one pass over a split, plus what plots need."""

    metrics: dict[str, Any]
    confusion: torch.Tensor
    loss: float = float("nan")
    num_images: int = 0
    speed_ms: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, data: DataConfig, device: torch.device,
             loss_fn: nn.Module | None = None, amp: bool = False, keep_examples: int = 0,
             desc: str = "val", progress: bool = True) -> EvalResult:
    """Run ``model`` over ``loader`` and score it against the original-resolution masks.

    Logits are bilinearly resized from the evaluation size back to each mask's own size before the
    argmax, so the numbers are those of the dataset's native resolution.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(data.nc, data.ignore_index, device)
    t_pre = t_inf = t_post = 0.0
    loss_sum, loss_n, n_img = 0.0, 0, 0
    examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for images, masks, _ in tqdm(loader, desc=desc, leave=False, disable=not progress, file=sys.stdout):
        t0 = time.perf_counter()
        x = preprocess(images, device)
        _sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(x)
        _sync(device)
        t2 = time.perf_counter()
        for i, target in enumerate(masks):
            target = target.to(device, non_blocking=True)
            li = F.interpolate(logits[i: i + 1].float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = li.argmax(1)[0]
            cm.update(pred, target)
            if loss_fn is not None:
                loss_sum += float(loss_fn(li, target[None])[0])
                loss_n += 1
            if len(examples) < keep_examples:
                examples.append((images[i], target.cpu(), pred.cpu()))
        _sync(device)
        t3 = time.perf_counter()
        t_pre, t_inf, t_post = t_pre + t1 - t0, t_inf + t2 - t1, t_post + t3 - t2
        n_img += len(masks)
    cm.all_reduce()
    model.train(was_training)
    per = 1000.0 / max(n_img, 1)
    return EvalResult(cm.compute(data.names), cm.mat.cpu(), loss_sum / loss_n if loss_n else float("nan"), n_img,
                      {"pre": t_pre * per, "inference": t_inf * per, "post": t_post * per}, examples)


def eval_loader(data: DataConfig, split: str, img_size: tuple[int, int], batch_size: int, workers: int,
                skip_bad: bool = False, cache: str | None = None, log=print, rank: int = 0, world_size: int = 1
                ) -> torch.utils.data.DataLoader:
    """Checked, un-augmented loader over ``split`` (images resized to ``img_size``, masks original)."""
    report = preflight(data, [split], skip_bad=skip_bad, workers=max(workers, 1), log=log)[split]
    ds = SegDataset(report.items, data.mask_spec, val_transform(img_size), train=False, cache=cache)
    return build_loader(ds, batch_size, workers, shuffle=False, rank=rank, world_size=world_size)


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validate a segmentation checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (.pt) written by train.py")
    p.add_argument("--data", default=None, help="dataset YAML (default: the one the checkpoint was trained on)")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="H [W] (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--project", default="runs/val")
    p.add_argument("--name", default="exp")
    p.add_argument("--half", action="store_true", help="fp16 autocast on CUDA")
    add_common_flags(p)
    return p


def run(**kwargs: Any) -> dict[str, Any]:
    """Validate; returns the metrics dict that is also written to ``<save_dir>/metrics.json``."""
    args = build_parser().parse_args(["--weights", str(kwargs.pop("weights"))])
    for k, v in kwargs.items():
        if not hasattr(args, k):
            raise TypeError(f"val.run() got an unknown argument '{k}'")
        setattr(args, k, v)
    from segment.config import check_numeric

    check_numeric(args)  # --batch-size, --workers, --img-size: one line before anything runs
    device = select_device(args.device)
    model, ckpt = load_model(args.weights, device)
    data_arg = args.data or ckpt.get("data")
    if not data_arg:
        raise UserError("--data is required: the checkpoint does not record its dataset")
    data = load_data_config(data_arg)
    if data.nc != ckpt["model_cfg"]["nc"]:
        raise UserError(f"{args.weights}: model has {ckpt['model_cfg']['nc']} classes but {data.yaml_file} has {data.nc}")
    img_size = parse_img_size(args.img_size or ckpt.get("img_size"))
    loader = eval_loader(data, args.split, img_size, args.batch_size, args.workers, args.skip_bad)
    save_dir = run_dir(args.project, args.name, args.exist_ok)  # after the data check: a bad split writes nothing
    res = evaluate(model, loader, data, device, amp=args.half, desc=f"{args.split}")
    print(format_metrics_table(res.metrics))
    out = {k: res.metrics[k] for k in ("mIoU", "pixel_acc", "mean_acc", "mDice")}
    out["per_class"] = {n: {k: c[k] for k in ("iou", "acc", "dice")} for n, c in res.metrics["per_class"].items()}
    out.update(num_images=res.num_images, img_size=list(img_size), params=count_params(model),
               gflops=gflops(model, img_size), speed_ms=res.speed_ms, split=args.split,
               weights=str(args.weights), data=str(data.yaml_file))
    atomic_write_text(save_dir / "metrics.json", json.dumps(json_safe(out), indent=2, allow_nan=False))
    plot_confusion(res.confusion, data.names, save_dir / "confusion_matrix.png")
    s = res.speed_ms
    print(f"Speed: {s['pre']:.1f} ms pre, {s['inference']:.1f} ms inference, {s['post']:.1f} ms post per image "
          f"at {img_size[0]}x{img_size[1]} on {device}")
    print(f"Results saved to {save_dir}")
    out["save_dir"] = str(save_dir)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""

    def _main(a: list[str] | None) -> dict[str, Any]:
        args = build_parser().parse_args(a)
        setup_runtime()
        return run(**vars(args))

    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
