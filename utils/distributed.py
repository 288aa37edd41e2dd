"""Multi-process (torchrun) helpers: every decision that ends or changes a step is taken by all ranks.

Each call is a no-op in a single process, so the training loop reads the same with or without DDP.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def env_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: torch.device, timeout_s: float) -> None:
    """Join the process group torchrun set up: NCCL for CUDA devices, gloo on CPU.

    ``timeout_s`` bounds how long a collective waits for a rank that stopped answering (a rank that
    *dies* is noticed by torchrun at once); it must exceed the longest rank-0-only stretch (saving).
    """
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)


def agree(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum over ranks: a flag raised on any rank (stop, non-finite loss) holds for all."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank (e.g. training progress measured on rank 0's clock)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def sum_dict(d: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over ranks (all ranks must hold the same keys)."""
    if not active() or not d:
        return dict(d)
    keys = sorted(d)
    t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's copy of ``module``.

    Without SyncBatchNorm (CUDA only) each rank's BatchNorm running statistics, and so its EMA, drift
    apart; validating after this makes every rank score exactly the weights rank 0 saves.
    """
    if not active():
        return
    for t in module.state_dict().values():
        if t.is_contiguous():
            dist.broadcast(t, 0)
        else:  # channels-last conv weights: collectives want dense tensors
            dense = t.contiguous()
            dist.broadcast(dense, 0)
            t.copy_(dense)


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
