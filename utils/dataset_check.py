"""Pre-flight check of a dataset split, run once before any training or validation step.

Every image must decode; every mask must exist, decode, match its image's size (as training decodes
it: EXIF orientation applied) and hold only class ids in [0, nc) or the ignore index. All problems of
all splits are collected and reported together, each as ``file: reason``. The result
(with per-class pixel counts, used by ``--class-weights auto``) is cached as JSON, keyed by a hash
of the file list, sizes and mtimes, so reruns are instant. Dataset files are only ever read.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from utils.dataconfig import DataConfig, EmptySplitError, cache_dir
from utils.errors import UserError
from utils.files import atomic_write_text
from utils.imageio import ImageDecodeError, decode_image_with_orientation
from utils.masks import MaskError, find_mask, read_mask

CHECK_VERSION = 4
# EXIF orientations that swap height and width (utils/imageio.py applies every orientation)
_TRANSPOSED = {5, 6, 7, 8}


@dataclass
class SplitReport:
    """Outcome of checking one split: usable (image, mask) pairs, problems, pixel counts per class."""

    split: str
    items: list[tuple[Path, Path]]
    problems: list[str] = field(default_factory=list)
    class_pixels: list[int] = field(default_factory=list)
    num_bad: int = 0
    ignore_pixels: int = 0
    exif_oriented: int = 0  # usable images whose EXIF orientation is not 1 (they are used upright)
    zero_ignore_only: int = 0  # usable masks holding only 0 and an ignore_index of 255: 0/255 binary masks?
    cached: bool = False


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _check_pair(image: Path, data: DataConfig) -> tuple[Path | None, list[str], np.ndarray | None, int]:
    """Check one image and its mask; returns (mask path, problems, pixel counts per id up to ignore_index,
    the image's EXIF orientation).

    The image is decoded by the very function training uses (utils.imageio.decode_image), so an image
    that passes here decodes in training, with the same size and orientation."""
    spec, root = data.mask_spec, data.root
    problems: list[str] = []
    hw, transposed, orientation = None, False, 1
    try:
        rgb, orientation = decode_image_with_orientation(image)
        hw, transposed = rgb.shape[:2], orientation in _TRANSPOSED
    except ImageDecodeError as e:
        problems.append(f"{_rel(image, root)}: image does not decode ({e.reason})")
    mask_path = find_mask(image, data.images_dir, data.masks_dir)
    if mask_path is None:
        problems.append(f"{_rel(image, root)}: no mask found (expected {data.masks_dir}/.../{image.stem}.png or .json)")
        return None, problems, None, orientation
    try:
        mask = read_mask(mask_path, spec, hw)
    except MaskError as e:
        return mask_path, problems + [f"{_rel(mask_path, root)}: {e.reason}"], None, orientation
    if hw is not None and mask.shape != hw:
        msg = f"{_rel(mask_path, root)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {hw[1]}x{hw[0]} (WxH)"
        if transposed and mask.shape == hw[::-1]:
            msg += " after the image's EXIF rotation; save the image upright (EXIF orientation 1) or rotate the mask"
        problems.append(msg)
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=max(spec.nc, spec.ignore_index + 1))
    bad_values = [v for v in np.flatnonzero(counts) if v >= spec.nc and v != spec.ignore_index]
    if bad_values:
        n_bad = int(counts[bad_values].sum())
        shown = ", ".join(str(v) for v in bad_values[:10]) + (", ..." if len(bad_values) > 10 else "")
        msg = (f"{_rel(mask_path, root)}: values {{{shown}}} outside 0..{spec.nc - 1} and ignore_index "
               f"{spec.ignore_index} ({n_bad:,} px)")
        if set(np.flatnonzero(counts)) <= {0, 255}:
            msg += ("; looks like a binary mask saved as 0/255: set ignore_index: 255 if 255 means 'ignore', "
                    "else remap 255 -> 1")
        problems.append(msg)
    return mask_path, problems, counts, orientation


def _fingerprint(data: DataConfig, split: str, images: list[Path]) -> str:
    """Hash of what the check depends on: label config, file list, sizes and mtimes (not contents)."""
    h = hashlib.sha256()
    spec = data.mask_spec
    h.update(json.dumps([CHECK_VERSION, split, spec.nc, spec.ignore_index, list(spec.names), spec.palette,
                         spec.ignore_color, data.images_dir, data.masks_dir]).encode())
    for img in images:
        for p in (img, find_mask(img, data.images_dir, data.masks_dir)):
            try:
                st = p.stat() if p is not None else None
            except OSError:  # listed in a .txt but missing: the check itself reports it
                st = None
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode() if st else f"{p}|-".encode())
    return h.hexdigest()


def check_split(data: DataConfig, split: str, workers: int = 4, use_cache: bool = True) -> SplitReport:
    """Check every image/mask pair of ``split`` (cached). Raises UserError only for an empty split."""
    images = data.split_images(split)
    key = _fingerprint(data, split, images)
    # one file per (data YAML, split); the YAML's path hash keeps two 'data.yaml' files apart
    yaml_id = hashlib.sha256(str(data.yaml_file.resolve()).encode()).hexdigest()[:8]
    prefix = f"check_{data.yaml_file.stem}_{split}_{yaml_id}_"
    cache_file = cache_dir() / f"{prefix}{key[:20]}.json"
    if use_cache and cache_file.is_file():
        try:
            c = json.loads(cache_file.read_text(encoding="utf-8"))
            if c.get("key") == key:
                return SplitReport(split, [(Path(i), Path(m)) for i, m in c["items"]], c["problems"],
                                   c["class_pixels"], c["num_bad"], c["ignore_pixels"], c["exif_oriented"],
                                   c["zero_ignore_only"], cached=True)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache is recomputed
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda im: _check_pair(im, data), images))
    spec = data.mask_spec
    items, problems, num_bad, oriented, zero_ignore = [], [], 0, 0, 0
    total = np.zeros(max(spec.nc, spec.ignore_index + 1), np.int64)
    for image, (mask, probs, counts, orientation) in zip(images, results):
        if probs:
            problems += probs
            num_bad += 1
        elif mask is not None and counts is not None:
            items.append((image, mask))
            total += counts[: len(total)]  # clean masks hold no id above ignore_index
            oriented += orientation != 1
            zero_ignore += spec.ignore_index == 255 and counts[255] > 0 and not counts[1:255].any()
    report = SplitReport(split, items, problems, [int(v) for v in total[: spec.nc]], num_bad,
                         int(total[spec.ignore_index]), oriented, int(zero_ignore))
    try:
        atomic_write_text(cache_file, json.dumps({"key": key, "items": [[str(i), str(m)] for i, m in items],
                                                  "problems": problems, "class_pixels": report.class_pixels,
                                                  "num_bad": num_bad, "ignore_pixels": report.ignore_pixels,
                                                  "exif_oriented": oriented, "zero_ignore_only": int(zero_ignore)}))
        for old in cache_file.parent.glob(f"{prefix}*.json"):  # results for files that have changed since
            if old != cache_file:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache location only costs the re-check next time
    return report


def _label_problems(data: DataConfig, r: SplitReport) -> tuple[str | None, str | None]:
    """(error, warning) about what the usable masks of the train split hold as a whole.

    Error: no pixel of classes 1..nc-1 anywhere, e.g. 0/255 binary masks read with ignore_index 255 (every
    object pixel ignored): such a run would report mIoU 1.0 from class 0 alone. Warning: some masks hold
    only 0 and 255 = ignore while others do have objects: a mix of 0/1 and 0/255 files.
    """
    if not r.items:
        return None, None
    hint_0_255 = (f"binary masks saved as 0/255 are read with 255 = ignore_index: remap 255 -> 1 (or set "
                  f"ignore_index to another value) and keep ignore_index for 'unlabelled' pixels")
    if not any(r.class_pixels[1:]):
        names = f"{', '.join(data.names[1:4])}{', ...' if data.nc > 4 else ''}"
        return (f"no '{r.split}' mask holds any pixel of classes 1..{data.nc - 1} ({names}): only class 0 "
                f"({r.class_pixels[0]:,} px) and ignore_index {data.ignore_index} ({r.ignore_pixels:,} px), so "
                f"there is nothing to learn and class 0 alone would score mIoU 1.0"
                + (f"; {hint_0_255}" if r.ignore_pixels and data.ignore_index == 255 else "")), None
    if r.zero_ignore_only:
        return None, (f"warning: {r.zero_ignore_only} of {len(r.items)} '{r.split}' masks hold no value but 0 and 255 "
                      f"(= ignore_index) while the others have objects; if those files are {hint_0_255}")
    return None, None


def preflight(data: DataConfig, splits: list[str], skip_bad: bool = False, workers: int = 4,
              log: Callable[[str], None] = print, require_objects: bool = False) -> dict[str, SplitReport]:
    """Check ``splits``; report every problem of every split and raise UserError unless ``skip_bad`` drops them.

    An empty or missing split is always an error; ``skip_bad`` only drops individual bad files.
    ``require_objects`` (training): a train split without any pixel of classes 1..nc-1 is an error too;
    scoring such a split (val.py --split train, INT8 calibration) is legitimate and only warned about.
    """
    reports: dict[str, SplitReport] = {}
    missing: list[tuple[str, str]] = []  # split-level problems: --skip-bad cannot help
    empty = False
    for s in splits:
        try:
            reports[s] = check_split(data, s, workers)
        except UserError as e:
            missing.append((s, str(e)))
            empty |= isinstance(e, EmptySplitError)
    labels = {s: _label_problems(data, r) for s, r in reports.items() if s == "train"}
    if require_objects:
        missing += [(s, err) for s, (err, _) in labels.items() if err]
    else:  # not training on it: the error becomes a warning
        labels = {s: (None, warn or (f"warning: {err}" if err else None)) for s, (err, warn) in labels.items()}
    per_file = [(s, p) for s, r in reports.items() for p in r.problems]
    emptied = [(s, f"no usable image/mask pairs left after dropping {r.num_bad} bad one(s)")
               for s, r in reports.items() if not r.items and skip_bad]
    if missing or emptied or (per_file and not skip_bad):
        shown = missing + per_file + emptied
        lines = [f"dataset check failed for {data.yaml_file} (root {data.root}): {len(shown)} problem(s)"]
        lines += [f"  [{s}] {p}" for s, p in shown]
        if empty:
            lines.append("an empty or missing split is an error even with --skip-bad: point the data YAML at images")
        if per_file and not skip_bad:
            lines.append("fix or remove these files, or pass --skip-bad to train on the rest")
        raise UserError("\n".join(lines))
    for s, r in reports.items():
        if r.num_bad:
            log(f"dataset check: --skip-bad dropped {r.num_bad} of {r.num_bad + len(r.items)} '{s}' images")
            for p in r.problems:
                log(f"  [{s}] {p}")
        if r.exif_oriented:
            log(f"dataset check: {r.exif_oriented} of {len(r.items)} '{s}' images carry an EXIF orientation other "
                f"than 1; they are used upright (rotated/mirrored as image viewers show them), so their masks must "
                f"be drawn on the upright image")
        warning = labels.get(s, (None, None))[1]
        if warning:
            log(warning)
    return reports
