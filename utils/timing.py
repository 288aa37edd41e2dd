"""Timing callables side by side on a shared machine: calls alternate, speed-ups are taken round by round.

The 2-core VMs this project is measured on change speed for minutes at a time (one ONNX graph ran at 17
and at 28-46 ms per image a few minutes apart). Two variants timed one block after the other then compare
two speeds of the machine; called in turn, both sides of every round see the same one.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence


def alternate(calls: Sequence[Callable[[], Any]], rounds: int, per_round: int = 1,
              warmup: int = 2) -> list[list[list[float]]]:
    """ms per call: ``result[k][r]`` holds the ``per_round`` times of ``calls[k]`` in round ``r``.

    Each round runs every callable ``per_round`` times in turn; odd rounds go in reverse order, so no
    callable always follows the same one (ONNX Runtime's threads keep spinning for a moment after a run
    and take cores from whatever runs next).
    """
    for fn in calls:  # allocator, ORT arena, oneDNN primitives
        for _ in range(warmup):
            fn()
    times: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in calls]
    order = list(range(len(calls)))
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            for _ in range(per_round):
                t0 = time.perf_counter()
                calls[k]()
                times[k][r].append((time.perf_counter() - t0) * 1e3)
    return times


def paired_ratio(ref: Sequence[Sequence[float]], other: Sequence[Sequence[float]]) -> float:
    """Median over rounds of (ref's median / other's median in that round): the speed-up of ``other``
    measured within each round, so a slow spell of the machine weighs on both sides of a ratio alike."""
    return statistics.median(statistics.median(a) / statistics.median(b) for a, b in zip(ref, other))


def rounds_faster(ref: Sequence[Sequence[float]], other: Sequence[Sequence[float]]) -> int:
    """In how many rounds ``other``'s median time was below ``ref``'s: beside ``paired_ratio``, it tells
    a speed-up of 1.00x that is a coin toss from one that holds round after round."""
    return sum(statistics.median(b) < statistics.median(a) for a, b in zip(ref, other))
