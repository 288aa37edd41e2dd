"""Pictures of a run: colour masks, input | truth | prediction grids, results.png, confusion_matrix.png.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.files import atomic_write


def default_palette(nc: int) -> list[tuple[int, int, int]]:
    """Distinct colours for datasets without a palette (golden-angle hues)."""
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)) for i in range(nc)]  # type: ignore[misc]


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored pixels white, out-of-range ids black."""
    lut = np.zeros((max(len(palette), ignore_index + 1, int(mask.max(initial=0)) + 1), 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[ignore_index] = 255
    return lut[mask]


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an RGB image."""
    return (image.astype(np.float32) * (1 - alpha) + color_mask.astype(np.float32) * alpha).astype(np.uint8)


def prediction_grid(images: torch.Tensor, targets: Sequence[torch.Tensor], preds: Sequence[torch.Tensor],
                    palette: Sequence[Sequence[int]], ignore_index: int, max_rows: int = 4) -> np.ndarray:
    """Rows of input | ground truth overlay | prediction overlay, as one (H, W, 3) uint8 image.

    ``images`` are uint8 (N, 3, H, W); targets/preds are (H, W) id maps resized to the image size.
    """
    rows = []
    for img, t, p in list(zip(images, targets, preds))[:max_rows]:
        rgb = img.permute(1, 2, 0).cpu().numpy()
        t_np, p_np = t.cpu().numpy(), p.cpu().numpy()
        rows.append(np.concatenate([rgb, overlay(rgb, colorize(t_np, palette, ignore_index)),
                                    overlay(rgb, colorize(p_np, palette, ignore_index))], 1))
    return np.concatenate(rows, 0) if rows else np.zeros((1, 1, 3), np.uint8)


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=110))


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG/JPEG (atomically)."""
    import cv2

    ok, buf = cv2.imencode(Path(path).suffix or ".png", rgb[..., ::-1])
    if ok:
        atomic_write(path, lambda f: f.write(buf.tobytes()))


def plot_results(rows: list[dict[str, float]], path: str | os.PathLike) -> None:
    """results.png: one panel per numeric column of results.csv against epoch."""
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k != "epoch" and k not in keys]
    n = len(keys)
    cols = min(5, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * nrows))
    # fixed margins in inches, not tight_layout: its measuring draw made the plot cost ~3 s of every
    # run's wrap-up on 2 cores (1.1 s with fixed margins, same panels)
    w, h = 3.2 * cols, 2.6 * nrows
    fig.subplots_adjust(left=0.6 / w, right=1 - 0.15 / w, bottom=0.3 / h, top=1 - 0.3 / h, wspace=0.33, hspace=0.45)
    for i, k in enumerate(keys):
        ax = fig.add_subplot(nrows, cols, i + 1)
        # only the epochs that have the column (val/* skips the epochs --val-period left unscored), so the
        # points of a column are joined even when epochs between them have none
        pts = [(r["epoch"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", linewidth=1.5)
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
    _save_figure(fig, Path(path))


def plot_confusion(mat: torch.Tensor, names: Sequence[str], path: str | os.PathLike) -> None:
    """confusion_matrix.png: rows (ground truth) normalised to 1, with counts hidden for readability."""
    m = mat.double()
    norm = (m / m.sum(1, keepdim=True).clamp_min(1)).numpy()
    n = len(names)
    size = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(size + 1, size), tight_layout=True)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title("confusion matrix (row-normalised)")
    _save_figure(fig, Path(path))
