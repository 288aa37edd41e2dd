"""End-to-end: train.py and val.py on tiny data, what a run folder holds, and the shapes quickstart."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segment import train, val
from tests.conftest import CAMVID
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="mobilenet_v3_small", batch_size=4, workers=0, device="cpu", seed=0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tb_tags(run_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run on tiny data, shared by the assertions below."""
    from tests.conftest import write_dataset

    tmp = tmp_path_factory.mktemp("run")
    os.environ["SEG_CACHE_DIR"] = str(tmp / "cache")
    data = write_dataset(tmp / "data", {"train": 8, "val": 4})
    summary = train.run(data=str(data), img_size=[40, 56], epochs=2, project=str(tmp / "runs"), name="exp",
                        loss="ce+dice", **TINY)
    return data, Path(summary["save_dir"]), summary


def test_run_folder_contents(trained):
    _, run, summary = trained
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "args.yaml", "results.png",
              "confusion_matrix.png", "val_overlay_0.png"):
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    rows = read_csv(run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train/loss", "train/ce", "train/dice", "lr", "val/loss", "val/mIoU", "val/pixel_acc", "val/mean_acc",
            "val/mDice"} <= set(rows[0])
    best = max(float(r["val/mIoU"]) for r in rows)
    assert summary["best_fitness"] == pytest.approx(best, abs=1e-6)
    args = (run / "args.yaml").read_text()
    assert "backbone: mobilenet_v3_small" in args and "loss: ce+dice" in args


def test_checkpoint_is_self_describing_and_weights_only(trained):
    _, run, _ = trained
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert ckpt["nc"] == 3 and ckpt["names"] == ["c0", "c1", "c2"] and ckpt["ignore_index"] == 255
    assert ckpt["img_size"] == [40, 56] and ckpt["model_cfg"]["backbone"] == "mobilenet_v3_small"
    for k in ("optimizer", "scheduler", "ema", "model", "state"):
        assert k in ckpt["train"]
    assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())


def test_tensorboard_has_scalars_and_prediction_images(trained):
    _, run, _ = trained
    tags = tb_tags(run)
    assert {"train/input|truth|prediction", "val/input|truth|prediction"} <= set(tags["images"])
    assert {"val/mIoU", "train/loss", "lr"} <= set(tags["scalars"])


def test_val_reproduces_logged_best_miou(trained, tmp_path):
    data, run, summary = trained
    out = val.run(weights=str(run / "weights" / "best.pt"), data=str(data), project=str(tmp_path), name="v",
                  workers=0, batch_size=4)
    assert out["mIoU"] == pytest.approx(summary["best_fitness"], abs=1e-6)
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert set(m) >= {"mIoU", "pixel_acc", "mean_acc", "mDice", "per_class", "num_images", "img_size", "params",
                      "gflops", "speed_ms"}
    assert m["num_images"] == 4 and m["img_size"] == [40, 56] and set(m["speed_ms"]) == {"pre", "inference", "post"}
    assert set(m["per_class"]["c1"]) == {"iou", "acc", "dice"}
    assert (tmp_path / "v" / "confusion_matrix.png").is_file()


def test_odd_size_train_and_val(tiny_data, tmp_path):
    s = train.run(data=str(tiny_data), img_size=[97, 131], epochs=1, project=str(tmp_path), name="odd", **TINY)
    best = Path(s["save_dir"]) / "weights" / "best.pt"
    out = val.run(weights=str(best), project=str(tmp_path), name="v", workers=0)  # data and size from the checkpoint
    assert out["img_size"] == [97, 131] and out["num_images"] == 4


def test_val_size_validates_and_records_a_size_of_its_own(tiny_data, tmp_path, capsys):
    """--val-size: training at 48x64, validation (hence best.pt) at 32x40, which val.py then uses by default.
    The run starts from a model whose argmax varies from pixel to pixel and barely moves it (lr 1e-9), so
    the two input sizes give different mIoUs and the logged figure can tell which size validated."""
    from tests.test_predict import make_checkpoint

    varied = make_checkpoint(tmp_path / "varied.pt", tiny_data, img_size=(48, 64))
    s = train.run(data=str(tiny_data), img_size=[48, 64], val_size=[32, 40], epochs=1, project=str(tmp_path),
                  name="vs", head="segment", weights=str(varied), lr0=1e-9, **TINY)
    assert "Validation and best.pt at 32x40 (--val-size), training images resized to 48x64" in capsys.readouterr().out
    best = Path(s["save_dir"]) / "weights" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["img_size"] == [32, 40] and ckpt["args"]["img_size"] == [48, 64] and ckpt["args"]["val_size"] == [32, 40]
    out = val.run(weights=str(best), project=str(tmp_path), name="v", workers=0, batch_size=4)
    assert out["img_size"] == [32, 40] and out["mIoU"] == pytest.approx(s["best_fitness"], abs=1e-6)
    at_train_size = val.run(weights=str(best), project=str(tmp_path), name="v48", workers=0, batch_size=4,
                            img_size=[48, 64])
    assert abs(at_train_size["mIoU"] - out["mIoU"]) > 1e-3  # so the equality above can tell the sizes apart
    for bad in ([4], [32, 40, 8]):
        with pytest.raises(UserError, match="--val-size"):
            train.run(data=str(tiny_data), img_size=[48, 64], val_size=bad, epochs=1, project=str(tmp_path / "no"),
                      **TINY)
    assert not (tmp_path / "no").exists()


def test_resume_refuses_a_flag_that_the_checkpoint_predates(tmp_path):
    """A run saved before --val-size existed validated at its training size: --resume --val-size would change
    that mid-run (best.pt would compare mIoUs from two sizes), so it is refused like any changed flag."""
    from segment.checkpoints import resume_args

    parser = train.build_parser()
    argv = ["--resume", "last.pt", "--val-size", "32", "40"]
    cli = parser.parse_args(argv)
    saved = {k: v for k, v in vars(parser.parse_args([])).items() if k != "val_size"}  # an older run's args
    ckpt = {"train": {}, "args": saved, "nc": 3, "names": ["c0", "c1", "c2"]}
    with pytest.raises(UserError, match=r"--val-size \[32, 40\] \(the checkpoint predates this flag\)"):
        resume_args(ckpt, tmp_path / "last.pt", cli, train.explicit_flags(parser, argv))


def test_weights_path_transfers_matching_tensors(trained, tiny_data, tmp_path, capsys):
    _, run, _ = trained
    train.run(data=str(tiny_data), img_size=[32, 32], epochs=1, project=str(tmp_path), name="ft",
              weights=str(run / "weights" / "best.pt"), head="unet", **TINY)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("Transferred"))
    matched, total = map(int, line.split()[1].split("/"))
    assert 0 < matched < total  # the backbone matches, the unet head does not


def cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_train_then_val(tiny_data, tmp_path):
    r = cli("segment/train.py", "--data", str(tiny_data), "--backbone", "mobilenet_v3_small", "--img-size", "32", "48",
            "--epochs", "1", "--batch-size", "4", "--workers", "0", "--project", str(tmp_path), "--name", "c")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Results saved to {tmp_path / 'c'}" in r.stdout and "GFLOPs at 32x48" in r.stdout
    r = cli("segment/val.py", "--weights", str(tmp_path / "c" / "weights" / "best.pt"), "--project", str(tmp_path),
            "--workers", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mIoU" in r.stdout and "c2" in r.stdout


def test_cli_errors_are_one_readable_line(tmp_path):
    r = cli("segment/train.py", "--data", str(tmp_path / "nope.yaml"), "--project", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: --data") and "not found" in r.stderr
    r = cli("segment/val.py", "--weights", str(tmp_path / "none.pt"))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr


QUICKSTART = dict(data="data/shapes.yaml", cfg="models/yolov8n_seg.yaml", img_size=[96], loss="ce+dice", lr0=3e-3,
                  cos_lr=True, scale_range=[0.75, 1.25], batch_size=16, device="cpu")


@pytest.mark.slow
@pytest.mark.long
def test_shapes_short_training_learns(tmp_path, monkeypatch):
    """The README quickstart, cut from 50 to 20 epochs: far above chance, and val.py agrees with the log."""
    monkeypatch.setenv("SEG_DATASETS_DIR", str(tmp_path / "datasets"))
    s = train.run(epochs=20, workers=0, project=str(tmp_path), name="shapes", **QUICKSTART)
    # chance is ~0.2 (background alone); 50 epochs reach ~0.79-0.90. Short runs swing widely with the seed
    # and the precision auto picks: batch 8 at 15 epochs scored 0.3495 in one clean-clone run (bound 0.35);
    # the batch-16 quickstart at 20 epochs, seeds 0/1/2 (2026-12-02, Xeon VM): 0.533 / 0.401 / 0.653.
    # The bound asks for clear learning, not a lucky trajectory.
    assert s["best_fitness"] > 0.30, s
    out = val.run(weights=str(Path(s["save_dir"]) / "weights" / "best.pt"), project=str(tmp_path), name="v",
                  workers=0, batch_size=8)
    assert out["mIoU"] == pytest.approx(s["best_fitness"], abs=1e-6)


def test_head_args_reach_the_head(tiny_data, tmp_path):
    s = train.run(data=str(tiny_data), img_size=[32, 32], epochs=1, project=str(tmp_path), name="ha", head="unet",
                  head_args="min_stride=2,width=16", **TINY)
    ckpt = torch.load(Path(s["save_dir"]) / "weights" / "last.pt", weights_only=True)
    assert ckpt["model_cfg"]["head_args"] == {"min_stride": 2, "width": 16}
    # width is set at stride 4 and halves per finer level: min_stride=2 adds a level of 8 channels
    assert ckpt["model"]["head.classifier.weight"].shape == (3, 8, 1, 1)
    from utils.errors import UserError

    with pytest.raises(UserError, match="not accepted by the 'segment' head"):
        train.run(data=str(tiny_data), img_size=[32, 32], epochs=1, project=str(tmp_path), name="bad",
                  head_args="depth=3", **TINY)


def test_grad_clip_zero_means_no_clipping(tiny_data, tmp_path):
    """--grad-clip 0 turns clipping off; it must not zero the gradients (max_norm=0 would)."""
    common = dict(data=str(tiny_data), img_size=[32, 32], epochs=1, project=str(tmp_path), deterministic=True,
                  ema=False, **TINY)
    off = train.run(name="off", grad_clip=0.0, **common)
    huge = train.run(name="huge", grad_clip=1e9, **common)
    w_off = torch.load(Path(off["save_dir"]) / "weights" / "last.pt", weights_only=True)["model"]
    w_huge = torch.load(Path(huge["save_dir"]) / "weights" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w_off[k], w_huge[k]) for k in w_off)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(not (CAMVID / "images").is_dir(), reason="CamVid not found ($SEG_DATASETS_DIR/camvid or ../shared/datasets/camvid)")
def test_camvid_two_epochs_small(tmp_path, monkeypatch):
    """The same commands work on the real dataset (a tiny run: 96x128, two epochs)."""
    monkeypatch.setenv("SEG_DATASETS_DIR", str(CAMVID.parent))
    s = train.run(data="data/camvid.yaml", img_size=[96, 128], epochs=2, batch_size=16, workers=0,
                  project=str(tmp_path), name="cv", cfg="models/yolov8n_seg.yaml", device="cpu")
    # Baselines that learn nothing: always 'Road' (the largest class, 32% of the pixels) scores pixel acc 0.32
    # and mIoU 0.32 / 11 = 0.03; a uniform random guess mIoU ~0.05. One epoch (22 steps, all in the LR
    # warm-up) was too close to them to bound: 0.088-0.151 mIoU, pixel acc 0.37-0.51 over seeds 0-2 and two
    # commits. Two epochs, seeds 0-3, fp32 (measured 2026-12-02): mIoU 0.151-0.188, pixel acc 0.58-0.62.
    assert s["best_fitness"] > 0.10 and s["best_metrics"]["pixel_acc"] > 0.45
    out = val.run(weights=str(Path(s["save_dir"]) / "weights" / "best.pt"), split="test", project=str(tmp_path),
                  name="t", workers=0, batch_size=16)
    assert out["num_images"] == 233 and list(out["per_class"])[10] == "Bicyclist"
    assert out["img_size"] == [96, 128] and 0.0 < out["mIoU"] < 1.0
