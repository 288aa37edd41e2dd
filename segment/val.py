"""Validate a checkpoint (.pt) or export (.onnx) on a dataset split (the loop itself: segment/evaluate.py).

Usage:
    python segment/val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml
    python segment/val.py --weights best.pt --data data/camvid.yaml --split test --img-size 360 480
    python segment/val.py --weights best.pt --tta --slide 256 256
    python segment/val.py --weights best.pt --bootstrap 1000        # + a 95% interval for mIoU
    python segment/val.py --weights a.pt --compare b.pt             # is a better than b on these images?
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment.common import add_common_flags, cli_entry, parse_img_size, setup_runtime
from segment.evaluate import EvalResult, eval_loader, evaluate  # noqa: F401 - re-exported for callers of val
from segment.inference import Backend, TorchBackend, check_backend_config, inference_config, load_backend
from utils.dataconfig import load_data_config
from utils.errors import UserError
from utils.files import atomic_write_text, run_dir
from utils.metrics import bootstrap_miou, format_metrics_table, paired_bootstrap_miou
from utils.plots import plot_confusion
from utils.torch_utils import count_params, gflops, select_device


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    """--slide / --overlap / --slide-scale / --tta / --tta-scales / --no-flip (val.py and predict.py)."""
    p.add_argument("--slide", type=int, nargs="+", default=None, metavar="H",
                   help="sliding-window inference at native resolution with windows H [W] (batch: --batch-size)")
    p.add_argument("--overlap", type=float, default=1 / 3, help="fraction of a window shared with its neighbour")
    p.add_argument("--slide-scale", type=float, default=1.0, help="rescale images by this factor before sliding")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average probabilities over "
                   "--tta-scales and a horizontal flip")
    p.add_argument("--tta-scales", type=float, nargs="+", default=[0.75, 1.0, 1.25])
    p.add_argument("--no-flip", action="store_true", help="TTA without the horizontal flip")


def summarise(res: EvalResult) -> dict[str, Any]:
    """The metrics of metrics.json: means plus per-class IoU / accuracy / Dice."""
    out: dict[str, Any] = {k: res.metrics[k] for k in ("mIoU", "pixel_acc", "mean_acc", "mDice")}
    out["per_class"] = {n: {k: c[k] for k in ("iou", "acc", "dice")} for n, c in res.metrics["per_class"].items()}
    return out


def input_size(backend: Backend, asked: list[int] | None) -> tuple[int, int]:
    """The size a backend is run at: the one asked for, else its checkpoint's, else a static graph's own."""
    fixed = tuple(backend.fixed_size) if backend.fixed_size else None
    return parse_img_size(asked or backend.meta.get("img_size") or fixed)


def report_interval(res: EvalResult, resamples: int) -> dict[str, Any]:
    """Print and return the bootstrap interval of ``res``'s mIoU (its per-image matrices resampled)."""
    if res.per_image is None:
        raise RuntimeError("report_interval needs evaluate(..., per_image=True)")
    b = bootstrap_miou(res.per_image, resamples)
    print(f"mIoU {b['mIoU']:.4f}, {b['level']:.0%} bootstrap interval {b['lo']:.4f}-{b['hi']:.4f} "
          f"({resamples} resamples of the {b['images']} images)")
    return b


def report_comparison(mine: EvalResult, theirs: EvalResult, resamples: int, weights: str, model: str | None,
                      size: tuple[int, int], which: str) -> dict[str, Any]:
    """Print and return --weights minus --compare on the same images, with a paired bootstrap interval."""
    if mine.per_image is None or theirs.per_image is None:
        raise RuntimeError("report_comparison needs evaluate(..., per_image=True) for both models")
    if mine.num_images != theirs.num_images:  # same split, same check: only a changed dataset could do this
        raise UserError(f"--compare {weights}: scored {theirs.num_images} images against {mine.num_images}; "
                        "the dataset changed during the run")
    c = paired_bootstrap_miou(mine.per_image, theirs.per_image, resamples)
    print(f"--compare {weights} ({model or 'model'} at {size[0]}x{size[1]}, {which}): mIoU {c['mIoU_b']:.4f}\n"
          f"difference {c['mIoU_a']:.4f} - {c['mIoU_b']:.4f} = {c['diff']:+.4f}, {c['level']:.0%} paired bootstrap "
          f"interval {c['lo']:+.4f} to {c['hi']:+.4f}; --weights ahead in {c['a_ahead']:.1%} of {resamples} "
          f"resamples of the {c['images']} images")
    return {"weights": str(weights), "model": model, "img_size": list(size), "pass": which, **c}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validate a segmentation checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (.pt) written by train.py, or an .onnx from export.py")
    p.add_argument("--data", default=None, help="dataset YAML (default: the one the checkpoint was trained on)")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="H [W] (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--project", default="runs/val")
    p.add_argument("--name", default="exp")
    p.add_argument("--half", action="store_true", help="fp16 autocast on CUDA")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="resample the images N times for a 95%% interval of mIoU (0: off; 1000 is plenty)")
    p.add_argument("--compare", default=None, metavar="WEIGHTS",
                   help="also score this .pt/.onnx on the same images: the mIoU difference with a paired "
                        "bootstrap interval (--bootstrap N resamples, 1000 if not given)")
    p.add_argument("--compare-img-size", type=int, nargs="+", default=None, metavar="SIZE",
                   help="H [W] for --compare (default: its own size); --weights and --compare may be one file")
    add_inference_flags(p)
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

    check_numeric(args)  # --batch-size, --workers, --img-size, --bootstrap: one line before anything runs
    if args.compare_img_size is not None and not args.compare:
        raise UserError("--compare-img-size: only with --compare WEIGHTS (the model to score beside --weights)")
    if args.compare_img_size is not None and args.slide:  # sliding windows run both at native resolution
        raise UserError("--compare-img-size: not with --slide, which runs both models on native-resolution "
                        "windows; leave it out to compare the two models on the same windows")
    device = select_device(args.device)
    infer = inference_config(args.slide, args.overlap, args.slide_scale, args.tta, args.tta_scales, args.no_flip,
                             args.batch_size)
    # --data first: its names stand in for those of an ONNX file exported elsewhere, without our metadata
    data = load_data_config(args.data) if args.data else None
    backend = load_backend(args.weights, device, names=data.names if data else None, amp=args.half)
    meta = backend.meta
    if data is None:
        if not meta.get("data"):
            raise UserError("--data is required: the weights do not record their dataset")
        data = load_data_config(meta["data"])
    if data.nc != meta["nc"]:
        raise UserError(f"{args.weights}: model has {meta['nc']} classes but {data.yaml_file} has {data.nc}")
    img_size = input_size(backend, args.img_size)
    check_backend_config(backend, infer, img_size)
    other, other_size = None, None
    if args.compare:
        other = load_backend(args.compare, device, names=data.names, amp=args.half, flag="--compare")
        if other.meta["nc"] != data.nc:
            raise UserError(f"--compare {args.compare}: model has {other.meta['nc']} classes but {data.yaml_file} "
                            f"has {data.nc}")
        other_size = input_size(other, args.compare_img_size)
        check_backend_config(other, infer, other_size, flag="--compare-img-size")
    resamples = args.bootstrap or (1000 if other is not None else 0)

    def loader_at(size: tuple[int, int]) -> Any:
        if infer.slide:  # native resolution: images of different sizes cannot share a batch
            return eval_loader(data, args.split, None, 1, args.workers, args.skip_bad)
        return eval_loader(data, args.split, size, args.batch_size, args.workers, args.skip_bad)

    loader = loader_at(img_size)
    same = other is None or infer.slide or other_size == img_size
    other_loader = loader if same else loader_at(other_size)
    save_dir = run_dir(args.project, args.name, args.exist_ok)  # after the data check: a bad split writes nothing
    single = replace(infer, tta=False)
    res = evaluate(backend, loader, data, device, desc=f"{args.split}", infer=single, per_image=resamples > 0)
    print(format_metrics_table(res.metrics))
    out = summarise(res)
    if resamples:
        out["bootstrap"] = report_interval(res, resamples)
    tta_res = None
    if infer.tta:
        tta_res = evaluate(backend, loader, data, device, desc=f"{args.split} TTA", infer=infer,
                           per_image=resamples > 0)
        print(f"TTA ({infer.describe()}):")
        print(format_metrics_table(tta_res.metrics))
        out["tta"] = summarise(tta_res)
        if resamples:
            out["tta"]["bootstrap"] = report_interval(tta_res, resamples)
        out["tta"]["settings"] = {"scales": list(infer.scales), "flip": infer.flip}
        out["tta"]["speed_ms"] = tta_res.speed_ms
        print(f"mIoU: single-scale {res.metrics['mIoU']:.4f} | TTA {tta_res.metrics['mIoU']:.4f} "
              f"({tta_res.metrics['mIoU'] - res.metrics['mIoU']:+.4f})")
    if other is not None and other_size is not None:
        final, final_cfg = (tta_res, infer) if tta_res is not None else (res, single)
        res_other = evaluate(other, other_loader, data, device, desc=f"{args.split} --compare", infer=final_cfg,
                             per_image=True)
        out["compare"] = report_comparison(final, res_other, resamples, args.compare, other.meta.get("model"),
                                           other_size, "TTA" if tta_res is not None else "single-scale")
    model = backend.model if isinstance(backend, TorchBackend) else None
    out.update(num_images=res.num_images, img_size=list(img_size), inference=infer.describe(),
               params=count_params(model) if model is not None else None,
               gflops=gflops(model, img_size) if model is not None else None, speed_ms=res.speed_ms, split=args.split,
               weights=str(args.weights), model=meta.get("model"), data=str(data.yaml_file))
    if infer.slide:
        out["slide"] = {"window": list(infer.slide), "overlap": infer.overlap, "scale": infer.slide_scale}
    atomic_write_text(save_dir / "metrics.json", json.dumps(json_safe(out), indent=2, allow_nan=False))
    plot_confusion((tta_res or res).confusion, data.names, save_dir / "confusion_matrix.png")
    # one line per pass: the single-scale pass is described without TTA, whose cost is its own line
    for label, r, cfg in (("Speed", res, single), ("TTA speed", tta_res, infer)):
        if r is None:
            continue
        s = r.speed_ms
        where = cfg.describe() if cfg.slide else f"{img_size[0]}x{img_size[1]}" + (f", {cfg.describe()}" if cfg.tta else "")
        print(f"{label}: {s['pre']:.1f} ms pre, {s['inference']:.1f} ms inference, {s['post']:.1f} ms post per "
              f"image at {where} on {device}")
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
