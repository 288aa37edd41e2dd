"""The one inference path: decode, resize, forward (whole image | sliding window | TTA), resize back, argmax.

val.py, the trainer's validation (segment/evaluate.py), predict.py and the ONNX backend all go through
the functions here, so there is exactly one copy of pre- and post-processing:

* ``read_image`` / ``prepare``: the training decoder (utils/imageio.py: EXIF orientation applied, to
  RGB) and the evaluation resize (``utils.augment.val_transform``) to the model size;
* ``infer_members``: forward passes of a backend, one per TTA member (scale x flip), each optionally
  by sliding window, each returning logits at the size of its input; with ``strided``, whole-image
  members of a PyTorch model come as ``StridedLogits`` (the head's own stride);
* ``combine``: members resized to an output size, image by image; one plain member stays logits, several
  (TTA) become averaged probabilities. The argmax of either is the prediction. ``StridedLogits`` are
  resized once, from the head's stride straight to each image's size, instead of to the model's input
  size and then again (at a reduced input, e.g. 256x352 for 360x480 frames, the input-size logits are
  never built); the result depends on the image alone, never on the batch it came in.

A *backend* is any callable ``backend(x) -> logits`` with x float32 (N, 3, H, W) RGB in [0, 1] and
logits (N, nc, h, w) covering the whole input, at its size or at the fixed output size of a graph
exported with --out-size (combine resizes either); plus ``meta`` (names, nc, ignore_index, palette,
img_size, model) and ``fixed_size`` ((H, W) when the graph only runs at one input size, else None).
A backend with ``has_strided`` also offers ``strided(x) -> StridedLogits`` (TorchBackend over a
SegmentationModel does).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.model import SegmentationModel, describe
from segment.common import load_model, preprocess
from utils.augment import val_transform
from utils.datasets import read_image
from utils.errors import UserError
from utils.torch_utils import unwrap

__all__ = ["Backend", "TorchBackend", "InferenceConfig", "load_backend", "read_image", "prepare",
           "infer_members", "combine", "predict_batch", "StridedLogits"]


class Backend(Protocol):
    """What the inference path needs from a model (PyTorch module, ONNX Runtime session, ...)."""

    meta: dict[str, Any]
    fixed_size: tuple[int, int] | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """A SegmentationModel as a backend: eval mode, no grad, optional autocast, dict/tuple outputs -> 'out'."""

    fixed_size: tuple[int, int] | None = None

    def __init__(self, model: nn.Module, meta: dict[str, Any] | None = None, amp: bool = False) -> None:
        self.model = model
        self.meta = dict(meta or {})
        self.amp = amp
        # a module without parameters (a stub, a fixed filter) runs where its buffers are, else on the CPU
        tensors = [*model.parameters(), *model.buffers()]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        # only a SegmentationModel hands out its strided logits with their geometry
        bare = unwrap(model)
        self._seg = bare if isinstance(bare, SegmentationModel) else None
        self.has_strided = self._seg is not None

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda")

    def strided(self, x: torch.Tensor) -> "StridedLogits":
        """The head's logits at its stride with the input's geometry (see StridedLogits); needs has_strided."""
        if self._seg is None:
            raise TypeError(f"{type(self.model).__name__} is not a SegmentationModel: it has no strided logits")
        with torch.no_grad(), self._autocast():
            logits, geometry = self._seg.strided_logits(x)
        return StridedLogits(logits.float(), geometry)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            out = self.model(x)
        if isinstance(out, dict):  # heads with auxiliary outputs: only the main logits are predictions
            out = out["out"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()


@dataclass(frozen=True)
class StridedLogits:
    """A batch's logits at the head's stride (N, nc, h/s, w/s) and the input's (h, w, padded h, padded w):
    ``at(i, size)`` gives image i's logits (1, nc, H, W) at ``size`` with one resize where the input needed
    no padding (SegmentationModel.resize_logits). ``flipped``: the input was mirrored (a TTA member); the
    logits are mirrored back after the resize, since the padding sits on the right of the mirrored input."""

    logits: torch.Tensor
    geometry: tuple[int, int, int, int]
    flipped: bool = False

    def at(self, i: int, size: Sequence[int]) -> torch.Tensor:
        out = SegmentationModel.resize_logits(self.logits[i:i + 1], self.geometry, (int(size[0]), int(size[1])))
        return out.flip(-1) if self.flipped else out


def as_backend(model: nn.Module | Backend, amp: bool = False) -> Backend:
    """A backend for ``model``: modules are wrapped (and put in eval mode), backends are returned as is."""
    if isinstance(model, nn.Module):
        model.eval()
        return TorchBackend(model, getattr(model, "meta", None), amp)
    return model


def load_backend(weights: str | os.PathLike, device: torch.device, names: Sequence[str] | None = None,
                 amp: bool = False, flag: str = "--weights", **kwargs: Any) -> Backend:
    """Backend for a ``.pt`` checkpoint (PyTorch) or an ``.onnx`` export (ONNX Runtime).

    ``names`` (e.g. from --data) stands in for an ONNX file's missing class names; ``flag`` is the
    command-line flag that named the file, for the error messages.
    """
    path = Path(weights)
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".pth") and not path.is_file():  # the checkpoint loader words its own
        raise UserError(f"{flag} {weights}: file not found")
    if suffix in (".pt", ".pth"):
        model, ckpt = load_model(path, device)
        nc = int(ckpt["model_cfg"]["nc"])
        meta = {"names": list(ckpt.get("names") or [str(i) for i in range(nc)]), "nc": nc,
                "ignore_index": int(ckpt.get("ignore_index", 255)), "palette": ckpt.get("palette"),
                "img_size": list(ckpt["img_size"]) if ckpt.get("img_size") else None,
                "model": describe(ckpt["model_cfg"]), "data": ckpt.get("data")}
        return TorchBackend(model, meta, amp)
    if suffix == ".onnx":
        try:
            from segment.onnx_backend import OnnxBackend
        except ModuleNotFoundError as e:
            missing = e.name or "onnx_backend"
            what = ("this checkout has no ONNX backend (segment/onnx_backend.py)" if "onnx_backend" in missing
                    else f"the Python package '{missing}' is not installed (pip install -r requirements.txt)")
            raise UserError(f"{flag} {weights}: cannot run .onnx models: {what}") from None
        return OnnxBackend(str(path), device, names=list(names) if names else None, **kwargs)
    raise UserError(f"{flag} {weights}: use a .pt checkpoint from train.py or an .onnx file from export.py")


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a backend over an image.

    ``slide``: window (H, W) for sliding-window inference at native resolution (times ``slide_scale``);
    None resizes the whole image to the model size instead. ``overlap``: fraction of a window shared
    with its neighbour. ``tta``: average the probabilities of every scale in ``scales`` (x a horizontal
    flip when ``flip``).
    """

    slide: tuple[int, int] | None = None
    overlap: float = 1 / 3
    slide_scale: float = 1.0
    window_batch: int = 8
    tta: bool = False
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    flip: bool = True

    def members(self) -> list[tuple[float, bool]]:
        """(scale, flipped) of each forward pass per image."""
        if not self.tta:
            return [(1.0, False)]
        return [(float(s), f) for s in self.scales for f in ((False, True) if self.flip else (False,))]

    def describe(self) -> str:
        parts = []
        if self.slide:
            parts.append(f"sliding window {self.slide[0]}x{self.slide[1]}, overlap {self.overlap:g}"
                         + (f", scale {self.slide_scale:g}" if self.slide_scale != 1 else ""))
        if self.tta:
            parts.append(f"TTA scales {' '.join(f'{s:g}' for s in self.scales)}" + (" + flip" if self.flip else ""))
        return "; ".join(parts) or "whole image"


def inference_config(slide: Sequence[int] | None = None, overlap: float = 1 / 3, slide_scale: float = 1.0,
                     tta: bool = False, scales: Sequence[float] | None = None, no_flip: bool = False,
                     batch_size: int = 8) -> InferenceConfig:
    """Checked InferenceConfig from CLI values (--slide H [W], --overlap, --slide-scale, --tta, --tta-scales)."""
    win: tuple[int, int] | None = None
    if slide is not None:
        vals = [slide] if isinstance(slide, int) else list(slide)
        if len(vals) not in (1, 2) or any(int(v) < 8 for v in vals):
            raise UserError(f"--slide {' '.join(map(str, vals))}: give the window as H or H W, each at least 8 pixels")
        win = (int(vals[0]), int(vals[-1]))
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap {overlap}: use a fraction in [0, 1), e.g. 0.33")
    if not 0 < slide_scale <= 8:
        raise UserError(f"--slide-scale {slide_scale}: use a factor in (0, 8]")
    sc = tuple(float(s) for s in (scales or (0.75, 1.0, 1.25)))
    if not sc or any(not 0.1 <= s <= 4 for s in sc):
        raise UserError(f"--tta-scales {' '.join(map(str, sc))}: use factors between 0.1 and 4, e.g. 0.75 1.0 1.25")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: use at least 1")
    return InferenceConfig(win, float(overlap), float(slide_scale), int(batch_size), bool(tta), sc, not no_flip)


def check_backend_config(backend: Backend, cfg: InferenceConfig, img_size: tuple[int, int] | None,
                         flag: str = "--img-size") -> None:
    """Refuse combinations a graph cannot run, before anything is written: blending on an --argmax export
    (it has no logits, so slide/TTA would average class votes) and other sizes on a static one (``flag``
    names the size in the message)."""
    if getattr(backend, "outputs_labels", False) and (cfg.slide is not None or cfg.tta):
        what = "--slide" if cfg.slide is not None else "--tta"
        raise UserError(f"{what}: this ONNX graph was exported with --argmax and returns class ids, not logits, "
                        f"so there is nothing to blend; export without --argmax to use {what}")
    out_size = (getattr(backend, "meta", None) or {}).get("out_size")
    if out_size and cfg.slide is not None and tuple(out_size) != tuple(backend.fixed_size or ()):
        raise UserError(f"--slide: this graph returns its logits at {out_size[0]}x{out_size[1]} (exported with "
                        f"--out-size), not at the window's size; export it without --out-size for sliding windows")
    fixed = backend.fixed_size
    if fixed is None:
        return
    fixed = tuple(fixed)
    how = "export with --dynamic to run other sizes"
    if cfg.slide is None and img_size is not None and tuple(img_size) != fixed:
        raise UserError(f"{flag} {img_size[0]} {img_size[1]}: the model only runs at {fixed[0]}x{fixed[1]}; {how}")
    if cfg.slide is not None and tuple(cfg.slide) != fixed:
        raise UserError(f"--slide {cfg.slide[0]} {cfg.slide[1]}: the model only runs at {fixed[0]}x{fixed[1]}, "
                        f"so the window must be that size; {how}")
    if cfg.tta and (cfg.slide is None and any(s != 1.0 for s in cfg.scales)):
        raise UserError(f"--tta scales {' '.join(f'{s:g}' for s in cfg.scales)}: the model only runs at "
                        f"{fixed[0]}x{fixed[1]}; use --tta-scales 1.0 (flip only), --slide, or {how}")


def prepare(image: np.ndarray, img_size: tuple[int, int] | None) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> uint8 (3, h, w) tensor resized to ``img_size`` (None: native size).

    The resize is the evaluation transform the dataset uses, so predict sees what val scores.
    """
    if img_size is not None:
        image = val_transform(img_size)(image=image)["image"]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (int(size[0]), int(size[1])):
        return x  # already there (a backend that resized straight to the output size)
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``length``: every ``stride`` pixels, the last one flush with the end."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


def slide_logits(backend: Backend, x: torch.Tensor, window: tuple[int, int], overlap: float,
                 window_batch: int) -> torch.Tensor:
    """Logits of (N, 3, H, W) ``x`` from overlapping windows, averaged where windows overlap.

    Windows are forwarded ``window_batch`` at a time, so peak memory follows the window and the batch,
    not the image (the image-size logit sum and count are the only full-size buffers). A window larger
    than the image is clipped to it: one window is then exactly whole-image inference.
    """
    n, _, h, w = x.shape
    wh, ww = min(window[0], h), min(window[1], w)
    sh, sw = max(1, int(wh * (1 - overlap))), max(1, int(ww * (1 - overlap)))
    boxes = [(y, x0) for y in window_starts(h, wh, sh) for x0 in window_starts(w, ww, sw)]
    fixed = backend.fixed_size
    if fixed is not None and (wh, ww) != tuple(fixed):
        raise UserError(f"image {h}x{w} is smaller than the model's fixed size {fixed[0]}x{fixed[1]}; "
                        f"export with --dynamic or use a smaller --slide window")
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=x.device)
    for img in range(n):
        crops = [x[img, :, y:y + wh, x0:x0 + ww] for y, x0 in boxes]
        for k in range(0, len(crops), window_batch):
            logits = backend(torch.stack(crops[k:k + window_batch]).contiguous(memory_format=torch.channels_last))
            if tuple(logits.shape[-2:]) != (wh, ww):
                raise UserError(f"--slide: the model returned {logits.shape[-2]}x{logits.shape[-1]} logits for a "
                                f"{wh}x{ww} window; sliding windows need logits at the window's size")
            if total is None:
                total = torch.zeros(n, logits.shape[1], h, w, device=x.device)
            for j, (y, x0) in enumerate(boxes[k:k + window_batch]):
                total[img, :, y:y + wh, x0:x0 + ww] += logits[j]
                if img == 0:
                    count[0, 0, y:y + wh, x0:x0 + ww] += 1
    assert total is not None
    return total / count


def infer_members(backend: Backend, x: torch.Tensor, cfg: InferenceConfig,
                  strided: bool = False) -> list[torch.Tensor | StridedLogits]:
    """One logits tensor per TTA member for the float [0, 1] batch ``x`` (already at the model size, or at
    native size for sliding windows); each is at the size of its own (rescaled) input, un-flipped. With
    ``strided`` and a backend that offers it, whole-image members are StridedLogits instead (what evaluate
    and predict_batch ask for: combine resizes each once, image by image, so TTA's scale-1.0 member is
    exactly the plain prediction). Sliding windows are stitched at the input size."""
    sized = strided and not cfg.slide and getattr(backend, "has_strided", False)
    out: list[torch.Tensor | StridedLogits] = []
    base = cfg.slide_scale if cfg.slide else 1.0
    h, w = x.shape[-2:]
    for scale, flipped in cfg.members():
        s = scale * base
        xs = x if s == 1.0 else _resize(x, (max(8, round(h * s)), max(8, round(w * s))))
        if flipped:
            xs = xs.flip(-1)
        xs = xs.contiguous(memory_format=torch.channels_last)
        if sized:
            out.append(replace(backend.strided(xs), flipped=flipped))
            continue
        logits = slide_logits(backend, xs, cfg.slide, cfg.overlap, cfg.window_batch) if cfg.slide else backend(xs)
        out.append(logits.flip(-1) if flipped else logits)
    return out


def _member_at(m: torch.Tensor | StridedLogits, i: int, size: Sequence[int]) -> torch.Tensor:
    return m.at(i, size) if isinstance(m, StridedLogits) else _resize(m[i:i + 1].float(), size)


def combine(members: Sequence[torch.Tensor | StridedLogits], i: int, size: Sequence[int],
            probs: bool = False) -> torch.Tensor:
    """Scores (nc, H, W) of image ``i`` at output ``size``: logits for a single member unless ``probs``;
    the mean softmax over members otherwise. Every member is resized to ``size`` *before* the softmax,
    so a single member gives exactly the argmax of the plain path."""
    if len(members) == 1 and not probs:
        return _member_at(members[0], i, size)[0]
    acc = None
    for m in members:
        p = _member_at(m, i, size).softmax(1)[0]
        acc = p if acc is None else acc + p
    assert acc is not None
    return acc / len(members)


def predict_batch(backend: Backend, images: torch.Tensor, sizes: Sequence[Sequence[int]], cfg: InferenceConfig,
                  device: torch.device, probs: bool = False) -> list[torch.Tensor]:
    """uint8 (N, 3, h, w) batch -> per image scores (nc, H_i, W_i) at ``sizes`` (the originals):
    logits, or probabilities with ``probs`` or TTA."""
    members = infer_members(backend, preprocess(images, device), cfg, strided=True)
    return [combine(members, i, size, probs or cfg.tta) for i, size in enumerate(sizes)]
