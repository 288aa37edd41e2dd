"""Inference speed side by side: PyTorch eager fp32 (channels-last and NCHW), PyTorch bf16 autocast,
ONNX Runtime fp32 and INT8, at batch 1 and 8, for the yolov8n graph, mobilenet_v3_large+segment and
resnet18+unet (random weights: speed does not depend on them; INT8 goes through export's own
`segment.int8.quantize`, calibrated here on random images). The engine runs eager models channels-last
(segment/common.py); the NCHW column is there to show why.

Usage:
    python benchmarks/inference_speed.py --threads 2 --img-size 360 480 > speed.md

Prints a Markdown table of ms per image (median of --runs timed batches after one warm-up). A
benchmark, never a test: numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from models.model import build_model, model_config
from segment.export import export_onnx
from segment.onnx_backend import OnnxBackend
from segment.int8 import quantize

MODELS = {"yolov8n graph": dict(cfg="models/yolov8n_seg.yaml"),
          "mobilenet_v3_large+segment": dict(backbone="mobilenet_v3_large", head="segment"),
          "resnet18+unet": dict(backbone="resnet18", head="unet")}


def ms_per_image(fn: Callable[[], Any], batch: int, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3 / batch)
    return statistics.median(times)


def bench_model(name: str, kw: dict[str, Any], size: tuple[int, int], batches: list[int], runs: int,
                threads: int, tmp: Path) -> list[dict[str, Any]]:
    model = build_model(model_config(11, **kw)).eval().fuse()
    rows = []
    onnx_fp32 = tmp / f"{name.replace('+', '_').replace(' ', '_')}.onnx"
    export_onnx(model, onnx_fp32, size, 1, True, 17, False, {"names": [str(i) for i in range(11)], "nc": 11})
    onnx_int8 = onnx_fp32.with_name(onnx_fp32.stem + "-int8.onnx")
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g),) for _ in range(4)]
    quantize(onnx_fp32, onnx_int8, calib)
    ort32, ort8 = OnnxBackend(onnx_fp32, threads=threads), OnnxBackend(onnx_int8, threads=threads)
    for b in batches:
        x = torch.rand(b, 3, *size)
        row: dict[str, Any] = {"model": name, "batch": b}
        with torch.inference_mode():
            for fmt, label in ((torch.channels_last, "eager NHWC"), (torch.contiguous_format, "eager NCHW")):
                model.to(memory_format=fmt)
                xf = x.contiguous(memory_format=fmt)
                row[label] = ms_per_image(lambda: model(xf), b, runs)
            model.to(memory_format=torch.channels_last)  # bf16 in the engine's layout
            xp = x.contiguous(memory_format=torch.channels_last)

            def bf16() -> Any:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(xp)

            row["eager bf16"] = ms_per_image(bf16, b, runs)
        row["ORT fp32"] = ms_per_image(lambda: ort32(x), b, runs)
        row["ORT int8"] = ms_per_image(lambda: ort8(x), b, runs)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--img-size", type=int, nargs=2, default=[360, 480])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    size = (a.img_size[0], a.img_size[1])
    cols = ["eager NHWC", "eager NCHW", "eager bf16", "ORT fp32", "ORT int8"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            rows += bench_model(name, MODELS[name], size, a.batches, a.runs, a.threads, Path(tmp))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    print(f"ms per image at {size[0]}x{size[1]}, {a.threads} threads, median of {a.runs}; {cpu}, torch {torch.__version__}")
    print("\n| model | batch | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
