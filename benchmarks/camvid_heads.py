"""CamVid comparison of the heads on one backbone at one training budget: test mIoU per head.

Every head is trained by the same engine (segment/train.py's ``run``) with identical flags - same backbone,
epochs (or ``--time`` hours where the trainer has it), image size, batch, seed - then scored by segment/val.py
on the test split. Writes a Markdown table and a JSON file.

Usage:
    python benchmarks/camvid_heads.py --epochs 60 --weights pretrained                  # the full comparison
    python benchmarks/camvid_heads.py --heads lraspp,ocr --epochs 1 --img-size 64 --subset 16   # smoke test

``--subset N`` trains/validates/tests on the first N images of each split (a folder of links under
--project; the dataset itself is never touched).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment.common import cli_entry, parse_kv, setup_runtime
from utils.dataconfig import load_data_config
from utils.errors import UserError
from utils.yamlio import dump_yaml

DEFAULT_HEADS = ("segment,unet,unet@attention=scse,unet@attention=cbam,yolov5,yolov5@attention=cbam,lraspp,"
                 "deeplabv3plus,ocr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The script's flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/camvid.yaml")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--heads", default=DEFAULT_HEADS, help="comma-separated; options after @ (unet@attention=scse)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--time", type=float, default=None, help="training budget in hours per head (instead of --epochs)")
    p.add_argument("--img-size", type=int, nargs="+", default=[360, 480])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weights", default="pretrained", help="none | pretrained")
    p.add_argument("--loss", default="ce+dice")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="")
    p.add_argument("--subset", type=int, default=0, help="use the first N images of each split (smoke tests)")
    p.add_argument("--project", default="runs/camvid-heads")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


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


def _main(argv: list[str] | None) -> list[dict[str, Any]]:
    a = parse_args(argv)
    setup_runtime()
    from segment import train, val
    from models import HEADS

    heads = [h.strip() for h in a.heads.split(",") if h.strip()]
    for h in heads:
        if h.split("@")[0] not in HEADS:
            raise UserError(f"--heads: unknown head '{h}'; choose from: {', '.join(HEADS.names())}")
    project = Path(a.project)
    data = subset_yaml(a.data, a.subset, project) if a.subset else a.data
    budget: dict[str, Any] = {"epochs": a.epochs}
    if a.time is not None:
        if "time" not in vars(train.build_parser().parse_args([])):
            raise UserError("--time: this trainer has no --time flag yet; use --epochs")
        budget["time"] = a.time
    rows = []
    for h in heads:
        name, *opts = h.split("@")
        label = h.replace("@", "-").replace("=", "")
        t0 = time.time()
        summary = train.run(data=data, backbone=a.backbone, head=name, head_args=parse_kv(",".join(opts)) or None,
                            img_size=list(a.img_size), batch_size=a.batch_size, weights=a.weights, loss=a.loss,
                            workers=a.workers, device=a.device, seed=0, project=str(project), name=label,
                            exist_ok=True, **budget)
        train_s = time.time() - t0
        best = Path(summary["save_dir"]) / "weights" / "best.pt"
        res = val.run(weights=str(best), data=data, split="test", img_size=list(a.img_size), workers=a.workers,
                      device=a.device, project=str(project / "val"), name=label, exist_ok=True)
        rows.append({"head": h, "backbone": a.backbone, "params": res["params"], "gflops": round(res["gflops"], 2),
                     "epochs_run": summary.get("epochs_run"), "train_s": round(train_s, 1),
                     "test_mIoU": round(float(res["mIoU"]), 4)})
    table = [f"CamVid test mIoU per head: {a.backbone}, {budget}, {a.img_size}, batch {a.batch_size}, "
             f"weights {a.weights}, loss {a.loss}" + (f", SUBSET of {a.subset} images per split" if a.subset else ""),
             "", "| head | params (M) | GFLOPs | epochs | train (s) | test mIoU |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['head']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} | {r['epochs_run']} | {r['train_s']:.0f} | "
              f"{r['test_mIoU']:.4f} |" for r in rows]
    print("\n".join(table))
    project.mkdir(parents=True, exist_ok=True)
    (project / "camvid_heads.md").write_text("\n".join(table) + "\n")
    (project / "camvid_heads.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry (one-line errors)."""
    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
