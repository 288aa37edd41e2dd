"""Test helpers: classification checkpoints laid out like the reference YOLO package's, built from our blocks.

Every module instance is re-classed to a subclass whose ``__module__`` is the reference package's path
(``ultralytics.nn.modules.block.C3k2`` ...); those modules exist in ``sys.modules`` only while saving, so
the file names classes that cannot be imported when it is read.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from models.model import build_model, model_config

PATHS = {"Conv": "ultralytics.nn.modules.conv", "Concat": "ultralytics.nn.modules.conv"}
BLOCK = "ultralytics.nn.modules.block"
TASKS = "ultralytics.nn.tasks"


@contextlib.contextmanager
def fake_package() -> Iterator[dict[str, types.ModuleType]]:
    """Temporary ultralytics.* modules in sys.modules (removed afterwards)."""
    names = ["ultralytics", "ultralytics.nn", "ultralytics.nn.modules", "ultralytics.nn.modules.conv",
             BLOCK, "ultralytics.nn.modules.head", TASKS]
    mods = {n: types.ModuleType(n) for n in names}
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _reclass(m: nn.Module, mods: dict[str, types.ModuleType]) -> None:
    for sub in m.modules():
        cls = type(sub)
        if not cls.__module__.startswith(("models.", "tests.", "yolo_cls_fakes")):
            continue
        name = cls.__name__
        path = PATHS.get(name, BLOCK)
        fake = getattr(mods[path], name, None)
        if fake is None:
            fake = type(name, (cls,), {"__module__": path, "__qualname__": name})
            setattr(mods[path], name, fake)
        sub.__class__ = fake


class Classify(nn.Module):
    """Stand-in of the reference classifier row: Conv to 1280, pool, linear."""

    def __init__(self, c1: int, nc: int = 1000) -> None:
        super().__init__()
        from models.conv import Conv
        self.conv = Conv(c1, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1280, nc)


class ClassificationModel(nn.Module):
    def __init__(self, rows: list[nn.Module], yaml: dict) -> None:
        super().__init__()
        self.model = nn.Sequential(*rows)
        self.yaml = yaml


def make_cls_checkpoint(path: Path, graph: str, scale: str, drop_types: tuple[str, ...] = ("SPPF",),
                        yaml_file: str | None = None, seed: int = 0, extra: dict | None = None) -> ClassificationModel:
    """Write a -cls.pt like the reference one for ``graph`` at ``scale`` (random weights); returns the model.

    The rows are our graph's backbone rows minus ``drop_types`` (yolo11-cls has no SPPF), then Classify.
    """
    torch.manual_seed(seed)
    seg = build_model(model_config(11, cfg=graph, scale=scale))
    rows = [m for m, r in zip(seg.backbone.layers, seg.backbone.rows) if r.module not in drop_types]
    for m in rows:
        for p in m.parameters():
            p.data.normal_()
        for b in m.buffers():
            if b.is_floating_point():
                b.data.uniform_(0.5, 1.5)
    rows.append(Classify(seg.backbone.channels[-1]))
    family = Path(graph).name.split("_")[0]
    model = ClassificationModel(rows, {"yaml_file": yaml_file or f"{family}{scale}-cls.yaml", "scale": scale})
    model = model.half()
    with fake_package() as mods:
        _reclass(model, mods)
        for cls in (ClassificationModel, Classify):
            fake = type(cls.__name__, (cls,), {"__module__": TASKS if cls is ClassificationModel else "ultralytics.nn.modules.head",
                                               "__qualname__": cls.__name__})
            setattr(mods[fake.__module__], cls.__name__, fake)
        for sub in model.modules():
            if type(sub) in (ClassificationModel, Classify):
                sub.__class__ = getattr(mods[TASKS if type(sub) is ClassificationModel else "ultralytics.nn.modules.head"],
                                        type(sub).__name__)
        torch.save({"model": model, "ema": None, "epoch": -1, "date": "2024-09-30T00:00:00",
                    "train_args": {"imgsz": 224, "data": "imagenet"}, **(extra or {})}, path)
    return model


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))
