"""MobileNetV3-Large + U-Net head, cross-entropy + Dice loss: the mobile recipe.

Usage:
    python unet-lite/MobileNet/seg_diceloss_mobilenetv3.py --data data/camvid.yaml --img-size 360 480 --weights pretrained

Why the ``unet`` head: at 640x640 it decodes to stride 4 for ~10.7 GFLOPs, a third of the
``segment`` head's ~34 (whose 3x3 fuse over four 128-channel levels at stride 4 outweighs this
backbone), and Dice rewards the fine boundaries a stride-8 head would blur. ``--backbone
mobilenet_v3_small`` or ``mobilenet_v2`` and ``--head yolov5`` (~5.9 GFLOPs) trade accuracy for speed;
every train.py flag works here.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(backbone="mobilenet_v3_large", head="unet", loss="ce+dice")

if __name__ == "__main__":
    main(preset=PRESET)
