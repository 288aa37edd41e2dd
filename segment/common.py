"""Pieces every entry point shares: one model loader, one preprocessing, the error boundary."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models.model import SegmentationModel, build_model
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.yamlio import literal


def preprocess(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, H, W) RGB batch -> float [0, 1] on ``device`` (the model normalises).

    The batch is made channels-last: convolutions then run in NHWC, about 30% faster on CPU here
    (oneDNN) and the layout tensor cores want on CUDA.
    """
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def parse_kv(text: str | dict[str, Any] | None, flag: str = "--head-args") -> dict[str, Any]:
    """'min_stride=2,width=96' -> {'min_stride': 2, 'width': 96} (values read as Python literals)."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    out: dict[str, Any] = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"{flag} '{text}': use key=value pairs separated by commas, e.g. min_stride=2,width=96")
        out[key.strip()] = literal(value.strip())
    return out


def parse_img_size(values: Sequence[int] | int | None, flag: str = "--img-size") -> tuple[int, int]:
    """--img-size H [W] (or another size flag): one value is square, two are height and width."""
    if values is None:
        raise UserError(f"{flag} is required")
    vals = [values] if isinstance(values, int) else list(values)
    if len(vals) not in (1, 2) or any(int(v) < 8 for v in vals):
        raise UserError(f"{flag} {' '.join(map(str, vals))}: give H or H W, each at least 8 pixels")
    return (int(vals[0]), int(vals[-1]))


def parse_crop(values: Sequence[int] | int | None, img_size: tuple[int, int]) -> tuple[int, int] | None:
    """--crop H [W]: a training crop no larger than --img-size; None (or the image size) means no crop."""
    if values is None:
        return None
    crop = parse_img_size(values, "--crop")
    if crop[0] > img_size[0] or crop[1] > img_size[1]:
        raise UserError(f"--crop {crop[0]} {crop[1]}: larger than --img-size {img_size[0]} {img_size[1]}; "
                        f"the crop is cut from the image at that size (raise --img-size or lower --crop)")
    return None if crop == img_size else crop


def load_model(weights: str | os.PathLike, device: torch.device, fuse: bool = False
               ) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint alone (its config + inference weights), in eval mode."""
    ckpt = load_checkpoint(weights)
    if "model_cfg" not in ckpt or "model" not in ckpt:
        raise UserError(f"{weights}: not a checkpoint of this framework (needs 'model_cfg' and 'model')")
    model = build_model(ckpt["model_cfg"])
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not fit the stored model config "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:3]})")
    model.to(device, memory_format=torch.channels_last).eval()  # matches preprocess()
    if fuse:
        model.fuse()
    return model, ckpt


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by train.py and val.py."""
    p.add_argument("--device", default="", help="cpu, 0, or 0,1 (empty: first GPU if any, else CPU)")
    # two cores stay with the main process (its torch threads); on a 2-core machine loading runs inline
    p.add_argument("--workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 2)),
                   help="dataloader worker processes")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of making name2, name3, ...")
    p.add_argument("--skip-bad", action="store_true", help="drop images/masks that fail the dataset check")
    p.add_argument("--verbose", action="store_true", help="show Python tracebacks for errors")


def _user_message(e: BaseException) -> str:
    """The readable part of an error; a DataLoader worker's re-raised error carries the worker's
    traceback in its text, and only its last line (the original message) is meant for people."""
    msg = str(e)
    marker = f"{type(e).__name__}: "
    if msg.startswith("Caught ") and "Original Traceback" in msg and marker in msg:
        msg = msg[msg.rindex(marker) + len(marker):].strip()
    return msg


def cli_entry(fn: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> Any:
    """Run ``fn(argv)`` and turn UserError (and OS errors such as a full disk) into readable lines and an
    exit code, without a traceback unless --verbose. Other exceptions are bugs and keep their traceback."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args
    try:
        return fn(argv)
    except UserError as e:
        if verbose:
            traceback.print_exc()
        prefix = getattr(e, "prefix", "error: ")
        print(f"{prefix}{_user_message(e)}", file=sys.stdout if e.exit_code == 0 else sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except OSError as e:  # disk full, permission denied, ...: the environment, not the code
        if verbose:
            traceback.print_exc()
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where} ({type(e).__name__}); --verbose shows where it happened",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def setup_runtime(threads: int | None = None) -> None:
    """Process-wide runtime settings, applied by entry points only (never at import)."""
    if threads:
        torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(0)  # data workers already parallelise; OpenCV's own pool only contends
    except ImportError:  # pragma: no cover
        pass


def repo_relative(path: str | os.PathLike) -> str:
    """A path shown relative to the working directory when it is inside it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
