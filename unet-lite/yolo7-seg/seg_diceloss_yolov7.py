"""YOLOv7-tiny ELAN backbone (LeakyReLU) + YOLOv5-style segmentation head (models/yolov7_seg.yaml),
cross-entropy + Dice loss.

One size (tiny): the backbone is the published YOLOv7-tiny backbone and SPPCSPC, parameter for
parameter. YOLO graphs train from scratch (no ImageNet weights) and take [0, 1] RGB as it is. Every
segment/train.py flag works here:
    python unet-lite/yolo7-seg/seg_diceloss_yolov7.py --data data/camvid.yaml --epochs 50 --batch-size 8
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(
    cfg="models/yolov7_seg.yaml",
    loss="ce+dice",  # CE for per-pixel calibration, Dice against class imbalance
    project="runs/train-yolov7",
)

if __name__ == "__main__":
    main(preset=PRESET)
