"""--val-period N: validation every N epochs (always the first, the last and a budget's final epoch).

Validation must never change what is trained, best.pt is chosen among validated epochs only, the
logs leave unscored epochs empty, and a resume from an unscored epoch re-logs it like any other."""
from __future__ import annotations

import time

import pytest

from segment import train
from tests.faults import TINY, checkpoint_diff, flags, one_thread, results_without_timing
from utils.checkpoint import load_checkpoint
from utils.schedule import TimeBudget


def _rows(run) -> list[dict[str, str]]:
    return results_without_timing(run / "results.csv")


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


def test_resume_from_an_unscored_epoch_relogs_it_and_validates_first(tiny_data, tmp_path, monkeypatch):
    """5 epochs, --val-period 4 (scored: 1, 4, 5), crashed right after epoch 2's last.pt (an unscored
    epoch) and resumed: the resumed session scores its first epoch too (3: the time budget of a resumed
    --time run needs that cost), every epoch is in results.csv and TensorBoard exactly once, and the
    trained weights equal the uninterrupted run's."""
    import segment.trainer as trainer_mod
    from tests.test_resume import Crash, tb_scalars

    common = dict(data=str(tiny_data), workers=0, val_period=4, **{**TINY, "epochs": 5})
    with one_thread():
        train.run(project=str(tmp_path / "ref"), **common)
        real_save = trainer_mod.save_checkpoint

        def save(ckpt, *paths):
            real_save(ckpt, *paths)
            if ckpt["epoch"] == 2 and not ckpt["finished"]:
                raise Crash

        monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
        with pytest.raises(Crash):
            train.run(project=str(tmp_path / "p"), **common)
        monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
        st = load_checkpoint(tmp_path / "p" / "exp" / "weights" / "last.pt")["train"]["state"]
        assert st["next_epoch"] == 2 and "val/mIoU" not in st["rows"][-1]
        train.run(resume=str(tmp_path / "p" / "exp" / "weights" / "last.pt"), workers=0)
    run, ref = tmp_path / "p" / "exp", tmp_path / "ref" / "exp"
    assert _validated(_rows(ref)) == [1, 4, 5]
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5] and _validated(rows) == [1, 3, 4, 5]
    assert [s for s, _ in tb_scalars(run, "train/loss")] == [1, 2, 3, 4, 5]
    assert [s for s, _ in tb_scalars(run, "val/mIoU")] == [1, 3, 4, 5]
    diff = checkpoint_diff(run / "weights" / "last.pt", ref / "weights" / "last.pt")
    assert not [d for d in diff if "/model" in d or "/ema" in d or "/optimizer" in d], diff


def test_val_period_is_checked_before_anything_is_written(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main([*flags(data=tiny_data, project=tmp_path / "runs", **TINY), "--val-period", "0"])
    assert e.value.code != 0
    assert "--val-period" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_patience_counts_only_scored_epochs(tiny_data, tmp_path, monkeypatch):
    """--patience 2 with --val-period 2 and a val mIoU that never improves after epoch 1: epoch 3 is two
    epochs past the best but unscored, so the run stops at epoch 4, its next scored epoch, not before."""
    import segment.trainer as trainer_mod

    real = trainer_mod.evaluate
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])

    def scripted(*a, **k):
        res = real(*a, **k)
        res.metrics["mIoU"] = next(scores)
        return res

    monkeypatch.setattr(trainer_mod, "evaluate", scripted)
    with one_thread():
        s = train.run(data=str(tiny_data), project=str(tmp_path / "runs"), workers=0, val_period=2, patience=2,
                      **{**TINY, "epochs": 8})
    rows = _rows(tmp_path / "runs" / "exp")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and _validated(rows) == [1, 2, 4]
    assert s["best_epoch"] == 1 and s["epochs_run"] == 4


def test_best_final_keeps_the_last_scored_weights_and_ema_flags_reach_the_average(tiny_data, tmp_path, monkeypatch):
    """Val scores forced to fall (0.9, 0.5, 0.1 over 3 epochs): --best val keeps epoch 1 in best.pt, --best
    final epoch 3 (last.pt's weights, with its score), while the summary's best (and --patience) still see
    epoch 1; --ema-decay and --ema-tau are the EMA's (12 updates: 4 steps x 3 epochs)."""
    import segment.trainer as trainer_mod

    real, falling = trainer_mod.evaluate, []

    def fake(*a, **k):
        res = real(*a, **k)
        if k.get("desc") != "best.pt val":  # the in-loop validations, not the wrap-up's score of best.pt
            res.metrics["mIoU"] = falling.pop(0)
        return res

    monkeypatch.setattr(trainer_mod, "evaluate", fake)
    runs = {}
    with one_thread():
        for mode in ("val", "final"):
            falling[:] = [0.9, 0.5, 0.1]
            s = train.run(data=str(tiny_data), project=str(tmp_path / mode), workers=0, best=mode, ema_decay=0.99,
                          ema_tau=3.0, **{**TINY, "epochs": 3})
            assert not falling and s["best_epoch"] == 1 and s["best_fitness"] == pytest.approx(0.9)
            w = tmp_path / mode / "exp" / "weights"
            runs[mode] = load_checkpoint(w / "best.pt"), load_checkpoint(w / "last.pt")
    (best_v, last_v), (best_f, last_f) = runs["val"], runs["final"]
    assert best_v["epoch"] == 1 and best_v["metrics"]["mIoU"] == pytest.approx(0.9)
    assert best_f["epoch"] == 3 and best_f["metrics"]["mIoU"] == pytest.approx(0.1)
    assert all(best_f["model"][k].equal(v) for k, v in last_f["model"].items())
    assert not all(best_v["model"][k].equal(v) for k, v in last_v["model"].items())
    assert last_f["train"]["ema"] == {"updates": 12, "decay": 0.99, "tau": 3.0}
    assert best_f["args"]["best"] == "final" and best_f["args"]["ema_decay"] == 0.99
