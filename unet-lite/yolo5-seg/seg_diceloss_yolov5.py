"""YOLOv5 backbone + YOLOv5-style segmentation head (models/yolov5_seg.yaml), cross-entropy + Dice loss.

The scale comes from the file name (yolov5n_seg.yaml = yolov5_seg.yaml at scale n) or --scale;
models/yolov5_dcn_seg.yaml swaps deformable convolutions into the backbone. YOLO graphs train from
scratch (no ImageNet weights) and take [0, 1] RGB as it is. Every segment/train.py flag works here:
    python unet-lite/yolo5-seg/seg_diceloss_yolov5.py --data data/camvid.yaml --epochs 50 --batch-size 8
    python unet-lite/yolo5-seg/seg_diceloss_yolov5.py --cfg models/yolov5s_seg.yaml --data data/camvid.yaml
    python unet-lite/yolo5-seg/seg_diceloss_yolov5.py --cfg models/yolov5_dcn_seg.yaml --scale s --data data/camvid.yaml
    python unet-lite/yolo5-seg/seg_diceloss_yolov5.py --head unet --data data/camvid.yaml   # YAML backbone, zoo head
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(
    cfg="models/yolov5n_seg.yaml",  # the scale is in the name; --cfg / --scale change it
    loss="ce+dice",  # CE for per-pixel calibration, Dice against class imbalance
    project="runs/train-yolov5",
)

if __name__ == "__main__":
    main(preset=PRESET)
