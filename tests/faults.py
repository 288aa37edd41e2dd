"""Fault-injection helpers for the reliability tests: train.py as a subprocess that is killed at a chosen
moment, bitwise checkpoint comparison, and fingerprints of every file under a folder."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from utils.torch_utils import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "segment" / "train.py"
VAL = REPO / "segment" / "val.py"

# A tiny deterministic run: with 16 train images at 32x48 and batch 2, 8 steps an epoch, 2 epochs.
# precision pinned (--precision auto times both on the machine, so two runs of a test could differ): bf16,
# the path --precision auto takes on a CPU with native bf16, and fp32 on one without, where bf16 is
# emulated and made every tiny training of the suite ~1.6x slower (the bf16 tests force it themselves)
TINY_PRECISION = "bf16" if cpu_has_native_bf16() else "fp32"
TINY: dict[str, Any] = dict(backbone="mobilenet_v3_small", head="unet", img_size=[32, 48], epochs=2, batch_size=2, seed=0,
                            deterministic=True, device="cpu", tb_images=1, precision=TINY_PRECISION)


def flags(**kwargs: Any) -> list[str]:
    """train.run-style keyword arguments as command-line flags."""
    out: list[str] = []
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif isinstance(v, (list, tuple)):
            out += [flag, *map(str, v)]
        elif v is not False and v is not None:
            out += [flag, str(v)]
    return out


def env() -> dict[str, str]:
    # One intra-op thread: a tiny model gains nothing from more, and on a busy 2-core machine two
    # spinning OpenMP threads per process make a 7 s run take 50 s. The in-process reference runs use
    # one thread too (``one_thread``), so every compared run does the same arithmetic.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch intra-op threads = 1 (as in ``env()``) and the default determinism flag restored afterwards."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def run_cli(script: Path, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


class Training:
    """train.py in its own process group, output to a log file that the test polls."""

    def __init__(self, args: list[str], cwd: Path, log: Path, nproc: int = 1) -> None:
        self.log = log
        self._f = open(log, "wb")
        # nproc > 1: the same script under torchrun (gloo on CPU), as a user launches DDP
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd = [*(launcher if nproc > 1 else [sys.executable]), str(TRAIN), *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=self._f, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"train.py exited ({self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")

    def wait_for(self, pattern: str, timeout: float = 180) -> None:
        """Block until the regular expression ``pattern`` matches the output (a log line, tqdm progress)."""
        end, rx = time.monotonic() + timeout, re.compile(pattern, re.M)
        while not rx.search(self.output()):
            self._check_alive(f"printing {pattern!r}")
            if time.monotonic() > end:
                raise AssertionError(f"timeout waiting for {pattern!r}:\n{self.output()[-3000:]}")
            time.sleep(0.005)

    def wait_for_step(self, epoch: int, epochs: int) -> None:
        """Block until a training step of ``epoch`` (1-based) has finished: the progress bar shows its
        loss only after a step. Killing now lands mid-epoch while the epoch has steps left."""
        self.wait_for(rf"(^|\r){epoch}/{epochs}:[^\r\n]*lr=")

    def wait_for_replace(self, path: Path, timeout: float = 180) -> None:
        """Block until ``path`` is replaced (a new inode or mtime): a checkpoint was just committed."""
        def sig() -> tuple[int, int] | None:
            try:
                st = path.stat()
                return st.st_ino, st.st_mtime_ns
            except FileNotFoundError:
                return None

        before, end = sig(), time.monotonic() + timeout
        while sig() == before:
            self._check_alive(f"replacing {path}")
            if time.monotonic() > end:
                raise AssertionError(f"timeout waiting for {path} to change:\n{self.output()[-3000:]}")
            time.sleep(0.005)

    def kill(self, sig: int = signal.SIGKILL, group: bool | None = None) -> int:
        """Send ``sig`` to train.py, or to its whole process group (workers included; the default for
        SIGKILL, like a crash), and wait for the exit code."""
        if group if group is not None else sig == signal.SIGKILL:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._f.close()
        return rc


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def diff_values(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two checkpoint values differ: tensors bitwise (dtype, shape, bytes), the rest by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k} (only in one)" for k in set(a) ^ set(b)]
        for k in a.keys() & b.keys():
            out += diff_values(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_values(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # both NaN
        return []
    return [] if a == b else [f"{path} ({a!r} vs {b!r})"]


def checkpoint_diff(a: Path, b: Path) -> list[str]:
    """Differences between two checkpoints in everything that defines the run's outcome and its resume
    (weights, EMA, optimizer, scheduler, scaler, loop state and metrics); not date, paths or workers."""
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    for c in (ca, cb):
        c.pop("date", None)
        c.pop("args", None)
        state = c.get("train", {}).get("state", {})
        for k in ("elapsed", "speed"):  # wall-clock measurements, not part of the outcome
            state.pop(k, None)
        state["rows"] = [without_timing(r) for r in state.get("rows", [])]
    return diff_values(ca, cb)


TIMING_COLUMNS = ("train/img_per_s", "train/data_wait")


def without_timing(row: dict[str, Any]) -> dict[str, Any]:
    """A results row without its throughput columns (they measure the machine, not the run)."""
    return {k: v for k, v in row.items() if k not in TIMING_COLUMNS}


def results_without_timing(path: Path) -> list[dict[str, str]]:
    """results.csv as rows, throughput columns dropped: what two equal runs must share exactly."""
    import csv

    with open(path, newline="") as f:
        return [without_timing(r) for r in csv.DictReader(f)]
