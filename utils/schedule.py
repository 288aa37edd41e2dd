"""The learning-rate schedule as a function of training progress, and the wall-clock budget of --time.

Progress p runs from 0 to 1: by iterations (p = it / total_iters) for an epoch-bounded run, by the
clock (p = budget used / training budget) for a --time run, so in both the LR reaches its final value
exactly when training ends.
"""
from __future__ import annotations

import math
import time
from typing import Callable


def lr_factor(p: float, warmup: float, lrf: float, cos: bool) -> float:
    """LR multiplier at progress ``p``: linear warm-up from 0.1 over [0, warmup), then cosine or
    poly(0.9) decay from 1 to ``lrf`` at p = 1 (clamped beyond)."""
    if p < warmup:
        return 0.1 + 0.9 * p / warmup
    q = min(max(p - warmup, 0.0) / max(1.0 - warmup, 1e-12), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * q)) if cos else (1 - q) ** 0.9
    return lrf + (1 - lrf) * decay


def lr_lambda(total_iters: int, warmup_iters: int, lrf: float, cos: bool) -> Callable[[int], float]:
    """LR factor per iteration of an epoch-bounded run (``torch.optim.lr_scheduler.LambdaLR``)."""
    total = max(total_iters, 1)

    def f(it: int) -> float:
        return lr_factor(it / total, warmup_iters / total, lrf, cos)

    return f


class ProgressFactor:
    """LR factor of a --time run: LambdaLR calls it each step; it answers for ``self.progress``.

    A plain object (not a closure) so the scheduler's state_dict carries the progress.
    """

    def __init__(self, warmup: float, lrf: float, cos: bool) -> None:
        self.warmup, self.lrf, self.cos = warmup, lrf, cos
        self.progress = 0.0

    def __call__(self, _it: int) -> float:
        return lr_factor(self.progress, self.warmup, self.lrf, self.cos)


class TimeBudget:
    """--time: the whole command's wall-clock budget, carried across resumes.

    Training stops early enough that the epoch-end validation of the partial epoch and the final
    wrap-up (best.pt validation, plots) still fit: ``reserve`` is twice the last measured epoch-end
    cost plus a few seconds. Before the first epoch end nothing is known and nothing is reserved.

    The stop is decided at a training step, never between epochs, so the last step always runs at
    the schedule's final LR: the last step of an epoch looks ahead by one epoch end (``progress(ahead)``),
    since that epoch's validation would otherwise carry the clock past the training budget before the
    next step could notice. Between epochs only the hard limit counts (``only_wrap_up_fits``).
    """

    def __init__(self, hours: float, start: float, used_before: float = 0.0) -> None:
        self.seconds = float(hours) * 3600.0
        self.start, self.used_before = start, float(used_before)
        self.reserve = 0.0
        self.epoch_end = 0.0  # seconds the last validated epoch end took; 0 until one is measured
        self.plain_end = 0.0  # seconds the last epoch end without validation (--val-period) took

    def used(self) -> float:
        """Seconds of the budget spent: earlier sessions (up to their last checkpoint) + this one."""
        return self.used_before + time.time() - self.start

    def note_epoch_end(self, seconds: float, validated: bool = True) -> None:
        """Record what one epoch end (validation, logging, checkpoint; or the checkpoint alone) cost.

        The reserve follows validated ends: the run's final epoch and its wrap-up both validate."""
        if not validated:
            self.plain_end = float(seconds)
            return
        self.epoch_end = float(seconds)
        self.reserve = 2.0 * seconds + 2.0

    def end_cost(self, validates: bool) -> float:
        """Expected seconds of the coming epoch end (an unmeasured one without validation counts as one with)."""
        return self.epoch_end if validates or self.plain_end <= 0.0 else self.plain_end

    def training_seconds(self) -> float:
        return max(self.seconds - self.reserve, 1e-6)

    def progress(self, ahead: float = 0.0) -> float:
        """Share of the training budget used, counting ``ahead`` seconds still to come; 1.0 = stop."""
        return min((self.used() + ahead) / self.training_seconds(), 1.0)

    def up(self) -> bool:
        return self.used() >= self.training_seconds()

    def only_wrap_up_fits(self, epoch_end_so_far: float) -> bool:
        """Between epochs: True when one more step would push the final wrap-up (about one epoch
        end) past the whole budget. The normal stop comes earlier, at a step (see the class doc)."""
        return self.used() + max(self.epoch_end, epoch_end_so_far) + 2.0 >= self.seconds
