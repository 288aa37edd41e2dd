"""YOLOv8 backbone + YOLOv5-style segmentation head (models/yolov8_seg.yaml), cross-entropy + Dice loss.

The scale comes from the file name (yolov8s_seg.yaml = yolov8_seg.yaml at scale s) or --scale. YOLO
graphs train from scratch (no ImageNet weights) and take [0, 1] RGB as it is. Every segment/train.py
flag works here:
    python unet-lite/yolo8-seg/seg_diceloss_yolov8.py --data data/camvid.yaml --epochs 50 --batch-size 8
    python unet-lite/yolo8-seg/seg_diceloss_yolov8.py --cfg models/yolov8_seg.yaml --scale m --data data/camvid.yaml
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(
    cfg="models/yolov8n_seg.yaml",  # the scale is in the name; --cfg / --scale change it
    loss="ce+dice",  # CE for per-pixel calibration, Dice against class imbalance
    project="runs/train-yolov8",
)

if __name__ == "__main__":
    main(preset=PRESET)
