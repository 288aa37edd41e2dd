"""The YOLO recipes (unet-lite/yolo*-seg/): one training epoch each on tiny data, and a bad YAML given to a
recipe on the command line fails with one line and no traceback."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "unet-lite").glob("yolo*-seg/seg_*.py"))
TRAIN_ARGS = dict(img_size=[64], epochs=1, batch_size=4, workers=0, device="cpu", weights="none", exist_ok=True)


def _load_preset(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a recipe only calls main() under __main__
    return module.PRESET


def test_every_family_has_a_recipe() -> None:
    assert [p.parent.name for p in RECIPES] == ["yolo11-seg", "yolo5-seg", "yolo7-seg", "yolo8-seg", "yolo9-seg"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.parent.name for p in RECIPES])
def test_recipe_trains_one_epoch(recipe: Path, tiny_data: Path, tmp_path: Path) -> None:
    from segment.train import run

    preset = _load_preset(recipe)
    assert (ROOT / preset["cfg"]).is_file() or (ROOT / preset["cfg"].replace("n_seg", "_seg")).is_file()
    summary = run(preset, data=str(tiny_data), project=str(tmp_path), name="r", **TRAIN_ARGS)
    assert summary["epochs_run"] == 1
    save_dir = Path(summary["save_dir"])
    assert (save_dir / "weights" / "best.pt").is_file()
    args = yaml.safe_load((save_dir / "args.yaml").read_text())
    assert args["cfg"] == preset["cfg"] and args["loss"] == "ce+dice"


def test_bad_yaml_through_a_recipe_is_one_line(tiny_data: Path, tmp_path: Path) -> None:
    graph = yaml.safe_load((ROOT / "models" / "yolov8_seg.yaml").read_text())
    graph["head"][2][2] = "C2ff"
    bad = tmp_path / "my_seg.yaml"
    bad.write_text(yaml.safe_dump(graph, sort_keys=False))
    r = subprocess.run([sys.executable, "unet-lite/yolo8-seg/seg_diceloss_yolov8.py", "--cfg", str(bad), "--scale", "n",
                        "--data", str(tiny_data), "--img-size", "64", "--epochs", "1", "--workers", "0",
                        "--device", "cpu", "--project", str(tmp_path), "--name", "bad"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith(f"error: {bad}: row 12 (head): unknown module 'C2ff'; did you mean 'C2f'?")
