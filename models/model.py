"""SegmentationModel (backbone -> head -> logits at the input size) and its self-describing config.

A model config is plain data (it is stored in every checkpoint), so ``build_model(cfg)`` rebuilds the
exact architecture without the files it came from::

    {"backbone": "resnet50", "backbone_spec": {...YAML...}, "graph": None, "scale": None,
     "head": "segment", "head_args": {}, "nc": 11, "aux": False}
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import check_attention
from models.contract import Backbone, Head
from models.heads import AuxHead
from models.registry import BACKBONES, HEADS
from utils.errors import UserError
from utils.yamlio import load_yaml

MODELS_DIR = Path(__file__).resolve().parent


class SegmentationModel(nn.Module):
    """Backbone + head (+ optional auxiliary head). Input: RGB in [0, 1], any H x W. Output: logits, H x W."""

    def __init__(self, backbone: Backbone, head: Head, nc: int, aux_head: Head | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.nc = nc
        self.stride = max(backbone.strides)
        # Normalisation lives in the model so exported graphs and predict take plain [0, 1] RGB.
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, -1, 1, 1), persistent=False)

    @property
    def output_weights(self) -> dict[str, float]:
        """Loss weight of every auxiliary output the head declares (the FCN ``aux`` one is --aux-weight's)."""
        return dict(getattr(self.head, "aux_weights", {}))

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits at the input size, or (inference only) at ``size``: see resize_logits. In training with
        auxiliary outputs, {"out": logits, name: logits, ...} at the input size."""
        h, w = x.shape[-2:]
        # Pad (with the mean colour, i.e. zero after normalisation) to a multiple of the largest stride
        # so every Upsample x2 / Concat pair lines up for any input size; the logits are cropped back.
        # Always padded (a zero pad is a copy): a Python `if` on the sizes would be frozen into a traced
        # graph, which would then fail or drift at other input sizes. (With ``size``, resize_logits has
        # such an `if`: graphs that take a size are static ones.)
        x = self._pad(x)
        return self._logits(x, h, w, crop=True, size=size)

    def forward_static(self, x: torch.Tensor, size: tuple[int, int] | None = None
                       ) -> torch.Tensor | dict[str, torch.Tensor]:
        """forward() for a graph traced at this one input size (a static ONNX export). At a multiple of the
        stride the pad and the crop are no-ops, but a traced graph keeps them as full-size copies that ONNX
        Runtime does not remove (BENCHMARKS.md, seventh session): here they are left out, which only a graph
        that never sees another size may do. Same values as forward()."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            return self.forward(x, size)
        return self._logits((x - self.mean) / self.std, h, w, crop=False, size=size)

    def strided_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """Inference: the main head's logits at its own stride, and (h, w, padded h, padded w) of ``x``, which
        ``resize_logits`` needs to bring them to any size. Lets the inference path resize image by image,
        each straight to its own size, without holding a batch of full-size logits."""
        h, w = x.shape[-2:]
        x = self._pad(x)
        return self._heads(x)[1]["out"], (int(h), int(w), int(x.shape[-2]), int(x.shape[-1]))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.pad((x - self.mean) / self.std, (0, (-w) % self.stride, 0, (-h) % self.stride))

    def _heads(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Backbone features and the head's outputs as a dict ("out" = the main logits), at the head's stride."""
        features = self.backbone(x)
        head_out = self.head(features)
        return features, dict(head_out) if isinstance(head_out, dict) else {"out": head_out}

    def _logits(self, x: torch.Tensor, h: int, w: int, crop: bool, size: tuple[int, int] | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Backbone, head(s) and the logits resized to ``x``'s size (cropped to h x w with ``crop``), or
        the main logits to ``size``."""
        if size is not None and self.training:
            raise ValueError("SegmentationModel: an output size is for inference (eval mode) only")
        features, outputs = self._heads(x)
        hp, wp = x.shape[-2:]
        out = self.resize_logits(outputs.pop("out"), (h, w, hp, wp), size, crop)
        if not self.training:
            return out  # evaluation, predict and export see the main logits only
        if self.aux_head is not None:
            outputs["aux"] = self.aux_head(features)
        if not outputs:
            return out
        return {"out": out, **{k: self.resize_logits(v, (h, w, hp, wp), None, crop) for k, v in outputs.items()}}

    @staticmethod
    def resize_logits(logits: torch.Tensor, geometry: tuple[int, int, int, int], size: tuple[int, int] | None = None,
                      crop: bool = True) -> torch.Tensor:
        """Strided logits of an input of ``geometry`` = (h, w, padded h, padded w) at h x w, or at ``size``.

        Inference wants the logits at the image's own size, usually not the model's input size. When the
        input needed no padding, the strided logits cover exactly the input, so one bilinear resize goes
        straight to ``size``: with align_corners=False it maps pixel centres as two resizes through the
        input size do (the values differ by the second interpolation's extra smoothing), and the input-size
        logits are never built. With padding, they are built and cropped first. ``crop=False``: the caller
        knows there is no padding (a static graph), so no crop is traced.
        """
        h, w, hp, wp = geometry
        target = None if size is None else (int(size[0]), int(size[1]))
        if target == (h, w):
            target = None  # the input size: the plain path
        if target is not None and (hp, wp) == (h, w):
            return F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
        # unconditional for the same reason as the pad (every head's out_stride is > 1 anyway)
        logits = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        logits = logits[..., :h, :w] if crop else logits
        if target is not None:
            logits = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
        return logits

    def fuse(self) -> "SegmentationModel":
        """Fold BatchNorm (and re-parameterisable branches) into convolutions for inference."""
        for m in list(self.modules()):
            fuse = getattr(m, "fuse", None)
            # a submodule may be *named* fuse (SegmentHead.fuse is a conv layer): only call methods
            if m is not self and callable(fuse) and not isinstance(fuse, nn.Module):
                fuse()
        return self


_SCALED_NAME = re.compile(r"^(?P<base>.+?\d+)(?P<scale>[nsmlx])(?P<rest>_.*)?$")


def split_scale(path: Path) -> tuple[Path, str | None]:
    """models/yolov8s_seg.yaml -> (models/yolov8_seg.yaml, 's') when only the unscaled file exists."""
    if path.is_file():
        return path, None
    m = _SCALED_NAME.match(path.stem)
    if m:
        base = path.with_name(f"{m['base']}{m['rest'] or ''}{path.suffix}")
        if base.is_file():
            return base, m["scale"]
    return path, None


def resolve_cfg_path(cfg: str | os.PathLike) -> Path:
    """Find a model YAML as given, relative to models/, or as models/backbone/<name>.yaml."""
    p = Path(cfg)
    for cand in (p, MODELS_DIR / p, MODELS_DIR / p.name, MODELS_DIR / "backbone" / p.name,
                 MODELS_DIR / "backbone" / f"{p.name}.yaml"):
        found, _ = split_scale(cand)
        if found.is_file():
            return cand
    raise UserError(f"model YAML '{cfg}' not found (looked in ., {MODELS_DIR}, {MODELS_DIR / 'backbone'})")


def model_config(nc: int, backbone: str | None = None, head: str | None = None, cfg: str | None = None,
                 scale: str | None = None, aux: bool = False, head_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve CLI-level choices (--backbone/--head/--cfg/--scale) into a self-contained model config."""
    out: dict[str, Any] = {"backbone": backbone, "backbone_spec": None, "graph": None, "scale": scale,
                           "head": head, "head_args": dict(head_args or {}), "nc": int(nc), "aux": bool(aux)}
    if head is not None and head not in HEADS:
        raise UserError(f"--head: unknown head '{head}'; choose from: {', '.join(HEADS.names())}")
    if cfg:
        path, file_scale = split_scale(resolve_cfg_path(cfg))
        data = load_yaml(path)
        if "source" in data:  # a torchvision backbone spec
            out.update(backbone=data["name"], backbone_spec=data, head=head or "segment")
        elif "backbone" in data:  # a YOLO-style graph
            out.update(backbone=None, graph=data, scale=scale or file_scale, cfg_file=str(path))
        else:
            raise UserError(f"{path}: not a model YAML (needs 'source' for a backbone or 'backbone'/'head' rows)")
        return out
    name = backbone or "resnet18"
    if name not in BACKBONES:
        raise UserError(f"--backbone: unknown backbone '{name}'; choose from: {', '.join(BACKBONES.names())}")
    out["backbone"] = name
    spec_file = MODELS_DIR / "backbone" / f"{name}.yaml"
    if spec_file.is_file():
        out["backbone_spec"] = load_yaml(spec_file)
    out["head"] = head or "segment"
    return out


def build_model(cfg: dict[str, Any]) -> SegmentationModel:
    """Build a randomly initialised SegmentationModel from a model config (see ``model_config``)."""
    cfg = copy.deepcopy(cfg)
    nc = int(cfg["nc"])
    head: Head | None = None
    if cfg.get("graph") is not None:
        from models.parser import parse_model  # the YAML graph parser

        backbone, head = parse_model(cfg["graph"], nc=nc, scale=cfg.get("scale"), name=cfg.get("cfg_file", "<graph>"))
    elif cfg.get("backbone_spec") is not None:
        from models.backbones import TorchvisionBackbone

        backbone = TorchvisionBackbone(cfg["backbone_spec"])
    else:
        backbone = BACKBONES.get(cfg["backbone"])()
    if cfg.get("head") is not None or head is None:
        name, head_args = cfg.get("head") or "segment", dict(cfg.get("head_args", {}))
        head_cls = HEADS.get(name)
        check_attention(head_args.get("attention"))
        prepare = getattr(head_cls, "prepare_backbone", None)  # e.g. dilation for an output stride
        if prepare is not None:
            head_args = prepare(backbone, head_args)
        try:
            head = head_cls(backbone.channels, backbone.strides, nc, **head_args)
        except TypeError as e:  # an option the head does not take
            raise UserError(f"--head-args {cfg.get('head_args')}: not accepted by the '{name}' head ({e})") from None
        except (ValueError, AssertionError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as e:
            # a value the head cannot build with (min_stride=64 on a stride-32 backbone, width=-5, ...)
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"--head-args {cfg.get('head_args')}: the '{name}' head cannot be built with these "
                            f"values on a backbone with strides {list(backbone.strides)} ({why})") from None
    aux = AuxHead(backbone.channels, backbone.strides, nc) if cfg.get("aux") else None
    model = SegmentationModel(backbone, head, nc, aux)
    model.cfg = cfg  # type: ignore[assignment]
    return model


def describe(cfg: dict[str, Any]) -> str:
    """Short human-readable model name, e.g. 'resnet50+segment' or 'yolov8_seg.yaml(n)'."""
    if cfg.get("graph") is not None:
        name = Path(cfg.get("cfg_file", "graph")).name + (f"({cfg['scale']})" if cfg.get("scale") else "")
        return name + (f"+{cfg['head']}" if cfg.get("head") else "")
    return f"{cfg['backbone']}+{cfg['head']}"
