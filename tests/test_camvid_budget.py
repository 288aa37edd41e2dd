"""The CamVid recipe and benchmarks/camvid_budget.py: a tiny --time run on a CamVid subset end to end, and
the BENCHMARKS.md merge (rows from different days live side by side, text outside the markers survives)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CAMVID
from tests.test_yolo_recipes import _load_preset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import camvid_budget  # noqa: E402


def _row(label: str, minutes: float, miou: float) -> dict:
    return {"label": label, "group": "budget", "minutes": minutes, "seed": 0, "command": f"python r.py --time {minutes / 60:g}",
            "test_mIoU": miou, "per_class": {"Sky": 0.9, "Pole": 0.125}, "val_mIoU": 0.6, "epochs": 12, "img_per_s": 9.5,
            "wall_s": minutes * 60, "peak_rss_gib": 1.5, "torch_ms": 14.0, "ort_ms": None, "machine": "m", "date": "2026-12-02"}


def test_merge_keeps_other_rows_and_the_text_around(tmp_path):
    store, out = tmp_path / "rows.json", tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nintro\n\n" + camvid_budget.START + "\nold\n" + camvid_budget.END + "\n\n## Ablations\nnotes\n")
    camvid_budget.merge(store, out, _row("60 min, seed 0", 60, 0.5512))
    camvid_budget.merge(store, out, _row("15 min, seed 0", 15, 0.4501))
    camvid_budget.merge(store, out, _row("60 min, seed 0", 60, 0.5634))  # a rerun replaces its own row
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and text.endswith("## Ablations\nnotes\n") and "old" not in text
    table = text.split(camvid_budget.START)[1].split(camvid_budget.END)[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "min, seed" in ln]
    # budget rows sorted by minutes; the per-class table repeats them with IoU in percent
    assert lines[0].startswith("| 15 min, seed 0 | 15 | 0 | **45.0** | 60.0 | 12 | 9.5 | 15.0 | 14.0 | - | 1.50 | 2026-12-02, m, ? |")
    assert lines[1].startswith("| 60 min, seed 0 | 60 | 0 | **56.3** |")
    assert "| 15 min, seed 0 | 90.0 | 12.5 |" in table and len(json.loads(store.read_text())) == 2
    # a row scored with a bootstrap interval over the test images shows it beside the mIoU (older rows have none)
    camvid_budget.merge(store, out, {**_row("30 min, seed 0", 30, 0.5004), "test_interval": [0.48123, 0.5187]})
    assert "| 30 min, seed 0 | 30 | 0 | **50.0** (48.1-51.9) | 60.0 |" in out.read_text()


def test_retime_replaces_only_the_latency_columns_of_a_stored_row(tmp_path, monkeypatch):
    """--retime times a stored row's best.pt again at its own input size and keeps the first figures beside."""
    store, out = tmp_path / "rows.json", tmp_path / "BENCHMARKS.md"
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"stand-in: the timing is replaced below")
    row = {**_row("60 min, seed 0", 60, 0.5412), "run": str(run), "infer_size": [288, 384], "ort_ms": 17.7}
    camvid_budget.merge(store, out, row)
    camvid_budget.merge(store, out, _row("15 min, seed 0", 15, 0.4501))
    seen = []
    monkeypatch.setattr(camvid_budget, "latencies", lambda w, threads, onnx, size: seen.append((w, threads, onnx, size))
                        or {"torch_ms": 21.5, "ort_ms": 9.75, "timed": "360x480 image -> 360x480 logits"})
    args = ["--retime", "60 min, seed 0", "--store", str(store), "--out", str(out)]
    camvid_budget._main(args)
    assert seen == [(run / "weights" / "best.pt", 2, True, (288, 384))]
    rows = json.loads(store.read_text())
    new = rows["60 min, seed 0"]
    assert new["torch_ms"] == 21.5 and new["ort_ms"] == 9.75
    assert new["retimed"]["before"] == {"torch_ms": 14.0, "ort_ms": 17.7}
    assert {k: v for k, v in new.items() if k not in ("torch_ms", "ort_ms", "retimed", "timed")} == \
        {k: v for k, v in row.items() if k not in ("torch_ms", "ort_ms")}
    assert rows["15 min, seed 0"] == _row("15 min, seed 0", 15, 0.4501)
    assert "| 60 min, seed 0 | 60 | 0 | **54.1** | 60.0 | 12 | 9.5 | 60.0 | 21.5 | 9.8 |" in out.read_text()
    # timed again without ONNX: the ORT cell empties (not the figure being replaced), the first timing stays
    monkeypatch.setattr(camvid_budget, "latencies", lambda w, threads, onnx, size: {"torch_ms": 30.0, "timed": "t"})
    camvid_budget._main(args + ["--no-onnx"])
    again = json.loads(store.read_text())["60 min, seed 0"]
    assert again["torch_ms"] == 30.0 and again["ort_ms"] is None
    assert again["retimed"]["before"] == {"torch_ms": 14.0, "ort_ms": 17.7}
    assert "| 60 min, seed 0 | 60 | 0 | **54.1** | 60.0 | 12 | 9.5 | 60.0 | 30.0 | - |" in out.read_text()
    with pytest.raises(SystemExit, match="no row 'nope'"):
        camvid_budget._main(["--retime", "nope", "--store", str(store), "--out", str(out)])
    with pytest.raises(SystemExit):  # neither --minutes nor --retime: argparse's usage error
        camvid_budget._main(["--store", str(store)])
    with pytest.raises(SystemExit):  # recipe flags would not apply to a stored checkpoint
        camvid_budget._main(args + ["--", "--head", "lraspp"])


def test_latency_columns_time_the_frame_in_and_logits_at_its_size_out(tmp_path, monkeypatch):
    """A model with a smaller input size is timed from the frame to logits at the frame's size: the image
    resized to its input, the logits resized once back (PyTorch), and an --out-size export (ONNX Runtime)."""
    import torch.nn.functional as F

    from models.model import SegmentationModel
    from segment import benchmark
    from tests.test_predict import make_checkpoint

    monkeypatch.setattr(camvid_budget, "FRAME", (40, 56))  # a stand-in for 360x480, to keep the test small
    weights = make_checkpoint(tmp_path / "best.pt", None, img_size=(32, 32))
    timed, real = [], benchmark.cpu_latency_ms
    monkeypatch.setattr(benchmark, "cpu_latency_ms", lambda net, size, **kw: timed.append((net, size)) or real(net, size, **kw))
    out = camvid_budget.latencies(weights, 1, True, (32, 32))
    assert out["torch_ms"] > 0 and out["ort_ms"] > 0 and out["timed"] == "40x56 image -> 40x56 logits"
    (net, size), = timed
    assert size == (40, 56)
    model = net.net  # the checkpoint's model, fused as latencies() loads it
    assert isinstance(model, SegmentationModel) and not model.training
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 3, 40, 56)
        torch.testing.assert_close(y, model(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False), (40, 56)))
    # a model at the frame's own size is timed as it is, no resize around it
    timed.clear()
    plain = make_checkpoint(tmp_path / "plain.pt", None, img_size=(40, 56))
    assert "ort_ms" in camvid_budget.latencies(plain, 1, True, (40, 56))
    assert isinstance(timed[0][0], SegmentationModel) and timed[0][1] == (40, 56)


def test_rows_timed_without_the_resizes_are_marked(tmp_path):
    """Rows from before the latency columns became frame in, logits out keep their figures, marked, when
    their model ran at a smaller size; a 360x480 model's figures were that already."""
    store, out = tmp_path / "rows.json", tmp_path / "BENCHMARKS.md"
    camvid_budget.merge(store, out, {**_row("15 min, fast", 15, 0.45), "infer_size": [288, 384], "ort_ms": 18.69})
    camvid_budget.merge(store, out, {**_row("60 min, main", 60, 0.55), "infer_size": [360, 480]})
    text = out.read_text()
    assert "| 15 min, fast | 15 | 0 | **45.0** | 60.0 | 12 | 9.5 | 15.0 | 14.0* | 18.7* |" in text
    assert "| 60 min, main | 60 | 0 | **55.0** | 60.0 | 12 | 9.5 | 60.0 | 14.0 | - |" in text and "* = timed at" in text
    timed = {**_row("15 min, fast", 15, 0.45), "infer_size": [288, 384], "ort_ms": 12.0,
             "timed": "360x480 image -> 360x480 logits"}
    camvid_budget.merge(store, out, timed)
    text = out.read_text()
    assert "| 15 min, fast | 15 | 0 | **45.0** | 60.0 | 12 | 9.5 | 15.0 | 14.0 | 12.0 |" in text and "* = timed at" not in text


def test_a_row_calls_its_code_dirty_only_for_changes_other_than_its_own_outputs(tmp_path, monkeypatch):
    """Every row rewrites BENCHMARKS.md and the store, so the next row's commit must not read '+dirty' for
    them; a changed source file still does."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for name in ("BENCHMARKS.md", "benchmarks/results/rows.json", "code.py"):
        (tmp_path / name).write_text("v1\n")
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "."], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "c"], cwd=tmp_path, check=True)
    monkeypatch.setattr(camvid_budget, "REPO", tmp_path)
    outputs = ("BENCHMARKS.md", "benchmarks/results/rows.json", "/elsewhere/rows.json")
    head = camvid_budget._commit(outputs)
    assert len(head) >= 7 and not head.endswith("+dirty")
    (tmp_path / "BENCHMARKS.md").write_text("v2\n")
    (tmp_path / "benchmarks" / "results" / "rows.json").write_text("v2\n")
    assert camvid_budget._commit(outputs) == head
    (tmp_path / "code.py").write_text("v2\n")
    assert camvid_budget._commit(outputs) == head + "+dirty"


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(not (CAMVID / "images").is_dir(), reason="CamVid not found ($SEG_DATASETS_DIR/camvid or ../shared/datasets/camvid)")
def test_recipe_runs_under_a_tiny_budget_and_the_script_writes_its_row(tmp_path, monkeypatch):
    from benchmarks.camvid_heads import subset_yaml

    monkeypatch.setenv("SEG_DATASETS_DIR", str(CAMVID.parent))
    data = subset_yaml(str(REPO / "data" / "camvid.yaml"), 16, tmp_path)  # links; the dataset is untouched
    out, store = tmp_path / "BENCHMARKS.md", tmp_path / "rows.json"
    cmd = [sys.executable, "benchmarks/camvid_budget.py", "--minutes", "0.25", "--data", data, "--out", str(out),
           "--store", str(store), "--project", str(tmp_path / "runs"), "--no-onnx", "--picture", str(tmp_path / "p.jpg"),
           "--", "--img-size", "96", "128", "--crop", "64", "96", "--batch-size", "8", "--workers", "0"]
    env = {"SEG_DATASETS_DIR": str(CAMVID.parent), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    row = json.loads(store.read_text())["0.25 min, seed 0"]
    assert "Time budget of 0.00416667 h reached" in r.stdout  # the recipe's 60-minute default was overridden
    assert row["epochs"] >= 1 and 0.0 < row["test_mIoU"] < 1.0 and list(row["per_class"])[-1] == "Bicyclist"
    assert 0.0 <= row["test_interval"][0] <= row["test_interval"][1] <= 1.0  # over the 16 test images
    assert row["wall_s"] < 15 + 60 and row["peak_rss_gib"] > 0.1 and row["torch_ms"] > 0
    assert "--crop 64 96" in row["command"] and (tmp_path / "p.jpg").stat().st_size > 1000
    assert row["infer_size"] == [96, 128]  # test scored and timed at the checkpoint's input size
    assert "| 0.25 min, seed 0 | 0.25 | 0 |" in out.read_text()


def test_the_val_column_is_that_of_the_epoch_best_pt_holds(tmp_path):
    """Under --best final best.pt is the last scored epoch, not the val maximum; an unscored epoch has no val."""
    (tmp_path / "results.csv").write_text("epoch,train/img_per_s,val/mIoU\n1,10,0.5\n2,12,\n3,14,0.7\n4,16,0.6\n")
    assert camvid_budget.training_figures(tmp_path, 4) == {"epochs": 4, "val_mIoU": 0.6, "img_per_s": 13.0}
    assert camvid_budget.training_figures(tmp_path, 3)["val_mIoU"] == 0.7
    with pytest.raises(SystemExit, match="no val mIoU for best.pt's epoch 2"):
        camvid_budget.training_figures(tmp_path, 2)


def test_heads_rows_get_their_own_table_and_head_specs_become_recipe_flags(tmp_path):
    from benchmarks.camvid_heads import head_flags
    from utils.errors import UserError

    store, out = tmp_path / "rows.json", tmp_path / "BENCHMARKS.md"
    camvid_budget.merge(store, out, _row("15 min, seed 0", 15, 0.45))
    camvid_budget.merge(store, out, {**_row("6 min, head ocr", 6, 0.3125), "group": "heads", "params": 2_670_000,
                                     "gflops": 9.06})
    table = out.read_text().split(camvid_budget.START)[1].split(camvid_budget.END)[0]
    runs, heads = table.split("Heads at one budget")
    assert "6 min, head ocr" not in runs.split("Test IoU")[0]
    assert "| 6 min, head ocr | 2.67 | 9.06 | **31.2** | 60.0 | 12 | 9.5 | 14.0 | - | 1.50 | 2026-12-02, m, ? |" in heads
    assert head_flags("graph") == [] and head_flags("lraspp") == ["--head", "lraspp"]
    assert head_flags("unet@attention=scse") == ["--head", "unet", "--head-args", "attention=scse"]
    for bad in ("nohead", "graph@width=3"):
        with pytest.raises(UserError):
            head_flags(bad)


def test_selection_rows_get_their_own_tables_and_are_never_retimed(tmp_path):
    """A --split val row (scored on held-out val, test never read) is not in the test tables and has no latency."""
    store, out = tmp_path / "rows.json", tmp_path / "BENCHMARKS.md"
    camvid_budget.merge(store, out, _row("15 min, seed 0", 15, 0.45))
    sel = {**_row("30 min, seed 0, camvid_holdout", 30, 0.0), "group": "selection", "data": "data/camvid_holdout.yaml",
           "val_mIoU": 0.40625, "val_interval": [0.375, 0.4375], "per_class": {"Sky": 0.875, "Pole": 0.0625}}
    del sel["test_mIoU"], sel["torch_ms"], sel["ort_ms"]
    camvid_budget.merge(store, out, sel)
    table = out.read_text().split(camvid_budget.START)[1].split(camvid_budget.END)[0]
    tested, selected = table.split("Selection runs")
    assert "camvid_holdout" not in tested.split("Commands")[0]  # neither in the test table nor its per-class one
    assert ("| 30 min, seed 0, camvid_holdout | camvid_holdout.yaml | 30 | 0 | **40.6** (37.5-43.8) | 12 | 9.5 | "
            "30.0 | 1.50 | 2026-12-02, m, ? |") in selected
    assert "| 30 min, seed 0, camvid_holdout | 87.5 | 6.2 |" in selected.split("Val IoU per class")[1]
    with pytest.raises(SystemExit, match="selection row, which has no latency"):
        camvid_budget._main(["--retime", "30 min, seed 0, camvid_holdout", "--store", str(store), "--out", str(out)])


def test_a_split_the_data_lacks_is_refused_before_training_and_val_makes_a_selection_row(tiny_data, tmp_path):
    """Data without a test split: the default (score on test) stops before any training with the way out named;
    --split val trains, scores val with an interval, times nothing and writes a selection row."""
    from utils.errors import UserError

    store, out, project = tmp_path / "rows.json", tmp_path / "BENCHMARKS.md", tmp_path / "runs"
    args = ["--minutes", "0.5", "--data", str(tiny_data), "--store", str(store), "--out", str(out),
            "--project", str(project), "--", "--img-size", "40", "56", "--crop", "32", "48", "--batch-size", "4",
            "--workers", "0", "--cache", "none", "--epochs", "2", "--val-period", "1"]
    with pytest.raises(UserError, match="no 'test' split.*--split val scores a selection row"):
        camvid_budget._main(args)
    assert not project.exists() and not store.exists()  # refused before the run folder or a row was written
    with pytest.raises(SystemExit):  # a selection row never reads test, so it has no test pictures either
        camvid_budget.parse_args(["--minutes", "1", "--split", "val", "--picture", "p.jpg"])
    row = camvid_budget._main(["--split", "val", *args])
    assert row["group"] == "selection" and row["label"] == "0.5 min, seed 0, data" and row["epochs"] == 2
    assert "test_mIoU" not in row and "torch_ms" not in row and list(row["per_class"]) == ["c0", "c1", "c2"]
    lo, hi = row["val_interval"]
    assert 0.0 <= lo <= row["val_mIoU"] <= hi <= 1.0
    metrics = json.loads((project / "0.5_min_seed_0_data" / "val" / "exp" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["mIoU"] == row["val_mIoU"]
    assert "| 0.5 min, seed 0, data | data.yaml | 0.5 | 0 |" in out.read_text()


def _preset(script: str) -> dict:
    return _load_preset(REPO / "unet-lite" / "yolo8-seg" / script)


def _changed_keys(a: dict, b: dict) -> set:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_fast_recipe_is_the_recipe_with_its_stated_changes_and_trains(tiny_data, tmp_path):
    """camvid_yolov8n_fast.py = camvid_yolov8n.py + lraspp head at 288x384 (crop 224x320), a 15-minute
    budget and the scale range and weight decay it was measured with, nothing else, and its preset trains:
    the Lite R-ASPP head is built over the graph's backbone, with the optimizer settings the preset names."""
    from segment.train import build_parser, run

    base, fast = _preset("camvid_yolov8n.py"), _preset("camvid_yolov8n_fast.py")
    changed = _changed_keys(base, fast)
    assert changed == {"head", "img_size", "crop", "scale_range", "weight_decay", "time", "project", "ema_decay",
                       "ema_tau", "best"}, changed
    # the main recipe keeps a slow EMA's final weights; the fast one was measured with the defaults
    assert (base["ema_decay"], base["ema_tau"], base["best"]) == (0.999, 500, "final")
    assert (fast["ema_decay"], fast["ema_tau"], fast["best"]) == (0.9999, 2000.0, "val")
    defaults = build_parser().parse_args([])
    assert (defaults.ema_decay, defaults.ema_tau, defaults.best) == (0.9999, 2000.0, "val")
    assert (base["scale_range"], fast["scale_range"]) == ([0.75, 1.5], [0.5, 2.0])
    assert (base["weight_decay"], fast["weight_decay"]) == (0.05, 0.01)
    assert build_parser(base).parse_args([]).weight_decay == 0.05  # the preset reaches the parsed flags
    assert (fast["head"], fast["img_size"], fast["crop"], fast["time"]) == ("lraspp", [288, 384], [224, 320], 0.25)
    s = run(fast, data=str(tiny_data), project=str(tmp_path), name="fast", img_size=[64], crop=[32, 48], epochs=1,
            batch_size=4, workers=0, time=None, cache="none", val_period=1)
    ckpt = torch.load(Path(s["save_dir"]) / "weights" / "last.pt", weights_only=True)
    assert ckpt["model_cfg"]["head"] == "lraspp" and ckpt["model_cfg"]["graph"] is not None
    assert any(k.startswith("head.") for k in ckpt["model"]) and s["epochs_run"] == 1
    assert (ckpt["args"]["weight_decay"], ckpt["args"]["scale_range"]) == (0.01, [0.5, 2.0])


def test_rt_recipe_is_the_fast_recipe_at_192x256_and_trains_at_its_own_size(tiny_data, tmp_path):
    """camvid_yolov8n_rt.py = camvid_yolov8n_fast.py at 192x256 (crop 160x224) with the main recipe's scale
    range and weight decay and a 60-minute budget, nothing else; its preset trains as it stands (no size
    override), so the checkpoint carries the 192x256 input that export and predict will use."""
    from segment.train import run

    fast, rt = _preset("camvid_yolov8n_fast.py"), _preset("camvid_yolov8n_rt.py")
    changed = _changed_keys(fast, rt)
    assert changed == {"img_size", "crop", "scale_range", "weight_decay", "time", "project"}, changed
    assert (rt["img_size"], rt["crop"], rt["scale_range"], rt["weight_decay"], rt["time"]) == (
        [192, 256], [160, 224], [0.75, 1.5], 0.05, 1.0)
    s = run(rt, data=str(tiny_data), project=str(tmp_path), name="rt", epochs=1, batch_size=4, workers=0, time=None,
            cache="none", val_period=1)
    ckpt = torch.load(Path(s["save_dir"]) / "weights" / "last.pt", weights_only=True)
    assert ckpt["model_cfg"]["head"] == "lraspp" and ckpt["img_size"] == [192, 256]
    assert (ckpt["args"]["crop"], ckpt["args"]["weight_decay"]) == ([160, 224], 0.05) and s["epochs_run"] == 1


@pytest.mark.parametrize("script", ["camvid_yolov8n_fast.py", "camvid_yolov8n_rt.py"])
def test_fast_recipes_start_from_the_command_line(script):
    r = subprocess.run([sys.executable, f"unet-lite/yolo8-seg/{script}", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--img-size" in r.stdout, r.stderr[-2000:]


def test_peer_speed_reads_head_options_in_a_model_spec():
    """--ours YAML:head:k=v@HxW builds the head with those --head-args (the low_stride=4 timing of the sixth
    session); a malformed option or a repeated model stops before anything is built, in one line."""
    from benchmarks import peer_speed

    rows = peer_speed.parse_ours(["models/yolov8n_seg.yaml:lraspp:low_stride=4,width=96@288x384",
                                  "models/yolov8n_seg.yaml:lraspp@288x384", "models/yolov8n_seg.yaml"])
    assert rows[0] == ("ours yolov8n_seg+lraspp(low_stride=4,width=96)@288x384", "models/yolov8n_seg.yaml",
                       "lraspp", {"low_stride": 4, "width": 96}, (288, 384))
    assert rows[1][2:] == ("lraspp", {}, (288, 384)) and rows[2][2:] == ("", {}, None)
    with pytest.raises(SystemExit, match=r"^peer_speed.py: --ours m.yaml:lraspp:low_stride@288x384 'low_stride': use key=value"):
        peer_speed.parse_ours(["m.yaml:lraspp:low_stride@288x384"])
    with pytest.raises(SystemExit, match="lists m.yaml:lraspp:width=8 twice"):
        peer_speed.parse_ours(["m.yaml:lraspp:width=8", "m.yaml:lraspp:width=8"])
