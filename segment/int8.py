"""INT8 export: static quantization of an fp32 .onnx with ONNX Runtime's tools, calibrated on training
images that go through the engine's own dataset and resize, then scored on val against the fp32 graph.

Used by ``segment/export.py --int8``. Weights are quantized per channel to int8 and activations per
tensor to uint8 (the U8S8 pair that VNNI's vpdpbusd instruction multiplies); the calibration range is
the min/max over the calibration images.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from segment.evaluate import eval_loader, evaluate
from segment.onnx_backend import OnnxBackend
from utils.augment import val_transform
from utils.dataconfig import DataConfig, load_data_config
from utils.dataset_check import preflight
from utils.datasets import SegDataset
from utils.errors import UserError
from utils.timing import alternate, paired_ratio

PAIRS = 20  # alternating fp32/int8 calls timed by --int8


@dataclass
class Int8Plan:
    """What --int8 needs, checked before anything is written."""

    data: DataConfig
    calib: SegDataset
    val_loader: torch.utils.data.DataLoader
    img_size: tuple[int, int]
    batch: int  # the graph's static batch (1 for a dynamic graph): calibration and timing run at it


def int8_path(fp32: Path) -> Path:
    """best.onnx -> best-int8.onnx."""
    return fp32.with_name(f"{fp32.stem}-int8{fp32.suffix}")


def prepare_int8(args: argparse.Namespace, ckpt: dict[str, Any], img_size: tuple[int, int]) -> Int8Plan:
    """Resolve --data (default: the checkpoint's), check the train and val splits, build the readers."""
    if args.argmax:
        raise UserError("--int8 with --argmax: quantize the logits graph (drop --argmax); "
                        "an argmax graph cannot be scored against fp32 logits")
    data_arg = args.data or ckpt.get("data")
    if not data_arg:
        raise UserError("--int8 needs --data: the dataset YAML whose training images calibrate the quantization")
    data = load_data_config(data_arg)
    if data.nc != int(ckpt["model_cfg"]["nc"]):
        raise UserError(f"--data {data.yaml_file}: {data.nc} classes, but the model has {ckpt['model_cfg']['nc']}")
    if args.calib_images < 1:
        raise UserError(f"--calib-images {args.calib_images}: use at least 1")
    report = preflight(data, ["train"], workers=max(args.workers, 1))["train"]
    # spread the calibration images over the whole split rather than its first (often one-sequence) files
    step = max(1, len(report.items) // args.calib_images)
    items = report.items[::step][: args.calib_images]
    batch = 1 if args.dynamic else max(1, args.batch_size)  # calibration runs the graph at its own batch
    if len(items) < batch:
        raise UserError(f"--calib-images {args.calib_images}: {len(items)} calibration image(s) do not fill one "
                        f"batch of the static graph (--batch-size {batch}); use at least {batch} images, or --dynamic")
    calib = SegDataset(items, data.mask_spec, val_transform(img_size), train=False)
    val_loader = eval_loader(data, "val", img_size, max(1, args.batch_size), args.workers)
    return Int8Plan(data, calib, val_loader, img_size, batch)


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over the calibration images (one at a time)."""

    def __init__(self, ds: Sequence[tuple[Any, ...]], input_name: str, batch: int) -> None:
        self.ds, self.input_name, self.batch = ds, input_name, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.ds) - self.batch + 1, self.batch):
            imgs = [self.ds[i][0] for i in range(start, start + self.batch)]
            x = torch.stack(imgs).float().div_(255.0)  # the same [0, 1] input preprocess() gives
            yield {self.input_name: x.numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def io_resizes(model: Any) -> list[str]:
    """Names of the Resize nodes of an ONNX ``model`` that read a graph input or write a graph output."""
    ends = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    return [n.name for n in model.graph.node
            if n.op_type == "Resize" and (n.input[0] in ends or any(o in ends for o in n.output))]


def quantize(fp32: Path, dst: Path, calib: Sequence[tuple[Any, ...]], quant_format: str = "qdq",
             batch: int = 1, fp32_io_resizes: bool = False) -> None:
    """Static INT8 quantization of ``fp32`` into ``dst`` (metadata carried over).

    ``calib``: items whose first element is a uint8 CHW image tensor at the graph's size (a SegDataset
    with the eval transform; benchmarks/inference_speed.py passes random images). ``fp32_io_resizes``
    leaves in fp32 the Resize nodes that read the graph's input or write its output: a benchmark graph
    that wraps the resizes to and from a model's size, which the deployed path runs outside the graph.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:  # shape inference + graph cleanup the quantizer works best on; optional
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        src = pre
    except Exception:  # noqa: BLE001 - a model the pre-processor cannot handle still quantizes
        src = fp32
    reader = _Reader(calib, "images", batch)
    CalibrationDataReader.register(type(reader))
    exclude = io_resizes(onnx.load(str(src), load_external_data=False)) if fp32_io_resizes else []
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ if quant_format == "qdq"
                    else QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude)
    pre.unlink(missing_ok=True)
    src_meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for k, v in src_meta.items():
        if k == "unet_lite":
            import json

            rec = json.loads(v)
            rec.update(int8=True, quant_format=quant_format)
            v = json.dumps(rec)
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, str(dst))


def paired_latency_ms(backends: Sequence[OnnxBackend], batch: int, img_size: tuple[int, int],
                      runs: int = PAIRS) -> tuple[list[float], list[float]]:
    """Median ms per image of each backend, and the speed-up of each over the first: the median over
    ``runs`` rounds of alternating calls of the ratio within the round (utils.timing)."""
    x = torch.rand(batch, 3, *img_size)
    times = alternate([lambda be=be: be(x) for be in backends], rounds=runs)
    medians = [statistics.median(call[0] for call in rounds) / batch for rounds in times]
    return medians, [paired_ratio(times[0], t) for t in times]


def quantize_and_score(fp32: Path, dst: Path, plan: Int8Plan, args: argparse.Namespace) -> dict[str, Any]:
    """Quantize, then score fp32 and int8 on val and time both; prints and returns the comparison."""
    t0 = time.perf_counter()
    quantize(fp32, dst, plan.calib, args.quant_format, plan.batch)
    used = len(plan.calib) // plan.batch * plan.batch  # the calibration reads whole batches
    print(f"INT8 ({args.quant_format.upper()}, per-channel weights, MinMax over {used} training images) "
          f"in {time.perf_counter() - t0:.1f} s")
    threads = args.threads or None
    out: dict[str, Any] = {"quant_format": args.quant_format, "calib_images": used}
    backends = [OnnxBackend(path, threads=threads) for path in (fp32, dst)]
    for name, be in zip(("fp32", "int8"), backends):
        res = evaluate(be, plan.val_loader, plan.data, torch.device("cpu"), desc=f"val {name}", progress=False)
        out[name] = {"mIoU": float(res.metrics["mIoU"])}
    medians, ratios = paired_latency_ms(backends, plan.batch, plan.img_size)
    out["fp32"]["ms_per_image"], out["int8"]["ms_per_image"] = medians
    out["speedup"] = ratios[1]
    f, q = out["fp32"], out["int8"]
    out["miou_drop_points"] = 100 * (f["mIoU"] - q["mIoU"])
    h, w = plan.img_size
    print(f"val mIoU fp32 {f['mIoU']:.4f}  int8 {q['mIoU']:.4f}  ({out['miou_drop_points']:+.2f} points lost); "
          f"ORT latency at {h}x{w}, batch {plan.batch}: fp32 {f['ms_per_image']:.1f} ms, "
          f"int8 {q['ms_per_image']:.1f} ms ({out['speedup']:.2f}x, the median of {PAIRS} alternating pairs)")
    return out
