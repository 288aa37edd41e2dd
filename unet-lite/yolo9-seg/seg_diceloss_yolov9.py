"""YOLOv9 (GELAN) backbone + YOLOv5-style segmentation head, cross-entropy + Dice loss.

Three files, one size each: models/yolov9t_seg.yaml (default), yolov9s_seg.yaml, yolov9c_seg.yaml.
RepConv branches are folded by model.fuse() for validation and export. YOLO graphs train from scratch
(no ImageNet weights) and take [0, 1] RGB as it is. Every segment/train.py flag works here:
    python unet-lite/yolo9-seg/seg_diceloss_yolov9.py --data data/camvid.yaml --epochs 50 --batch-size 8
    python unet-lite/yolo9-seg/seg_diceloss_yolov9.py --cfg models/yolov9c_seg.yaml --data data/camvid.yaml
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(
    cfg="models/yolov9t_seg.yaml",  # or yolov9s_seg.yaml / yolov9c_seg.yaml
    loss="ce+dice",  # CE for per-pixel calibration, Dice against class imbalance
    project="runs/train-yolov9",
)

if __name__ == "__main__":
    main(preset=PRESET)
