"""Pre-flight dataset check (issue 5, item 1): every bad file is reported with its reason before
anything is written; --skip-bad trains on the rest; the JSON cache makes reruns instant."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segment import train, val
from tests.conftest import write_dataset
from tests.faults import TRAIN, flags, one_thread, run_cli, tree_digest
from utils.checkpoint import save_checkpoint
from utils.dataconfig import load_data_config
from utils.dataset_check import check_split, preflight
from utils.errors import UserError
from utils.yamlio import dump_yaml

HW = (32, 48)
# What each injected fault must be reported as (file, then reason).
EXPECTED = [
    "[train] images/train/000.png: image does not decode",           # truncated PNG
    "[train] images/train/001.jpg: image does not decode",           # truncated JPEG
    "[train] images/train/002.png: image does not decode (empty file, 0 bytes)",
    "[train] images/train/003.png: image does not decode",           # text named .png
    "[train] masks/train/004.png: values {7, 12} outside 0..2 and ignore_index 11 (",
    "[train] masks/train/005.png: values {255} outside 0..2 and ignore_index 11 (",
    "looks like a binary mask saved as 0/255",
    "[train] masks/train/006.png: mask is 40x24 but its image is 48x32 (WxH)",
    "[train] images/train/007.png: no mask found",
    "[val] masks/val/001.png: values {3} outside 0..2 and ignore_index 11 (",
]


def bad_dataset(root: Path) -> Path:
    """12 train / 3 val images with one fault of each kind in train[0..7] and val[1]; returns the YAML."""
    yaml_path = write_dataset(root, {"train": 12, "val": 3}, hw=HW, ignore_index=11)
    img, msk = root / "images" / "train", root / "masks" / "train"
    png = (img / "000.png").read_bytes()
    (img / "000.png").write_bytes(png[: len(png) // 2])
    (img / "001.png").unlink()
    ok, jpg = cv2.imencode(".jpg", np.full((*HW, 3), 128, np.uint8))
    (img / "001.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (img / "002.png").write_bytes(b"")
    (img / "003.png").write_text("this is not an image\n")
    m = np.zeros(HW, np.uint8)
    m[:2, :3], m[5, :4] = 12, 7  # 6 + 4 px outside 0..2
    cv2.imwrite(str(msk / "004.png"), m)
    m = np.zeros(HW, np.uint8)
    m[10:20, 10:30] = 255  # 200 px: a binary mask saved as 0/255
    cv2.imwrite(str(msk / "005.png"), m)
    cv2.imwrite(str(msk / "006.png"), np.zeros((24, 40), np.uint8))
    (msk / "007.png").unlink()
    m = cv2.imread(str(root / "masks" / "val" / "001.png"), cv2.IMREAD_UNCHANGED)
    m[0, 0] = 3
    cv2.imwrite(str(root / "masks" / "val" / "001.png"), m)
    return yaml_path


def assert_all_reported(text: str) -> None:
    for e in EXPECTED:
        assert e in text, f"missing from the report: {e}\n{text}"
    assert "values {7, 12} outside 0..2 and ignore_index 11 (10 px)" in text
    assert "values {255} outside 0..2 and ignore_index 11 (200 px)" in text
    assert "10 problem(s)" not in text and "9 problem(s)" in text  # 9 files, the 0/255 one with its hint


def test_preflight_reports_every_problem_with_file_and_reason(tmp_path):
    data = load_data_config(bad_dataset(tmp_path / "d"))
    with pytest.raises(UserError) as e:
        preflight(data, ["train", "val"], workers=2)
    assert_all_reported(str(e.value))
    assert "pass --skip-bad to train on the rest" in str(e.value)


@pytest.mark.slow
def test_cli_refuses_bad_dataset_before_writing_anything(tmp_path):
    """train.py exits 2 listing all problems, without a traceback, and creates no run folder, weights or
    event files; the dataset is byte-identical afterwards. --verbose adds the traceback."""
    yaml_path = bad_dataset(tmp_path / "d")
    before = tree_digest(tmp_path / "d")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    argv = flags(data=yaml_path, project=tmp_path / "runs", backbone="mobilenet_v3_small", img_size=list(HW),
                 epochs=1, batch_size=2, workers=0, device="cpu")
    r = run_cli(TRAIN, argv, cwd)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith("error: dataset check failed for") and "Traceback" not in r.stderr
    assert_all_reported(r.stderr)
    assert not (tmp_path / "runs").exists() and not list(cwd.iterdir())
    assert not list(tmp_path.rglob("events.out.tfevents*")) and not list(tmp_path.rglob("*.pt"))
    assert tree_digest(tmp_path / "d") == before
    cached = list((tmp_path / "cache").glob("check_*.json"))  # conftest points SEG_CACHE_DIR here
    assert len(cached) == 2 and all(json.loads(f.read_text())["problems"] for f in cached)

    r = run_cli(TRAIN, [*argv, "--verbose"], cwd)
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    assert_all_reported(r.stderr)
    assert not (tmp_path / "runs").exists()


def test_skip_bad_drops_the_bad_files_and_trains_on_the_rest(tmp_path, capsys):
    yaml_path = bad_dataset(tmp_path / "d")
    before = tree_digest(tmp_path / "d")
    with one_thread():
        s = train.run(data=str(yaml_path), project=str(tmp_path / "runs"), name="s", skip_bad=True,
                      backbone="mobilenet_v3_small", img_size=list(HW), epochs=1, batch_size=2, workers=0,
                      device="cpu", tb_images=1)
    out = capsys.readouterr().out
    assert "dataset check: --skip-bad dropped 8 of 12 'train' images" in out
    assert "dataset check: --skip-bad dropped 1 of 3 'val' images" in out
    assert "[train] masks/train/006.png: mask is 40x24" in out
    assert (Path(s["save_dir"]) / "weights" / "last.pt").is_file()
    assert tree_digest(tmp_path / "d") == before


def test_val_checks_its_split_before_writing_anything(tmp_path, capsys):
    from models.model import build_model, model_config

    yaml_path = bad_dataset(tmp_path / "d")
    cfg = model_config(3, "mobilenet_v3_small")
    weights = tmp_path / "w.pt"
    save_checkpoint({"model_cfg": cfg, "model": build_model(cfg).state_dict(), "img_size": list(HW),
                     "data": str(yaml_path)}, weights)
    for split, n, line in (("val", 1, "[val] masks/val/001.png: values {3} outside 0..2"),
                           ("train", 8, "[train] images/train/000.png: image does not decode")):
        with pytest.raises(SystemExit) as e:
            val.main(["--weights", str(weights), "--split", split, "--project", str(tmp_path / "v"), "--workers", "0"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{n} problem(s)" in err and line in err and "Traceback" not in err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("case", ["empty folder", "missing folder", "all files bad"])
def test_empty_split_is_an_error_even_with_skip_bad(tmp_path, case):
    yaml_path = write_dataset(tmp_path / "d", {"train": 3, "val": 2}, hw=HW)
    val_dir = tmp_path / "d" / "images" / "val"
    if case == "empty folder":
        for f in val_dir.iterdir():
            f.unlink()
    elif case == "missing folder":
        for f in val_dir.iterdir():
            f.unlink()
        val_dir.rmdir()
    else:
        for f in val_dir.iterdir():
            f.write_bytes(b"")
    data = load_data_config(yaml_path)
    with pytest.raises(UserError) as e:
        preflight(data, ["train", "val"], skip_bad=True)
    msg = str(e.value)
    assert "[val]" in msg and "[train]" not in msg
    assert ("no usable image/mask pairs left after dropping 2 bad one(s)" in msg if case == "all files bad"
            else "an empty or missing split is an error even with --skip-bad" in msg)


def test_check_is_cached_as_json_and_invalidated_by_a_changed_file(tmp_path):
    yaml_path = write_dataset(tmp_path / "d", {"train": 40, "val": 2}, hw=HW)
    data = load_data_config(yaml_path)
    t0 = time.perf_counter()
    cold = check_split(data, "train", workers=1)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = check_split(data, "train", workers=1)
    t_warm = time.perf_counter() - t0
    assert not cold.cached and warm.cached and warm.items == cold.items and warm.class_pixels == cold.class_pixels
    assert t_warm < t_cold
    (cache_file,) = (tmp_path / "cache").glob("check_data_train_*.json")
    json.loads(cache_file.read_text())  # plain JSON, never a pickle
    # a mask rewritten with a bad value: new size/mtime -> new key -> rechecked
    m = np.zeros(HW, np.uint8)
    m[0, 0] = 9
    cv2.imwrite(str(tmp_path / "d" / "masks" / "train" / "003.png"), m)
    again = check_split(data, "train", workers=1)
    assert not again.cached
    assert again.problems == ["masks/train/003.png: values {9} outside 0..2 and ignore_index 255 (1 px)"]
    assert not cache_file.exists() and len(list((tmp_path / "cache").glob("check_data_train_*.json"))) == 1


def test_palette_and_labelme_masks_are_checked(tmp_path):
    root = tmp_path / "d"
    for sub in ("images/train", "masks/train"):
        (root / sub).mkdir(parents=True)
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    yaml_path = root / "data.yaml"
    yaml_path.write_text(dump_yaml({"path": str(root), "train": "images/train", "val": "images/train", "nc": 3,
                                    "names": ["bg", "a", "b"], "palette": palette}))
    for i in range(4):
        cv2.imwrite(str(root / "images" / "train" / f"{i}.png"), np.zeros((*HW, 3), np.uint8))
    good = np.zeros((*HW, 3), np.uint8)
    good[:5, :5] = (255, 0, 0)
    Image.fromarray(good).save(root / "masks" / "train" / "0.png")
    bad = good.copy()
    bad[10, 10] = (1, 2, 3)
    Image.fromarray(bad).save(root / "masks" / "train" / "1.png")
    h, w = HW
    shape = {"label": "a", "points": [[1, 1], [10, 1], [10, 10]], "shape_type": "polygon"}
    (root / "masks" / "train" / "2.json").write_text(json.dumps(
        {"imageHeight": h, "imageWidth": w, "shapes": [shape, {**shape, "label": "zebra"}]}))
    (root / "masks" / "train" / "3.json").write_text(json.dumps(
        {"imageHeight": h, "imageWidth": w, "shapes": [{**shape, "points": [[1, 1], [5, 5]]}]}))
    report = check_split(load_data_config(yaml_path), "train")
    assert [i.name for i, _ in report.items] == ["0.png"]
    assert report.problems == [
        "masks/train/1.png: 1 colour(s) not in the palette: (1, 2, 3)",
        "masks/train/2.json: shape 1: label 'zebra' is not in the data YAML's names",
        "masks/train/3.json: shape 0 ('a'): a polygon needs at least 3 points, got 2",
    ]


def test_exif_rotated_image_must_match_its_mask_as_decoded(tmp_path):
    """The training decoder (utils/imageio.py) applies EXIF orientation; a mask drawn on the raw pixel grid of a
    rotated photo would crash augmentation mid-training, so the check reports it."""
    yaml_path = write_dataset(tmp_path / "d", {"train": 2, "val": 1}, hw=HW)
    im = Image.open(tmp_path / "d" / "images" / "train" / "000.png").convert("RGB")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "d" / "images" / "train" / "000.png", exif=exif)
    report = check_split(load_data_config(yaml_path), "train")
    assert report.problems == ["masks/train/000.png: mask is 48x32 but its image is 32x48 (WxH) after the image's "
                               "EXIF rotation; save the image upright (EXIF orientation 1) or rotate the mask"]


def test_binary_masks_with_ignore_255_are_refused_and_a_mix_is_warned(tmp_path):
    """0/255 masks with ignore_index 255 pass the value check but hold no object pixel: an error, since the
    run would score mIoU 1.0 on class 0 alone. A mix of 0/1 and 0/255 files is a warning naming the count."""
    yaml_path = write_dataset(tmp_path / "d", {"train": 3, "val": 1}, hw=HW, nc=2)
    masks = sorted((tmp_path / "d" / "masks" / "train").glob("*.png"))
    for f in masks[:1]:  # one file of three saved as 0/255
        m = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(f), np.where(m > 0, 255, 0).astype(np.uint8))
    logged: list[str] = []
    preflight(load_data_config(yaml_path), ["train", "val"], log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("warning: 1 of 3 'train' masks hold no value but 0 and 255")
    assert "binary masks saved as 0/255" in logged[0] and "remap 255 -> 1" in logged[0]
    for f in masks[1:]:  # now every file
        m = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(f), np.where(m > 0, 255, 0).astype(np.uint8))
    logged.clear()
    preflight(load_data_config(yaml_path), ["train", "val"], log=logged.append)  # scoring it (val.py): a warning
    assert len(logged) == 1 and logged[0].startswith("warning: no 'train' mask holds any pixel of classes 1..1")
    with pytest.raises(UserError) as e:  # training on it: an error, even with --skip-bad
        preflight(load_data_config(yaml_path), ["train", "val"], skip_bad=True, log=logged.append, require_objects=True)
    msg = str(e.value)
    assert "no 'train' mask holds any pixel of classes 1..1" in msg and "would score mIoU 1.0" in msg
    assert "remap 255 -> 1" in msg and "empty or missing split" not in msg
