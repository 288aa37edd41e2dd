"""CamVid comparison of the heads on one backbone at one training budget: test mIoU per head.

Each head is one call of benchmarks/camvid_budget.py (group ``heads``): the CamVid recipe (yolov8n graph,
the same crop, loss, LR, batch, seed) under the same ``--minutes`` of wall time, with only ``--head``
changed, then scored on test at 360x480. The rows land in benchmarks/results/camvid_budget.json and the
table of BENCHMARKS.md beside the budget runs, so heads can be added one at a time.

Usage:
    python benchmarks/camvid_heads.py --minutes 6                                        # every default head
    python benchmarks/camvid_heads.py --minutes 6 --heads graph,lraspp -- --cfg models/yolo11n_seg.yaml
    python benchmarks/camvid_heads.py --minutes 0.25 --heads graph,lraspp --subset 16 -- --img-size 96 128 --crop 64 96

``graph`` is the graph's own head (no ``--head`` flag); ``unet@attention=scse`` passes head options.
``--subset N`` trains/validates/tests on the first N images of each split (a folder of links under
--project; the dataset itself is never touched). Flags after ``--`` go to the recipe, as in camvid_budget.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment.common import cli_entry, setup_runtime
from utils.dataconfig import load_data_config
from utils.errors import UserError
from utils.yamlio import dump_yaml

DEFAULT_HEADS = "graph,segment,unet,unet@attention=scse,yolov5,lraspp,ocr,deeplabv3plus"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The script's flags, and the flags after ``--`` that go to every head's recipe run."""
    from benchmarks.camvid_budget import split_recipe_flags

    argv, extra = split_recipe_flags(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="training budget per head (the recipe's --time)")
    p.add_argument("--heads", default=DEFAULT_HEADS, help="comma-separated; options after @ (unet@attention=scse)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="data/camvid.yaml")
    p.add_argument("--subset", type=int, default=0, help="use the first N images of each split (smoke tests)")
    p.add_argument("--project", default="runs/camvid-heads")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--store", default="benchmarks/results/camvid_budget.json")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv), extra


def subset_yaml(data_yaml: str, n: int, where: Path) -> str:
    """A data YAML over links to the first ``n`` images (and masks) of each split."""
    data = load_data_config(data_yaml)
    root = where / "subset"
    splits = {}
    for split in ("train", "val", "test"):
        img_dir = Path(data.root) / "images" / split
        if not img_dir.is_dir():
            continue
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for img in sorted(img_dir.iterdir())[:n]:
            masks = sorted((Path(data.root) / "masks" / split).glob(img.stem + ".*"))
            if not masks:
                raise UserError(f"--subset: no mask for {img}")
            for src, kind in ((img, "images"), (masks[0], "masks")):
                dst = root / kind / split / src.name
                if not dst.exists():
                    os.symlink(src.resolve(), dst)
        splits[split] = f"images/{split}"
    cfg = {"path": str(root.resolve()), **splits, "nc": data.nc, "names": list(data.names),
           "ignore_index": data.ignore_index, **({"palette": [list(c) for c in data.palette]} if data.palette else {})}
    out = where / "subset.yaml"
    out.write_text(dump_yaml(cfg))
    return str(out)


def head_flags(spec: str) -> list[str]:
    """'unet@attention=scse' -> the recipe flags that choose it; 'graph' keeps the graph's own head."""
    from models import HEADS

    name, _, opts = spec.partition("@")
    if name == "graph":
        if opts:
            raise UserError(f"--heads: '{spec}': the graph's own head takes no options")
        return []
    if name not in HEADS:
        raise UserError(f"--heads: unknown head '{name}'; choose from: graph, {', '.join(HEADS.names())}")
    return ["--head", name] + (["--head-args", opts] if opts else [])


def label(minutes: float, head: str, seed: int, extra: list[str]) -> str:
    """The row's name: a run with another seed or other recipe flags never replaces this one's row."""
    return (f"{minutes:g} min, head {head}" + (f", seed {seed}" if seed else "")
            + (f", {' '.join(extra)}" if extra else ""))


def _main(argv: list[str] | None) -> list[dict[str, Any]]:
    a, extra = parse_args(argv)
    from benchmarks import camvid_budget

    heads = [h.strip() for h in a.heads.split(",") if h.strip()]
    flags = {h: head_flags(h) for h in heads}  # every name checked before the first hour is spent
    project = Path(a.project)
    data = subset_yaml(a.data, a.subset, project) if a.subset else a.data
    rows = []
    for h in heads:
        argv_h = ["--minutes", f"{a.minutes:g}", "--seed", str(a.seed), "--data", data, "--group", "heads",
                  "--label", label(a.minutes, h, a.seed, extra), "--project", str(project), "--out", a.out,
                  "--store", a.store, *(["--no-onnx"] if a.no_onnx else []), "--", *flags[h], *extra]
        rows.append(camvid_budget._main(argv_h))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry (one-line errors)."""
    setup_runtime()
    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
