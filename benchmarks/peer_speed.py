"""Inference speed of our shipped CamVid model beside Ultralytics' yolo26n-sem, in one run, interleaved.

Both networks are built with 11 classes and random weights (speed does not depend on them), fused
(Conv+BN), in eval mode, and timed as "image in, logits at the input size out": yolo26n-sem's head
outputs stride-8 logits, which its predictor resizes to the image, so its timed call includes that
bilinear resize; ours resizes inside the graph (at a smaller inference size straight to the image's size,
see ``Rescaled``; --two-resizes also times the former way, through the input size). Batch 1 by default, --threads intra-op threads, PyTorch
eager fp32 (each tool's own layout: ours channels-last as the engine runs it, Ultralytics NCHW) and
ONNX Runtime fp32 (both exported with the same TorchScript exporter and opset), and with --int8 also both
graphs quantized by our export path's own ``segment.int8.quantize`` (QDQ, per-channel int8 weights, uint8
activations, calibrated on random images: speed does not depend on the values; the resizes a timed graph
wraps around a network, the peer's logits to the image and our @HxW rows' image to the model's size,
stay fp32, as the deployed paths run them outside the exported model, and so does our @HxW rows' one
resize of the logits to the image (the graph's last Resize; export.py --int8 --out-size would quantize
it), while our plain rows' own final resize is quantized, as by export.py --int8); the INT8 run ends with
our INT8 graphs' ratios against the peer in fp32 too, the precision its own tool exports by default.
Each round runs every variant in turn, so that a VM whose speed drifts slows all of them alike; the table
gives medians, and each speed-up is the median over rounds of that round's ratio, with the number of
rounds in which that row was the faster one (k/n): a 1.00x that won 10 of 20 rounds is a tie.

Sizes: ours at CamVid's native 360x480 (the shipped recipe's size: its graph pads to /32 inside) and
at 384x480; the peer at 384x480, the letterboxed size its rect inference uses for a 360x480 image, and
(``--peer-at``, default 288x384) at the scale its CamVid scores in BENCHMARKS.md were taken (trained with
imgsz=288, scored by peer_camvid.py with the short side at 288, which scored best): timed like our ``@HxW``
models, from the 360x480 image to 360x480 logits with both resizes, so that "at equal mIoU" compares the
operating points that produced the mIoU. Every row gets a ratio against each peer row. A model
given as ``YAML@HxW`` (trained at a smaller --img-size, e.g. camvid_yolov8n_fast.py's 288x384) is timed
from the 360x480 image to 360x480 logits, both resizes inside the timed call; ``YAML:head`` puts a
registered head over the graph's backbone and ``YAML:head:k=v,...`` gives it --head-args. Several ``--ours``
models can share one interleaved run.

Ultralytics is not a dependency of this project (it is AGPL): install it into a separate environment,
e.g. ``python -m venv --system-site-packages /tmp/ulv && /tmp/ulv/bin/pip install ultralytics``, and run
this script with that interpreter:
    /tmp/ulv/bin/python benchmarks/peer_speed.py --threads 2

A benchmark, never a test: the numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from models.model import SegmentationModel, build_model, model_config
from segment.common import parse_kv
from segment.export import export_onnx
from segment.int8 import quantize
from segment.onnx_backend import import_ort, session_options
from utils.errors import UserError
from utils.timing import alternate, paired_ratio, rounds_faster

NC = 11
PEER_SIZE = (384, 480)


class ResizedLogits(nn.Module):
    """The peer's network plus the resize of its stride-8 logits to the input size (its predictor's step)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        y = y[0] if isinstance(y, (list, tuple)) else y
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Rescaled(nn.Module):
    """A model run at a smaller inference size: the image resized to ``size``, the logits back to the
    image's size, as each tool does it. Ours (segment/inference.py for a model trained at that --img-size)
    asks the model for logits at the image's size, one resize from its stride-4 head; traced for ORT, it
    runs its forward_static, as a static export by export.py with --out-size does. The peer's predictor
    (ultralytics 8.4.190, models/yolo/semantic/predict.py) resizes its stride-8 logits to its input size and
    then to the image: two resizes, both kept."""

    def __init__(self, net: nn.Module, size: tuple[int, int], once: bool = True) -> None:
        super().__init__()
        self.net, self.size, self.once = net, size, once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        ours = isinstance(self.net, SegmentationModel)
        run = self.net.forward_static if ours and torch.jit.is_tracing() else self.net  # as a static export
        if self.once and ours:
            return run(small, (int(x.shape[-2]), int(x.shape[-1])))
        return F.interpolate(run(small), size=x.shape[-2:], mode="bilinear", align_corners=False)


def parse_size(text: str) -> tuple[int, int]:
    """'288x384' -> (288, 384); exits with one line on anything else."""
    try:
        h, w = (int(v) for v in text.split("x"))
    except ValueError:
        sys.exit(f"peer_speed.py: size '{text}' is not HxW, e.g. 288x384")
    return h, w


Ours = tuple[str, str, str, dict[str, Any], tuple[int, int] | None]


def parse_ours(specs: list[str]) -> list[Ours]:
    """--ours entries as (row name, cfg, head, head options, size or None); exits with one line on a bad or
    repeated entry."""
    rows: list[Ours] = []
    for spec in specs:
        model, _, at = spec.partition("@")
        cfg, _, head = model.partition(":")
        head, _, opts = head.partition(":")
        try:
            head_args = parse_kv(opts, flag=f"--ours {spec}")
        except UserError as e:
            sys.exit(f"peer_speed.py: {e}")
        plain = len(specs) == 1 and not head and not at  # the default call: one row name, "ours"
        name = "ours" if plain else (f"ours {Path(cfg).stem}{'+' + head if head else ''}"
                                     f"{'(' + opts + ')' if opts else ''}{'@' + at if at else ''}")
        if any(name == r[0] for r in rows):
            sys.exit(f"peer_speed.py: --ours lists {spec} twice")
        rows.append((name, cfg, head, head_args, parse_size(at) if at else None))
    return rows


def add_plain(variants: dict[str, Callable[[], Any]], name: str, net: nn.Module, x: torch.Tensor, path: Path,
              a: argparse.Namespace) -> None:
    """``net`` on ``x`` as '<name> eager', and exported without metadata to ``path`` as the ORT rows."""
    variants[f"{name} eager"] = eager_call(net, x)
    export_plain(net, path, tuple(x.shape[-2:]), a.opset)
    add_ort(variants, name, path, x.contiguous(), a.threads, a.int8, fp32_ends=True)


def build_peer(cfg: str) -> nn.Module:
    """yolo26n-sem from Ultralytics' own YAML, NC classes, fused, eval."""
    try:
        from ultralytics.nn.tasks import SemanticSegmentationModel
    except ImportError:
        sys.exit("peer_speed.py: this ultralytics has no semantic task (8.4.190 has it)")
    net = SemanticSegmentationModel(cfg, nc=NC, verbose=False).eval()
    return ResizedLogits(net.fuse(verbose=False)).eval()


def export_plain(module: nn.Module, path: Path, size: tuple[int, int], opset: int) -> None:
    """The peer through the same exporter and opset as ours (static shape, batch 1)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, 3, *size),), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["output"], do_constant_folding=True)


def ort_call(path: Path, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    ort = import_ort()
    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def add_ort(variants: dict[str, Callable[[], Any]], name: str, path: Path, x: torch.Tensor, threads: int,
            int8: bool, fp32_ends: bool = False) -> None:
    """The fp32 graph at ``path`` as '<name> ORT', and with ``int8`` its quantized copy as '<name> ORT-int8'.
    ``fp32_ends``: the graph wraps resizes to and from the model's size (the peer's, our @HxW rows), which
    stay fp32; our plain exports end in the model's own resize, quantized as export.py --int8 does."""
    variants[f"{name} ORT"] = ort_call(path, x, threads)
    if int8:
        g = torch.Generator().manual_seed(1)
        calib = [(torch.randint(0, 256, tuple(x.shape[1:]), dtype=torch.uint8, generator=g),) for _ in range(4)]
        q = path.with_name(path.stem + "-int8.onnx")
        quantize(path, q, calib, fp32_io_resizes=fp32_ends)
        variants[f"{name} ORT-int8"] = ort_call(q, x, threads)


def speedup(ref: list[list[float]], other: list[list[float]]) -> str:
    """``other``'s speed-up over ``ref`` from per-round times, with the rounds it won: '0.990x (5/20)'."""
    return f"{paired_ratio(ref, other):.3f}x ({rounds_faster(ref, other)}/{len(ref)})"


def eager_call(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(x)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--ours", nargs="+", default=[str(Path(__file__).resolve().parents[1] / "models" / "yolov8n_seg.yaml")],
                   help="our models: a model YAML (default: the CamVid recipe's), YAML:head for a registered head "
                        "over the graph's backbone (models/yolov8n_seg.yaml:lraspp is the recipe's --head lraspp), "
                        "YAML:head:k=v,k=v with the head's --head-args (models/yolov8n_seg.yaml:lraspp:low_stride=4), "
                        "and @HxW for a model run at a smaller --img-size (the 360x480 image resized to it and the "
                        "logits back, inside the timed call)")
    p.add_argument("--peer", default="yolo26n-sem.yaml", help="Ultralytics model YAML")
    p.add_argument("--peer-at", nargs="*", default=["288x384"], metavar="HxW",
                   help="also time the peer at these smaller sizes, from the 360x480 image to 360x480 logits "
                        "(default: 288x384, the scale of its CamVid scores); none: only 384x480")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int8", action="store_true", help="also time both ONNX graphs quantized to INT8 (ORT-int8 rows)")
    p.add_argument("--two-resizes", action="store_true",
                   help="also time each of our @HxW models with its logits resized to its input size and then to "
                        "the image's (the engine before 2026-12-07), beside the one resize it does now")
    a = p.parse_args()
    # bad sizes or repeated models stop the run before any model is built or exported
    ours_rows = parse_ours(a.ours)
    peer_sizes = [(at, parse_size(at)) for at in a.peer_at]
    torch.set_num_threads(a.threads)
    try:
        import ultralytics
    except ImportError:
        sys.exit("peer_speed.py: this interpreter has no ultralytics (see the module docstring for a separate environment)")

    peer = build_peer(a.peer)
    n_peer = sum(q.numel() for q in peer.parameters())
    params: dict[str, int] = {}
    variants: dict[str, Callable[[], Any]] = {}
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, cfg, head, head_args, at) in enumerate(ours_rows):
            ours = build_model(model_config(NC, cfg=cfg, head=head or None, head_args=head_args)).eval().fuse()
            ours = ours.to(memory_format=torch.channels_last)
            params[name] = sum(q.numel() for q in ours.parameters())
            if at:  # inference at a smaller size, timed from the 360x480 image to 360x480 logits
                x = torch.rand(1, 3, 360, 480, generator=g).contiguous(memory_format=torch.channels_last)
                add_plain(variants, f"{name} 360x480", Rescaled(ours, at).eval(), x, Path(tmp) / f"ours{k}.onnx", a)
                if a.two_resizes:
                    add_plain(variants, f"{name}(2-resizes) 360x480", Rescaled(ours, at, once=False).eval(), x,
                              Path(tmp) / f"ours{k}_2r.onnx", a)
                continue
            for size in ((360, 480), PEER_SIZE):
                x = torch.rand(1, 3, *size, generator=g)
                variants[f"{name} {size[0]}x{size[1]} eager"] = eager_call(ours, x.contiguous(memory_format=torch.channels_last))
                path = Path(tmp) / f"ours{k}_{size[0]}.onnx"
                export_onnx(ours, path, size, 1, False, a.opset, False, {"names": [str(i) for i in range(NC)], "nc": NC})
                add_ort(variants, f"{name} {size[0]}x{size[1]}", path, x, a.threads, a.int8)
        peer_rows = [(f"yolo26n-sem {PEER_SIZE[0]}x{PEER_SIZE[1]}", peer, PEER_SIZE)]
        for at, size in peer_sizes:
            peer_rows.append((f"yolo26n-sem@{at} 360x480", Rescaled(peer, size).eval(), (360, 480)))
        for k, (name, net, size) in enumerate(peer_rows):
            add_plain(variants, name, net, torch.rand(1, 3, *size, generator=g), Path(tmp) / f"peer{k}.onnx", a)
        times = dict(zip(variants, alternate(list(variants.values()), a.rounds, a.per_round)))  # ms per call, per round
    flat = {k: [t for r in v for t in r] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in flat.items()}
    # per peer row, its times by backend: every row is compared with each peer row on the same backend
    refs = {name: {k.rsplit(" ", 1)[1]: v for k, v in times.items() if k.startswith(name + " ")}
            for name, _, _ in peer_rows}
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    print(f"batch 1, {a.threads} threads, fp32{' and INT8' if a.int8 else ''}, median of {a.rounds}x{a.per_round} "
          f"interleaved calls; {cpu}, torch {torch.__version__}, ultralytics {ultralytics.__version__}; "
          f"params {', '.join(f'{k} {v / 1e6:.2f} M' for k, v in params.items())}, yolo26n-sem {n_peer / 1e6:.2f} M "
          f"(fused, {NC} classes)")
    print("\nspeed-ups: the median of per-round ratios against each peer row on the same backend, and (k/n) the "
          "rounds in which the row was the faster one")
    print("\n| model | input | backend | ms/img | p10-p90 ms | images/s | "
          + " | ".join(f"vs {n.split(' ')[0]}" for n in refs) + " |")
    print("|---|---|---|---:|---:|---:|" + "---:|" * len(refs))
    for k, v in flat.items():
        model, size, backend = k.rsplit(" ", 2)
        q = statistics.quantiles(v, n=10, method="inclusive")
        ratios = " | ".join(speedup(r[backend], times[k]) for r in refs.values())
        print(f"| {model} | {size} | {backend} | {med[k]:.1f} | {q[0]:.1f}-{q[-1]:.1f} | {1e3 / med[k]:.1f} | {ratios} |")
    if a.int8:  # the peer as its own tool runs it is fp32: our INT8 graphs against that too, paired by round
        print("\nours in INT8 against the peer in fp32 (ORT), the median of per-round ratios:")
        for k in (k for k in times if k.endswith(" ORT-int8") and not k.startswith("yolo26n-sem")):
            print(f"- {k.rsplit(' ', 1)[0]}: " + ", ".join(f"{speedup(r['ORT'], times[k])} vs {n}"
                                                         for n, r in refs.items()))


if __name__ == "__main__":
    main()
