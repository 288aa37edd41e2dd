"""Per-layer model summary (``segment/benchmark.py --layers``): one row per YAML row, plus totals.

``layer_summary`` returns plain data (what ``--json`` writes)::

    {"layers": [{"index", "from", "repeats", "module", "args", "params", "out_shape"}, ...],
     "params": int, "gflops": float}

For YAML graph models the rows are the graph's rows (args as passed to the constructor: input channels
first, width-scaled channels, repeats inserted). A registered head (``--head``) or a torchvision backbone
is listed one top-level module per row. Output shapes come from one forward at ``img_size``; the model
pads the input to a multiple of its largest stride first, so a row's shape is that of the padded image.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from models.parser import GraphBackbone, GraphHead
from utils.torch_utils import count_params, gflops


def _entries(model: nn.Module) -> list[tuple[dict[str, Any], nn.Module]]:
    """(row without params/out_shape, module whose output is the row's) in execution order."""
    out: list[tuple[dict[str, Any], nn.Module]] = []
    backbone, head = model.backbone, model.head
    if isinstance(backbone, GraphBackbone):
        graph_rows = list(zip(backbone.rows, backbone.layers))
        if isinstance(head, GraphHead):
            graph_rows += list(zip(head.rows, head.layers))
        for r, layer in graph_rows:
            out.append(({"index": r.index, "from": r.src, "repeats": r.repeats, "module": r.module,
                         "args": list(r.args)}, layer))
        head_from: Any = list(backbone.feature_rows)
    else:
        body = getattr(backbone, "body", backbone)
        for name, child in body.named_children():
            out.append(({"index": len(out), "from": -1, "repeats": 1, "module": f"{type(child).__name__} ({name})",
                         "args": []}, child))
        head_from = -1
    extra = [] if isinstance(head, GraphHead) else [("head", head)]
    if getattr(model, "aux_head", None) is not None:
        extra.append(("aux_head", model.aux_head))
    for name, m in extra:
        out.append(({"index": len(out), "from": head_from, "repeats": 1,
                     "module": f"{type(m).__name__} ({name})", "args": []}, m))
    return out


def layer_summary(model: nn.Module, img_size: tuple[int, int]) -> dict[str, Any]:
    """Rows (index, from, repeats, module, args, params, out_shape), total params and GFLOPs at ``img_size``."""
    h, w = int(img_size[0]), int(img_size[1])
    probe = copy.deepcopy(model).eval()
    entries = _entries(probe)
    shapes: dict[int, list[int]] = {}

    def record(k: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, y: Any) -> None:
            shapes[k] = list(y.shape) if isinstance(y, torch.Tensor) else None
        return hook

    hooks = [m.register_forward_hook(record(k)) for k, (_, m) in enumerate(entries)]
    try:
        p = next(probe.parameters())
        with torch.no_grad():
            probe(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
    finally:
        for hk in hooks:
            hk.remove()
    layers = [{**row, "params": count_params(m), "out_shape": shapes.get(k)} for k, (row, m) in enumerate(entries)]
    return {"layers": layers, "params": count_params(model), "gflops": gflops(model, (h, w))}


def format_layer_table(summary: dict[str, Any]) -> str:
    """Fixed-width text table of a ``layer_summary`` with a totals line."""
    head = f"{'':>2}{'idx':>4}  {'from':>16}  {'n':>3}  {'params':>11}  {'module':<24}  {'arguments':<40}  out_shape"
    lines = [head]
    for r in summary["layers"]:
        args = str(r["args"])
        if len(args) > 40:
            args = args[:37] + "..."
        shape = "x".join(map(str, r["out_shape"])) if r["out_shape"] else "-"
        lines.append(f"{'':>2}{r['index']:>4}  {str(r['from']):>16}  {r['repeats']:>3}  {r['params']:>11,}  "
                     f"{r['module']:<24}  {args:<40}  {shape}")
    gf = summary["gflops"]
    gf_text = "n/a" if gf != gf else f"{gf:.1f}"  # NaN when thop failed
    lines.append(f"total: {len(summary['layers'])} rows, {summary['params']:,} parameters, {gf_text} GFLOPs")
    return "\n".join(lines)
