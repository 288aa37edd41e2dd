"""Console commands installed by ``pip install -e .`` (see pyproject.toml).

Each wraps an entry script's ``main``: those return their results (handy from Python), while a console
script's return value becomes the exit status, so these return 0 after a normal run.
"""
from __future__ import annotations

import importlib


def _run(module: str) -> int:
    importlib.import_module(f"segment.{module}").main()
    return 0


def train() -> int:
    """unet-lite-train: segment/train.py."""
    return _run("train")


def val() -> int:
    """unet-lite-val: segment/val.py."""
    return _run("val")


def predict() -> int:
    """unet-lite-predict: segment/predict.py."""
    return _run("predict")


def export() -> int:
    """unet-lite-export: segment/export.py."""
    return _run("export")


def benchmark() -> int:
    """unet-lite-benchmark: segment/benchmark.py."""
    return _run("benchmark")
