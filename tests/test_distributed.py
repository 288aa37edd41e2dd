"""torchrun (DDP, gloo on CPU): a 2-process run completes and its logged metrics equal val.py on its best.pt;
a dead rank ends the job quickly; a killed 2-process run resumes to the uninterrupted result."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import write_dataset
from tests.faults import TINY, VAL, Training, checkpoint_diff, flags, run_cli
from utils.checkpoint import load_checkpoint

# one xdist worker for the whole module (.ci/run: --dist loadgroup), so its module fixture runs once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]

DDP = {**TINY, "epochs": 2}


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the worker process torchrun started for ``rank`` (read from its environment)."""
    for pid in _children(launcher_pid):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no rank {rank} under {launcher_pid}")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run (16 train images: 4 steps per rank per epoch)."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEG_CACHE_DIR", str(tmp / "cache"))
    try:
        data = write_dataset(tmp / "data", {"train": 16, "val": 5}, hw=(32, 48))
        run = Training(flags(data=data, project=tmp / "runs", name="ref", workers=0, **DDP), tmp, tmp / "log.txt",
                       nproc=2)
        rc = run.wait(600)
        assert rc == 0, run.output()[-3000:]
    finally:
        mp.undo()
    return data, tmp / "runs" / "ref", run.output()


def test_two_process_run_matches_single_process_val(ddp_run, tmp_path):
    data, run, out = ddp_run
    assert "best val mIoU" in out and out.count("Results saved to") == 1  # rank 0 alone reports
    assert sorted(p.name for p in run.parent.iterdir()) == ["ref"]  # one folder: rank 1 wrote nothing
    best = load_checkpoint(run / "weights" / "best.pt")
    logged = best["metrics"]["mIoU"]
    rows = (run / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "train/img_per_s" in rows[0] and "train/data_wait" in rows[0]
    r = run_cli(VAL, ["--weights", str(run / "weights" / "best.pt"), "--data", str(data), "--project",
                      str(tmp_path / "val"), "--workers", "0"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    single = json.loads((tmp_path / "val" / "exp" / "metrics.json").read_text())
    # the 5 val images are split 3 + 2 over the ranks and the confusion matrices summed: no image twice
    assert single["num_images"] == 5
    assert abs(single["mIoU"] - logged) < 1e-6, (single["mIoU"], logged)


def test_dead_rank_ends_the_job_quickly(tmp_path):
    data = write_dataset(tmp_path / "data", {"train": 16, "val": 4}, hw=(32, 48))
    run = Training(flags(data=data, project=tmp_path / "runs", workers=0, **{**DDP, "epochs": 200}), tmp_path,
                   tmp_path / "log.txt", nproc=2)
    try:
        run.wait_for_step(1, 200)
        os.kill(_rank_pid(run.proc.pid, 1), signal.SIGKILL)
        t0 = time.monotonic()
        rc = run.wait(120)
        waited = time.monotonic() - t0
    finally:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
    assert rc != 0
    assert waited < 60, f"rank 0 hung {waited:.0f} s after rank 1 died"


def test_killed_two_process_run_resumes_to_the_same_result(ddp_run, tmp_path):
    """SIGKILL of the whole job right after epoch 1's last.pt, then `torchrun ... --resume`: the final
    checkpoints equal the uninterrupted 2-process run's, bit for bit."""
    data, ref, _ = ddp_run
    project = tmp_path / "runs"
    last = project / "exp" / "weights" / "last.pt"
    run = Training(flags(data=data, project=project, workers=0, **DDP), tmp_path, tmp_path / "log1.txt", nproc=2)
    run.wait_for_replace(last, timeout=300)
    # torchrun starts its workers in sessions of their own: a crash of the machine kills them all
    for pid in _children(run.proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run.kill()
    assert load_checkpoint(last)["train"]["state"]["next_epoch"] == 1
    run = Training(["--resume", str(last)], tmp_path, tmp_path / "log2.txt", nproc=2)
    assert run.wait(600) == 0, run.output()[-3000:]
    assert "Resuming" in run.output()
    for name in ("last.pt", "best.pt"):
        diffs = checkpoint_diff(project / "exp" / "weights" / name, ref / "weights" / name)
        assert not diffs, f"{name} differs from the uninterrupted run at: {diffs[:10]}"
