"""--time (a wall-clock budget that the LR schedule runs over, kept across resumes) and mixed precision
(--precision auto: bf16 autocast on CPUs with native bf16 where it is faster, fp32 elsewhere or with --no-amp)."""
from __future__ import annotations

import math
import time

import pytest
import torch

from segment import train
from tests.faults import TINY, one_thread
from utils import torch_utils
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.schedule import TimeBudget, lr_factor, lr_lambda


@pytest.mark.parametrize("p, cos, expect", [
    (0.0, False, 0.1), (0.05, False, 0.1 + 0.9 * 0.5), (0.1, True, 1.0),
    (0.55, True, 0.01 + 0.99 * 0.5), (1.0, True, 0.01), (1.0, False, 0.01), (2.0, False, 0.01),
    (0.55, False, 0.01 + 0.99 * 0.5 ** 0.9),
])
def test_lr_factor_by_hand(p, cos, expect):
    """warm-up 10% from 0.1, then cosine / poly(0.9) to lrf = 0.01 at p = 1, clamped after."""
    assert lr_factor(p, 0.1, 0.01, cos) == pytest.approx(expect, abs=1e-12)


def test_iteration_schedule_is_the_progress_schedule():
    f = lr_lambda(100, 10, 0.01, True)
    assert [f(i) for i in (0, 5, 10, 55, 100)] == [lr_factor(i / 100, 0.1, 0.01, True) for i in (0, 5, 10, 55, 100)]


def test_time_budget_reserves_the_wrap_up(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    b = TimeBudget(0.01, start=1000.0, used_before=6.0)  # 36 s, 6 s spent by an earlier session
    assert b.used() == 6.0 and b.progress() == pytest.approx(6 / 36)
    b.note_epoch_end(3.0)  # validation + save took 3 s: 2 * 3 + 2 s stay free for the end
    now[0] += 21.5
    assert b.training_seconds() == 28.0 and not b.up() and b.progress() == pytest.approx(27.5 / 28)
    now[0] += 0.5
    assert b.used() == 28.0 and b.up() and b.progress() == 1.0


def test_last_step_of_an_epoch_looks_ahead_by_one_epoch_end(monkeypatch):
    """At 20 s of a 36 s budget with 3 s epoch ends (training ends at 28 s): an ordinary step is at
    20/28, the epoch's last step counts the 3 s validation after it, and at 25.5 s that is already the
    end (so it runs at the final LR instead of the run stopping between epochs with a higher one)."""
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    b = TimeBudget(0.01, start=1000.0)
    b.note_epoch_end(3.0)
    now[0] += 20.0
    assert b.progress() == pytest.approx(20 / 28) and b.progress(b.epoch_end) == pytest.approx(23 / 28)
    now[0] += 5.5
    assert b.progress() < 1.0 and b.progress(b.epoch_end) == 1.0
    # between epochs only the hard limit stops the run: the wrap-up (~ one epoch end + 2 s) must fit
    now[0] += 5.0  # 30.5 s used: 30.5 + 3 + 2 < 36
    assert b.up() and not b.only_wrap_up_fits(0.5)
    assert b.only_wrap_up_fits(4.0)  # this validation alone took 4 s: 30.5 + 4 + 2 >= 36
    now[0] += 0.6
    assert b.only_wrap_up_fits(0.0)


def test_time_budget_stops_and_finishes_normally(tiny_data, tmp_path):
    """A 15 s budget for up to 100 epochs: stops at the budget, validates, writes best.pt and the plots,
    and the last LR is the schedule's final value lr0 * lrf (the stop is decided at a step, also when
    it falls on an epoch's last step)."""
    budget = 15.0 / 3600
    t0 = time.time()
    with one_thread():
        s = train.run(data=str(tiny_data), project=str(tmp_path / "runs"), workers=0, lr0=1e-3, lrf=0.05,
                      **{**TINY, "epochs": 100, "time": budget})
    wall = time.time() - t0
    run = tmp_path / "runs" / "exp"
    assert s["time_up"] and s["epochs_run"] < 100
    for f in ("weights/best.pt", "weights/last.pt", "results.png", "confusion_matrix.png", "results.csv"):
        assert (run / f).is_file(), f
    last = load_checkpoint(run / "weights" / "last.pt")
    st = last["train"]["state"]
    assert last["finished"] and st["time_up"]
    assert st["rows"][-1]["lr"] == pytest.approx(1e-3 * 0.05, rel=1e-9)
    assert st["elapsed"] >= 15.0 - (2 * 30 + 2)  # stopped no earlier than the budget minus the reserve
    # the whole call stays within the budget plus the end-of-run work (validation, save, plots), with slack
    assert wall < 15.0 + 60, wall


def test_resumed_time_run_keeps_the_remaining_budget(tiny_data, tmp_path, monkeypatch, capsys):
    """Crashed after epoch 1 of a 120 s budget; the checkpoint is made to say 119.99 s were already used.
    The resumed run's own start-up spends the rest, so it must stop at its first step, not train its
    remaining epochs (a larger remainder lets a fast machine finish epoch 2 first). In-process (a Crash
    stands in for the kill, as in tests/test_resume.py): two interpreter starts cost ~15 s of CI."""
    from tests.test_resume import crashed_run

    last = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    with one_thread():
        crashed_run(monkeypatch, 1, data=str(tiny_data), project=str(tmp_path / "runs"), workers=0,
                    **{**TINY, "epochs": 20, "time": 120 / 3600})
        ckpt = load_checkpoint(last)
        assert ckpt["train"]["state"]["next_epoch"] == 1 and ckpt["train"]["state"]["elapsed"] > 0
        ckpt["train"]["state"]["elapsed"] = 119.99
        save_checkpoint(ckpt, last)
        capsys.readouterr()
        train.run(resume=str(last), workers=0)
    out = "".join(capsys.readouterr())
    assert "Time budget of 0.0333333 h reached at epoch 2 step" in out, out[-2000:]
    st = load_checkpoint(last)["train"]["state"]
    assert st["next_epoch"] == 2 and st["time_up"] and st["elapsed"] >= 118.0


def test_autocast_choice(monkeypatch):
    """auto on a bf16 CPU keeps the faster of the two measured steps; forced choices are kept as given."""
    from utils.errors import UserError

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: True)
    choose = torch_utils.autocast_dtype
    dtype, msg = choose(cpu, "auto", lambda: (900.0, 600.0))
    assert dtype is torch.bfloat16 and "measured 900 ms in fp32, 600 ms in bf16" in msg
    dtype, msg = choose(cpu, "auto", lambda: (100.0, 167.0))  # e.g. a depthwise MobileNet at 96x96
    assert dtype is None and "measured 100 ms in fp32, 167 ms in bf16; --precision bf16 forces bf16" in msg
    assert choose(cpu, "auto")[0] is torch.bfloat16  # no probe: bf16 where it is native
    never = lambda: pytest.fail("a forced precision is not measured")  # noqa: E731
    assert choose(cpu, "bf16", never)[0] is torch.bfloat16
    assert choose(cpu, "fp32", never) == (None, "Precision: fp32 (--precision fp32 / --no-amp)")
    with pytest.raises(UserError, match="fp16 autocast needs a CUDA device"):
        choose(cpu, "fp16", never)
    assert choose(torch.device("cuda"), "auto", never)[0] is torch.float16
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: False)
    dtype, msg = choose(cpu, "auto", never)
    assert dtype is None and "no native bf16" in msg
    assert "emulated and slow" in choose(cpu, "bf16", never)[1]


def test_precision_probe_times_both_and_changes_nothing():
    from models.model import build_model, model_config
    from segment.precision import probe_step_ms
    from utils.losses import SegLoss

    torch.manual_seed(0)
    model = build_model(model_config(3, backbone="mobilenet_v3_small", head="unet"))
    rng = torch.get_rng_state()
    with one_thread():
        fp32_ms, bf16_ms = probe_step_ms(model, SegLoss("ce+dice", 255), 2, (32, 48), 3, steps=2)
    assert fp32_ms > 0 and bf16_ms > 0
    assert torch.equal(torch.get_rng_state(), rng)  # dropout ran (the unet head has it): the stream is put back


def test_train_step_times_alternates_precisions_and_steps_the_optimiser():
    """The one step timer (probe, train_speed.py, benchmark.py --train-step): variants alternate step by
    step, warm-up rounds are untimed, every step updates the weights."""
    from segment.precision import train_step_times

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 1)
    before = model.weight.detach().clone()
    seen = []

    def loss_fn(out, y):
        seen.append(out.dtype)
        return torch.nn.functional.cross_entropy(out.float(), y), {}

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    times = train_step_times(model, loss_fn, opt, x, y, (False, True), steps=3, warmup=2)
    assert sorted(times) == [False, True] and all(len(t) == 3 and min(t) > 0 for t in times.values())
    assert seen == [torch.float32, torch.bfloat16] * 5  # 2 warm-up + 3 timed rounds, alternating
    assert not torch.equal(model.weight, before) and model.weight.grad is None  # stepped, grads cleared


@pytest.mark.parametrize("over, probe, expect", [
    ({"precision": "auto"}, (100.0, 167.0), torch.float32),  # auto, fp32 measured faster
    ({"precision": "auto"}, (900.0, 600.0), torch.bfloat16),  # auto, bf16 measured faster
    ({"precision": "auto", "amp": False}, (900.0, 600.0), torch.float32),  # --no-amp wins, nothing measured
    ({"precision": "bf16"}, None, torch.bfloat16)])  # forced
def test_training_precision_follows_the_flag(tiny_data, tmp_path, monkeypatch, over, probe, expect):
    """On a bf16 CPU the training forward runs in the chosen dtype (the logits come out in it), and the
    choice is recorded as fp32/bf16 for a resume."""
    from segment import precision
    from segment.trainer import Trainer

    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: True)
    calls = []
    monkeypatch.setattr(precision, "probe_step_ms", lambda *a, **k: calls.append(1) or probe)
    seen = []
    with one_thread():
        args = train.build_parser().parse_args([])
        for k, v in {**TINY, "epochs": 1, "data": str(tiny_data), "project": str(tmp_path / "runs"),
                     "workers": 0, **over}.items():
            setattr(args, k, v)
        t = Trainer(args)
        t.model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
        t.train()
    assert {d for training, d in seen if training} == {expect}
    assert len(calls) == (1 if over.get("precision") == "auto" and over.get("amp", True) else 0)
    assert t.args.precision == ("bf16" if expect is torch.bfloat16 else "fp32")
    assert load_checkpoint(tmp_path / "runs" / "exp" / "weights" / "last.pt")["args"]["precision"] == t.args.precision
    assert t.scaler.is_enabled() is False  # bf16 needs no loss scaling
    assert math.isfinite(t.state.best_fitness)
