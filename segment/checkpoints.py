"""What a training checkpoint holds, and how ``--resume`` finds and validates one."""
from __future__ import annotations

import argparse
import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from utils.checkpoint import CHECKPOINT_FORMAT
from utils.dataconfig import load_data_config
from utils.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from segment.trainer import Trainer

# Flags that define what is trained: changing one of them on --resume would silently train another run.
IDENTITY_FLAGS = ("data", "backbone", "head", "cfg", "scale", "img_size", "loss", "class_weights", "aux_weight",
                  "optimizer", "batch_size", "seed", "epochs")
# Flags that only say how/where this process runs; --resume accepts new values for them.
RUNTIME_FLAGS = {"device", "workers", "verbose", "resume", "exist_ok", "skip_bad", "cache", "tb_images"}


@dataclass
class CheckpointState:
    """Loop state saved with every checkpoint (plain values only)."""

    next_epoch: int = 0           # first epoch (0-based) still to run
    next_step: int = 0            # steps of next_epoch already done (mid-epoch stop)
    best_fitness: float = float("-inf")
    best_epoch: int = 0
    stopped_early: bool = False
    rows: list[dict[str, float]] = field(default_factory=list)  # results.csv so far
    sums: dict[str, float] = field(default_factory=dict)         # running loss sums of next_epoch
    nonfinite_steps: int = 0
    nonfinite_epoch: int = 0
    consecutive_nonfinite: int = 0
    rng: dict[str, Any] = field(default_factory=dict)            # only for a mid-epoch stop

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckpointState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def plain_args(args: dict[str, Any]) -> dict[str, Any]:
    """Arguments as plain values (paths -> str) so the checkpoint loads with weights_only=True."""
    out = {}
    for k, v in args.items():
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def build_checkpoint(tr: "Trainer", raw: dict[str, torch.Tensor], infer: dict[str, torch.Tensor], epoch: int,
                     metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A self-describing checkpoint: inference weights + config + everything an exact resume needs."""
    data = tr.data
    return {
        "format": CHECKPOINT_FORMAT,
        "model": infer,  # EMA weights when EMA is on: what val/predict/export use
        "model_cfg": tr.model_cfg,
        "nc": data.nc,
        "names": list(data.names),
        "ignore_index": data.ignore_index,
        "palette": [list(c) for c in data.palette] if data.palette else None,
        "img_size": list(tr.img_size),
        "data": str(tr.args.data),
        "epoch": epoch + 1,
        "metrics": {k: v for k, v in (metrics or {}).items() if k != "per_class"},
        "finished": False,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "args": plain_args(vars(tr.args)),
        "train": {
            "model": raw,
            "optimizer": tr.optimizer.state_dict(),
            "scheduler": tr.scheduler.state_dict(),
            "scaler": tr.scaler.state_dict(),
            "ema": tr.ema.state_dict() if tr.ema is not None else None,
            "state": asdict(tr.state),
        },
    }


def find_resume_checkpoint(resume: str | bool, project: str) -> Path:
    """--resume path/to/last.pt, or --resume alone: the most recent last.pt under --project."""
    if isinstance(resume, str) and resume not in ("", "True", "last"):
        p = Path(resume)
        if p.is_dir():
            p = p / "weights" / "last.pt"
        if not p.is_file():
            raise UserError(f"--resume {resume}: no such checkpoint (nothing was started)")
        return p
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda f: f.stat().st_mtime)
    if not candidates:
        raise UserError(f"--resume: no run with weights/last.pt under {project}; give the checkpoint path")
    return candidates[-1]


def resume_args(ckpt: dict[str, Any], path: Path, cli: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """The checkpoint's own arguments, with runtime flags taken from the command line.

    Refuses a finished run, and any explicitly passed flag that would change what is trained.
    """
    if "train" not in ckpt or "args" not in ckpt:
        raise UserError(f"{path}: not a training checkpoint of this framework; nothing to resume")
    if ckpt.get("finished"):
        raise UserError(f"{path}: this run finished (epoch {ckpt.get('epoch')}); nothing to resume. "
                        f"Start a new run with --weights {path} to fine-tune from it", exit_code=0)
    saved = dict(ckpt["args"])
    diffs = []
    for k in sorted(explicit & set(IDENTITY_FLAGS)):
        new, old = getattr(cli, k), saved.get(k)
        if isinstance(new, tuple):
            new = list(new)
        if k == "img_size" and new is not None and len(new) == 1:
            new = [new[0], new[0]]
        if new != old:
            diffs.append(f"--{k.replace('_', '-')} {new!r} (checkpoint: {old!r})")
    if diffs:
        raise UserError(f"--resume {path}: refused, these flags differ from the run being resumed: "
                        + "; ".join(diffs) + ". Resume without them, or start a new run with --weights")
    data = load_data_config(saved["data"])
    if data.nc != ckpt["nc"] or list(data.names) != list(ckpt["names"]):
        raise UserError(f"--resume {path}: the dataset changed since the run started: {data.yaml_file} has "
                        f"nc={data.nc} names={data.names}, the checkpoint nc={ckpt['nc']} names={ckpt['names']}")
    merged = argparse.Namespace(**saved)
    for k in RUNTIME_FLAGS:
        if k in explicit and hasattr(cli, k):
            setattr(merged, k, getattr(cli, k))
    merged.resume = str(path)
    merged.save_dir = str(path.resolve().parent.parent)
    for k, v in vars(cli).items():  # flags added after the checkpoint was written get their defaults
        if not hasattr(merged, k):
            setattr(merged, k, v)
    return merged
