"""YOLO11 backbone (C3k2, C2PSA self-attention at stride 32) + YOLO11-style segmentation head
(models/yolo11_seg.yaml), cross-entropy + Dice loss.

The scale comes from the file name (yolo11s_seg.yaml = yolo11_seg.yaml at scale s) or --scale. From scratch
by default; ``--weights yolo11n-cls.pt`` starts the backbone from the reference ImageNet classification
checkpoint of the same scale (read without running code, see README "ImageNet-pretrained YOLO backbones").
Every segment/train.py flag works here:
    python unet-lite/yolo11-seg/seg_diceloss_yolo11.py --data data/camvid.yaml --epochs 50 --batch-size 8
    python unet-lite/yolo11-seg/seg_diceloss_yolo11.py --cfg models/yolo11s_seg.yaml --weights yolo11s-cls.pt --data data/camvid.yaml
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(
    cfg="models/yolo11n_seg.yaml",  # the scale is in the name; --cfg / --scale change it
    loss="ce+dice",  # CE for per-pixel calibration, Dice against class imbalance
    project="runs/train-yolo11",
)

if __name__ == "__main__":
    main(preset=PRESET)
