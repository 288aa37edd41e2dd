"""torchvision backbones behind the feature contract, each described by a YAML in models/backbone/.

A backbone YAML is data, not code, so a user adds a variant by writing a file and passing it as
``--cfg path/to/variant.yaml``::

    source: torchvision
    name: resnet50                          # builder in torchvision.models
    weights: ResNet50_Weights.IMAGENET1K_V2 # enum used by --weights pretrained
    body: ""                                # attribute path of the module whose children run in order
    features:                               # [child name, stride, channels], finest first
      - [layer1, 4, 256]
    # mean: [...], std: [...]               # only when the weights expect other than ImageNet's

Every family in the zoo is "the children of one module, run in order": ResNets are the model itself
(``body: ""``, children ``conv1 … layer4``); MobileNet, EfficientNet and ConvNeXt keep their trunk in
``model.features``, an ``nn.Sequential`` whose children are named ``"0"``, ``"1"``, … (a YAML may
write them as integers). Children after the last declared one (pooling, classifier, the final 1x1
expansion conv that only feeds the classifier) are dropped, so their parameters are not counted.

Levels follow one rule: each is the *output of the last child at its stride*. A stride-2 level is
declared where one exists (the stem or first block) for heads that want it; ConvNeXt's 4x4
patchify stem goes straight to stride 4, so it has none. The declared channels and strides are
checked against a small probe forward when a backbone is built, so a wrong YAML fails at once with
a one-line message instead of as a shape error deep inside a head.
"""
from __future__ import annotations

import os
import socket
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.contract import IMAGENET_MEAN, IMAGENET_STD, Backbone
from models.registry import BACKBONES
from utils.errors import UserError
from utils.yamlio import load_yaml

BACKBONE_DIR = Path(__file__).resolve().parent / "backbone"
DOWNLOAD_TIMEOUT_S = 30.0  # a firewalled machine can otherwise sit in connect() for minutes


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


class TorchvisionBackbone(Backbone):
    """Runs the children of one torchvision module in order and returns the declared ones."""

    def __init__(self, spec: dict[str, Any], pretrained: bool = False) -> None:
        super().__init__()
        self.spec = spec
        label = f"backbone spec '{spec.get('name')}'"
        import torchvision  # here, not at import: it pulls in torch._dynamo, ~2-3 s of every CLI start

        builder = getattr(torchvision.models, spec["name"], None)
        if builder is None:
            raise UserError(f"{label}: torchvision.models has no builder '{spec['name']}'")
        features = spec["features"]
        if not isinstance(features, list) or not all(isinstance(f, list) and len(f) == 3 for f in features):
            raise UserError(f"{label}: 'features' must be a list of [child, stride, channels] rows")
        net = builder(weights=None)
        self._source_keys = frozenset(net.state_dict())  # what torchvision's weights file must hold
        body_path = spec.get("body") or ""
        try:
            body = _get_attr_path(net, body_path)
        except AttributeError:
            raise UserError(f"{label}: torchvision's {spec['name']} has no module '{body_path}' (key 'body')") from None
        names = [str(f[0]) for f in features]
        children: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in body.named_children():
            children[name] = module
            if name == names[-1]:
                break
        missing = [n for n in names if n not in children]
        if missing:
            raise UserError(f"{label}: no child named {missing} in '{body_path or 'model'}' (or out of order)")
        self.body = nn.Sequential(children)
        self.body_path = body_path
        self.return_names = names
        self.strides = [int(f[1]) for f in features]
        self.channels = [int(f[2]) for f in features]
        self.mean = tuple(spec.get("mean", IMAGENET_MEAN))  # type: ignore[assignment]
        self.std = tuple(spec.get("std", IMAGENET_STD))  # type: ignore[assignment]
        self.check_contract()
        self._check_declared_shapes(label)
        if pretrained:
            self.load_pretrained()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        wanted = set(self.return_names)
        for name, module in self.body.named_children():
            x = module(x)
            if name in wanted:
                out.append(x)
        return out

    @torch.no_grad()
    def _check_declared_shapes(self, label: str) -> None:
        """Probe forward at 2 x the largest stride; raise UserError where the YAML disagrees."""
        size = 2 * max(self.strides)
        was_training = self.training
        self.eval()  # no BatchNorm statistics update from the probe
        try:
            p = next(self.parameters())
            feats = self(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
        finally:
            self.train(was_training)
        for name, s, c, f in zip(self.return_names, self.strides, self.channels, feats):
            real_s, real_c = size // f.shape[-1], f.shape[1]
            if (real_s, real_c) != (s, c):
                raise UserError(f"{label}: child '{name}' is declared [stride {s}, {c} channels] but gives "
                                f"[stride {real_s}, {real_c} channels]; fix its 'features' row")

    def label(self) -> str:
        return str(self.spec["name"])

    def can_dilate(self) -> bool:
        return bool(self.spec.get("dilatable", False))

    def dilate(self, output_stride: int) -> None:
        """Dilate the children coarser than ``output_stride`` in place (ResNet's replace_stride_with_dilation).

        Inside each such child (a Sequential of blocks), strided convs get stride 1; the k x k convs of its
        first block keep the dilation reached so far and those of later blocks take the doubled one, as
        torchvision's ResNet builds them. Weights are unchanged, so ImageNet weights still load.
        """
        if not self.can_dilate():
            super().dilate(output_stride)
        children = dict(self.body.named_children())
        dilation, prev_stride = 1, 1
        for i, (name, s) in enumerate(zip(self.return_names, self.strides)):
            if s > output_stride:
                step = s // prev_stride
                blocks = list(children[name].children()) if isinstance(children[name], nn.Sequential) else [children[name]]
                for j, block in enumerate(blocks):
                    d = dilation if j == 0 else dilation * step
                    for m in block.modules():
                        if isinstance(m, nn.Conv2d):
                            m.stride = (1, 1)
                            if m.kernel_size[0] > 1:
                                m.dilation = (d, d)
                                m.padding = (d * (m.kernel_size[0] - 1) // 2,) * 2
                dilation *= step
                self.strides[i] = output_stride
            prev_stride = s
        self.check_contract()
        self._check_declared_shapes(f"backbone spec '{self.spec.get('name')}' dilated to stride {output_stride}")

    def source_key(self, key: str) -> str:
        """Name in torchvision's state dict of this backbone's state-dict entry ``key``."""
        rest = key.removeprefix("body.")
        return f"{self.body_path}.{rest}" if self.body_path else rest

    def load_pretrained(self) -> None:
        """Load torchvision's ImageNet weights into this (already built) backbone."""
        state = load_torchvision_state_dict(self.spec)
        keys = {k: self.source_key(k) for k in self.state_dict()}
        # the whole file must be this model's (ResNet-34's weights would otherwise fill a ResNet-18)
        missing, unexpected = sorted(self._source_keys - set(state)), sorted(set(state) - self._source_keys)
        reason = ""
        if missing or unexpected:
            reason = (f"{len(missing)} tensors missing, {len(unexpected)} unexpected, "
                      f"e.g. {(missing or unexpected)[0]}")
        else:
            try:
                self.load_state_dict({k: state[v] for k, v in keys.items()})
            except RuntimeError as e:  # shape mismatch: a cached file of another model or version
                reason = str(e).strip().splitlines()[-1].strip()
        if reason:
            raise UserError(f"--weights pretrained: {pretrained_cache_file(self.spec)[1]} does not fit "
                            f"{self.spec['name']} ({reason})")


def pretrained_cache_file(spec: dict[str, Any]) -> tuple[str, Path]:
    """(download URL, expected file in torchvision's cache) of the spec's weights enum."""
    import torchvision

    try:
        weights = torchvision.models.get_weight(spec["weights"])
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"backbone spec '{spec['name']}': unknown torchvision weights '{spec['weights']}'") from None
    url = weights.url
    # torch.hub.get_dir() reads TORCH_HOME at call time, so a changed environment is honoured.
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_torchvision_state_dict(spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``spec``, from TORCH_HOME's cache or a download.

    Offline and not cached, this fails within ``DOWNLOAD_TIMEOUT_S`` with one line naming the file
    to put in the cache.
    """
    if not spec.get("weights"):
        raise UserError(f"backbone '{spec['name']}' declares no pretrained weights")
    url, cached = pretrained_cache_file(spec)
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated download, wrong file
            raise UserError(f"--weights pretrained: cannot read cached weights {cached} ({type(e).__name__}); "
                            f"delete it to download again, or replace it with {url}") from None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        # torchvision's own cache (TORCH_HOME/hub/checkpoints), so weights are shared with other tools.
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as e:  # offline, proxy, timeout ...
        raise UserError(f"--weights pretrained: ImageNet weights for {spec['name']} are not cached and could not be "
                        f"downloaded ({type(e).__name__}); expected file: {cached} (from {url})") from None
    finally:
        socket.setdefaulttimeout(previous)


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


# One YAML each in models/backbone/; registering is the only code a shipped backbone needs.
TORCHVISION_BACKBONES = (
    "resnet18", "resnet34", "resnet50",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_v2_s",
    "convnext_tiny",
)
for _name in TORCHVISION_BACKBONES:
    BACKBONES.register(_name)(partial(_from_yaml, _name))
