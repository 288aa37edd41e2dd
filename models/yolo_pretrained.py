"""ImageNet-pretrained YOLO backbones from the reference implementation's classification checkpoints.

``--weights yolo11n-cls.pt`` (or yolov8s-cls.pt, ...) on a YOLO graph: the file is read with the restricted
unpickler of utils/safe_pickle.py (no code from it runs, the package that wrote it need not be installed),
its rows ``model.<j>`` are aligned in order with the graph's backbone rows of the same block type (the
classifier row is dropped; a row the file lacks, such as SPPF in yolo11-cls, is skipped), and every tensor
whose row, name and shape match is loaded. A file of another family (its rows do not align) or scale (its
first conv has another width) is refused with a line saying what it holds.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.parser import GraphBackbone
from utils.errors import UserError
from utils.safe_pickle import Placeholder, UnsafePickle, module_state, read_module_pickle

HEAD_TYPES = {"Classify"}  # the classification head row: never part of a backbone


@dataclass
class ClassificationCheckpoint:
    """What a reference classification checkpoint holds: its rows (type, state) and its own description."""

    path: str
    rows: list[tuple[str, dict[str, torch.Tensor]]]
    yaml_file: str = "?"
    scale: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        types = ", ".join(t for t, _ in self.rows)
        return f"{self.yaml_file} (scale {self.scale or '?'}; rows {types})"


def looks_like_module_pickle(path: str | os.PathLike) -> bool:
    """True when ``path`` is a torch zip whose pickle names classes of the reference YOLO package.

    Only the raw bytes of data.pkl are searched (no unpickling), so this is safe on any file.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl")]
            return bool(names) and b"ultralytics.nn" in z.read(names[0])
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def read_classification_checkpoint(path: str | os.PathLike) -> ClassificationCheckpoint:
    """Read a yolov8*-cls.pt / yolo11*-cls.pt without running code; UserError when it is not one."""
    p = Path(path)
    try:
        obj = read_module_pickle(p)
    except UnsafePickle as e:
        raise UserError(f"--weights {p}: refused: {e}. Nothing from the file was run.") from None
    except (ValueError, OSError, EOFError, RuntimeError, KeyError) as e:
        raise UserError(f"--weights {p}: cannot read it as a torch file ({e})") from None
    model = None
    if isinstance(obj, dict):
        model = obj.get("model") if isinstance(obj.get("model"), Placeholder) else obj.get("ema")
    if not isinstance(model, Placeholder):
        raise UserError(f"--weights {p}: no pickled model in the file (expected a checkpoint dict with 'model')")
    attrs = model.attrs()
    yaml = attrs.get("yaml") if isinstance(attrs.get("yaml"), dict) else {}
    yaml_file = str(yaml.get("yaml_file", "?"))
    if model.type_name != "ClassificationModel":
        raise UserError(f"--weights {p}: holds a {model.type_name} ({yaml_file}), not a classification model; "
                        f"use the ImageNet checkpoint of the same family and scale, e.g. yolo11n-cls.pt")
    seq = (attrs.get("_modules") or {}).get("model")
    layers = (seq.attrs().get("_modules") or {}) if isinstance(seq, Placeholder) else {}
    rows = [(m.type_name, module_state(m)) for _, m in sorted(layers.items(), key=lambda kv: int(kv[0]))
            if isinstance(m, Placeholder)]
    if not rows:
        raise UserError(f"--weights {p}: the ClassificationModel in it has no rows")
    scale = yaml.get("scale")
    return ClassificationCheckpoint(str(p), rows, yaml_file, str(scale) if scale else None)


def _family(name: str) -> str:
    """'yolo11n-cls.yaml' -> 'yolo11', 'models/yolov8_seg.yaml' -> 'yolov8'."""
    m = re.match(r"(yolo(?:v)?\d+)", Path(name).name)
    return m.group(1) if m else Path(name).stem


def map_onto_backbone(ckpt: ClassificationCheckpoint, backbone: GraphBackbone, graph_name: str,
                      scale: str | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict for ``backbone``, one report line per aligned row); refuses another family or scale."""
    ours = f"{Path(graph_name).name} scale {scale or '?'}"
    file_rows = [(j, t, sd) for j, (t, sd) in enumerate(ckpt.rows) if t not in HEAD_TYPES]
    own = backbone.state_dict()
    pairs: list[tuple[int, int]] = []  # (our row, file row)
    k = 0
    for row in backbone.rows:
        if k < len(file_rows) and file_rows[k][1] == row.module:
            pairs.append((row.index, file_rows[k][0]))
            k += 1
    if k < len(file_rows) or not pairs:
        raise UserError(f"--weights {ckpt.path}: holds {ckpt.describe()}, another family than {ours} "
                        f"(backbone rows {', '.join(r.module for r in backbone.rows)}); use that family's -cls.pt")
    first_file = next((v for n, v in ckpt.rows[0][1].items() if n.endswith("conv.weight")), None)
    first_own = own.get("layers.0.conv.weight")
    file_scale_differs = ckpt.scale is not None and scale is not None and ckpt.scale != scale
    if file_scale_differs or (first_file is not None and first_own is not None and first_file.shape != first_own.shape):
        width = f"; its first conv has {first_file.shape[0]} channels, the model's {first_own.shape[0]}" \
            if first_file is not None and first_own is not None else ""
        raise UserError(f"--weights {ckpt.path}: holds {ckpt.yaml_file} (scale {ckpt.scale or '?'}{width}), "
                        f"the model is {ours}; use the -cls.pt of scale {scale} or --scale {ckpt.scale}")
    state: dict[str, torch.Tensor] = {}
    lines = []
    for ours_i, file_j in pairs:
        file_sd = ckpt.rows[file_j][1]
        n_own = sum(1 for n in own if n.startswith(f"layers.{ours_i}."))
        hit = 0
        for name, t in file_sd.items():
            key = f"layers.{ours_i}.{name}"
            if key in own and own[key].shape == t.shape:
                state[key] = t.to(own[key].dtype)
                hit += 1
        lines.append(f"row {ours_i} {backbone.rows[ours_i].module} <- file row {file_j}: {hit}/{n_own} tensors")
    return state, lines


def load_classification_weights(model: torch.nn.Module, ckpt: ClassificationCheckpoint,
                                cfg: dict[str, Any]) -> tuple[int, int, list[str]]:
    """Load ``ckpt`` into ``model.backbone`` (a YOLO graph); returns (loaded, backbone tensors, row lines)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, GraphBackbone):
        raise UserError(f"--weights {ckpt.path}: a YOLO classification checkpoint fits YOLO graphs (--cfg "
                        f"models/{_family(ckpt.yaml_file)}_seg.yaml), not this torchvision backbone; "
                        f"use --weights pretrained for its ImageNet weights")
    state, lines = map_onto_backbone(ckpt, backbone, cfg.get("cfg_file", "graph"), cfg.get("scale"))
    backbone.load_state_dict(state, strict=False)
    return len(state), len(backbone.state_dict()), lines
