"""Exact resume (issue 5, items 3 and 7): a run killed at any moment and resumed ends bit-identical to an
uninterrupted one, with 0 and 2 workers; --resume refuses what it cannot resume exactly."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from segment import train
from tests.conftest import write_dataset
from tests.faults import TINY, Training, checkpoint_diff, flags, one_thread, results_without_timing, tree_digest
from utils.checkpoint import load_checkpoint, save_checkpoint

# one xdist worker for the module (.ci/run: --dist loadgroup): its 2-epoch reference run is built once
pytestmark = pytest.mark.xdist_group("resume")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny dataset and one uninterrupted 2-epoch run on it (workers 0): what every resume must equal.
    In TINY's precision: bf16 autocast on a CPU with native bf16 (exact resume must hold with it on),
    fp32 elsewhere."""
    tmp = tmp_path_factory.mktemp("resume")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEG_CACHE_DIR", str(tmp / "cache"))
    try:
        data = write_dataset(tmp / "data", {"train": 16, "val": 4}, hw=(32, 48))
        with one_thread():
            s = train.run(data=str(data), project=str(tmp / "runs"), name="ref", workers=0, **TINY)
    finally:
        mp.undo()
    return data, Path(s["save_dir"])


def tb_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar as TensorBoard shows it (events a resume purged are dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def assert_same_as_reference(run: Path, ref: Path) -> None:
    for name in ("last.pt", "best.pt"):
        diffs = checkpoint_diff(run / "weights" / name, ref / "weights" / name)
        assert not diffs, f"{name} differs from the uninterrupted run at: {diffs[:10]}"
    assert results_without_timing(run / "results.csv") == results_without_timing(ref / "results.csv")
    # every scalar but the timings, per-class IoU included: no duplicated or missing epochs (a kill between an
    # epoch's checkpoint and its logs is made good by the resume)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(ref), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t not in ("train/img_per_s", "train/data_wait")]
    assert {"val/mIoU", "train/loss"} <= set(tags) and any(t.startswith("val_iou/") for t in tags)
    for tag in tags:
        assert tb_scalars(run, tag) == tb_scalars(ref, tag), tag


@pytest.mark.slow
@pytest.mark.long
# In TINY's precision (bf16 where native) in both loader modes. A --no-amp variant (27 s) was
# dropped to keep CI inside 15 minutes: on a CPU it takes the same checkpoint path (no GradScaler either way).
@pytest.mark.parametrize("workers", [0, 2])
def test_killed_and_resumed_run_is_bit_identical(reference, tmp_path, workers):
    """Each run is stopped twice and resumed from the CLI; the final last.pt, best.pt, results.csv and
    TensorBoard scalars equal those of the uninterrupted run, bit for bit.

    workers 0: SIGKILL right after epoch 1's last.pt is committed, then SIGKILL mid-epoch 2.
    workers 2: SIGTERM to the whole process group mid-epoch 1 (as a scheduler or `kill -TERM -pgid`
    does; the step finishes, last.pt is saved mid-epoch, exit 143), then SIGKILL mid-epoch 2.
    """
    data, ref = reference
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    project = tmp_path / "runs"
    data_before = tree_digest(data.parent)
    last = project / "exp" / "weights" / "last.pt"
    logs = iter(tmp_path / f"log{i}.txt" for i in range(10))

    run = Training(flags(data=data, project=project, workers=workers, **TINY), cwd,
                   next(logs))
    if workers == 0:
        run.wait_for_replace(last)
        run.kill()
        assert load_checkpoint(last)["train"]["state"]["next_epoch"] == 1
    else:
        run.wait_for_step(1, 2)
        assert run.kill(signal.SIGTERM, group=True) == 128 + signal.SIGTERM
        out = run.output()
        assert "SIGTERM: stopped at epoch 1 step" in out and f"--resume {last}" in out and "Traceback" not in out
        assert load_checkpoint(last)["train"]["state"]["next_step"] >= 1
    run = Training(flags(resume=True, project=project, workers=workers), cwd, next(logs))  # bare --resume
    run.wait_for_step(2, 2)  # SIGKILL mid-epoch 2
    run.kill()
    assert load_checkpoint(last)["train"]["state"]["next_epoch"] == 1
    run = Training(flags(resume=last, workers=workers), cwd, next(logs))  # --resume path/to/last.pt
    assert run.wait() == 0, run.output()[-3000:]

    assert_same_as_reference(project / "exp", ref)
    assert [p.name for p in project.iterdir()] == ["exp"]  # every resume continued the same run
    assert tree_digest(data.parent) == data_before  # the dataset was only read
    assert not list(cwd.iterdir())  # nothing written outside the run folder and the cache
    assert not list((project / "exp" / "weights").glob(".*.tmp"))


class Crash(BaseException):
    """Stands in for SIGKILL in-process: no ``except Exception`` handles it and nothing after it runs."""


def crashed_run(monkeypatch: pytest.MonkeyPatch, epoch: int, **run_kwargs) -> None:
    """train.run(**run_kwargs), crashed right after the first unfinished checkpoint of ``epoch`` is written
    (every path of it, last.pt included); save_checkpoint is restored afterwards."""
    from segment import trainer as trainer_mod

    real_save = trainer_mod.save_checkpoint

    def save(ckpt, *paths):
        real_save(ckpt, *paths)
        if ckpt["epoch"] == epoch and not ckpt["finished"]:
            raise Crash

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
    try:
        with pytest.raises(Crash):
            train.run(**run_kwargs)
    finally:
        monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before best.pt", "before last.pt", "after last.pt"])
def test_crash_around_the_epoch_end_checkpoints_resumes_exactly(reference, tmp_path, monkeypatch, point):
    """A crash between the files an epoch end writes (best.pt, then last.pt, which commits the epoch)
    never leaves best.pt behind the state last.pt records: the resumed run equals the reference."""
    from segment import trainer as trainer_mod

    data, ref = reference
    assert load_checkpoint(ref / "weights" / "best.pt")["epoch"] == 2  # the final epoch is the best one
    real_save = trainer_mod.save_checkpoint

    def save(ckpt, *paths):
        for path in paths:
            name = f"{Path(path).name}"
            if ckpt["epoch"] == 2 and not ckpt["finished"] and point == f"before {name}":
                raise Crash
            real_save(ckpt, path)
            if ckpt["epoch"] == 2 and not ckpt["finished"] and point == f"after {name}":
                raise Crash

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
    with pytest.raises(Crash):
        train.run(data=str(data), project=str(tmp_path), name="exp", workers=0, **TINY)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    train.run(resume=str(tmp_path / "exp" / "weights" / "last.pt"), workers=0)
    assert_same_as_reference(tmp_path / "exp", ref)


@pytest.mark.slow
def test_bf16_crash_and_resume_equals_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    """TINY trains fp32 on a CPU without native bf16, so the exact-resume tests above then run fp32; this
    one forces bf16 autocast (emulated there) so that every CI machine checks exact resume under bf16."""
    common = dict(data=str(tiny_data), workers=0, **{**TINY, "precision": "bf16"})
    train.run(project=str(tmp_path / "ref"), **common)
    crashed_run(monkeypatch, 1, project=str(tmp_path / "p"), **common)
    run = tmp_path / "p" / "exp"
    train.run(resume=str(run / "weights" / "last.pt"), workers=0)
    last = load_checkpoint(run / "weights" / "last.pt")
    assert last["finished"] and last["args"]["precision"] == "bf16"
    assert checkpoint_diff(run / "weights" / "last.pt", tmp_path / "ref" / "exp" / "weights" / "last.pt") == []


@pytest.mark.slow
def test_crash_during_the_wrap_up_resumes_into_it(reference, tmp_path, monkeypatch):
    """Killed after the last epoch but before the final plots: the run is not marked finished, so
    --resume trains nothing more and writes the plots it owed."""
    from segment.runlog import RunLogger

    data, ref = reference
    real_plots = RunLogger.final_plots

    def crash(self, rows, res):
        raise Crash

    monkeypatch.setattr(RunLogger, "final_plots", crash)
    with pytest.raises(Crash):
        train.run(data=str(data), project=str(tmp_path), name="exp", workers=0, **TINY)
    run = tmp_path / "exp"
    assert not load_checkpoint(run / "weights" / "last.pt")["finished"] and not (run / "results.png").exists()
    monkeypatch.setattr(RunLogger, "final_plots", real_plots)
    s = train.run(resume=str(run / "weights" / "last.pt"), workers=0)
    assert s["epochs_run"] == 2 and load_checkpoint(run / "weights" / "last.pt")["finished"]
    assert (run / "results.png").is_file() and (run / "confusion_matrix.png").is_file()
    assert_same_as_reference(run, ref)


def test_sigint_stops_after_the_step_with_a_resumable_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    """A real SIGINT (Ctrl-C) during a step: the step finishes, last.pt is saved mid-epoch with the RNG
    state, main() prints one line (no traceback) and exits 130."""
    from segment import trainer as trainer_mod

    calls = {"n": 0}
    real_step = trainer_mod.Trainer._step

    def step(self, loss):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, loss)

    monkeypatch.setattr(trainer_mod.Trainer, "_step", step)
    argv = flags(data=tiny_data, project=tmp_path, name="int", workers=0, **{**TINY, "epochs": 1})
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when launched in the background
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    last = tmp_path / "int" / "weights" / "last.pt"
    assert e.value.code == 130 and err.strip().splitlines()[-1].startswith("SIGINT: stopped at epoch 1 step 2; saved")
    assert "Traceback" not in err and f"Resume with: python segment/train.py --resume {last}" in err
    st = load_checkpoint(last)["train"]["state"]
    assert (st["next_epoch"], st["next_step"]) == (0, 2) and set(st["rng"]) >= {"python", "numpy", "torch"}
    assert signal.getsignal(signal.SIGINT) is before  # the handler that was there is put back


# ----------------------------------------------------------------------------- refusals
@pytest.fixture
def unfinished(reference, tmp_path):
    """A copy of the reference run whose last.pt is not marked finished (as after a kill)."""
    data, ref = reference
    run = tmp_path / "runs" / "exp"
    shutil.copytree(ref, run)
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    ckpt["finished"] = False
    ckpt["train"]["state"]["next_epoch"] = 1
    save_checkpoint(ckpt, run / "weights" / "last.pt")
    return data, run


def main_exit(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_resume_finished_run_says_nothing_to_resume(reference, capsys):
    _, ref = reference
    before = tree_digest(ref)
    for argv in (["--resume", str(ref / "weights" / "last.pt")],
                 ["--resume", "--project", str(ref.parent), "--name", ref.name]):
        code, out, err = main_exit(argv, capsys)
        assert code == 0 and out.startswith(f"{ref / 'weights' / 'last.pt'}: this run finished all 2 epochs; "
                                            f"nothing to resume. To train further, start a new run with --weights "
                                            f"{ref / 'weights' / 'last.pt'}") and not err
    assert tree_digest(ref) == before


def test_resume_missing_path_is_an_error_not_a_fresh_start(tmp_path, capsys):
    code, _, err = main_exit(["--resume", str(tmp_path / "runs" / "exp" / "weights" / "last.pt"),
                              "--project", str(tmp_path / "runs")], capsys)
    assert code == 2 and "no such checkpoint; nothing was started" in err and "Traceback" not in err
    code, _, err = main_exit(["--resume", "--project", str(tmp_path / "runs")], capsys)
    assert code == 2 and "no run under" in err
    assert not (tmp_path / "runs").exists()


def test_resume_latest_run_skips_folders_without_checkpoint(unfinished, tmp_path, capsys):
    """A newer folder of a run killed before its first epoch ended (no last.pt) is not resumable: bare
    --resume continues the latest run that has a last.pt, and --name of such a folder is an error."""
    newer = tmp_path / "runs" / "exp2"
    newer.mkdir()
    (newer / "args.yaml").write_text("epochs: 3\n")
    from segment.checkpoints import find_resume_checkpoint

    assert find_resume_checkpoint(True, tmp_path / "runs") == tmp_path / "runs" / "exp" / "weights" / "last.pt"
    code, _, err = main_exit(["--resume", "--project", str(tmp_path / "runs"), "--name", "exp2"], capsys)
    assert code == 2 and f"latest run {newer} has no weights/last.pt" in err


@pytest.mark.parametrize("change, expect", [
    (["--backbone", "resnet18"], "--backbone 'resnet18' (checkpoint: 'mobilenet_v3_small')"),
    (["--img-size", "64"], "--img-size [64] (checkpoint: [32, 48])"),
    (["--lr0", "0.1"], "--lr0 0.1 (checkpoint: 0.001)"),  # args hold the resolved default
])
def test_resume_refuses_changed_flags(unfinished, capsys, change, expect):
    _, run = unfinished
    before = tree_digest(run)
    code, _, err = main_exit(["--resume", str(run / "weights" / "last.pt"), *change], capsys)
    assert code == 2 and "refused, these flags differ" in err and expect in err
    assert tree_digest(run) == before


def test_resume_refuses_another_dataset(unfinished, tmp_path, capsys):
    data, run = unfinished
    other = write_dataset(tmp_path / "other", {"train": 4, "val": 2}, hw=(32, 48), nc=4)
    code, _, err = main_exit(["--resume", str(run / "weights" / "last.pt"), "--data", str(other)], capsys)
    assert code == 2 and f"--data '{other}' (checkpoint: '{data}')" in err


def test_resume_refuses_changed_nc_and_changed_files(unfinished, tmp_path, capsys):
    data, run = unfinished
    copy = tmp_path / "data"
    shutil.copytree(data.parent, copy)
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    ckpt["args"]["data"] = ckpt["data"] = str(copy / "data.yaml")
    save_checkpoint(ckpt, run / "weights" / "last.pt")
    yaml_text = (copy / "data.yaml").read_text().replace(str(data.parent), str(copy))

    # another number of classes in the same YAML
    (copy / "data.yaml").write_text(yaml_text.replace("nc: 3", "nc: 4").replace("- c2\n", "- c2\n- c3\n"))
    code, _, err = main_exit(["--resume", str(run / "weights" / "last.pt")], capsys)
    assert code == 2 and "the dataset changed" in err and "nc=4" in err and "nc=3" in err

    # same classes, one training image fewer
    (copy / "data.yaml").write_text(yaml_text)
    (copy / "images" / "train" / "007.png").unlink()
    (copy / "masks" / "train" / "007.png").unlink()
    code, _, err = main_exit(["--resume", str(run / "weights" / "last.pt")], capsys)
    assert code == 2 and "split 'train': 16 image/mask pairs then, 15 now" in err
