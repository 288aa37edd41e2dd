"""Training speed on this machine, side by side in one run: fp32 vs bf16 autocast, channels-last vs
contiguous, the fused loss against autograd through the reference terms, and the data pipeline with 0/1/2
loader workers.

Part 1 times training steps on random tensors (model forward + loss + backward + AdamW step), so it
measures compute only. Part 2 trains one real epoch through ``segment.train.run`` on a subset of a
dataset (default CamVid) and reads the images/s and the data-wait share the trainer itself logs.

Usage:
    python benchmarks/train_speed.py                       # all parts, CamVid via $SEG_DATASETS_DIR
    python benchmarks/train_speed.py --part steps --models yolov8n --steps 5
    python benchmarks/train_speed.py --part loss --models yolov8n --img-size 288 384 --steps 8
    python benchmarks/train_speed.py --part loader --data data/camvid.yaml --images 96
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from models.model import build_model, model_config
from utils.losses import SegLoss

MODELS = {
    "yolov8n": dict(cfg="models/yolov8n_seg.yaml"),
    "resnet18+unet": dict(backbone="resnet18", head="unet"),
    "mobilenet_v3_large+segment": dict(backbone="mobilenet_v3_large", head="segment"),
}


def _step_setup(name: str, img_size: tuple[int, int], batch: int, channels_last: bool, weight_decay: float,
                nc: int = 11) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """A training-mode model in the given layout, its AdamW, and random images and masks."""
    from segment.trainer import build_optimizer

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_config(nc, **MODELS[name])).train().to(memory_format=fmt)
    opt = build_optimizer(model, "adamw", 1e-3, 0.9, weight_decay)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *img_size, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, nc, (batch, *img_size), generator=g)
    return model, opt, x, y


def step_ms(name: str, img_size: tuple[int, int], batch: int, steps: int, bf16: bool, channels_last: bool,
            nc: int = 11) -> float:
    """Median ms of one training step (random images and masks)."""
    from segment.precision import train_step_times

    model, opt, x, y = _step_setup(name, img_size, batch, channels_last, 0.01, nc)
    loss_fn = SegLoss("ce+dice", 255)
    return statistics.median(train_step_times(model, loss_fn, opt, x, y, (bf16,), steps, warmup=2)[bf16])


def part_steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in args.models:
        row: dict[str, Any] = {"model": name}
        for bf16 in (False, True):
            for cl in (True, False):
                key = f"{'bf16' if bf16 else 'fp32'} {'NHWC' if cl else 'NCHW'}"
                row[key] = step_ms(name, tuple(args.img_size), args.batch_size, args.steps, bf16, cl)
                print(f"  {name:28s} {key}: {row[key]:.0f} ms/step", flush=True)
        rows.append(row)
    return rows


def part_loss(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Whole training steps with the recipe's loss (ohem+dice) fused and through the reference terms,
    alternating step by step (fp32, and bf16 autocast where the CPU has it natively)."""
    from segment.precision import train_step_times
    from utils.torch_utils import cpu_has_native_bf16

    rows = []
    for name in args.models:
        for bf16 in (False, True) if cpu_has_native_bf16() else (False,):
            model, opt, x, y = _step_setup(name, tuple(args.img_size), args.batch_size, True, 0.05)
            losses = {True: SegLoss("ohem+dice", 255, fused=True), False: SegLoss("ohem+dice", 255, fused=False)}
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.steps):  # fused and reference alternate: a slow moment hits both
                for fused, fn in losses.items():
                    times[fused] += train_step_times(model, fn, opt, x, y, (bf16,), 1, warmup=0)[bf16]
            row = {"model": name, "precision": "bf16" if bf16 else "fp32",
                   "fused": statistics.median(times[True][1:]), "reference": statistics.median(times[False][1:])}
            rows.append(row)
            print(f"  {name:28s} {row['precision']}: fused {row['fused']:.0f} ms/step, reference "
                  f"{row['reference']:.0f} ms/step", flush=True)
    return rows


def _subset_yaml(data: str, images: int, val_images: int, tmp: Path) -> Path:
    """A copy of the dataset YAML whose train/val are the first N images (as .txt lists; no file is copied)."""
    from utils.dataconfig import load_data_config
    from utils.dataset_check import preflight
    from utils.yamlio import dump_yaml, load_yaml

    cfg = load_data_config(data)
    spec = load_yaml(cfg.yaml_file)
    reports = preflight(cfg, ["train", "val"], log=lambda *_: None)
    for split, n in (("train", images), ("val", val_images)):
        lst = tmp / f"{split}.txt"
        lst.write_text("\n".join(str(i) for i, _ in reports[split].items[:n]) + "\n", encoding="utf-8")
        spec[split] = str(lst)
    spec["path"] = str(cfg.root)
    out = tmp / "subset.yaml"
    out.write_text(dump_yaml(spec), encoding="utf-8")
    return out


def part_loader(args: argparse.Namespace) -> list[dict[str, Any]]:
    from segment import train
    from utils.yamlio import load_yaml

    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = _subset_yaml(args.data, args.images, 16, tmp)
        # fp32 once, then the precision a run picks on this machine (auto: bf16 only where it is native
        # and faster; forcing bf16 on a CPU without it would time an emulation nobody trains with)
        for precision, workers in [("fp32", 0), ("auto", 0), ("auto", 1), ("auto", 2)]:
            t0 = time.time()
            s = train.run(data=str(data), cfg=MODELS["yolov8n"]["cfg"], img_size=list(args.img_size), epochs=1,
                          batch_size=args.batch_size, workers=workers, precision=precision,
                          project=str(tmp / "runs"), name=f"w{workers}{precision}", cache=args.cache, tb_images=1,
                          warmup_epochs=0, loss="ce+dice")
            with open(Path(s["save_dir"]) / "results.csv", newline="") as f:
                r = list(csv.DictReader(f))[-1]
            chosen = load_yaml(Path(s["save_dir"]) / "args.yaml").get("precision", precision)
            rows.append({"model": "yolov8n", "precision": chosen if precision == "fp32" else f"auto -> {chosen}",
                         "workers": workers, "img_per_s": float(r["train/img_per_s"]),
                         "data_wait": float(r["train/data_wait"]), "command_s": time.time() - t0})
            print(f"  workers {workers} {rows[-1]['precision']}: {rows[-1]['img_per_s']:.2f} img/s, "
                  f"data wait {100 * rows[-1]['data_wait']:.1f}%", flush=True)
    return rows


def markdown(steps: list[dict[str, Any]], loader: list[dict[str, Any]], args: argparse.Namespace,
             loss: list[dict[str, Any]] | None = None) -> str:
    h, w = args.img_size
    lines = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; batch {args.batch_size} at {h}x{w}.", ""]
    if steps:
        keys = [k for k in steps[0] if k != "model"]
        lines += ["| model | " + " | ".join(f"{k} ms/step" for k in keys) + " | bf16 speed-up (NHWC) |",
                  "|---|" + "---:|" * (len(keys) + 1)]
        for r in steps:
            lines.append(f"| {r['model']} | " + " | ".join(f"{r[k]:.0f}" for k in keys)
                         + f" | {r['fp32 NHWC'] / r['bf16 NHWC']:.2f}x |")
        lines.append("")
    if loss:
        lines += ["| model | precision | ohem+dice fused ms/step | through autograd ms/step | speed-up |",
                  "|---|---|---:|---:|---:|"]
        for r in loss:
            lines.append(f"| {r['model']} | {r['precision']} | {r['fused']:.0f} | {r['reference']:.0f} | "
                         f"{r['reference'] / r['fused']:.2f}x |")
        lines.append("")
    if loader:
        lines += ["| model | precision | --workers | train images/s | data wait (share of step time) |",
                  "|---|---|---:|---:|---:|"]
        for r in loader:
            lines.append(f"| {r['model']} | {r['precision']} | {r['workers']} | {r['img_per_s']:.2f} | "
                         f"{100 * r['data_wait']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", "steps", "loss", "loader"], default="all")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--img-size", nargs=2, type=int, default=[360, 480])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting (after 2 warm-up steps)")
    p.add_argument("--data", default="data/camvid.yaml", help="dataset for the loader part")
    p.add_argument("--images", type=int, default=96, help="training images in the loader part's epoch")
    p.add_argument("--cache", default=None, choices=[None, "ram"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args(argv)
    from segment.common import setup_runtime

    setup_runtime(args.threads)
    steps = part_steps(args) if args.part in ("all", "steps") else []
    loss = part_loss(args) if args.part in ("all", "loss") else []
    loader = part_loader(args) if args.part in ("all", "loader") else []
    print(markdown(steps, loader, args, loss))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": steps, "loss": loss, "loader": loader}, indent=2),
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
