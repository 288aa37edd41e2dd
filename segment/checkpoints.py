"""What a training checkpoint holds, and how ``--resume`` finds and validates one."""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import CHECKPOINT_FORMAT
from utils.dataconfig import DataConfig, load_data_config, resolve_data_yaml
from utils.errors import UserError

# Flags that only say how/where this process runs (or find the run); --resume accepts new values for
# them. Any other flag given with --resume must equal the checkpoint's: a different value would
# silently train another run than the one being resumed.
RUNTIME_FLAGS = {"device", "workers", "verbose", "resume", "exist_ok", "skip_bad", "cache", "tb_images",
                 "save_period", "nan_patience", "project", "name", "dist_timeout"}


class NothingToResume(UserError):
    """--resume of a run that already finished: not an error, there is just nothing left to do."""

    prefix = ""
    exit_code = 0


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
    rng: dict[str, Any] | list[dict[str, Any]] = field(default_factory=dict)  # mid-epoch stop only (DDP: per rank)
    speed: dict[str, float] = field(default_factory=lambda: {"images": 0.0, "wait": 0.0, "seconds": 0.0})
    elapsed: float = 0.0          # seconds the run has used up to this checkpoint (all sessions): --time
    time_up: bool = False         # the --time budget ended training; only the wrap-up is left

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


def build_checkpoint(data: DataConfig, args: argparse.Namespace, model_cfg: dict[str, Any], img_size: list[int],
                     data_identity: dict[str, Any], infer: dict[str, torch.Tensor], train: dict[str, Any],
                     state: CheckpointState, epoch: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A self-describing checkpoint: inference weights + config + everything an exact resume needs.

    ``train`` holds the raw weights and the optimizer/scheduler/scaler/EMA states; ``state`` the loop's.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "model": infer,  # EMA weights when EMA is on: what val/predict/export use
        "model_cfg": model_cfg,
        "nc": data.nc,
        "names": list(data.names),
        "ignore_index": data.ignore_index,
        "palette": [list(c) for c in data.palette] if data.palette else None,
        "img_size": list(img_size),
        "data": str(args.data),
        "dataset": data_identity,  # which files were trained on: --resume refuses another dataset
        "epoch": epoch + 1,
        "metrics": {**{k: v for k, v in (metrics or {}).items() if k != "per_class"},
                    "class_iou": {n: c["iou"] for n, c in (metrics or {}).get("per_class", {}).items()}},
        "finished": False,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "args": plain_args(vars(args)),
        "train": {**train, "state": asdict(state)},
    }


def dataset_identity(items: list[tuple[Path, Path]], root: Path) -> dict[str, Any]:
    """Number and hash of a split's image paths relative to the dataset root (moving the root is fine)."""
    rel = sorted(os.path.relpath(img, root) for img, _ in items)
    return {"n": len(rel), "sha256": hashlib.sha256("\n".join(rel).encode()).hexdigest()}


def check_same_dataset(ckpt: dict[str, Any], current: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Refuse to resume on other files than the run started with (checkpoints without the record pass)."""
    diffs = []
    for split, old in (ckpt.get("dataset") or {}).items():
        new = current.get(split)
        if new is not None and new != old:
            what = (f"{old['n']} image/mask pairs then, {new['n']} now" if new["n"] != old["n"]
                    else f"{new['n']} image/mask pairs then and now, but other files")
            diffs.append(f"split '{split}': {what}")
    if diffs:
        raise UserError(f"--resume {path}: refused, the dataset changed since the run started ({'; '.join(diffs)}). "
                        f"Restore the files, or start a new run with --weights {path}")


def _run_mtime(run: Path) -> float:
    """When a run was last active: args.yaml is written at (re)start, last.pt at every epoch end."""
    files = (run / "args.yaml", run / "weights" / "last.pt")
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def _is_finished(last: Path) -> bool:
    from utils.checkpoint import load_checkpoint

    try:
        return bool(load_checkpoint(last).get("finished"))
    except UserError:
        return False


def find_resume_checkpoint(resume: str | bool, project: str | os.PathLike, name: str | None = None) -> Path:
    """--resume path/to/last.pt (or its run folder); --resume alone: project/name if --name was given,
    else the most recently active run under --project. Never falls back to a fresh start."""
    if isinstance(resume, (str, os.PathLike)) and str(resume) not in ("", "True", "last"):
        p = Path(resume)
        if p.is_dir():
            p = p / "weights" / "last.pt"
        if not p.is_file():
            raise UserError(f"--resume {resume}: no such checkpoint; nothing was started. Give a run's "
                            f"weights/last.pt, or --resume alone for the latest run under --project")
        if p.parent.name != "weights":
            raise UserError(f"--resume {resume}: expected a checkpoint inside a run folder (.../weights/last.pt), "
                            f"so the resumed run writes there; to start a new run from it use --weights {resume}")
        if p.name != "last.pt":
            # best.pt / epochN.pt are earlier states: continuing from one would rewrite the run's later
            # last.pt and best.pt. Branching from them is a new run.
            last = p.parent / "last.pt"
            state = "has finished" if last.is_file() and _is_finished(last) else "continues from its weights/last.pt"
            raise UserError(f"--resume {resume}: this run {state}; --resume only continues a run from its "
                            f"last.pt. To branch from {p.name}, start a new run: python segment/train.py "
                            f"--weights {resume} (plus your flags)")
        return p
    if name is not None:
        runs = [Path(project) / name]
    else:
        # only runs that can be continued: a folder left by a run that stopped before its first epoch ended
        # (no last.pt) is skipped, so it never hides the real latest run
        runs = sorted({f.parent.parent for f in Path(project).glob("**/weights/last.pt")}, key=_run_mtime)
    if not runs or not runs[-1].is_dir():
        raise UserError(f"--resume: no run under {project}{'/' + name if name else ''}; give the checkpoint path "
                        f"(--resume path/to/weights/last.pt)")
    last = runs[-1] / "weights" / "last.pt"
    if not last.is_file():
        raise UserError(f"--resume: the latest run {runs[-1]} has no weights/last.pt (it stopped before its first "
                        f"epoch ended); start it again, or give another run's last.pt")
    return last


def _same(key: str, new: Any, old: Any) -> bool:
    if isinstance(new, tuple):
        new = list(new)
    if key in ("img_size", "val_size") and isinstance(new, list) and len(new) == 1:
        new = [new[0], new[0]]
    if key == "data" and new != old:
        try:  # the same file given by another path
            return resolve_data_yaml(new).resolve() == resolve_data_yaml(old).resolve()
        except UserError:
            return False
    return new == old


def resume_args(ckpt: dict[str, Any], path: Path, cli: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """The checkpoint's own arguments, with runtime flags taken from the command line.

    Refuses a finished run, and any explicitly passed flag that would change what is trained.
    """
    if "train" not in ckpt or "args" not in ckpt:
        raise UserError(f"{path}: not a training checkpoint of this framework; nothing to resume")
    if ckpt.get("finished"):
        raise NothingToResume(f"{path}: this run finished all {ckpt.get('epoch')} epochs; nothing to resume. "
                              f"To train further, start a new run with --weights {path}")
    saved = dict(ckpt["args"])
    diffs = [f"--{k.replace('_', '-')} {getattr(cli, k)!r} (checkpoint: {saved[k]!r})"
             for k in sorted(explicit - RUNTIME_FLAGS) if k in saved and not _same(k, getattr(cli, k), saved[k])]
    # a flag newer than the checkpoint: the run trained without it, so setting it now would change it mid-run
    diffs += [f"--{k.replace('_', '-')} {getattr(cli, k)!r} (the checkpoint predates this flag)"
              for k in sorted(explicit - RUNTIME_FLAGS) if k not in saved and hasattr(cli, k)]
    if diffs:
        raise UserError(f"--resume {path}: refused, these flags differ from the run being resumed: "
                        + "; ".join(diffs) + ". Resume without them, or start a new run with --weights")
    data = load_data_config(saved["data"])
    if data.nc != ckpt["nc"] or list(data.names) != list(ckpt["names"]):
        raise UserError(f"--resume {path}: the dataset changed since the run started: {data.yaml_file} has "
                        f"nc={data.nc} names={data.names}, the checkpoint nc={ckpt['nc']} names={ckpt['names']}")
    merged = argparse.Namespace(**saved)
    for k in RUNTIME_FLAGS - {"project", "name"}:
        if k in explicit and hasattr(cli, k):
            setattr(merged, k, getattr(cli, k))
    merged.resume = str(path)
    merged.save_dir = str(path.resolve().parent.parent)
    for k, v in vars(cli).items():  # flags added after the checkpoint was written get their defaults
        if not hasattr(merged, k):
            setattr(merged, k, v)
    return merged
