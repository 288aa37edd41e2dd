"""Which precision a CPU run trains in under ``--precision auto``: measured, not guessed.

bf16 autocast is not always the faster choice on a CPU, and which models it helps depends on the CPU:
on an Intel Xeon with AMX, mobilenet_v3_large+segment trained 0.80x as fast in bf16 as in fp32 at
360x480 (batch 8); on an AMD EPYC with AVX-512 BF16 the same step was 2.3x faster in bf16 and 0.67x at
96x96 (BENCHMARKS.md, "Precision"). So ``auto`` times a few training steps of the run's own model, batch
size and input size in both precisions before training and keeps the faster one. The probe works on a
copy of the model with a zero-LR optimiser and restores the RNG state, so the run itself is unchanged.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn


def train_step_times(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor, variants: Sequence[bool], steps: int, warmup: int = 1) -> dict[bool, list[float]]:
    """ms of each timed training step (forward, loss, backward, optimiser step) per variant (True = bf16 autocast).

    ``loss_fn(outputs, y)`` returns (loss, parts). The variants alternate step by step, so a slower
    moment of a shared machine hits all of them; the first ``warmup`` rounds are not timed (oneDNN picks
    its kernels and the optimiser allocates its state there).
    """
    times: dict[bool, list[float]] = {v: [] for v in variants}
    for i in range(warmup + steps):
        for bf16 in variants:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                times[bf16].append((time.perf_counter() - t0) * 1e3)
    return times


def probe_step_ms(model: nn.Module, loss_fn: Callable, batch: int, hw: tuple[int, int], nc: int,
                  steps: int = 3) -> tuple[float, float]:
    """(fp32, bf16) median ms of a training step of a copy of ``model`` on random data, one warm-up each."""
    m = copy.deepcopy(model).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *hw, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, nc, (batch, *hw), generator=g)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: leave it as it was
        times = train_step_times(m, loss_fn, opt, x, y, (False, True), steps)
    return statistics.median(times[False]), statistics.median(times[True])
