"""ONNX export parity for every YOLO YAML at every scale it declares (n..x), through export's own path.

The test suite checks one scale per YAML (tests/test_export.py: the large scales cost minutes of CPU
each, more than CI's budget allows); this script checks all of them and prints a Markdown table:
parameters, max |logit difference| and argmax agreement against PyTorch at the export size, a larger
multiple of 32 and an odd size (dynamic H/W graph), fused model, random weights (BatchNorm statistics
made non-trivial so folding them is exercised).

Usage:
    python benchmarks/export_parity.py --img-size 64 96 > parity.md
    python benchmarks/export_parity.py --only yolo11_seg.yaml:m
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from models.model import build_model, model_config
from segment.export import ARGMAX_AGREE, LOGIT_TOL, check_sizes, export_onnx, test_inputs, verify
from segment.onnx_backend import OnnxBackend
from utils.torch_utils import randomize_bn
from utils.yamlio import load_yaml

MODELS = Path(__file__).resolve().parents[1] / "models"


def yolo_variants() -> list[tuple[str, str | None]]:
    """(yaml file name, scale) for every YOLO graph YAML in models/, each scale it declares."""
    out: list[tuple[str, str | None]] = []
    for path in sorted(MODELS.glob("*.yaml")):
        data = load_yaml(path)
        if "backbone" not in data:
            continue
        scales = list(data.get("scales") or {}) or [None]
        out += [(path.name, s) for s in scales]
    return out


def check_one(yaml: str, scale: str | None, img_size: tuple[int, int], opset: int, tmp: Path) -> dict[str, Any]:
    """Build, fuse, export dynamic and verify one variant; a row for the table."""
    torch.manual_seed(0)
    model = build_model(model_config(3, cfg=f"models/{yaml}", scale=scale)).eval()
    randomize_bn(model)
    model.fuse()
    params = sum(p.numel() for p in model.parameters())
    path = tmp / "m.onnx"
    t0 = time.perf_counter()
    export_onnx(model, path, img_size, 1, True, opset, False, {"names": ["a", "b", "c"], "nc": 3})
    rows = verify(model, OnnxBackend(path), check_sizes(img_size, True), 1, False, runs=1)
    with torch.no_grad():  # the logits' own scale, so the difference column can be read against it
        logit_max = max(float(model(x).abs().max()) for _, x in test_inputs(1, img_size))
    return {"yaml": yaml, "scale": scale or "-", "params": params, "seconds": time.perf_counter() - t0,
            "max_diff": max(r["max_abs_diff"] for r in rows), "logit_max": logit_max, "agree": min(r["argmax_agree"] for r in rows),
            "sizes": " ".join(f"{r['size'][0]}x{r['size'][1]}" for r in rows), "ok": all(r["ok"] for r in rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", nargs=2, type=int, default=[64, 96], metavar=("H", "W"))
    p.add_argument("--opset", type=int, default=19)  # 19: the DCN YAML's DeformConv needs it
    p.add_argument("--only", nargs="*", default=None, help="yaml:scale entries (default: all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = yolo_variants()
    if args.only:
        variants = [v for v in variants if f"{v[0]}:{v[1] or '-'}" in args.only or v[0] in args.only]
    print(f"Dynamic ONNX export (opset {args.opset}) checked at {args.img_size[0]}x{args.img_size[1]} and two "
          f"other sizes; bounds: max |diff| <= {LOGIT_TOL:g} x max(1, max |logit|), argmax agreement >= {100 * ARGMAX_AGREE:g}%; "
          f"torch {torch.__version__}, {args.threads} threads\n")
    print("| YAML | scale | params (M) | sizes | max abs logit | max abs logit diff | argmax agree (%) | export + check (s) | ok |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        for yaml, scale in variants:
            r = check_one(yaml, scale, tuple(args.img_size), args.opset, Path(d))
            failed += not r["ok"]
            print(f"| {r['yaml']} | {r['scale']} | {r['params'] / 1e6:.2f} | {r['sizes']} | {r['logit_max']:.2g} | {r['max_diff']:.1e} | "
                  f"{100 * r['agree']:.3f} | {r['seconds']:.1f} | {'ok' if r['ok'] else 'FAILED'} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
