"""Fault injection for issue 5 items 2, 4, 5, 6 and 8: atomic writes, non-finite steps, safe loading,
paths that stay in --project, and errors for people."""
from __future__ import annotations

import ast
import copy
import errno
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from segment import train, val
from segment.common import cli_entry
from tests.faults import REPO, TINY, diff_values, env, flags, one_thread
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.files import atomic_write, atomic_write_text

RUN = dict(TINY, workers=0)  # 8 train images (tiny_data) at 32x48, batch 2: 4 steps an epoch


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _flags(data: Path, project: Path, **over) -> list[str]:
    return flags(data=data, project=project, **{**RUN, **over})


def main_exit(entry, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


# ----------------------------------------------------------------------------- 2. atomic writes
def test_serialisation_error_leaves_previous_checkpoint_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(len(f.getvalue()) // 2)  # half a file in the buffer, then the failure
        raise RuntimeError("injected failure while serialising")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        save_checkpoint({"model": {"w": torch.ones(1000)}, "epoch": 2}, path)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["last.pt"]


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_write_text", "results.csv"])
def test_failed_write_leaves_previous_file(tmp_path, monkeypatch, writer):
    """A failure while writing (or at the rename) never leaves a half-written target or a temp file."""
    from segment.runlog import RunLogger

    target = tmp_path / ("results.csv" if writer == "results.csv" else "f.txt")
    target.write_text("old\n")
    if writer == "atomic_write":
        def write(f):
            f.write(b"new, half")
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(OSError):
            atomic_write(target, write)
    else:
        def failing_replace(*_):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError):
            if writer == "atomic_write_text":
                atomic_write_text(target, "new\n")
            else:
                logger = RunLogger.__new__(RunLogger)
                logger.enabled, logger.save_dir = True, tmp_path
                logger.write_results([{"epoch": 1, "val/mIoU": 0.5}])
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == [target.name]


@pytest.mark.slow
def test_sigkill_at_any_instant_of_checkpoint_writes_leaves_a_complete_file(tmp_path):
    """A child process rewrites last.pt in a loop (two different 2 MB checkpoints) and is SIGKILLed at
    random instants, 25 times: last.pt is always one of the two complete files."""
    script = f"""
import os, random, signal, sys, time
sys.path.insert(0, {str(REPO)!r})
import torch
from utils.checkpoint import load_checkpoint, save_checkpoint
path = sys.argv[1]
ckpts = [{{"model": {{"w": torch.full((500_000,), float(i))}}, "tag": i}} for i in (0, 1)]
save_checkpoint(ckpts[0], path)
rng = random.Random(0)
for trial in range(25):
    pid = os.fork()
    if pid == 0:
        k = 0
        while True:
            save_checkpoint(ckpts[k % 2], path)
            k += 1
    time.sleep(rng.uniform(0.002, 0.08))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    c = load_checkpoint(path)
    assert torch.equal(c["model"]["w"], ckpts[c["tag"]]["model"]["w"]), trial
save_checkpoint(ckpts[0], path)
print("leftovers", sorted(os.listdir(os.path.dirname(path))))
"""
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "last.pt")], env=env(), capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "leftovers ['last.pt']"  # the next save removed killed writers' temp files


def test_failure_inside_a_training_checkpoint_keeps_last_pt(tiny_data, tmp_path, monkeypatch, capsys):
    """A full disk while epoch 2's checkpoint is serialised: last.pt stays epoch 1's file byte for byte,
    and the CLI says what happened in one line (exit 1, no traceback)."""
    real_save, calls, seen = torch.save, {"n": 0}, {}
    last = tmp_path / "exp" / "weights" / "last.pt"

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if obj["epoch"] == 2:
            seen["before"] = last.read_bytes()
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    code, _, err = main_exit(train.main, _flags(tiny_data, tmp_path), capsys)
    assert code == 1 and "error: No space left on device" in err and "Traceback" not in err
    assert last.read_bytes() == seen["before"] and load_checkpoint(last)["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp"))


# ----------------------------------------------------------------------------- 4. non-finite values
class Hooks:
    """Patches for an in-process run: NaN inputs at chosen steps, model snapshots around them."""

    def __init__(self, monkeypatch, nan_steps: set[int]) -> None:
        from segment import trainer as trainer_mod

        self.calls, self.nan_steps, self.snapshots, self.trainer = 0, nan_steps, {}, None
        real_setup, real_pre = trainer_mod.Trainer.setup, trainer_mod.preprocess

        def setup(tr):
            self.trainer = tr
            real_setup(tr)

        def preprocess(images, device):
            self.calls += 1
            tr = self.trainer
            # the LR schedule follows the iteration count and moves on; the optimizer's moments must not
            self.snapshots[self.calls] = (copy.deepcopy(tr.model.state_dict()),
                                          copy.deepcopy(tr.optimizer.state_dict()["state"]),
                                          copy.deepcopy(tr.ema.ema.state_dict()), tr.ema.updates)
            x = real_pre(images, device)
            return torch.full_like(x, float("nan")) if self.calls in self.nan_steps else x

        monkeypatch.setattr(trainer_mod.Trainer, "setup", setup)
        monkeypatch.setattr(trainer_mod, "preprocess", preprocess)


def _same_state(a, b) -> bool:
    return not diff_values(a, b)


def test_nonfinite_step_is_skipped_counted_logged_and_nan_metric_never_best(tiny_data, tmp_path, monkeypatch, capsys):
    from segment import trainer as trainer_mod

    hooks = Hooks(monkeypatch, nan_steps={3})
    real_eval, evals = trainer_mod.evaluate, {"n": 0}

    def evaluate(*a, **k):  # epoch 1's val mIoU comes out NaN
        res = real_eval(*a, **k)
        evals["n"] += 1
        if evals["n"] == 1:
            res.metrics["mIoU"] = float("nan")
        return res

    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    s = train.run(data=str(tiny_data), project=str(tmp_path), name="nan", **RUN)
    out = capsys.readouterr().out
    assert "non-finite loss/gradient at epoch 1 step 3: step skipped (1 in a row)" in out
    # the skipped step changed nothing: weights, BatchNorm statistics, optimizer state, EMA
    assert _same_state(hooks.snapshots[3], hooks.snapshots[4])
    assert not _same_state(hooks.snapshots[2], hooks.snapshots[3])
    ckpt = load_checkpoint(Path(s["save_dir"]) / "weights" / "last.pt")
    assert ckpt["train"]["state"]["nonfinite_steps"] == 1
    assert [r["train/skipped_steps"] for r in ckpt["train"]["state"]["rows"]] == [1, 0]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert s["best_epoch"] == 2 and math.isfinite(s["best_fitness"])
    assert load_checkpoint(Path(s["save_dir"]) / "weights" / "best.pt")["epoch"] == 2


def test_consecutive_nonfinite_steps_stop_with_a_clear_error(tiny_data, tmp_path, monkeypatch, capsys):
    Hooks(monkeypatch, nan_steps=set(range(2, 100)))
    code, _, err = main_exit(train.main, [*_flags(tiny_data, tmp_path), "--nan-patience", "3"], capsys)
    assert code == 2 and "Traceback" not in err
    assert ("error: training stopped: 3 consecutive steps with a non-finite loss or gradient (epoch 1, step 4; "
            "--nan-patience 3)") in err and "No checkpoint was written yet" in err
    assert not list(tmp_path.rglob("*.pt"))


def test_nonfinite_weights_are_never_saved(tiny_data, tmp_path, monkeypatch, capsys):
    from segment import trainer as trainer_mod

    real_step, calls, seen = trainer_mod.Trainer._step, {"n": 0}, {}
    last = tmp_path / "exp" / "weights" / "last.pt"

    def step(self, loss):
        ok = real_step(self, loss)
        calls["n"] += 1
        if calls["n"] == 8:  # the last step of epoch 2: an update that overflowed
            seen["before"] = last.read_bytes()
            with torch.no_grad():
                p = next(self.model.parameters())
                p[(0,) * p.dim()] = float("inf")  # in place, whatever the memory layout
        return ok

    monkeypatch.setattr(trainer_mod.Trainer, "_step", step)
    code, _, err = main_exit(train.main, _flags(tiny_data, tmp_path), capsys)
    assert code == 2 and "weights became non-finite at epoch 2; they were not saved" in err
    assert last.read_bytes() == seen["before"]
    assert load_checkpoint(tmp_path / "exp" / "weights" / "best.pt")["epoch"] == 1


def test_truncated_checkpoint_is_a_readable_error(tmp_path, capsys):
    path = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}, "train": {}, "args": {}}, path)
    path.write_bytes(path.read_bytes()[:700])
    code, _, err = main_exit(train.main, ["--resume", str(path)], capsys)
    assert code == 2 and f"{path}: not a readable PyTorch checkpoint (damaged or truncated?" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- 5. safe loading
class Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (but harmless)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw pickle"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, fmt, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "runs" / "exp" / "weights" / "last.pt"
    evil.parent.mkdir(parents=True)
    obj = {"model": {"w": torch.zeros(2)}, "model_cfg": {}, "train": {}, "args": {}, "x": Payload(marker)}
    if fmt in ("zip", "legacy"):
        torch.save(obj, evil, _use_new_zipfile_serialization=fmt == "zip")
    else:
        with open(evil, "wb") as f:
            pickle.dump(obj, f)
    # every entry point that reads a .pt refuses it
    for entry, argv in ((val.main, ["--weights", str(evil), "--project", str(tmp_path / "v")]),
                        (train.main, ["--weights", str(evil), "--project", str(tmp_path / "t"), "--data", "nope.yaml"]),
                        (train.main, ["--resume", str(evil)])):
        code, _, err = main_exit(entry, argv, capsys)
        assert code == 2 and "refused to load" in err and "Nothing from it was run" in err and "Traceback" not in err
        assert not marker.exists()
    assert not (tmp_path / "v").exists() and not (tmp_path / "t").exists()
    try:  # the payload is real: an unsafe load runs it
        torch.load(evil, weights_only=False)
    except RuntimeError:  # a raw pickle is no torch file, but its payload has already run by then
        pass
    assert marker.exists()


def test_yaml_with_python_tag_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    text = f"path: x\ntrain: a\nval: a\nnc: 1\nnames: !!python/object/apply:os.mkdir [{str(marker)!r}]\n"
    evil = tmp_path / "evil.yaml"
    evil.write_text(text)
    code, _, err = main_exit(train.main, ["--data", str(evil), "--project", str(tmp_path / "runs")], capsys)
    assert code == 2 and "refused, the YAML uses a tag that is not plain data" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "runs").exists()
    yaml.unsafe_load(text)  # the payload is real
    assert marker.exists()


PACKAGE = [p for d in ("models", "segment", "utils", "unet-lite") for p in sorted((REPO / d).rglob("*.py"))]


def test_no_code_execution_paths_in_the_package():
    """No eval/exec, no pickle or unsafe YAML loaders, and every torch.load passes weights_only=True."""
    found = []
    for f in PACKAGE:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else ""
            where = f"{f.relative_to(REPO)}:{node.lineno}"
            if isinstance(fn, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where} {name}()")
            elif owner in ("pickle", "marshal", "dill", "cloudpickle") and name in ("load", "loads"):
                found.append(f"{where} {owner}.{name}()")
            elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
                found.append(f"{where} yaml.{name}()")
            elif owner == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    found.append(f"{where} torch.load() without weights_only=True")
    assert len(PACKAGE) > 20 and not found, found


# ----------------------------------------------------------------------------- 6. paths
@pytest.mark.parametrize("name", ["../x", "a/../../x", "/tmp/abs_run", "."])
def test_name_cannot_escape_project(tmp_path, name, capsys):
    project = tmp_path / "p" / "runs"
    code, _, err = main_exit(train.main, ["--name", name, "--project", str(project)], capsys)
    assert code == 2 and f"--name '{name}'" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "x").exists() and not Path("/tmp/abs_run").exists()


def test_name_through_a_symlink_out_of_project_is_refused(tmp_path):
    from utils.files import run_dir

    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside --project"):
        run_dir(tmp_path / "runs", "link/exp")
    assert not list((tmp_path / "elsewhere").iterdir())


# ----------------------------------------------------------------------------- 8. errors for people
def test_cli_entry_turns_environment_errors_into_one_line(capsys):
    def full_disk(_):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/exp/weights/last.pt")

    code, _, err = main_exit(lambda a: cli_entry(full_disk, a), [], capsys)
    assert code == 1 and err.startswith("error: No space left on device: /runs/exp/weights/last.pt")
    assert "Traceback" not in err
    code, _, err = main_exit(lambda a: cli_entry(full_disk, a), ["--verbose"], capsys)
    assert "Traceback (most recent call last)" in err

    def ctrl_c(_):
        raise KeyboardInterrupt

    code, _, err = main_exit(lambda a: cli_entry(ctrl_c, a), [], capsys)
    assert code == 130 and err == "interrupted\n"


def test_user_error_from_a_dataloader_worker_is_shown_without_the_worker_traceback(capsys):
    """torch re-raises a worker's exception with the worker's traceback in its message."""
    from torch._utils import ExceptionWrapper

    try:
        raise UserError("images/train/x.png: image cannot be decoded")
    except UserError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")

    def fn(_):
        wrapped.reraise()

    code, _, err = main_exit(lambda a: cli_entry(fn, a), [], capsys)
    assert code == 2 and err == "error: images/train/x.png: image cannot be decoded\n"
