"""torchvision backbones behind the feature contract, each described by a YAML in models/backbone/.

A backbone YAML is data, not code, so a user adds a variant by writing a file::

    source: torchvision
    name: resnet50                          # builder in torchvision.models
    weights: ResNet50_Weights.IMAGENET1K_V2 # enum used by --weights pretrained
    body: ""                                # attribute path of the module whose children run in order
    features:                               # [child name, stride, channels], finest first
      - [layer1, 4, 256]
"""
from __future__ import annotations

import os
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from models.contract import IMAGENET_MEAN, IMAGENET_STD, Backbone
from models.registry import BACKBONES
from utils.errors import UserError
from utils.yamlio import load_yaml

BACKBONE_DIR = Path(__file__).resolve().parent / "backbone"


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


class TorchvisionBackbone(Backbone):
    """Runs the children of one torchvision module in order and returns the declared ones."""

    def __init__(self, spec: dict[str, Any], pretrained: bool = False) -> None:
        super().__init__()
        self.spec = spec
        builder = getattr(torchvision.models, spec["name"], None)
        if builder is None:
            raise UserError(f"backbone spec: torchvision.models has no builder '{spec['name']}'")
        net = builder(weights=None)
        if pretrained:
            net.load_state_dict(load_torchvision_state_dict(spec))
        body = _get_attr_path(net, spec.get("body") or "")
        features = spec["features"]
        names = [str(f[0]) for f in features]
        children: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in body.named_children():
            children[name] = module
            if name == names[-1]:
                break
        missing = [n for n in names if n not in children]
        if missing:
            raise UserError(f"backbone spec '{spec['name']}': no child named {missing} in '{spec.get('body') or 'model'}'")
        self.body = nn.Sequential(children)
        self.return_names = set(names)
        self.strides = [int(f[1]) for f in features]
        self.channels = [int(f[2]) for f in features]
        self.mean = tuple(spec.get("mean", IMAGENET_MEAN))  # type: ignore[assignment]
        self.std = tuple(spec.get("std", IMAGENET_STD))  # type: ignore[assignment]
        self.check_contract()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.return_names:
                out.append(x)
        return out

    def load_pretrained(self) -> None:
        """Load torchvision's ImageNet weights into this (already built) backbone."""
        fresh = TorchvisionBackbone(self.spec, pretrained=True)
        self.load_state_dict(fresh.state_dict())


def pretrained_cache_file(spec: dict[str, Any]) -> tuple[str, Path]:
    """(download URL, expected file in torchvision's cache) of the spec's weights enum."""
    weights = torchvision.models.get_weight(spec["weights"])
    url = weights.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_torchvision_state_dict(spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``spec``, from TORCH_HOME's cache or a download."""
    if not spec.get("weights"):
        raise UserError(f"backbone '{spec['name']}' declares no pretrained weights")
    url, cached = pretrained_cache_file(spec)
    try:
        # Goes through torchvision's own cache (TORCH_HOME/hub/checkpoints), downloading only if absent.
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as e:  # offline, proxy, truncated file ...
        raise UserError(f"--weights pretrained: ImageNet weights for {spec['name']} are not cached and could not be "
                        f"downloaded ({type(e).__name__}); expected file: {cached}") from None


def load_backbone_spec(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read a backbone YAML by registered name or by path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = BACKBONE_DIR / f"{name_or_path}.yaml"
    spec = load_yaml(p)
    for key in ("source", "name", "features"):
        if key not in spec:
            raise UserError(f"{p}: backbone YAML needs key '{key}'")
    if spec["source"] != "torchvision":
        raise UserError(f"{p}: unsupported backbone source '{spec['source']}' (only 'torchvision')")
    return spec


def _from_yaml(name: str, pretrained: bool = False) -> TorchvisionBackbone:
    return TorchvisionBackbone(load_backbone_spec(name), pretrained=pretrained)


TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50")
for _name in TORCHVISION_BACKBONES:
    BACKBONES.register(_name)(partial(_from_yaml, _name))
