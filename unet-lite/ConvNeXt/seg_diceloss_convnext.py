"""ConvNeXt-Tiny + U-Net head, cross-entropy + Dice loss, AdamW at ConvNeXt's fine-tuning settings.

Usage:
    python unet-lite/ConvNeXt/seg_diceloss_convnext.py --data data/camvid.yaml --img-size 360 480 --weights pretrained

Why the ``unet`` head: ConvNeXt has no stride-2 level (its stem patchifies straight to stride 4)
and strong deep features, so a top-down decoder that fuses every level down to stride 4 suits it
(~81 GFLOPs at 640x640 against ~104 with ``segment``). Why lr0 1e-4 and weight decay 0.05: the
AdamW settings the ConvNeXt paper fine-tunes with for ADE20K segmentation. Every train.py flag
works here.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from segment.train import main

PRESET = dict(backbone="convnext_tiny", head="unet", loss="ce+dice", optimizer="adamw", lr0=1e-4, weight_decay=0.05)

if __name__ == "__main__":
    main(preset=PRESET)
