"""Mask formats, detected per file, all decoded to one H x W array of class ids.

(a) index PNG: single-channel, or palette mode ('P', e.g. Pascal VOC) whose indices are the class ids
    when the data YAML has no ``palette``;
(b) colour PNG mapped through the dataset's ``palette`` (+ optional ``ignore_color``): RGB(A), and also
    palette mode when the YAML has a palette (the file's own colour table gives each pixel's colour);
(c) labelme-style JSON: ``shapes`` with ``label``/``points``, rasterised in file order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

MASK_SUFFIXES = (".png", ".json")


class MaskError(ValueError):
    """A mask that cannot be decoded into valid class ids; ``reason`` is a human-readable sentence."""

    def __init__(self, path: Path | str, reason: str, colors: Sequence[tuple[int, int, int]] = ()) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.colors = Path(path), reason, list(colors)


@dataclass(frozen=True)
class MaskSpec:
    """What a decoder needs to know about the dataset's labels."""

    nc: int
    ignore_index: int
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_color: tuple[int, int, int] | None = None

    @property
    def dtype(self) -> type:
        return np.uint8 if max(self.nc - 1, self.ignore_index) <= 255 else np.uint16

    def background_id(self) -> int:
        """Class id for pixels no labelme shape covers: 'background'/'_background_' if named, else ignore."""
        for i, n in enumerate(self.names):
            if n.lower() in ("background", "_background_"):
                return i
        return self.ignore_index


def read_mask(path: Path, spec: MaskSpec, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the mask at ``path`` into an (H, W) array of class ids (values are not range-checked here)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _read_labelme(path, spec, image_hw)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P" and spec.palette is not None:
                # With a YAML palette the colours are the labels: a palette-mode file (an RGB mask that an
                # editor or PIL quantised) is read through its own colour table, never by index.
                mode, arr = "RGB", np.asarray(im.convert("RGB"))
            else:
                arr = np.asarray(im)
    except Exception as e:
        raise MaskError(path, f"cannot decode mask ({type(e).__name__}: {e})") from None
    if mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L") or arr.ndim == 2:
        return arr.astype(spec.dtype, copy=False) if arr.max(initial=0) <= np.iinfo(spec.dtype).max \
            else arr.astype(np.int64)
    if mode == "LA":
        return arr[..., 0].astype(spec.dtype)
    if mode in ("RGB", "RGBA"):
        return _map_colors(path, arr[..., :3], spec)
    raise MaskError(path, f"unsupported PNG mode '{mode}' for a mask")


def _map_colors(path: Path, rgb: np.ndarray, spec: MaskSpec) -> np.ndarray:
    if spec.palette is None:
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].astype(spec.dtype)  # a grey index mask saved as RGB
        raise MaskError(path, "RGB colour mask but the data YAML has no 'palette' to map colours to classes")
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(spec.palette)}
    if spec.ignore_color is not None:
        r, g, b = spec.ignore_color
        lut[(r << 16) | (g << 8) | b] = spec.ignore_index
    uniq, inverse = np.unique(keys, return_inverse=True)
    unknown = [int(k) for k in uniq if int(k) not in lut]
    if unknown:
        colors = [((k >> 16) & 255, (k >> 8) & 255, k & 255) for k in unknown]
        shown = ", ".join(str(c) for c in colors[:8]) + (" ..." if len(colors) > 8 else "")
        raise MaskError(path, f"{len(colors)} colour(s) not in the palette: {shown}", colors)
    return np.array([lut[int(k)] for k in uniq], dtype=spec.dtype)[inverse.reshape(keys.shape)]


def _read_labelme(path: Path, spec: MaskSpec, image_hw: tuple[int, int] | None) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as e:
        raise MaskError(path, f"cannot read labelme JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise MaskError(path, "labelme JSON needs a 'shapes' list")
    h, w = data.get("imageHeight"), data.get("imageWidth")
    if not (isinstance(h, int) and isinstance(w, int)):
        if image_hw is None:
            raise MaskError(path, "labelme JSON has no imageHeight/imageWidth and no image size was given")
        h, w = image_hw
    ids = {n: i for i, n in enumerate(spec.names)}
    mask = np.full((h, w), spec.background_id(), dtype=spec.dtype)
    for k, shape in enumerate(data["shapes"]):
        label = shape.get("label")
        if label not in ids:
            raise MaskError(path, f"shape {k}: label '{label}' is not in the data YAML's names")
        pts = np.asarray(shape.get("points", []), dtype=np.float64)
        kind = shape.get("shape_type") or "polygon"
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
            raise MaskError(path, f"shape {k} ('{label}'): points must be a list of finite [x, y]")
        value = int(ids[label])
        if kind == "polygon":
            if len(pts) < 3:
                raise MaskError(path, f"shape {k} ('{label}'): a polygon needs at least 3 points, got {len(pts)}")
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], value)
        elif kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = np.round(pts).astype(np.int32)
            cv2.rectangle(mask, (int(min(x0, x1)), int(min(y0, y1))), (int(max(x0, x1)), int(max(y0, y1))), value, -1)
        elif kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(np.hypot(px - cx, py - cy))), value, -1)
        else:
            raise MaskError(path, f"shape {k} ('{label}'): unsupported shape_type '{kind}' with {len(pts)} points")
    return mask


def find_mask(image: Path, images_dir: str = "images", masks_dir: str = "masks") -> Path | None:
    """The mask of ``<root>/images/<split>/<stem>.<ext>``: ``<root>/masks/<split>/<stem>.{png,json}``,
    else a labelme JSON beside the image; None when there is none."""
    parts = list(image.parts)
    candidates: list[Path] = []
    if images_dir in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index(images_dir)  # the last 'images' component
        parts[i] = masks_dir
        base = Path(*parts).with_suffix("")
        candidates += [base.with_name(base.name + s) for s in MASK_SUFFIXES]
    candidates.append(image.with_suffix(".json"))
    return next((c for c in candidates if c.is_file()), None)
