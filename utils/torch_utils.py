"""Small torch helpers: devices, seeding, parameter and FLOP counts, EMA."""
from __future__ import annotations

import copy
import math
import os
import random
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from utils.errors import UserError


def select_device(device: str | int | None = "") -> torch.device:
    """'cpu', '0', '0,1' or '' (first CUDA device if any, else CPU) -> the device for this process."""
    spec = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    if spec in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    ids = [s for s in spec.split(",") if s]
    if not all(i.isdigit() for i in ids):
        raise UserError(f"--device '{device}': use cpu, 0, or a list such as 0,1")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    bad = [i for i in ids if int(i) >= torch.cuda.device_count()]
    if bad:
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    return torch.device(f"cuda:{ids[local_rank] if 0 <= local_rank < len(ids) else ids[0]}")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX), where bf16 autocast pays off.

    Without it oneDNN emulates bf16 and autocast only costs time and precision.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private probes moved: read the flags the kernel reports (Linux)
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = set(f.read().split())
        except OSError:
            return False
        return bool(flags & {"avx512_bf16", "amx_bf16"})


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm2d non-trivial statistics and affine terms (fresh ones are the identity), so a
    check of Conv+BN folding or of an export really compares something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def autocast_dtype(device: torch.device, precision: str = "auto",
                   probe: Callable[[], tuple[float, float]] | None = None) -> tuple[torch.dtype | None, str]:
    """Mixed-precision dtype for training on ``device`` and a line saying what was chosen and why.

    ``precision``: 'fp32', 'bf16', 'fp16' (forced) or 'auto': fp16 + GradScaler on CUDA; on a CPU with
    native bf16 (AVX-512 BF16/AMX) the faster of fp32 and bf16 as measured by ``probe`` ((fp32 ms,
    bf16 ms) of a training step; without a probe, bf16); fp32 on other CPUs. None = fp32.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None, "Precision: fp32 (--precision fp32 / --no-amp)"
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError(f"--precision fp16: fp16 autocast needs a CUDA device (this run is on {device.type}); "
                            f"on a CPU use bf16 or auto")
        return torch.float16, "Precision: fp16 autocast + GradScaler on CUDA (--precision fp16)"
    if precision == "bf16":
        slow = device.type == "cpu" and not cpu_has_native_bf16()
        return torch.bfloat16, ("Precision: bf16 autocast (--precision bf16)"
                                + ("; warning: this CPU has no native bf16, so it is emulated and slow" if slow else ""))
    if device.type == "cuda":
        return torch.float16, "Precision: fp16 autocast + GradScaler on CUDA (auto)"
    if device.type != "cpu":
        return None, f"Precision: fp32 (mixed precision is not supported on {device.type})"
    if not cpu_has_native_bf16():
        return None, "Precision: fp32 (auto: this CPU has no native bf16, AVX-512 BF16/AMX)"
    if probe is None:
        return torch.bfloat16, "Precision: bf16 autocast on CPU (auto: native bf16, not measured)"
    fp32_ms, bf16_ms = probe()
    measured = f"a training step measured {fp32_ms:.0f} ms in fp32, {bf16_ms:.0f} ms in bf16"
    if bf16_ms < fp32_ms:
        return torch.bfloat16, f"Precision: bf16 autocast on CPU (auto: {measured})"
    return None, f"Precision: fp32 (auto: {measured}; --precision bf16 forces bf16)"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gflops(model: nn.Module, img_size: tuple[int, int], channels: int = 3) -> float:
    """GFLOPs of one forward pass at ``img_size`` (H, W) measured with thop, stated as 2 x MACs.

    Returns NaN when thop is unavailable or fails on the model.
    """
    try:
        import thop
    except ImportError:  # pragma: no cover - thop is in requirements
        return float("nan")
    p = next(model.parameters())
    m = copy.deepcopy(model).eval()
    x = torch.zeros(1, channels, *img_size, device=p.device, dtype=p.dtype)
    # Modules whose work thop cannot see (e.g. deformable convolutions) bring their own counting rule.
    custom = {type(mod): mod.thop_ops for mod in m.modules() if callable(getattr(type(mod), "thop_ops", None))}
    try:
        with torch.no_grad():
            macs, _ = thop.profile(m, inputs=(x,), custom_ops=custom, verbose=False)
    except Exception:  # thop can trip over exotic modules; FLOPs are informative only
        return float("nan")
    return 2 * macs / 1e9


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel/DistributedDataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


class ModelEMA:
    """Exponential moving average of a model's weights and buffers, with a warm-up ramp on the decay.

    decay_t = decay * (1 - exp(-updates / tau)): early updates follow the raw model closely, later ones
    average over roughly 1 / (1 - decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates
        self._pairs: tuple[nn.Module, list, list, list, list] | None = None

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    def _tensor_pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(EMA floats, model floats, EMA others, model others), cached: the tensors are updated in place."""
        if self._pairs is None or self._pairs[0] is not model:
            msd, esd = unwrap(model).state_dict(), self.ema.state_dict()
            fe = [v for v in esd.values() if v.dtype.is_floating_point]
            fm = [msd[k] for k, v in esd.items() if v.dtype.is_floating_point]
            oe = [v for v in esd.values() if not v.dtype.is_floating_point]
            om = [msd[k] for k, v in esd.items() if not v.dtype.is_floating_point]
            self._pairs = (model, fe, fm, oe, om)
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        fe, fm, oe, om = self._tensor_pairs(model)
        torch._foreach_lerp_(fe, fm, 1.0 - self.current_decay())  # ema += (1 - d) * (model - ema)
        for e, m in zip(oe, om):
            e.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.decay, self.tau = float(state["decay"]), float(state["tau"])
