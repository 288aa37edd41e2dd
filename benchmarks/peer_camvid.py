"""Score an Ultralytics semantic-segmentation checkpoint (e.g. yolo26n-sem trained on CamVid) under our
protocol: every image of a split, mIoU over the 11 classes at the native 360x480, void (11) ignored.

The peer's own validator scores at its letterboxed training size; this script instead feeds each image
at a chosen scale (``--short``: the short side, 288 for a model trained with imgsz=288; 0 = native),
letterboxed to a multiple of 32 with grey 114 as Ultralytics pads, resizes the logits bilinearly back to
360x480 and takes the argmax there, as our val.py does. Input is RGB / 255 (Ultralytics' preprocessing).

How the 2026-12-03 peer row in BENCHMARKS.md was made (Ultralytics in its own environment, see
benchmarks/peer_speed.py; on a copy of the dataset, since it writes .cache files beside the data):
    yolo semantic train model=yolo26n-sem.yaml data=camvid_peer.yaml imgsz=288 nbs=8 time=0.25 device=cpu \\
        plots=False seed=0
with camvid_peer.yaml = our data/camvid.yaml's path/train/val/test, ``masks_dir: masks``, the 11 names
as a dict and ``label_mapping: {11: ignore_label}``; then
    /tmp/ulv/bin/python benchmarks/peer_camvid.py runs/semantic/train/weights/best.pt --split test --short 288
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
         "Bicyclist"]
VOID = 11


def predict(net: torch.nn.Module, rgb: np.ndarray, short: int) -> np.ndarray:
    """Class ids at the image's own size."""
    h0, w0 = rgb.shape[:2]
    img = cv2.resize(rgb, (round(w0 * short / h0), short), interpolation=cv2.INTER_LINEAR) if short else rgb
    h, w = img.shape[:2]
    ph, pw = -h % 32, -w % 32
    top, left = ph // 2, pw // 2
    pad = cv2.copyMakeBorder(img, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    x = torch.from_numpy(pad).permute(2, 0, 1)[None].float() / 255
    y = net(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    y = F.interpolate(y, size=pad.shape[:2], mode="bilinear", align_corners=False)[:, :, top:top + h, left:left + w]
    return F.interpolate(y, size=(h0, w0), mode="bilinear", align_corners=False)[0].argmax(0).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights")
    p.add_argument("--root", default=os.path.join(os.environ.get("SEG_DATASETS_DIR", "datasets"), "camvid"))
    p.add_argument("--split", default="test")
    p.add_argument("--short", type=int, default=0, help="resize the short side to this first (0: native)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    try:
        from ultralytics import YOLO
    except ImportError:
        sys.exit("peer_camvid.py: this interpreter has no ultralytics (see benchmarks/peer_speed.py)")
    net = YOLO(a.weights).model.float().eval()
    files = sorted((Path(a.root) / "images" / a.split).glob("*.jpg"))
    if not files:
        sys.exit(f"peer_camvid.py: no images in {Path(a.root) / 'images' / a.split}")
    nc = len(NAMES)
    cm = np.zeros((nc, nc), np.int64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            pred = predict(net, cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), a.short)
            mask = cv2.imread(str(Path(a.root) / "masks" / a.split / (f.stem + ".png")), cv2.IMREAD_UNCHANGED)
            keep = mask != VOID
            cm += np.bincount(mask[keep].astype(np.int64) * nc + pred[keep], minlength=nc * nc).reshape(nc, nc)
    iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1)
    print(f"{a.split}: {len(files)} images at short side {a.short or 'native'}, mIoU {100 * iou.mean():.1f}, "
          f"pixel acc {np.diag(cm).sum() / cm.sum():.3f}, {(time.perf_counter() - t0) / len(files) * 1e3:.0f} ms/img")
    print(", ".join(f"{n} {100 * v:.1f}" for n, v in zip(NAMES, iou)))


if __name__ == "__main__":
    main()
