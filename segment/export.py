"""Export a checkpoint to ONNX (verified against PyTorch with ONNX Runtime) or TorchScript; optional INT8.

Usage:
    python segment/export.py --weights runs/train/exp/weights/best.pt                     # best.onnx at the training size
    python segment/export.py --weights best.pt --dynamic                                  # any batch, height, width
    python segment/export.py --weights best.pt --argmax                                   # uint8 [B, H, W] class ids
    python segment/export.py --weights best.pt --img-size 256 352 --out-size 360 480      # logits at the camera's size
    python segment/export.py --weights best.pt --int8 --data data/camvid.yaml             # + best-int8.onnx
    python segment/export.py --weights best.pt --format torchscript

The exported graph takes float32 RGB in [0, 1] (N, 3, H, W) (normalisation is inside) and returns
logits (N, nc, H, W) at the input size, or with --out-size (static graphs) at the size the images really
have: one resize from the head's stride instead of one to the input size and another by the caller.
BatchNorm and re-parameterisable branches are fused and the auxiliary head is dropped. Names, palette,
nc, ignore_index, img_size, out_size and the model description are stored in the ONNX metadata, so
val.py/predict.py need no .pt. Nothing is written unless the export passes its check: max |logit
difference| <= 1e-4 times max(1, the largest |logit|) and >= 99.99% identical argmax, at the export size
and, with --dynamic, at two other sizes (one not divisible by 32).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from models.dcn import DCNConv
from models.model import SegmentationModel, describe
from segment.common import cli_entry, load_model, parse_img_size, setup_runtime
from segment.onnx_backend import META_KEY, META_VERSION, OnnxBackend, import_ort
from utils.errors import UserError
from utils.files import atomic_write

LOGIT_TOL = 1e-4  # times max(1, the largest |logit|): see logit_limit
ARGMAX_AGREE = 0.9999
DCN_OPSET = 19  # first ONNX opset with DeformConv


class ExportModule(nn.Module):
    """What is exported: the model's main output, optionally ending in argmax -> class ids (uint8; int32
    when there are more than 256 classes, which uint8 would wrap). ``static``: the graph will only run at
    the size it is traced at (the model's forward_static); ``out_size``: the output's (H, W), None for the
    input size."""

    def __init__(self, model: SegmentationModel, argmax: bool = False, static: bool = False,
                 out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.model, self.argmax, self.static, self.out_size = model, argmax, static, out_size
        self.label_dtype = torch.uint8 if model.nc <= 256 else torch.int32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.forward_static(x, self.out_size) if self.static else self.model(x, self.out_size)
        return y.argmax(1).to(self.label_dtype) if self.argmax else y


def _deform_conv_symbolic(g: Any, x: Any, w: Any, offset: Any, mask: Any, b: Any, stride_h: int, stride_w: int,
                          pad_h: int, pad_w: int, dil_h: int, dil_w: int, groups: int, offset_groups: int,
                          use_mask: bool) -> Any:
    """torchvision::deform_conv2d -> ONNX DeformConv (opset 19); same offset layout ((dy, dx) per tap)."""
    from torch.onnx import symbolic_helper as sh

    kh, kw = sh._get_tensor_sizes(w)[2:]
    inputs = [x, w, offset, b] + ([mask] if use_mask else [])
    return g.op("DeformConv", *inputs, dilations_i=[dil_h, dil_w], group_i=groups, kernel_shape_i=[kh, kw],
                offset_group_i=offset_groups, pads_i=[pad_h, pad_w, pad_h, pad_w], strides_i=[stride_h, stride_w])


def _register_dcn(opset: int) -> None:
    import torchvision.ops  # noqa: F401  (registers the torchvision:: operators; models import it lazily)
    from torch.onnx import register_custom_op_symbolic, symbolic_helper as sh

    fn = sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")(_deform_conv_symbolic)
    register_custom_op_symbolic("torchvision::deform_conv2d", fn, opset)


def has_dcn(model: nn.Module) -> bool:
    """True when the model holds deformable convolutions (C3_DCN)."""
    return any(isinstance(m, DCNConv) for m in model.modules())


def check_opset(model: nn.Module, opset: int) -> None:
    """Refuse opsets the model cannot be written in, with the reason."""
    if not 11 <= opset <= 23:
        raise UserError(f"--opset {opset}: use an ONNX opset between 11 and 23 (default 17)")
    if has_dcn(model) and opset < DCN_OPSET:
        raise UserError(f"--opset {opset}: this model has deformable convolutions (C3_DCN); ONNX has them as "
                        f"DeformConv only from opset {DCN_OPSET}: use --opset {DCN_OPSET} or higher")


def onnx_metadata(ckpt: dict[str, Any], img_size: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    """The record stored under metadata key ``unet_lite``: everything predict/val need besides weights."""
    nc = int(ckpt["model_cfg"]["nc"])
    return {"version": META_VERSION, "names": list(ckpt.get("names") or [str(i) for i in range(nc)]), "nc": nc,
            "ignore_index": int(ckpt.get("ignore_index", 255)), "palette": ckpt.get("palette"),
            "img_size": list(img_size), "model": describe(ckpt["model_cfg"]), "dynamic": bool(args.dynamic),
            "argmax": bool(args.argmax), "opset": int(args.opset), "source": Path(args.weights).name,
            "out_size": list(args.out_size) if args.out_size else None,
            "data": ckpt.get("data")}


def export_onnx(model: nn.Module, path: Path, img_size: tuple[int, int], batch: int, dynamic: bool, opset: int,
                argmax: bool, meta: dict[str, Any], out_size: tuple[int, int] | None = None) -> None:
    """Trace ``model`` (eval, fused) to ``path`` with our metadata; the TorchScript-based exporter because it
    keeps symbolic sizes (x.shape arithmetic) as graph ops, which the dynamic H/W export needs."""
    import onnx

    if dynamic and out_size is not None:
        raise ValueError("export_onnx: out_size needs a static graph (the resize to it branches on the input size)")
    if has_dcn(model):
        _register_dcn(opset)
    module = ExportModule(model, argmax, static=not dynamic, out_size=out_size).eval()
    x = torch.rand(batch, 3, *img_size)
    axes = {"images": {0: "batch", 2: "height", 3: "width"},
            "output": {0: "batch", 1 + (not argmax): "height", 2 + (not argmax): "width"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about size arithmetic are expected here
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["output"], dynamic_axes=axes, do_constant_folding=True)
    model.eval()  # export restores the wrapper's mode, which is train(): put the model back
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    proto.producer_name, proto.doc_string = "unet-lite", f"{meta.get('model', 'model')}, {meta['nc']} classes"
    onnx.save(proto, str(path))


def test_inputs(batch: int, img_size: tuple[int, int], seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """A uniform-noise batch and a 'real-looking' one (smooth colour fields with edges, like a photo)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, *img_size, generator=g)
    coarse = torch.rand(batch, 3, max(2, img_size[0] // 16), max(2, img_size[1] // 16), generator=g)
    smooth = F.interpolate(coarse, size=img_size, mode="bilinear", align_corners=False)
    blocks = F.interpolate(torch.rand(batch, 3, 4, 6, generator=g), size=img_size, mode="nearest")
    return [("random", noise), ("image-like", (0.7 * smooth + 0.3 * blocks).clamp(0, 1))]


def _latency_ms(fn: Callable[[], Any], runs: int = 5) -> float:
    fn()  # warm-up (allocations, ORT's first-run planning)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def logit_limit(largest: float) -> float:
    """The largest |exported - PyTorch| logit difference accepted when the reference logits reach
    ``largest`` in magnitude: float32 rounding is relative, so a faithful graph of a model with logits near
    50 differs from PyTorch by ~50x what one with logits near 1 does (an absolute 1e-4 failed a faithful
    graph with logits near 12 in CI); a wrong graph differs by orders of magnitude more."""
    return LOGIT_TOL * max(1.0, largest)


def verify(model: nn.Module, run_graph: Callable[[torch.Tensor], torch.Tensor], sizes: list[tuple[int, int]],
           batch: int, argmax: bool, runs: int = 5, out_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Compare the exported graph with PyTorch at each size (the logits at ``out_size`` when the graph has
    one); rows with diff, agreement and both latencies."""
    rows = []
    ask = (lambda t: model(t)) if out_size is None else (lambda t: model(t, out_size))
    for size in sizes:
        worst_diff, worst_agree, largest = 0.0, 1.0, 0.0
        for _, x in test_inputs(batch, size):
            with torch.no_grad():
                ref = ask(x)
            out = run_graph(x)
            if tuple(out.shape[-2:]) != tuple(ref.shape[-2:]):
                raise UserError(f"export check failed at {size[0]}x{size[1]}: the graph returned {tuple(out.shape)}, "
                                f"PyTorch {tuple(ref.shape)}; nothing was written. Please report this model config",
                                exit_code=1)
            labels = out.long() if argmax else out.argmax(1)
            if not argmax:
                worst_diff = max(worst_diff, float((out - ref).abs().max()))
                largest = max(largest, float(ref.abs().max()))
            worst_agree = min(worst_agree, float((labels == ref.argmax(1)).float().mean()))
        x = test_inputs(batch, size)[1][1]
        with torch.inference_mode():
            t_torch = _latency_ms(lambda: ask(x.contiguous(memory_format=torch.channels_last)), runs)
        t_graph = _latency_ms(lambda: run_graph(x), runs)
        limit = logit_limit(largest)
        ok = worst_agree >= ARGMAX_AGREE and (argmax or worst_diff <= limit)
        rows.append({"size": list(size), "max_abs_diff": None if argmax else worst_diff,
                     "limit": None if argmax else limit, "argmax_agree": worst_agree,
                     "torch_ms": t_torch, "export_ms": t_graph, "ok": ok})
    return rows


def check_sizes(img_size: tuple[int, int], dynamic: bool) -> list[tuple[int, int]]:
    """The export size and, for a dynamic graph, a larger multiple of 32 and an odd size not divisible by 32."""
    h, w = img_size
    if not dynamic:
        return [img_size]
    return [img_size, (h + 32 - h % 32, w + 64 - w % 32), (max(9, h - 13) | 1, max(9, w + 7) | 1)]


def format_rows(rows: list[dict[str, Any]], name: str) -> str:
    """The verification table printed after an export."""
    lines = [f"{'size':>10} {'max|diff|':>10} {'argmax =':>9} {'PyTorch ms':>11} {name + ' ms':>11}  check"]
    for r in rows:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(f"{r['size'][0]:>4}x{r['size'][1]:<5} {diff:>10} {100 * r['argmax_agree']:>8.3f}% "
                     f"{r['torch_ms']:>11.1f} {r['export_ms']:>11.1f}  {'ok' if r['ok'] else 'FAILED'}")
    return "\n".join(lines)


def output_path(args: argparse.Namespace) -> Path:
    """--output, else the weights' name with .onnx / .torchscript beside it."""
    if args.output:
        return Path(args.output)
    return Path(args.weights).with_suffix(".onnx" if args.format == "onnx" else ".torchscript")


def _refuse_existing(paths: list[Path], exist_ok: bool) -> None:
    for p in paths:
        if p.exists() and not exist_ok:
            raise UserError(f"{p} exists; pass --exist-ok to overwrite it, or --output another file")
        if not p.parent.is_dir():
            raise UserError(f"--output {p}: folder {p.parent} does not exist")


def _move(tmp: Path, dst: Path) -> None:
    atomic_write(dst, lambda f: f.write(tmp.read_bytes()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX (verified with ONNX Runtime) or TorchScript.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (.pt) written by train.py")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="H [W] (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the graph (dynamic with --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default 17; {DCN_OPSET} for C3_DCN models)")
    p.add_argument("--argmax", action="store_true", help="graph ends in argmax: uint8 [B, H, W] class ids")
    p.add_argument("--out-size", type=int, nargs="+", default=None,
                   help="H [W]: a static graph's logits (or --argmax ids) come out at this size, e.g. the images' "
                        "own when --img-size is smaller: one resize from the head instead of two (default: the input size)")
    p.add_argument("--int8", action="store_true", help="also write <name>-int8.onnx (static quantization, needs --data)")
    p.add_argument("--data", default=None, help="dataset YAML for INT8 calibration (train) and scoring (val); "
                                                "default: the checkpoint's")
    p.add_argument("--calib-images", type=int, default=64, help="training images used to calibrate INT8")
    p.add_argument("--quant-format", default="qdq", choices=["qdq", "qoperator"], help="INT8 graph form")
    p.add_argument("--output", default=None, help="file to write (default: beside --weights)")
    p.add_argument("--exist-ok", action="store_true", help="overwrite existing output files")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch and ONNX Runtime (0: default)")
    p.add_argument("--workers", type=int, default=0, help="dataloader workers for INT8 calibration/scoring")
    p.add_argument("--verbose", action="store_true", help="show Python tracebacks for errors")
    return p


def run(**kwargs: Any) -> dict[str, Any]:
    """Export; returns {'file': ..., 'verify': rows, 'int8': {...} or None}."""
    args = build_parser().parse_args(["--weights", str(kwargs.pop("weights"))])
    for k, v in kwargs.items():
        if not hasattr(args, k):
            raise TypeError(f"export.run() got an unknown argument '{k}'")
        setattr(args, k, v)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: use at least 1")
    if args.format == "torchscript" and (args.int8 or args.opset):
        raise UserError("--int8 and --opset apply to --format onnx only")
    out_size = parse_img_size(args.out_size, "--out-size") if args.out_size else None
    if out_size and args.dynamic:
        raise UserError("--out-size needs a static graph (a --dynamic one returns logits at its input size): "
                        "leave out one of the two")
    if out_size and args.format != "onnx":
        raise UserError("--out-size applies to --format onnx (a static graph); a TorchScript file runs at any "
                        "input size and returns logits at it")
    args.out_size = out_size
    model, ckpt = load_model(args.weights, torch.device("cpu"), fuse=True)  # fused: BN/RepConv folded
    model.aux_head = None  # deep supervision only: not part of inference
    model.to(memory_format=torch.contiguous_format)
    img_size = parse_img_size(args.img_size or ckpt.get("img_size"))
    args.opset = args.opset or (DCN_OPSET if has_dcn(model) else 17)
    dst = output_path(args)
    outputs = [dst]
    if args.int8:
        from segment.int8 import int8_path, prepare_int8

        outputs.append(int8_path(dst))
        int8_plan = prepare_int8(args, ckpt, img_size)  # checks --data and builds the loaders before writing
    if args.format == "onnx":
        import_ort()
        check_opset(model, args.opset)
    _refuse_existing(outputs, args.exist_ok)
    sizes = check_sizes(img_size, args.dynamic)
    threads = args.threads or None
    result: dict[str, Any] = {"file": str(dst), "int8": None}
    with tempfile.TemporaryDirectory(prefix="unet-lite-export-") as tmp:
        tmp_file = Path(tmp) / dst.name
        t0 = time.perf_counter()
        if args.format == "onnx":
            meta = onnx_metadata(ckpt, img_size, args)
            export_onnx(model, tmp_file, img_size, args.batch_size, args.dynamic, args.opset, args.argmax, meta,
                        out_size)
            backend = OnnxBackend(tmp_file, threads=threads)
            graph = backend.labels if args.argmax else backend
            label = "ORT"
        else:
            module = ExportModule(model, args.argmax).eval()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, torch.rand(args.batch_size, 3, *img_size), check_trace=False)
            traced.save(str(tmp_file))
            loaded = torch.jit.load(str(tmp_file)).eval()

            def graph(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return loaded(x)

            label = "TorchScript"
        print(f"Exported {describe(ckpt['model_cfg'])} to {args.format} in {time.perf_counter() - t0:.1f} s "
              f"(opset {args.opset}, {'dynamic' if args.dynamic else 'static'} {img_size[0]}x{img_size[1]}, "
              f"batch {args.batch_size}{', argmax' if args.argmax else ''}"
              f"{f', output {out_size[0]}x{out_size[1]}' if out_size else ''})" if args.format == "onnx" else
              f"Exported {describe(ckpt['model_cfg'])} to TorchScript in {time.perf_counter() - t0:.1f} s")
        batch = args.batch_size if not args.dynamic else max(2, args.batch_size)
        rows = verify(model, graph, sizes, batch if args.dynamic else args.batch_size, args.argmax, out_size=out_size)
        print(format_rows(rows, label))
        result["verify"] = rows
        if not all(r["ok"] for r in rows):
            bad = [r for r in rows if not r["ok"]][0]
            raise UserError(f"export check failed at {bad['size'][0]}x{bad['size'][1]}: max |logit diff| "
                            f"{bad['max_abs_diff']} (limit {bad['limit']:.2g}), argmax agreement {bad['argmax_agree']:.6f} "
                            f"(limit {ARGMAX_AGREE}); nothing was written. Please report this model config", exit_code=1)
        if args.int8:
            from segment.int8 import quantize_and_score

            tmp_int8 = Path(tmp) / int8_path(dst).name
            result["int8"] = quantize_and_score(tmp_file, tmp_int8, int8_plan, args)
            _move(tmp_int8, int8_path(dst))
        _move(tmp_file, dst)
    print(f"Saved {dst}" + (f" and {int8_path(dst)}" if args.int8 else ""))
    if args.format == "onnx":
        print(f"  validate: python segment/val.py --weights {int8_path(dst) if args.int8 else dst}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""

    def _main(a: list[str] | None) -> dict[str, Any]:
        args = build_parser().parse_args(a)
        setup_runtime(args.threads or None)
        return run(**vars(args))

    return cli_entry(_main, argv)


if __name__ == "__main__":
    main()
