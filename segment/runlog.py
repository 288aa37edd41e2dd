"""Everything a run writes besides checkpoints: args.yaml, results.csv, TensorBoard, plots."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from segment.evaluate import EvalResult
from utils.dataconfig import DataConfig
from utils.files import atomic_write_text
from utils.plots import default_palette, plot_confusion, plot_results, prediction_grid, save_image
from utils.yamlio import dump_yaml


def _resize_ids(ids: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-resize an (H, W) id map to ``hw`` for side-by-side pictures."""
    if tuple(ids.shape[-2:]) == tuple(hw):
        return ids
    return F.interpolate(ids[None, None].float(), size=hw, mode="nearest")[0, 0].long()


def optional_output(what: str, write: Callable[[], Any], log: Callable[[str], None] = print) -> None:
    """Run ``write`` (logs, plots, image grids); a failure is one warning line, never a lost epoch or run.

    Checkpoints are not optional outputs and never go through here."""
    try:
        write()
    except Exception as e:  # noqa: BLE001 - anything a plotting or logging library raises
        log(f"warning: could not write {what} ({type(e).__name__}: {e}); training continues, the checkpoints are intact")


class RunLogger:
    """Writes the run folder's logs (rank 0 only; a disabled logger does nothing)."""

    def __init__(self, save_dir: Path, data: DataConfig, enabled: bool = True, purge_step: int | None = None) -> None:
        self.save_dir, self.data, self.enabled = Path(save_dir), data, enabled
        self.palette = data.palette or default_palette(data.nc)
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events a killed run wrote after its last checkpoint (no duplicated epochs)
            self.tb = SummaryWriter(str(self.save_dir), purge_step=purge_step)

    def write_args(self, args: dict[str, Any]) -> None:
        plain = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in args.items()}
        atomic_write_text(self.save_dir / "args.yaml", dump_yaml(plain))

    def _grid(self, images: torch.Tensor, targets: list[torch.Tensor], preds: list[torch.Tensor]) -> np.ndarray:
        hw = tuple(images.shape[-2:])
        return prediction_grid(images, [_resize_ids(t, hw) for t in targets], [_resize_ids(p, hw) for p in preds],
                               self.palette, self.data.ignore_index)

    def log_epoch(self, rows: list[dict[str, float]], res: EvalResult | None,
                  train_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
        """Write results.csv (all rows, atomically) and the last row's epoch to TensorBoard
        (``res`` None: an epoch without validation, training scalars only)."""
        if not self.enabled:
            return
        self.write_results(rows)
        row = rows[-1]
        step = int(row["epoch"])
        self._scalars(row, {name: c["iou"] for name, c in res.metrics["per_class"].items()} if res else {})
        if res is not None and res.examples:
            images = torch.stack([e[0] for e in res.examples])
            grid = self._grid(images, [e[1] for e in res.examples], [e[2] for e in res.examples])
            self.tb.add_image("val/input|truth|prediction", grid, step, dataformats="HWC")
        if train_batch is not None:
            images, masks, preds = train_batch
            grid = self._grid(images, list(masks), list(preds))
            self.tb.add_image("train/input|truth|prediction", grid, step, dataformats="HWC")
        self.tb.flush()

    def _scalars(self, row: dict[str, float], class_iou: dict[str, float]) -> None:
        step = int(row["epoch"])
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)
        for name, iou in class_iou.items():
            if isinstance(iou, (int, float)) and math.isfinite(iou):
                self.tb.add_scalar(f"val_iou/{name}", iou, step)

    def relog(self, rows: list[dict[str, float]], class_iou: dict[str, float]) -> None:
        """On resume: results.csv and the scalars of the last checkpointed epoch, which a kill between its
        checkpoint and its logs may have left unwritten (the SummaryWriter purged whatever was there)."""
        if not self.enabled or not rows:
            return
        self.write_results(rows)
        self._scalars(rows[-1], class_iou)
        self.tb.flush()

    def write_results(self, rows: list[dict[str, float]]) -> None:
        """results.csv with one row per finished epoch (the union of all columns seen)."""
        if not self.enabled or not rows:
            return
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write_text(self.save_dir / "results.csv", buf.getvalue())

    def final_plots(self, rows: list[dict[str, float]], res: EvalResult) -> None:
        """results.png, confusion_matrix.png and val overlays from the best model's validation."""
        if not self.enabled:
            return
        plot_results(rows, self.save_dir / "results.png")
        plot_confusion(res.confusion, self.data.names, self.save_dir / "confusion_matrix.png")
        for i, (img, target, pred) in enumerate(res.examples):
            hw = tuple(target.shape[-2:])
            img = F.interpolate(img[None].float(), size=hw, mode="bilinear", align_corners=False)[0].round().byte()
            grid = prediction_grid(img[None], [target], [pred], self.palette, self.data.ignore_index)
            save_image(self.save_dir / f"val_overlay_{i}.png", grid)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
