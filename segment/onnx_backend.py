"""Run an exported .onnx (fp32 or INT8) with ONNX Runtime behind the same call as a PyTorch model.

``OnnxBackend(path)(x)`` takes float32 (N, 3, H, W) RGB in [0, 1] and returns float32 logits
(N, nc, H, W), like ``SegmentationModel`` (at the size built into the graph when it was exported with
--out-size; the inference path resizes them where they differ from the image); the inference path (decode, resize, slide/TTA, resize
back, argmax) stays in one place and only swaps the forward. Everything a .pt would tell (names,
palette, nc, ignore_index, img_size) comes from the metadata export.py stores in the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from utils.errors import UserError

META_KEY = "unet_lite"  # metadata_props key holding our JSON record
META_VERSION = 1


def import_ort() -> Any:
    """onnxruntime, or one line saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime (it is in requirements.txt), "
                        "or use the .pt weights") from None
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """ORT session options: all graph optimisations, ``threads`` intra-op threads (None: ORT's default)."""
    ort = import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """Our metadata record of an .onnx file, or None when the file has none (not exported by export.py)."""
    ort = import_ort()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for damaged files
        raise UserError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    raw = sess.get_modelmeta().custom_metadata_map.get(META_KEY)
    return json.loads(raw) if raw else None


class OnnxBackend:
    """An .onnx model as a callable ``x -> logits``; see the module docstring.

    Attributes: ``meta`` (names, nc, ignore_index, palette, img_size, model description, ...),
    ``fixed_size`` ((H, W) of a static graph, None when height and width are dynamic),
    ``fixed_batch`` (batch size of a static graph, else None) and ``outputs_labels`` (True for an
    ``--argmax`` export: the graph returns uint8 class ids, see ``__call__``; ``labels(x)`` gives them).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", names: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None, threads: int | None = None,
                 ignore_index: int | None = None) -> None:
        ort = import_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX file not found")
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        providers = ["CPUExecutionProvider"]
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(f"--device {device}: this onnxruntime has no CUDA provider "
                                f"(pip install onnxruntime-gpu), or use --device cpu")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": dev.index or 0}))
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=providers)
        except Exception as e:
            raise UserError(f"{self.path}: not a loadable ONNX model "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        meta: dict[str, Any] = json.loads(raw) if raw else {}
        if not meta and names is None:
            raise UserError(f"{self.path}: no unet-lite metadata (class names, nc) in this ONNX file; export it with "
                            f"segment/export.py, or pass --data so the names come from the dataset YAML")
        if names is not None:
            if meta.get("nc") is not None and len(names) != int(meta["nc"]):
                raise UserError(f"{self.path}: the model has {meta['nc']} classes but {len(names)} names were given")
            meta["names"], meta["nc"] = list(names), len(names)
        # palette and ignore_index (e.g. from --data) stand in only where the graph records none
        if palette is not None and not meta.get("palette"):
            meta["palette"] = [list(c) for c in palette]
        if meta.get("ignore_index") is None:
            meta["ignore_index"] = 255 if ignore_index is None else int(ignore_index)
        self.meta = meta
        self.names: list[str] = list(meta["names"])
        self.nc = int(meta["nc"])
        self.device = dev
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        if len(inp.shape) != 4:
            raise UserError(f"{self.path}: expected one (N, 3, H, W) input, the graph's is {inp.shape}")
        h, w = inp.shape[2], inp.shape[3]
        self.fixed_size: tuple[int, int] | None = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None
        self.fixed_batch: int | None = int(inp.shape[0]) if isinstance(inp.shape[0], int) else None
        self.outputs_labels = out.type == "tensor(uint8)" or len(out.shape) == 3

    def __repr__(self) -> str:
        return f"OnnxBackend({self.path.name}, {self.meta.get('model', '?')}, fixed_size={self.fixed_size})"

    def _run(self, x: torch.Tensor) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) input, got {tuple(x.shape)}")
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            raise UserError(f"{self.path.name}: exported for {self.fixed_size[0]}x{self.fixed_size[1]} inputs only, "
                            f"got {x.shape[-2]}x{x.shape[-1]}; use that --img-size or re-export with --dynamic")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()  # ORT wants plain NCHW
        b = self.fixed_batch
        if b is None or arr.shape[0] == b:
            return self.session.run([self.output_name], {self.input_name: arr})[0]
        # a static-batch graph: run it in chunks of its batch rather than refusing; a short last chunk
        # is filled up with copies of its last image, whose outputs are dropped
        parts = []
        for i in range(0, arr.shape[0], b):
            chunk = arr[i: i + b]
            k = chunk.shape[0]
            if k < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - k, axis=0)])
            parts.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:k])
        return np.concatenate(parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, nc, H, W) on ``x``'s device.

        An ``--argmax`` graph has no logits: it returns the one-hot of its class ids instead, whose
        argmax is exactly those ids (so whole-image masks are right); blending them (slide/TTA) would
        be a vote, not an average of probabilities: callers check ``outputs_labels`` and refuse that.
        """
        out = torch.from_numpy(self._run(x))
        if self.outputs_labels:
            out = torch.nn.functional.one_hot(out.long(), self.nc).permute(0, 3, 1, 2).float()
        return out.to(x.device)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids (N, H, W) int64: the graph's own argmax output, or the argmax of its logits."""
        out = torch.from_numpy(self._run(x))
        return (out.long() if self.outputs_labels else out.argmax(1)).to(x.device)

    def train(self, mode: bool = True) -> "OnnxBackend":
        """nn.Module-like no-op (also bound as ``eval``), so code written for a PyTorch model can hold a backend."""
        return self

    eval = train

    @property
    def training(self) -> bool:
        return False
