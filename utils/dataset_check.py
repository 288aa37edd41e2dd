"""Pre-flight check of a dataset split, run once before any training or validation step.

Every image must decode; every mask must exist, decode, match its image's size and hold only class
ids in [0, nc) or the ignore index. All problems are collected and reported together. The result
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

import numpy as np
from PIL import Image

from utils.dataconfig import DataConfig, cache_dir
from utils.errors import UserError
from utils.files import atomic_write_text
from utils.masks import MaskError, find_mask, read_mask

CHECK_VERSION = 1


@dataclass
class SplitReport:
    """Outcome of checking one split: usable (image, mask) pairs, problems, pixel counts per class."""

    split: str
    items: list[tuple[Path, Path]]
    problems: list[str] = field(default_factory=list)
    class_pixels: list[int] = field(default_factory=list)
    num_bad: int = 0
    cached: bool = False


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _check_pair(image: Path, data: DataConfig) -> tuple[Path | None, list[str], np.ndarray | None]:
    """Check one image and its mask; returns (mask path, problems, class pixel counts)."""
    spec, root = data.mask_spec, data.root
    problems: list[str] = []
    hw = None
    try:
        with Image.open(image) as im:
            im.load()  # full decode: catches truncated files, which open() alone does not
            hw = (im.height, im.width)
    except Exception as e:
        problems.append(f"{_rel(image, root)}: image does not decode ({type(e).__name__}: {str(e)[:80]})")
    mask_path = find_mask(image, data.images_dir, data.masks_dir)
    if mask_path is None:
        problems.append(f"{_rel(image, root)}: no mask found (expected {data.masks_dir}/.../{image.stem}.png or .json)")
        return None, problems, None
    try:
        mask = read_mask(mask_path, spec, hw)
    except MaskError as e:
        return mask_path, problems + [f"{_rel(mask_path, root)}: {e.reason}"], None
    if hw is not None and mask.shape != hw:
        problems.append(f"{_rel(mask_path, root)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {hw[1]}x{hw[0]} (WxH)")
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=max(spec.nc, spec.ignore_index + 1))
    bad_values = [v for v in np.flatnonzero(counts) if v >= spec.nc and v != spec.ignore_index]
    if bad_values:
        n_bad = int(counts[bad_values].sum())
        shown = ", ".join(str(v) for v in bad_values[:10]) + (", ..." if len(bad_values) > 10 else "")
        msg = (f"{_rel(mask_path, root)}: values {{{shown}}} outside 0..{spec.nc - 1} and ignore_index "
               f"{spec.ignore_index} ({n_bad:,} px)")
        if set(np.flatnonzero(counts)) <= {0, 255}:
            msg += "; looks like a binary mask saved as 0/255: set ignore_index: 255 if 255 means 'ignore', else remap 255 -> 1"
        problems.append(msg)
    return mask_path, problems, counts[: spec.nc]


def _fingerprint(data: DataConfig, split: str, images: list[Path]) -> str:
    h = hashlib.sha256()
    spec = data.mask_spec
    h.update(json.dumps([CHECK_VERSION, split, spec.nc, spec.ignore_index, list(spec.names), spec.palette,
                         spec.ignore_color, data.images_dir, data.masks_dir]).encode())
    for img in images:
        for p in (img, find_mask(img, data.images_dir, data.masks_dir)):
            if p is None:
                h.update(b"-")
                continue
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def check_split(data: DataConfig, split: str, workers: int = 4, use_cache: bool = True) -> SplitReport:
    """Check every image/mask pair of ``split`` (cached). Raises UserError only for an empty split."""
    images = data.split_images(split)
    key = _fingerprint(data, split, images)
    cache_file = cache_dir() / f"check_{data.yaml_file.stem}_{split}_{key[:20]}.json"
    if use_cache and cache_file.is_file():
        try:
            c = json.loads(cache_file.read_text(encoding="utf-8"))
            if c.get("key") == key:
                return SplitReport(split, [(Path(i), Path(m)) for i, m in c["items"]], c["problems"],
                                   c["class_pixels"], c["num_bad"], cached=True)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache is recomputed
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda im: _check_pair(im, data), images))
    items, problems, total, num_bad = [], [], np.zeros(data.nc, np.int64), 0
    for image, (mask, probs, counts) in zip(images, results):
        if probs:
            problems += probs
            num_bad += 1
        elif mask is not None and counts is not None:
            items.append((image, mask))
            total += counts
    report = SplitReport(split, items, problems, [int(v) for v in total], num_bad)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps({"key": key, "items": [[str(i), str(m)] for i, m in items],
                                                  "problems": problems, "class_pixels": report.class_pixels,
                                                  "num_bad": num_bad}))
    except OSError:
        pass  # a read-only cache location only costs the re-check next time
    return report


def preflight(data: DataConfig, splits: list[str], skip_bad: bool = False, workers: int = 4,
              log=print) -> dict[str, SplitReport]:
    """Check ``splits``; report every problem and raise UserError unless ``skip_bad`` drops them."""
    reports = {s: check_split(data, s, workers) for s in splits}
    problems = [(s, p) for s, r in reports.items() for p in r.problems]
    if problems and not skip_bad:
        lines = [f"dataset check failed for {data.yaml_file} (root {data.root}): {len(problems)} problem(s)"]
        lines += [f"  [{s}] {p}" for s, p in problems]
        lines.append("fix or remove these files, or pass --skip-bad to train on the rest")
        raise UserError("\n".join(lines))
    for s, r in reports.items():
        if r.num_bad:
            log(f"dataset check: --skip-bad dropped {r.num_bad} of {r.num_bad + len(r.items)} '{s}' images")
            for p in r.problems:
                log(f"  [{s}] {p}")
        if not r.items:
            raise UserError(f"{data.yaml_file}: split '{s}' has no usable image/mask pairs")
    return reports
