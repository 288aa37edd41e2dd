"""Shared fixtures: tiny synthetic datasets written to a temporary folder."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.yamlio import dump_yaml

def _find_camvid() -> Path:
    """CamVid under $SEG_DATASETS_DIR when it is there, else the shared copy beside the checkout."""
    env = os.environ.get("SEG_DATASETS_DIR")
    if env and (Path(env) / "camvid" / "images").is_dir():
        return Path(env) / "camvid"
    return Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"


CAMVID = _find_camvid()
SLOW_TIMEOUT_S = 900  # per test in the slow tier (the quick tier's limit is pytest.ini's timeout)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (.ci/run: -n 2 on 2 cores) each worker gets one intra-op thread, and so do the
    CLIs it starts: two workers with two threads each would oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests get the slow tier's per-test limit unless they set their own; tests marked ``long`` are
    collected first, so that under -n 2 a minutes-long test starts early rather than last (xdist hands out
    the rest as the workers free up)."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: otherwise in file order


def write_dataset(root: Path, splits: dict[str, int], hw: tuple[int, int] = (40, 56), nc: int = 3,
                  ignore_index: int = 255, seed: int = 0) -> Path:
    """images/<split>/*.png + masks/<split>/*.png with rectangles whose colour hints at the class,
    plus a data YAML; returns the YAML path."""
    rng = np.random.default_rng(seed)
    h, w = hw
    for split, n in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            mask = np.zeros((h, w), np.uint8)
            for c in range(1, nc):
                y0, x0 = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
                y1, x1 = y0 + int(rng.integers(6, 12)), x0 + int(rng.integers(6, 14))
                mask[y0:y1, x0:x1] = c
                img[y0:y1, x0:x1] = (200 if c == 1 else 40, 40, 200 if c == 2 else 40)
            mask[0, :2] = ignore_index
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), img)
            cv2.imwrite(str(root / "masks" / split / f"{i:03d}.png"), mask)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(dump_yaml({"path": str(root), "train": "images/train", "val": "images/val",
                                    **({"test": "images/test"} if "test" in splits else {}),
                                    "nc": nc, "names": [f"c{i}" for i in range(nc)], "ignore_index": ignore_index}))
    return yaml_path


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 3-class dataset of 8 train / 4 val 40x56 images; the check cache goes to tmp too."""
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
    return write_dataset(tmp_path / "tiny", {"train": 8, "val": 4})


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let a test read or write the user's dataset-check cache."""
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "cache"))
