"""Train a segmentation model.

Usage:
    python segment/train.py --data data/shapes.yaml --backbone resnet18 --img-size 128 --epochs 12
    python segment/train.py --data data/camvid.yaml --backbone resnet50 --head unet --weights pretrained
    python segment/train.py --data data/camvid.yaml --cfg models/yolov8s_seg.yaml --img-size 360 480
    python segment/train.py --resume                    # continue the most recent run

Config comes in layers: the documented defaults below -> a recipe's preset -> command-line flags.
The resolved configuration is written to the run's args.yaml.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment.common import add_common_flags, cli_entry, setup_runtime


def build_parser(preset: dict[str, Any] | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """All training flags with their defaults; ``preset`` (a recipe's choices) overrides the defaults."""
    p = argparse.ArgumentParser(prog=prog, description="Train a semantic segmentation model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="data/shapes.yaml", help="dataset YAML")
    g.add_argument("--img-size", type=int, nargs="+", default=[640], help="training size: H [W]")
    g.add_argument("--crop", type=int, nargs="+", default=None,
                   help="training crop H [W] taken after resize to --img-size and random scale (default: --img-size)")
    g.add_argument("--val-size", type=int, nargs="+", default=None,
                   help="input size H [W] for validation, the choice of best.pt and the checkpoint's default for "
                        "val/predict/export (default: --img-size); a model trained on native-scale crops can score "
                        "higher on a smaller input, and runs faster there")
    g.add_argument("--cache", default="auto", choices=["auto", "ram", "none"],
                   help="keep decoded images in RAM: auto (when train+val decode to <= 1 GiB and a quarter of free memory), ram, none")
    g.add_argument("--scale-range", type=float, nargs=2, default=[0.5, 2.0], help="random scale range (train)")
    g.add_argument("--fliplr", type=float, default=0.5, help="horizontal flip probability (train)")
    g.add_argument("--color-jitter", type=float, default=0.3, help="brightness/contrast/saturation jitter (train)")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=None, help="registered backbone (default resnet18 when no --cfg)")
    g.add_argument("--head", default=None, help="registered head: segment, unet, yolov5, lraspp, deeplabv3plus, ocr (default: segment, or the YAML's)")
    g.add_argument("--cfg", default=None, help="model YAML: models/backbone/<name>.yaml or a YOLO graph")
    g.add_argument("--head-args", default=None, help="head options, e.g. min_stride=2,width=96 or attention=scse (see models/heads/)")
    g.add_argument("--scale", default=None, help="YOLO graph scale n/s/m/l/x (default: from the file name)")
    g.add_argument("--weights", default="none", help="none | pretrained (ImageNet backbone) | path/to/weights.pt | yolo11n-cls.pt (YOLO graphs)")
    g.add_argument("--aux-weight", type=float, default=0.0, help="auxiliary head loss weight (0 = no aux head)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="epochs (with --time: an upper bound)")
    g.add_argument("--time", type=float, default=None,
                   help="wall-clock budget in hours for the whole command; the LR schedule runs over it")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--loss", default="ce", help="loss spec: ce, ohem, dice, jaccard, focal, tversky; 'ce+dice' or 'ce:1,dice:0.5'")
    g.add_argument("--class-weights", default=None, help="'auto' (from train pixel frequencies) or comma-separated values")
    g.add_argument("--optimizer", default="adamw", choices=["sgd", "adamw"])
    g.add_argument("--lr0", type=float, default=None, help="initial LR (default 0.01 for sgd, 0.001 for adamw)")
    g.add_argument("--lrf", type=float, default=0.01, help="final LR as a fraction of lr0")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / AdamW beta1")
    g.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 for sgd, 0.01 for adamw")
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--cos-lr", action="store_true", help="cosine LR decay (default: poly 0.9)")
    g.add_argument("--grad-clip", type=float, default=10.0, help="max gradient norm (0 = no clipping)")
    g.add_argument("--no-ema", dest="ema", action="store_false", help="validate/save raw weights, not their EMA")
    g.add_argument("--ema-decay", type=float, default=0.9999,
                   help="the EMA of the weights averages over about 1/(1-decay) steps once warmed up")
    g.add_argument("--ema-tau", type=float, default=2000.0,
                   help="steps of the EMA's warm-up: decay_t = decay * (1 - exp(-t / tau))")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: fp16 autocast on CUDA; on a CPU with native bf16, the faster of fp32 and bf16 "
                        "as timed on a few steps of this model before training; else fp32")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="train in fp32 (= --precision fp32)")
    g.add_argument("--nan-patience", type=int, default=10, help="stop after this many non-finite steps in a row")
    g = p.add_argument_group("run")
    g.add_argument("--project", default="runs/train")
    g.add_argument("--name", default="exp")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact reruns)")
    g.add_argument("--patience", type=int, default=50, help="early stop after this many epochs without improvement (0 = off)")
    g.add_argument("--val-period", type=int, default=1,
                   help="validate every N epochs (always the first of a run and of each resume, the last, and a --time "
                        "run's final one); "
                        "best.pt and --patience see validated epochs only")
    g.add_argument("--best", default="val", choices=["val", "final"],
                   help="what best.pt holds: the validated epoch with the highest val mIoU, or the final weights "
                        "(for a fixed budget with a small val set, whose maximum over many checkpoints chases "
                        "noise); val is scored and logged either way, and --patience still watches it")
    g.add_argument("--save-period", type=int, default=-1, help="also save weights/epochN.pt every N epochs")
    g.add_argument("--resume", nargs="?", const=True, default=False, help="resume the latest run, or the given last.pt")
    g.add_argument("--tb-images", type=int, default=4, help="rows in the TensorBoard prediction grids")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="SyncBatchNorm in multi-GPU (torchrun) runs; CPU/gloo has none")
    g.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a torchrun rank waits in a collective for a rank that stopped answering")
    add_common_flags(p)
    if preset:
        unknown = set(preset) - {a.dest for a in p._actions}
        if unknown:
            raise TypeError(f"preset has unknown keys: {sorted(unknown)}")
        p.set_defaults(**preset)
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags given on the command line (not defaults or presets).

    The parser itself decides: ``argv`` is parsed again with every default suppressed, so only the
    given flags appear, whatever form they took (``--epoch 5`` abbreviated, ``--epochs=5``, ``-h``)."""
    probe = copy.deepcopy(parser)
    probe._defaults.clear()  # presets (set_defaults) are not "given"
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def run(preset: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train with keyword arguments named like the flags (``img_size=[128]``); returns a summary dict."""
    import time

    from segment.trainer import Trainer

    start = time.time()
    parser = build_parser(preset)
    args = parser.parse_args([])
    for k, v in kwargs.items():
        if not hasattr(args, k):
            raise TypeError(f"train.run() got an unknown argument '{k}'")
        setattr(args, k, v)
    for k in ("img_size", "val_size"):  # img_size=128 as a keyword means [128], as on the command line
        if isinstance(getattr(args, k), int):
            setattr(args, k, [getattr(args, k)])
    return Trainer(args, explicit=set(kwargs), start_time=start).train()


def main(argv: list[str] | None = None, preset: dict[str, Any] | None = None) -> dict[str, Any]:
    """Command-line entry point; recipes call it with their preset."""

    import time

    start = time.time()  # --time counts the whole command

    def _main(a: list[str] | None) -> dict[str, Any]:
        from segment.trainer import Trainer

        argv_ = sys.argv[1:] if a is None else a
        parser = build_parser(preset, prog=Path(sys.argv[0]).name)
        args = parser.parse_args(argv_)
        setup_runtime()
        return Trainer(args, explicit=explicit_flags(parser, argv_), start_time=start).train()

    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
