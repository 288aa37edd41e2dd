"""Checkpoints: self-describing dicts of tensors and plain Python values, written atomically and
read only with ``torch.load(weights_only=True)`` so loading one can never run code."""
from __future__ import annotations

import glob
import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.files import atomic_write

CHECKPOINT_FORMAT = 1


def save_checkpoint(ckpt: dict[str, Any], *paths: str | os.PathLike) -> None:
    """Serialise ``ckpt`` to memory once, then atomically replace each of ``paths`` with it, in order.

    A failure while serialising (or a kill at any instant) leaves every previous file byte-identical.
    """
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    for path in map(Path, paths):
        # A process killed mid-write leaves its hidden temporary file behind (the target itself is
        # intact); a run folder has one writer, so the next save of the same file removes such leftovers.
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
        atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; refusals and damage are reported as UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: checkpoint not found")
    with open(p, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..); the legacy format starts with a pickle protocol byte (0x80).
    # Anything else (a text file, an image, a YAML) is not a checkpoint, whatever its name.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        kind = "an empty file" if not head else "a text file" if head.isascii() else "not a PyTorch file"
        raise UserError(f"{p}: not a PyTorch checkpoint ({kind}; a .pt written by torch.save starts with "
                        f"a zip header); give a .pt written by train.py or a torchvision state dict")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{p}: refused to load: the file holds Python objects that would run code when unpickled "
                        f"(only tensors and plain values are accepted; {_first_line(e)}). Nothing from it was run.") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive fails in many ways (RuntimeError, KeyError, EOFError...)
        raise UserError(f"{p}: not a readable PyTorch checkpoint (damaged or truncated? {type(e).__name__}: "
                        f"{_first_line(e)}). Checkpoints are written atomically, so this file was damaged after "
                        f"it was written (disk, copy); use another one, e.g. best.pt or epochN.pt") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{p}: expected a checkpoint dict, got {type(ckpt).__name__}")
    return ckpt


def state_dict_of(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint dict (its 'model' entry) or of a bare state dict."""
    sd = obj.get("model", obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError("checkpoint has no 'model' state dict of tensors")
    return sd


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Copy the entries of ``state`` whose name and shape match ``model``'s; returns (matched, model total)."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)


def torchvision_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a plain torchvision model's state dict, e.g. resnet18-f37072fd.pth) renamed to the
    model's backbone entries; empty when the backbone is not a torchvision one or nothing maps."""
    backbone = getattr(model, "backbone", None)
    source_key = getattr(backbone, "source_key", None)
    if source_key is None:
        return {}
    out = {}
    for key in backbone.state_dict():
        src = source_key(key)
        if src in state:
            out[f"backbone.{key}"] = state[src]
    return out


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    """True when every floating-point tensor of ``state`` is finite."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA) as plain values and tensors."""
    py = random.getstate()
    npst = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
