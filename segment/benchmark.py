"""Parameters, GFLOPs and CPU latency of registered backbone x head combinations, or of one YAML model.

Usage:
    python segment/benchmark.py --img-size 640 640 --no-latency            # every combination
    python segment/benchmark.py --backbones resnet18,convnext_tiny --heads segment --threads 2
    python segment/benchmark.py --cfg models/backbone/convnext_tiny.yaml --heads unet --json out.json
    python segment/benchmark.py --cfg models/yolov5_seg.yaml,models/yolov8_seg.yaml --scale all --no-latency
    python segment/benchmark.py --cfg models/yolov8_seg.yaml --scale n --layers  # per-layer table

GFLOPs are thop's multiply-accumulates x 2 for one image. Latency is the median over ``--runs``
single-image forwards in inference mode on the CPU after ``--warmup`` untimed ones. The Markdown
table goes to stdout (progress to stderr), so ``> table.md`` captures exactly what is printed.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from models import BACKBONES, HEADS, build_model, model_config
from segment.common import cli_entry, parse_kv
from utils.errors import UserError
from utils.torch_utils import count_params, gflops


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="", help="comma-separated registered backbones (default: all)")
    p.add_argument("--heads", default="", help="comma-separated registered heads (default: all); options after @, "
                                               "e.g. unet@attention=scse or deeplabv3plus@output_stride=8@width=128")
    p.add_argument("--cfg", default="", help="model YAML(s), comma-separated (backbone specs or YOLO graphs)")
    p.add_argument("--scale", default=None, help="scale(s) of YOLO graph YAMLs: n, or n,s,m, or all")
    p.add_argument("--img-size", nargs=2, type=int, default=[640, 640], metavar=("H", "W"))
    p.add_argument("--nc", type=int, default=11, help="classes (default 11, CamVid); only the classifier depends on it")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    p.add_argument("--runs", type=int, default=10, help="timed forwards per model (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing")
    p.add_argument("--passes", type=int, default=1,
                   help="repeat the timing and keep the lowest median (for machines shared with other jobs)")
    p.add_argument("--train-step", action="store_true", help="also time one SGD training step (forward+backward)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the timed training step")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--layers", action="store_true", help="per-layer table of the --cfg model (models.summary)")
    p.add_argument("--json", default="", help="also write the rows (or the --layers summary) to this JSON file")
    p.add_argument("--verbose", action="store_true", help="show Python tracebacks for errors")
    return p.parse_args(argv)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _scales(path: str, args: argparse.Namespace) -> list[str | None]:
    """Scales to measure for one --cfg file: --scale (comma-separated, or 'all'), else the file's own."""
    cfg = model_config(args.nc, cfg=path)
    graph = cfg.get("graph") or {}
    if cfg.get("scale") is not None or not graph.get("scales") or not args.scale:
        return [None]  # a scale in the file name (yolov8s_seg.yaml), a file without scales, or the default
    return list(graph["scales"]) if args.scale == "all" else _split(args.scale)


def _head_spec(text: str) -> tuple[str, dict[str, Any]]:
    """'unet@attention=scse' -> ('unet', {'attention': 'scse'})."""
    name, *opts = text.split("@")
    return name, parse_kv(",".join(opts), flag=f"--heads {text}")


def model_configs(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(backbone label, head label, model config) for every combination the flags select."""
    heads = _split(args.heads)
    unknown = [h for h in heads if _head_spec(h)[0] not in HEADS]
    if unknown:
        raise UserError(f"--heads: unknown head(s) {', '.join(unknown)}; choose from: {', '.join(HEADS.names())}")
    if args.cfg:
        out = []
        for path in _split(args.cfg):
            for scale in _scales(path, args):
                for head in heads or [None]:
                    name, opts = _head_spec(head) if head else (None, {})
                    cfg = model_config(args.nc, head=name, cfg=path, scale=scale, head_args=opts)
                    if cfg.get("graph") is not None:
                        label = Path(cfg["cfg_file"]).name + (f"({cfg['scale']})" if cfg.get("scale") else "")
                    else:
                        label = Path(path).stem
                    out.append((label, head or cfg.get("head") or "graph", cfg))
        return out
    backbones = _split(args.backbones) or BACKBONES.names()
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:
        raise UserError(f"--backbones: unknown backbone(s) {', '.join(unknown)}; "
                        f"choose from: {', '.join(BACKBONES.names())}")
    return [(b, h, model_config(args.nc, backbone=b, head=_head_spec(h)[0], head_args=_head_spec(h)[1]))
            for b in backbones for h in heads or HEADS.names()]


def cpu_latency_ms(model: nn.Module, img_size: tuple[int, int], runs: int, warmup: int, passes: int = 1) -> float:
    """Median wall time (ms) of one batch-1 forward in inference mode; the lowest over ``passes`` repeats
    (see ``best_median_ms``)."""
    model.eval().to(memory_format=torch.channels_last)  # the layout val/train run in (segment.common)
    x = torch.rand(1, 3, *img_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return best_median_ms(lambda: model(x), runs, warmup, passes)


def best_median_ms(call: Callable[[], Any], runs: int, warmup: int, passes: int = 1) -> float:
    """The lowest over ``passes`` of the median wall time (ms) of ``runs`` calls, after ``warmup`` calls.

    On a CPU shared with other jobs a burst of foreign load stalls the worker threads at every barrier
    and can inflate a whole pass several-fold; separate passes let one quiet pass through.
    """
    for _ in range(warmup):
        call()
    medians = []
    for _ in range(passes):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
        medians.append(statistics.median(times))
    return min(medians)


def train_step_ms(model: nn.Module, img_size: tuple[int, int], nc: int, batch: int, runs: int) -> float:
    """Median wall time (ms) of one SGD step (forward, cross-entropy, backward, update) on random data, fp32."""
    from segment.precision import train_step_times

    def ce(out: Any, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return F.cross_entropy(out["out"] if isinstance(out, dict) else out, y), {}

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 3, *img_size)
    y = torch.randint(0, nc, (batch, *img_size))
    return statistics.median(train_step_times(model, ce, opt, x, y, (False,), runs)[False])


def benchmark_row(backbone: str, head: str, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One table row: parameters, GFLOPs and (unless --no-latency) latency of one model."""
    img_size = (int(args.img_size[0]), int(args.img_size[1]))
    model = build_model(cfg).eval()
    row: dict[str, Any] = {"backbone": backbone, "head": head, "img_size": list(img_size),
                           "params": count_params(model), "gflops": round(gflops(model, img_size), 2),
                           "latency_ms": None}
    if not args.no_latency:
        row["latency_ms"] = round(cpu_latency_ms(model, img_size, args.runs, args.warmup, args.passes), 1)
    if args.train_step:
        row["train_step_ms"] = round(train_step_ms(model, img_size, cfg["nc"], args.batch, args.runs), 1)
    return row


def machine() -> str:
    """CPU model name, torch thread count and versions, for the table caption."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def format_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table of the rows, preceded by a one-line caption saying what was measured where."""
    h, w = args.img_size
    caption = f"Input {h}x{w}, nc={args.nc}, GFLOPs = 2 x thop MACs"
    if not args.no_latency:
        best = f", best of {args.passes} passes" if args.passes > 1 else ""
        caption += f"; latency: batch 1, median of {args.runs} after {args.warmup} warm-up{best}, {machine()}"
    cols = ["backbone", "head", "params (M)", "GFLOPs", "latency (ms)"]
    if args.train_step:
        cols.append(f"train step (ms, batch {args.batch})")
    lines = [caption, "", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|"]

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None or v != v else format(v, fmt)  # None: not measured, NaN: thop failed

    for r in rows:
        cells = [r["backbone"], r["head"], num(r["params"] / 1e6, ".2f"), num(r["gflops"], ".2f"),
                 num(r["latency_ms"], ".1f")]
        if args.train_step:
            cells.append(num(r.get("train_step_ms"), ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_report(args: argparse.Namespace) -> None:
    """--layers: the per-layer table of one --cfg model, from models.summary."""
    if not args.cfg:
        raise UserError("--layers needs --cfg (a model YAML), e.g. --cfg models/yolov8_seg.yaml --scale n")
    from models.summary import format_layer_table, layer_summary  # only this mode needs it

    model = build_model(model_config(args.nc, cfg=args.cfg, scale=args.scale)).eval()
    summary = layer_summary(model, tuple(args.img_size))
    print(format_layer_table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str) + "\n")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Benchmark every selected model; print the Markdown table and return the rows."""
    if min(args.img_size) < 1 or args.runs < 1 or args.warmup < 0 or args.passes < 1:
        raise UserError("--img-size must be positive, --runs and --passes >= 1, --warmup >= 0")
    combos = model_configs(args)
    rows = []
    for k, (backbone, head, cfg) in enumerate(combos, 1):
        print(f"[{k}/{len(combos)}] {backbone} + {head}", file=sys.stderr, flush=True)
        rows.append(benchmark_row(backbone, head, cfg, args))
    print(format_table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _main(argv: list[str] | None) -> list[dict[str, Any]] | None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # process-wide, so only here and never at import
    if args.layers:
        layer_report(args)
        return None
    return run(args)


def main(argv: list[str] | None = None) -> list[dict[str, Any]] | None:
    """Command-line entry: a UserError prints one line (traceback with --verbose) and exits with 2."""
    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
