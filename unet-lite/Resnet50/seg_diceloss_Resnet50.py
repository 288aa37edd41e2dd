"""ResNet + SegmentHead trained with Dice + cross-entropy.

A recipe is a preset handed to the shared engine; every segment/train.py flag works and overrides it:
    python unet-lite/Resnet50/seg_diceloss_Resnet50.py --data data/camvid.yaml --epochs 100 \
        --batch-size 16 --img-size 640 640 --weights pretrained
    python unet-lite/Resnet50/seg_diceloss_Resnet50.py --backbone resnet18 --head unet ...
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(
    backbone="resnet50",  # resnet18 / resnet34 via --backbone
    head="segment",
    loss="ce+dice",       # CE for per-pixel calibration, Dice against class imbalance
    optimizer="sgd",      # the classic recipe for ImageNet-initialised ResNets
    lr0=0.01,
    cos_lr=True,
    project="runs/train-resnet",
)

if __name__ == "__main__":
    main(preset=PRESET)
