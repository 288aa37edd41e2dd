"""Segmentation heads, one file per family, built from a backbone's declared channels and strides only.

Registered heads (every one works with every backbone through the contract):

* ``segment``       - SegmentHead: lateral 1x1 per level, resize to the finest, fuse, classify (stride 4).
* ``unet``          - UNetHead: top-down decoder, upsample + concat each skip + conv block (stride 4, or 2).
* ``yolov5``        - YOLOv5Head: YOLOv5's top-down path of Conv / Upsample / Concat / C3 (stride 8, or 4).
* ``lraspp``        - LRASPPHead: Lite R-ASPP (MobileNetV3 paper), the cheapest (stride 8).
* ``deeplabv3plus`` - DeepLabV3PlusHead: ASPP + stride-4 skip; output_stride 8/16 by dilation (ResNets).
* ``ocr``           - OCRHead: object-contextual representations with its own auxiliary output (stride 8).

``segment``, ``unet`` and ``yolov5`` take ``attention=scse|cbam`` (models/attention.py). A head returns
logits, or a dict with "out" plus auxiliary outputs whose loss weights it declares in ``aux_weights``;
SegmentationModel returns "out" alone at inference. AuxHead is not registered: it is added by
``aux=True`` and used only in training.
"""
from models.heads.aux import AuxHead
from models.heads.common import level_width, resize_to, upsample_like
from models.heads.deeplab import ASPP, DeepLabV3PlusHead
from models.heads.lraspp import LRASPPHead
from models.heads.ocr import OCRHead
from models.heads.segment import SegmentHead
from models.heads.unet import UNetHead
from models.heads.yolov5 import YOLOv5Head

__all__ = ["AuxHead", "ASPP", "DeepLabV3PlusHead", "LRASPPHead", "OCRHead", "SegmentHead", "UNetHead",
           "YOLOv5Head", "level_width", "resize_to", "upsample_like"]
