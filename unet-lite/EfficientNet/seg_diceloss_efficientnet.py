"""EfficientNet-B0 + U-Net head, cross-entropy + Dice loss.

Usage:
    python unet-lite/EfficientNet/seg_diceloss_efficientnet.py --data data/camvid.yaml --img-size 360 480 --weights pretrained

Why the ``unet`` head: EfficientNet's levels are narrow (24/40/112/320 channels), so concatenating
each skip into a top-down decoder is cheap (~13.5 GFLOPs at 640x640 against ~37 with ``segment``)
and keeps stride-4 detail. ``--backbone efficientnet_b1`` or ``efficientnet_v2_s`` scale it up;
every train.py flag works here.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(backbone="efficientnet_b0", head="unet", loss="ce+dice")

if __name__ == "__main__":
    main(preset=PRESET)
