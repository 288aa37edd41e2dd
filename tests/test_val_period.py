"""--val-period N: validation every N epochs (always the first, the last and a budget's final epoch).

Validation must never change what is trained, best.pt is chosen among validated epochs only, the
logs leave unscored epochs empty, and a resume from an unscored epoch re-logs it like any other."""
from __future__ import annotations

import csv
import time

import pytest

from segment import train
from tests.faults import TINY, Training, checkpoint_diff, flags, one_thread
from utils.checkpoint import load_checkpoint
from utils.schedule import TimeBudget


def _rows(run) -> list[dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _validated(rows: list[dict[str, str]]) -> list[int]:
    return [int(r["epoch"]) for r in rows if r.get("val/mIoU")]


def test_time_budget_tracks_validated_and_plain_epoch_ends(monkeypatch):
    """The reserve follows validated epoch ends (the final epoch and the wrap-up both validate); the
    look-ahead of an epoch's last step uses the cost of the end that follows it."""
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    b = TimeBudget(0.01, start=1000.0)  # 36 s
    b.note_epoch_end(3.0)
    assert b.reserve == 8.0 and b.end_cost(True) == 3.0
    assert b.end_cost(False) == 3.0  # no plain end measured yet: counted as a validated one
    b.note_epoch_end(0.25, validated=False)
    assert b.reserve == 8.0 and b.epoch_end == 3.0 and b.end_cost(False) == 0.25 and b.end_cost(True) == 3.0
    now[0] += 27.0  # training ends at 36 - 8 = 28 s
    assert b.progress(b.end_cost(False)) < 1.0 and b.progress(b.end_cost(True)) == 1.0


def test_val_period_scores_first_every_nth_and_last_and_trains_the_same(tiny_data, tmp_path, monkeypatch):
    """5 epochs, --val-period 2: epochs 1, 2, 4 and 5 are scored, 3 is not (empty in results.csv, no
    metrics in its checkpoint), evaluate runs 4 + 1 (best.pt at the end) times, and the trained weights
    are bit-identical to a run that validates every epoch (validation consumes no training randomness)."""
    import segment.trainer as trainer_mod

    calls = []
    real = trainer_mod.evaluate
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = dict(data=str(tiny_data), workers=0, **{**TINY, "epochs": 5})
    with one_thread():
        s = train.run(project=str(tmp_path / "p2"), val_period=2, **common)
        n_period = len(calls)
        train.run(project=str(tmp_path / "p1"), **common)
    run = tmp_path / "p2" / "exp"
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert _validated(rows) == [1, 2, 4, 5]
    assert rows[2]["val/mIoU"] == "" and rows[2]["train/loss"] != ""
    assert n_period == 5 and len(calls) == 5 + 6
    assert s["best_epoch"] in (1, 2, 4, 5) and (run / "results.png").is_file()
    best = load_checkpoint(run / "weights" / "best.pt")
    assert best["epoch"] == s["best_epoch"] and best["metrics"]["mIoU"] == pytest.approx(s["best_fitness"])
    # what was trained does not depend on how often it was scored
    diff = checkpoint_diff(run / "weights" / "last.pt", tmp_path / "p1" / "exp" / "weights" / "last.pt")
    assert all("rows" in d or "best_" in d or "metrics" in d for d in diff), diff
    assert not [d for d in diff if "/model" in d or "/ema" in d or "/optimizer" in d], diff


def test_time_budget_run_scores_its_final_epoch(tiny_data, tmp_path):
    """--val-period larger than the run: only the first epoch and the one the budget ends are scored,
    and best.pt is one of them."""
    with one_thread():
        s = train.run(data=str(tiny_data), project=str(tmp_path / "runs"), workers=0, val_period=1000,
                      **{**TINY, "epochs": 100, "time": 12.0 / 3600})
    run = tmp_path / "runs" / "exp"
    rows = _rows(run)
    assert s["time_up"] and len(rows) >= 3, len(rows)
    assert _validated(rows) == [1, len(rows)]
    assert s["best_epoch"] in (1, len(rows)) and (run / "weights" / "best.pt").is_file()


def test_resume_from_an_unscored_epoch_relogs_it(tiny_data, tmp_path):
    """Killed right after epoch 2's checkpoint (not a validation epoch with --val-period 3), resumed:
    results.csv has every epoch once, scored at 1, 3 and 4."""
    project = tmp_path / "runs"
    last = project / "exp" / "weights" / "last.pt"
    args = flags(data=tiny_data, project=project, workers=0, val_period=3, **{**TINY, "epochs": 4})
    run = Training(args, tmp_path, tmp_path / "log1.txt")
    run.wait_for_replace(last)  # epoch 1
    run.wait_for_replace(last)  # epoch 2
    run.kill()
    st = load_checkpoint(last)["train"]["state"]
    if st["next_epoch"] != 2:  # the kill came after epoch 3 had already been committed: nothing to test
        pytest.skip(f"kill landed at next_epoch {st['next_epoch']}")
    assert "val/mIoU" not in st["rows"][-1]
    run = Training(["--resume", str(last)], tmp_path, tmp_path / "log2.txt")
    assert run.wait() == 0, run.output()[-3000:]
    rows = _rows(project / "exp")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert _validated(rows) == [1, 3, 4]


def test_val_period_is_checked_before_anything_is_written(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main([*flags(data=tiny_data, project=tmp_path / "runs", **TINY), "--val-period", "0"])
    assert e.value.code != 0
    assert "--val-period" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
