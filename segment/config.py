"""One place that validates a training configuration before anything is built or written.

``validate_args`` checks every numeric flag against its range, the combinations of model flags, and the
loss and class-weight specs, and resolves the defaults that depend on other flags (``--lr0`` and
``--weight-decay`` by optimiser), so ``args.yaml`` holds the values the run really used. It raises one
UserError naming the flag, the value given and the valid range.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable

from utils.errors import UserError

# flag -> (check, description of the valid range); flags absent from the namespace are skipped
_Check = tuple[Callable[[Any], bool], str]


def _int_at_least(lo: int) -> _Check:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


def _num(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> _Check:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    left, right = ("(" if lo_open else "["), (")" if hi_open or hi == math.inf else "]")
    return ok, f"a finite number in {left}{lo:g}, {hi:g}{right}"


NUMERIC_FLAGS: dict[str, _Check] = {
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "workers": _int_at_least(0),
    "seed": _int_at_least(0),
    "patience": _int_at_least(0),
    "val_period": _int_at_least(1),
    "nan_patience": _int_at_least(1),
    "tb_images": _int_at_least(0),
    "bootstrap": _int_at_least(0),  # val.py: resamples, 0 = off
    "lr0": _num(0, lo_open=True),
    "lrf": _num(0, 1, lo_open=True),
    "momentum": _num(0, 1, hi_open=True),
    "weight_decay": _num(0),
    "warmup_epochs": _num(0),
    "grad_clip": _num(0),
    "ema_decay": _num(0, 1, hi_open=True),
    "ema_tau": _num(0, lo_open=True),
    "aux_weight": _num(0),
    "fliplr": _num(0, 1),
    "color_jitter": _num(0, 1),
    "time": _num(0, lo_open=True),
    "dist_timeout": _num(0, lo_open=True),
}


HEAD_ARGS: dict[str, _Check] = {
    "width": _int_at_least(1),
    "max_width": _int_at_least(1),
    "depth": _int_at_least(1),
    "min_stride": _int_at_least(1),
    "dropout": _num(0, 1, hi_open=True),
    "key_width": _int_at_least(1),  # ocr
    "aux_weight": _num(0),  # ocr's own deep supervision
    "low_width": _int_at_least(1),  # deeplabv3plus
    "low_stride": _int_at_least(1),  # deeplabv3plus, lraspp
    "output_stride": _int_at_least(1),  # deeplabv3plus; the backbone says which strides it can dilate to
    "stride": _int_at_least(1),  # aux
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_numeric(args: argparse.Namespace) -> None:
    """Every numeric flag within its range (None means 'use the default' where a flag allows it)."""
    for dest, (ok, what) in NUMERIC_FLAGS.items():
        if not hasattr(args, dest):
            continue
        v = getattr(args, dest)
        if v is None and dest in ("lr0", "weight_decay", "time"):
            continue
        if not ok(v):
            raise UserError(f"{_flag(dest)} {v!r}: must be {what}")
    sp = getattr(args, "save_period", -1)  # absent in val.py
    if not (isinstance(sp, int) and (sp == -1 or sp >= 1)):
        raise UserError(f"--save-period {sp!r}: must be -1 (off) or an integer >= 1")
    if hasattr(args, "scale_range"):
        sr = list(args.scale_range)
        if len(sr) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in sr) \
                or sr[0] > sr[1]:
            raise UserError(f"--scale-range {' '.join(map(str, sr))}: give LO HI with 0 < LO <= HI (e.g. 0.5 2.0)")
    from segment.common import parse_img_size

    for dest in ("val_size", "compare_img_size"):  # None: --img-size (train.py), the model's own (val.py)
        if getattr(args, dest, None) is not None:
            parse_img_size(getattr(args, dest), flag=_flag(dest))
    if getattr(args, "img_size", None) is not None:  # val.py: None means the checkpoint's size
        size = parse_img_size(args.img_size)
        if getattr(args, "crop", None) is not None:
            from segment.common import parse_crop

            parse_crop(args.crop, size)


def check_model_flags(args: argparse.Namespace, explicit: set[str] | None = None) -> None:
    """Refuse model flags that contradict each other instead of silently ignoring one of them.

    A recipe's preset yields to the command line: ``--cfg`` given over a preset backbone (or
    ``--backbone`` over a preset cfg) replaces it; only two given choices conflict."""
    given = explicit or set()
    if args.cfg and args.backbone and ("cfg" in given) != ("backbone" in given):
        if "cfg" in given:
            args.backbone = None
        else:
            args.cfg = None
    if args.cfg and args.backbone:
        raise UserError(f"--cfg {args.cfg} and --backbone {args.backbone}: the model YAML already defines the "
                        f"backbone; give one of them (a torchvision backbone YAML is models/backbone/<name>.yaml)")
    if args.scale is not None and not args.cfg:
        raise UserError(f"--scale {args.scale}: only YOLO graph YAMLs have scales; add --cfg models/yolov8_seg.yaml "
                        f"or drop --scale")
    if args.scale is not None and str(args.scale) not in ("n", "s", "m", "l", "x"):
        raise UserError(f"--scale {args.scale}: use n, s, m, l or x")
    from segment.common import parse_kv

    # ranges of the options the zoo heads share; a head that cannot use a valid value (min_stride=64 on
    # a stride-32 backbone) is refused when it is built (models/model.py build_model)
    for key, value in parse_kv(args.head_args).items():
        check = HEAD_ARGS.get(key)
        if check is not None and not check[0](value):
            raise UserError(f"--head-args {key}={value!r}: must be {check[1]}")


def parse_class_weights(spec: Any, nc: int | None = None) -> list[float] | None:
    """'auto' / None -> None; '1,2.5,0' -> [1.0, 2.5, 0.0] after checking count, finiteness and sign."""
    if spec in (None, "", "none", "auto"):
        return None
    hint = f"use 'auto' or {nc if nc else 'one'} comma-separated non-negative numbers{'' if nc else ' per class'}"
    try:
        w = [float(v) for v in str(spec).replace(" ", "").split(",")]
    except ValueError:
        raise UserError(f"--class-weights {spec}: {hint}") from None
    bad = [v for v in w if not math.isfinite(v) or v < 0]
    if bad:
        raise UserError(f"--class-weights {spec}: {bad[0]} is not allowed (weights must be finite and >= 0); {hint}")
    if not any(w):
        raise UserError(f"--class-weights {spec}: all weights are 0, nothing would be learned; {hint}")
    if nc is not None and len(w) != nc:
        raise UserError(f"--class-weights {spec}: {len(w)} values for {nc} classes; {hint}")
    return w


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on other flags, so the saved configuration is the one used."""
    if getattr(args, "lr0", 0) is None:
        args.lr0 = 0.01 if args.optimizer == "sgd" else 1e-3
    if getattr(args, "weight_decay", 0) is None:
        args.weight_decay = 5e-4 if args.optimizer == "sgd" else 0.01
    if getattr(args, "amp", True) is False:  # --no-amp is the short form of --precision fp32
        args.precision = "fp32"


def record_model_choices(args: argparse.Namespace, model_cfg: dict[str, Any]) -> None:
    """Write the model defaults that were resolved (backbone, head, scale) back into ``args``, so the
    saved configuration names the model that was built instead of ``null``."""
    if not args.cfg and args.backbone is None:
        args.backbone = model_cfg.get("backbone")
    if args.head is None and model_cfg.get("head") is not None:
        args.head = model_cfg["head"]
    if args.scale is None and model_cfg.get("graph") is not None and model_cfg.get("scale"):
        args.scale = model_cfg["scale"]


def validate_args(args: argparse.Namespace, resuming: bool = False, explicit: set[str] | None = None) -> None:
    """Check the whole training configuration (raises UserError); resolves dependent defaults in place.

    When resuming, the model flags come from the checkpoint, so only the numeric ranges are rechecked.
    """
    from utils.losses import parse_loss_spec

    check_numeric(args)
    if getattr(args, "amp", True) is False and getattr(args, "precision", "fp32") not in ("fp32", "auto"):
        raise UserError(f"--no-amp and --precision {args.precision}: --no-amp means fp32; give one of them")
    if not resuming:
        check_model_flags(args, explicit)
    parse_loss_spec(args.loss)
    parse_class_weights(args.class_weights)
    if args.cache not in (None, "", "none", "ram", "auto"):
        raise UserError(f"--cache {args.cache}: use auto, ram or none")
    resolve_defaults(args)
