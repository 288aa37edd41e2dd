"""Fault injection for issue 13 (reliability round 2), item by item: every case is injected and checked
from the CLI (one readable line, exit code, no traceback, no run folder) or against a hand-made oracle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segment import train, val
from tests.conftest import write_dataset
from tests.faults import TINY, flags, one_thread
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.dataconfig import load_data_config
from utils.dataset_check import check_split, preflight
from utils.errors import UserError
from utils.imageio import decode_image, decode_image_with_orientation
from utils.yamlio import dump_yaml

RUN = dict(TINY, workers=0, epochs=1)  # 8 train images (tiny_data) at 32x48, batch 2: 4 steps


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def cli(entry, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def refused(argv: list[str], capsys, project: Path, expect: str, entry=train.main) -> str:
    """The CLI refuses with one line holding ``expect``, exit 2, no traceback, and writes no run folder."""
    code, out, err = cli(entry, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert not project.exists() or not any(project.iterdir()), sorted(project.rglob("*"))
    return lines[0]


def write_yaml(dest: Path, **doc) -> Path:
    dest.write_text(dump_yaml(doc))
    return dest


# ----------------------------------------------------------------------------- 1. binary datasets
def test_nc_1_is_refused_with_the_binary_fix(tmp_path, capsys):
    root = tmp_path / "bin"
    write_dataset(root, {"train": 2, "val": 1}, nc=2)
    y = write_yaml(tmp_path / "bin.yaml", path=str(root), train="images/train", val="images/val", nc=1, names=["lesion"])
    with pytest.raises(UserError, match=r"nc: 1 is refused.*nc: 2, names: \[background, lesion\].*remap 255 -> 1"):
        load_data_config(y)
    refused(flags(data=y, project=tmp_path / "runs", **RUN), capsys, tmp_path / "runs", "nc: 1 is refused")


def test_binary_0_255_masks_with_nc_2_are_refused_not_scored_one(tmp_path, capsys):
    """The recommended nc: 2 with masks saved as 0/255 and the default ignore_index 255: every object pixel
    is ignored, so a run would report mIoU 1.0 from class 0 alone. Refused from the CLI, with the remap."""
    y = write_dataset(tmp_path / "bin", {"train": 4, "val": 2}, nc=2)
    for f in (tmp_path / "bin" / "masks").rglob("*.png"):
        cv2.imwrite(str(f), np.where(cv2.imread(str(f), cv2.IMREAD_UNCHANGED) > 0, 255, 0).astype(np.uint8))
    code, _, err = cli(train.main, flags(data=y, project=tmp_path / "runs", **RUN), capsys)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "runs").exists()
    assert "no 'train' mask holds any pixel of classes 1..1" in err and "remap 255 -> 1" in err


# ----------------------------------------------------------------------------- 2. palette-mode colour masks
def test_palette_mode_masks_are_read_by_colour_when_the_yaml_has_a_palette(tmp_path):
    palette = [[0, 0, 0], [220, 20, 60], [0, 0, 142]]
    ids = np.zeros((24, 32), np.uint8)
    ids[2:12, 3:20], ids[10:22, 15:30] = 1, 2
    root = tmp_path / "pal"
    for d in ("images/train", "masks/train"):
        (root / d).mkdir(parents=True)
    cv2.imwrite(str(root / "images/train/a.png"), np.zeros((24, 32, 3), np.uint8))
    rgb = Image.fromarray(np.asarray(palette, np.uint8)[ids], "RGB")
    q = rgb.quantize(colors=3)  # what an editor (or PIL) makes of an RGB mask: indices in another order
    assert q.mode == "P" and not np.array_equal(np.asarray(q), ids)  # read by index, the ids would be wrong
    q.save(root / "masks/train/a.png")
    y = write_yaml(tmp_path / "d.yaml", path=str(root), train="images/train", val="images/train", nc=3,
                   names=["bg", "person", "car"], palette=palette)
    data = load_data_config(y)
    r = check_split(data, "train", use_cache=False)
    assert not r.problems and r.class_pixels == [int((ids == c).sum()) for c in range(3)]
    from utils.masks import read_mask

    assert np.array_equal(read_mask(root / "masks/train/a.png", data.mask_spec), ids)
    # a colour outside the YAML's palette is an error, not a wrong id
    bad = np.asarray(palette, np.uint8)[ids]
    bad[0, 0] = (7, 7, 7)
    Image.fromarray(bad, "RGB").quantize(colors=4).save(root / "masks/train/a.png")
    r = check_split(data, "train", use_cache=False)
    assert r.problems == ["masks/train/a.png: 1 colour(s) not in the palette: (7, 7, 7)"]


# ----------------------------------------------------------------------------- 3. symlinks and duplicate stems
def test_symlinked_folders_are_followed_once_and_duplicate_stems_refused(tmp_path, capsys):
    y = write_dataset(tmp_path / "d", {"train": 8, "val": 1})
    root = tmp_path / "d"
    extra_img, extra_mask = tmp_path / "extra_img", tmp_path / "extra_mask"
    extra_img.mkdir(), extra_mask.mkdir()
    for i in range(4, 8):  # half of the split lives elsewhere, linked in
        shutil.move(root / f"images/train/00{i}.png", extra_img / f"00{i}.png")
        shutil.move(root / f"masks/train/00{i}.png", extra_mask / f"00{i}.png")
    (root / "images/train/more").symlink_to(extra_img, target_is_directory=True)
    (root / "masks/train/more").symlink_to(extra_mask, target_is_directory=True)
    (root / "images/train/more/loop").symlink_to(root / "images/train", target_is_directory=True)  # a loop
    data = load_data_config(y)
    files = data.split_images("train")
    assert len(files) == 8 and len({f.resolve() for f in files}) == 8
    assert check_split(data, "train", use_cache=False).problems == []
    # a.png and a.jpg in one folder would both be paired with mask a.png
    cv2.imwrite(str(root / "images/train/001.jpg"), np.zeros((40, 56, 3), np.uint8))
    with pytest.raises(UserError, match=r"split 'train': 1 image name\(s\) occur more than once.*001\.jpg \+ .*001\.png"):
        data.split_images("train")
    # from the CLI: the duplicate is named, with no 'empty or missing split' advice that would mislead
    code, _, err = cli(train.main, flags(data=y, project=tmp_path / "runs", **RUN), capsys)
    assert code == 2 and "occur more than once" in err and "001.jpg" in err and "Traceback" not in err
    assert "empty or missing split" not in err and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- 4. + 12. one decoder, EXIF rule
def _jpeg_with_orientation(path: Path, rgb: np.ndarray, orientation: int) -> None:
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=100)


@pytest.mark.parametrize("orientation, op", [(2, np.fliplr), (3, lambda a: np.rot90(a, 2)), (4, np.flipud),
                                             (5, lambda a: a.transpose(1, 0, 2)), (6, lambda a: np.rot90(a, -1)),
                                             (7, lambda a: np.rot90(a, 2).transpose(1, 0, 2)),
                                             (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_rule_matches_opencv(tmp_path, orientation, op):
    """The rule is 'EXIF applied' (as viewers, labelme and OpenCV show the image): a flat-colour-quadrant
    image survives JPEG so the transform is checked exactly against numpy."""
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:16, :24], rgb[:16, 24:], rgb[16:, :24] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    _jpeg_with_orientation(tmp_path / "a.jpg", rgb, orientation)
    out, o = decode_image_with_orientation(tmp_path / "a.jpg")
    expect = op(rgb)
    assert o == orientation and out.shape == expect.shape
    # quadrant centres (JPEG blurs the edges only); a wrong transform puts another colour there (255 off)
    h, w = expect.shape[:2]
    for y in (h // 4, 3 * h // 4):
        for x in (w // 4, 3 * w // 4):
            assert np.abs(out[y, x].astype(int) - expect[y, x]).max() < 16, (y, x)
    assert np.array_equal(out, cv2.cvtColor(cv2.imread(str(tmp_path / "a.jpg")), cv2.COLOR_BGR2RGB))


def test_images_above_pils_pixel_limit_decode_in_the_check_and_in_training(tmp_path, monkeypatch):
    """Aerial tiles exceed PIL's decompression-bomb limit; PIL checks it when opening and, for TIFF, again
    when loading. With the limit patched down to 500 px, 40x56 images (2240 px, > 2x the limit) stand in."""
    rgb = (np.arange(40 * 56 * 3) % 251).astype(np.uint8).reshape(40, 56, 3)
    Image.fromarray(rgb).save(tmp_path / "big.tif")
    Image.fromarray(rgb).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.tif").load()  # what PIL alone does
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning either
        for name in ("big.tif", "big.png"):
            assert np.array_equal(decode_image(tmp_path / name), rgb), name
    assert Image.MAX_IMAGE_PIXELS == 500  # put back after each decode


def test_exif_oriented_images_are_counted_once_per_split(tmp_path):
    y = write_dataset(tmp_path / "d", {"train": 4, "val": 2})
    root = tmp_path / "d"
    for i in (0, 1):  # 180 degrees: same size, so only the count tells the user
        img = cv2.cvtColor(cv2.imread(str(root / f"images/train/00{i}.png")), cv2.COLOR_BGR2RGB)
        (root / f"images/train/00{i}.png").unlink()
        _jpeg_with_orientation(root / f"images/train/00{i}.jpg", np.rot90(img, 2).copy(), 3)
    logged: list[str] = []
    reports = preflight(load_data_config(y), ["train", "val"], log=logged.append)
    assert reports["train"].exif_oriented == 2 and reports["val"].exif_oriented == 0
    assert logged == ["dataset check: 2 of 4 'train' images carry an EXIF orientation other than 1; they are used "
                      "upright (rotated/mirrored as image viewers show them), so their masks must be drawn on the "
                      "upright image"]


def test_what_passes_the_check_trains_tiff_float_16bit_and_exif(tmp_path):
    """Float TIFF: refused by the check (it is the decoder training uses); a 16-bit TIFF and a TIFF with an
    EXIF rotation decode the same way in the check and in the dataset."""
    from utils.datasets import SegDataset
    from utils.augment import val_transform

    y = write_dataset(tmp_path / "d", {"train": 3, "val": 1})
    root = tmp_path / "d"
    for i in range(3):
        (root / f"images/train/00{i}.png").unlink()
    Image.fromarray(np.full((40, 56), 0.5, np.float32), "F").save(root / "images/train/000.tif")
    Image.fromarray(np.full((40, 56), 65535, np.uint16)).save(root / "images/train/001.tif")
    stored = np.zeros((56, 40, 3), np.uint8)  # stored 56x40, shown 40x56 after orientation 6 (90 deg clockwise)
    stored[0:5, 0:3] = 200  # a mark in the stored top-left corner: shown top-right
    Image.fromarray(stored).save(root / "images/train/002.tif", tiffinfo={0x0112: 6})
    data = load_data_config(y)
    r = check_split(data, "train", use_cache=False)
    assert len(r.problems) == 1 and r.problems[0].startswith("images/train/000.tif: image does not decode "
                                                             "(floating-point image (mode F)")
    assert [p.name for p, _ in r.items] == ["001.tif", "002.tif"] and r.exif_oriented == 1
    ds = SegDataset(r.items, data.mask_spec, val_transform((40, 56)), train=False)
    upright = np.rot90(stored, -1)
    assert upright.shape == (40, 56, 3) and upright[0:3, 51:56].min() == 200
    img16, _ = ds._decode(0)  # the dataset's own decode, before any resize
    img_rot, _ = ds._decode(1)
    assert img16.shape == (40, 56, 3) and (img16 == 255).all()
    assert np.array_equal(img_rot, upright) and np.array_equal(img_rot, decode_image(root / "images/train/002.tif"))
    assert all(tuple(ds[i][0].shape) == (3, 40, 56) for i in range(2))


# ----------------------------------------------------------------------------- 5. nonsense values
@pytest.mark.parametrize("over, expect", [
    (dict(loss="ce:-1"), "weight -1 of 'ce' must be finite and >= 0"),
    (dict(loss="ce:nan"), "weight nan of 'ce' must be finite and >= 0"),
    (dict(loss="ce:0"), "every weight is 0"),
    (dict(class_weights="nan,1,1"), "nan is not allowed (weights must be finite and >= 0)"),
    (dict(class_weights="1,-2,1"), "-2.0 is not allowed"),
    (dict(class_weights="1,inf,1"), "inf is not allowed"),
    (dict(class_weights="1,1"), "2 values for 3 classes"),
    (dict(crop=[32, 64]), "--crop 32 64: larger than --img-size 32 48"),
    (dict(crop=[4]), "--crop 4: give H or H W, each at least 8 pixels"),
])
def test_nonsense_loss_and_class_weights_are_refused(tiny_data, tmp_path, capsys, over, expect):
    refused(flags(data=tiny_data, project=tmp_path / "runs", **{**RUN, **over}), capsys, tmp_path / "runs", expect)


@pytest.mark.parametrize("backbone, first, mine_key", [("mobilenet_v3_small", "features.0.0.weight", "body.0.0.weight"),
                                                      ("resnet18", "conv1.weight", "body.conv1.weight")])
def test_plain_torchvision_state_dict_is_mapped_and_zero_matches_is_an_error(tiny_data, tmp_path, capsys, backbone,
                                                                             first, mine_key):
    import torchvision

    from segment.trainer import Trainer

    tv = getattr(torchvision.models, backbone)(weights=None)
    torch.nn.init.normal_(tv.get_parameter(first))
    torch.save(tv.state_dict(), tmp_path / "tv.pth")  # the file torchvision users have (e.g. resnet18-f37072fd.pth)
    args = train.build_parser().parse_args(flags(data=tiny_data, project=tmp_path / "runs", weights=tmp_path / "tv.pth",
                                                 **{**RUN, "backbone": backbone}))
    tr = Trainer(args)
    out = capsys.readouterr().out
    mine = tr.model.backbone.state_dict()
    assert "(torchvision names mapped to the backbone)" in out
    assert torch.equal(mine[mine_key], tv.get_parameter(first))
    n = len(mine)
    assert f"Transferred {n}/" in out and n > 100  # every backbone tensor, none of the head's
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    refused(flags(data=tiny_data, project=tmp_path / "r2", weights=tmp_path / "other.pt", **{**RUN, "backbone": backbone}),
            capsys,
            tmp_path / "r2", f"no tensor matches {backbone}+unet by name and shape")


# ----------------------------------------------------------------------------- 6. + 11. + 14. + 16. flags
@pytest.mark.parametrize("over, expect", [
    (dict(cfg="models/yolov8n_seg.yaml", backbone="resnet18"), "--cfg models/yolov8n_seg.yaml and --backbone resnet18"),
    (dict(scale="s"), "--scale s: only YOLO graph YAMLs have scales"),
    (dict(epochs=0), "--epochs 0: must be an integer >= 1"),
    (dict(batch_size=0), "--batch-size 0: must be an integer >= 1"),
    (dict(workers=-1), "--workers -1: must be an integer >= 0"),
    (dict(lr0=-1), "--lr0 -1.0: must be a finite number in (0, inf)"),
    (dict(lr0="nan"), "--lr0 nan: must be a finite number"),
    (dict(lrf=0), "--lrf 0.0: must be a finite number in (0, 1]"),
    (dict(momentum=1), "--momentum 1.0: must be a finite number in [0, 1)"),
    (dict(ema_decay=1), "--ema-decay 1.0: must be a finite number in [0, 1)"),
    (dict(ema_tau=0), "--ema-tau 0.0: must be a finite number in (0, inf)"),
    (dict(fliplr=1.5), "--fliplr 1.5: must be a finite number in [0, 1]"),
    (dict(nan_patience=0), "--nan-patience 0: must be an integer >= 1"),
    (dict(tb_images=-1), "--tb-images -1: must be an integer >= 0"),
    (dict(save_period=0), "--save-period 0: must be -1 (off) or an integer >= 1"),
    (dict(scale_range=[-1, 0]), "--scale-range -1.0 0.0: give LO HI with 0 < LO <= HI"),
    (dict(scale_range=[2, 1]), "--scale-range 2.0 1.0"),
    (dict(img_size=[4]), "--img-size 4: give H or H W, each at least 8 pixels"),
    (dict(head_args="width=-5"), "--head-args width=-5: must be an integer >= 1"),
    (dict(head_args="dropout=1.5"), "--head-args dropout=1.5: must be a finite number in [0, 1)"),
    (dict(head_args="min_stride=64"), "--head-args {'min_stride': 64}: the 'unet' head cannot be built"),
    (dict(head="ocr", head_args="aux_weight=-1"), "--head-args aux_weight=-1: must be a finite number in [0, inf)"),
    (dict(head="ocr", head_args="aux_weight=nan"), "--head-args aux_weight='nan': must be a finite number"),
    (dict(head="ocr", head_args="key_width=0"), "--head-args key_width=0: must be an integer >= 1"),
    (dict(head="deeplabv3plus", head_args="low_width=0"), "--head-args low_width=0: must be an integer >= 1"),
    (dict(head="deeplabv3plus", head_args="output_stride=-8"), "--head-args output_stride=-8: must be an integer"),
    (dict(weight_decay=-0.1), "--weight-decay -0.1"),
    (dict(no_amp=True, precision="bf16"), "--no-amp and --precision bf16: --no-amp means fp32; give one of them"),
    (dict(precision="fp16"), "--precision fp16: fp16 autocast needs a CUDA device (this run is on cpu)"),
])
def test_bad_flags_are_one_line_before_anything_runs(tiny_data, tmp_path, capsys, over, expect):
    refused(flags(data=tiny_data, project=tmp_path / "runs", **{**RUN, **over}), capsys, tmp_path / "runs", expect)


def test_flags_are_checked_before_the_data_yaml_is_even_read(tmp_path, capsys):
    refused(flags(data=tmp_path / "missing.yaml", project=tmp_path / "runs", **{**RUN, "batch_size": 0}), capsys,
            tmp_path / "runs", "--batch-size 0: must be an integer >= 1")


def test_command_line_model_choice_replaces_a_recipe_preset():
    from argparse import Namespace

    from segment.config import check_model_flags

    a = Namespace(cfg="models/yolov8n_seg.yaml", backbone="resnet50", scale=None, head_args=None)
    check_model_flags(a, {"cfg"})  # recipe preset backbone=resnet50, user --cfg
    assert (a.cfg, a.backbone) == ("models/yolov8n_seg.yaml", None)
    a = Namespace(cfg="models/yolov8n_seg.yaml", backbone="resnet18", scale=None, head_args=None)
    check_model_flags(a, {"backbone"})  # recipe preset cfg, user --backbone
    assert (a.cfg, a.backbone) == (None, "resnet18")
    with pytest.raises(UserError, match="give one of them"):
        check_model_flags(Namespace(cfg="x.yaml", backbone="resnet18", scale=None, head_args=None), {"cfg", "backbone"})


# ----------------------------------------------------------------------------- 9. data YAML types and encodings
@pytest.mark.parametrize("change, expect", [
    (dict(nc="eleven"), "'nc' must be an integer, got 'eleven' (str)"),
    (dict(ignore_index="void"), "'ignore_index' must be an integer, got 'void' (str)"),
    (dict(names={0: "a", "1": "b", 2: "c"}), "'names' as a mapping needs the integer ids 0..2 as keys"),
    (dict(palette="red"), "'palette' must be a list of [R, G, B] triples"),
])
def test_data_yaml_with_wrong_types_is_one_line(tiny_data, tmp_path, capsys, change, expect):
    import yaml

    doc = {**yaml.safe_load(tiny_data.read_text()), **change}
    y = write_yaml(tmp_path / "bad.yaml", **doc)
    line = refused(flags(data=y, project=tmp_path / "runs", **RUN), capsys, tmp_path / "runs", expect)
    assert str(y) in line


def test_data_yaml_in_a_legacy_encoding_or_binary_and_bom_lists(tiny_data, tmp_path, capsys):
    text = tiny_data.read_text().replace("- c0", "- caf\u00e9")
    (tmp_path / "latin.yaml").write_bytes(text.encode("latin-1"))
    refused(flags(data=tmp_path / "latin.yaml", project=tmp_path / "runs", **RUN), capsys, tmp_path / "runs",
            "not UTF-8 text")
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    refused(flags(data=tmp_path / "bin.yaml", project=tmp_path / "runs", **RUN), capsys, tmp_path / "runs",
            "not a YAML file (binary content)")
    # a YAML saved with a BOM and a split list saved with a BOM: the BOM is not part of the first path
    root = tiny_data.parent
    listing = "\n".join(f"images/train/{i:03d}.png" for i in range(8))
    (root / "train.txt").write_bytes(b"\xef\xbb\xbf" + listing.encode())
    y = tmp_path / "bom.yaml"
    y.write_bytes(b"\xef\xbb\xbf" + tiny_data.read_text().replace("train: images/train", "train: train.txt").encode())
    files = load_data_config(y).split_images("train")
    assert files[0] == root / "images/train/000.png" and len(files) == 8


def test_long_paths_are_never_cut_in_messages(tmp_path):
    deep = tmp_path / ("a_very_long_folder_name_" * 6) / ("and_another_one_" * 6)
    y = write_dataset(deep, {"train": 2, "val": 1})
    (deep / "images/train/000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # damaged image
    long_stem = "an_image_whose_name_goes_on_and_on_" * 5
    shutil.move(deep / "images/train/001.png", deep / f"images/train/{long_stem}.png")  # no mask of that name
    data = load_data_config(y)
    from utils.imageio import ImageDecodeError

    with pytest.raises(ImageDecodeError) as bad:
        decode_image(deep / "images/train/000.png")
    r = check_split(data, "train", use_cache=False)
    assert sorted(r.problems) == sorted([
        f"images/train/000.png: image does not decode ({bad.value.reason})",
        f"images/train/{long_stem}.png: no mask found (expected {data.masks_dir}/.../{long_stem}.png or .json)"])
    with pytest.raises(UserError) as e:  # the report a user sees holds each line whole
        preflight(data, ["train"])
    assert all(p in str(e.value) for p in r.problems) and max(map(len, r.problems)) > 200
    long_pt = deep / ("weights_file_with_a_long_name_" * 4 + ".pt")
    long_pt.write_text("not a checkpoint")
    with pytest.raises(UserError) as e:
        load_checkpoint(long_pt)
    assert str(long_pt) in str(e.value)


# ----------------------------------------------------------------------------- 10. text file as --weights
def test_text_file_as_weights_is_one_line_in_train_and_val(tiny_data, tmp_path, capsys):
    (tmp_path / "w.pt").write_text("these are not weights\n")
    refused(flags(data=tiny_data, project=tmp_path / "runs", weights=tmp_path / "w.pt", **RUN), capsys,
            tmp_path / "runs", "not a PyTorch checkpoint (a text file")
    refused(["--weights", str(tmp_path / "w.pt"), "--data", str(tiny_data), "--project", str(tmp_path / "val")],
            capsys, tmp_path / "val", "not a PyTorch checkpoint (a text file", entry=val.main)


@pytest.mark.parametrize("bad, expect", [(["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
                                         (["--workers", "-2"], "--workers -2: must be an integer >= 0"),
                                         (["--img-size", "3"], "--img-size 3: give H or H W")])
def test_val_numeric_flags_are_one_line(tmp_path, capsys, bad, expect):
    refused(["--weights", str(tmp_path / "none.pt"), "--project", str(tmp_path / "val"), *bad], capsys,
            tmp_path / "val", expect, entry=val.main)


# ----------------------------------------------------------------------------- 7, 8, 13, 15, 16 on one real run
SAVED_BEFORE_LOGGING: list[int] = []  # the epochs last.pt holds when each epoch's logging starts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch CLI run with --tb-images 0 and --save-period 1 whose TensorBoard/results writer fails at
    epoch 1 and whose final plots fail: both are warnings, the epochs and the run complete."""
    from segment.runlog import RunLogger

    tmp = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("SEG_CACHE_DIR", str(tmp / "cache"))
        data = write_dataset(tmp / "data", {"train": 8, "val": 4})
        real = RunLogger.log_epoch

        def log_epoch(self, rows, res, batch):
            assert batch is None  # --tb-images 0: no grid is even computed
            SAVED_BEFORE_LOGGING.append(load_checkpoint(tmp / "runs" / "exp" / "weights" / "last.pt")["epoch"])
            if len(rows) == 1:
                raise RuntimeError("injected TensorBoard failure")
            return real(self, rows, res, batch)

        def final_plots(self, rows, res):
            raise ValueError("injected plotting failure")

        mp.setattr(RunLogger, "log_epoch", log_epoch)
        mp.setattr(RunLogger, "final_plots", final_plots)
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            train.main(flags(data=data, project=tmp / "runs", **{**RUN, "epochs": 2, "tb_images": 0, "save_period": 1}))
        yield data, tmp / "runs" / "exp", buf.getvalue()


def test_optional_outputs_that_fail_are_warnings_and_lose_nothing(finished_run):
    _, run, out = finished_run
    assert ("warning: could not write TensorBoard/results.csv (RuntimeError: injected TensorBoard failure); "
            "training continues, the checkpoints are intact") in out
    assert "warning: could not write final plots (ValueError: injected plotting failure)" in out
    last = load_checkpoint(run / "weights" / "last.pt")
    assert last["finished"] and last["epoch"] == 2 and (run / "weights" / "epoch1.pt").is_file()
    assert len(last["train"]["state"]["rows"]) == 2 and (run / "results.csv").read_text().count("\n") == 3
    # the checkpoint comes first: a crash (or kill) in the logging of epoch N keeps epoch N
    assert SAVED_BEFORE_LOGGING == [1, 2]


def test_args_yaml_holds_resolved_values(finished_run):
    import yaml

    _, run, _ = finished_run
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["lr0"] == 0.001 and args["weight_decay"] == 0.01 and args["epochs"] == 2  # adamw defaults
    assert (args["backbone"], args["head"]) == ("mobilenet_v3_small", "unet")
    from segment.config import record_model_choices
    from argparse import Namespace

    a = Namespace(cfg=None, backbone=None, head=None, scale=None)
    record_model_choices(a, {"backbone": "resnet18", "head": "segment", "graph": None})
    assert (a.backbone, a.head, a.scale) == ("resnet18", "segment", None)
    a = Namespace(cfg="models/yolov8s_seg.yaml", backbone=None, head=None, scale=None)
    record_model_choices(a, {"backbone": None, "head": None, "graph": {"backbone": []}, "scale": "s"})
    assert (a.backbone, a.head, a.scale) == (None, None, "s")
    assert load_checkpoint(run / "weights" / "last.pt")["args"]["lr0"] == 0.001


def test_resume_of_an_earlier_checkpoint_says_finished_and_how_to_branch(finished_run, tmp_path, capsys):
    _, run, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    epoch1 = run / "weights" / "epoch1.pt"
    for ckpt in (epoch1, run / "weights" / "best.pt"):
        code, _, err = cli(train.main, ["--resume", str(ckpt)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert (f"this run has finished; --resume only continues a run from its last.pt. To branch from {ckpt.name}, "
                f"start a new run: python segment/train.py --weights {ckpt}") in err
    # its own last.pt: nothing to do, exit 0 (a re-queued job that resumes a finished run succeeds), with the hint
    code, out, _ = cli(train.main, ["--resume", str(run / "weights" / "last.pt")], capsys)
    assert code == 0 and "nothing to resume. To train further, start a new run with --weights" in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    unfinished = _unfinished_copy(run, tmp_path / "u")  # an unfinished run: its epoch1.pt is still not resumable
    code, _, err = cli(train.main, ["--resume", str(unfinished / "weights" / "epoch1.pt")], capsys)
    assert code == 2 and "this run continues from its weights/last.pt; --resume only continues a run from its last.pt" in err


def _unfinished_copy(run: Path, dest: Path, **state) -> Path:
    shutil.copytree(run, dest)
    ckpt = load_checkpoint(dest / "weights" / "last.pt")
    ckpt["finished"] = False
    ckpt["train"]["state"].update(state)
    save_checkpoint(ckpt, dest / "weights" / "last.pt")
    return dest


def test_resume_of_a_checkpoint_from_before_precision_existed_keeps_bf16(finished_run, tmp_path, monkeypatch):
    """Such a checkpoint says only amp: true, which meant bf16 wherever native. The resume must not time the
    two precisions again (it could switch mid-run); it takes the old rule, and relogs nothing it cannot."""
    from segment import precision
    from segment.trainer import Trainer
    from utils import torch_utils

    _, run, _ = finished_run
    old = _unfinished_copy(run, tmp_path / "old")
    ckpt = load_checkpoint(old / "weights" / "last.pt")
    del ckpt["args"]["precision"]
    ckpt["args"]["amp"] = True
    ckpt["metrics"].pop("class_iou")
    save_checkpoint(ckpt, old / "weights" / "last.pt")
    monkeypatch.setattr(torch_utils, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "probe_step_ms", lambda *a, **k: pytest.fail("a resume must not re-measure"))
    t = Trainer(train.build_parser().parse_args(["--resume", str(old / "weights" / "last.pt")]))
    assert t.amp_dtype is torch.bfloat16 and t.args.precision == "bf16"
    t.logger.close()


def test_abbreviated_flags_are_seen_with_resume(finished_run, tmp_path, capsys):
    _, run, _ = finished_run
    copy = _unfinished_copy(run, tmp_path / "runs" / "exp", next_epoch=1)
    code, _, err = cli(train.main, ["--resume", str(copy / "weights" / "last.pt"), "--epoch", "5"], capsys)
    assert code == 2 and "--epochs 5 (checkpoint: 2)" in err
    from segment.train import build_parser, explicit_flags

    assert explicit_flags(build_parser({"loss": "dice"}), ["--epoch", "5", "--lr0=0.1", "--cos"]) == {"epochs", "lr0", "cos_lr"}


def test_early_stopped_run_killed_in_its_wrap_up_trains_no_more(finished_run, tmp_path, capsys):
    _, run, _ = finished_run
    copy = _unfinished_copy(run, tmp_path / "runs" / "exp", next_epoch=1, stopped_early=True)
    ckpt = load_checkpoint(copy / "weights" / "last.pt")
    ckpt["train"]["state"]["rows"] = ckpt["train"]["state"]["rows"][:1]
    save_checkpoint(ckpt, copy / "weights" / "last.pt")
    s = train.run(resume=str(copy / "weights" / "last.pt"), workers=0)
    assert s["epochs_run"] == 1 and load_checkpoint(copy / "weights" / "last.pt")["finished"]
    assert load_checkpoint(copy / "weights" / "last.pt")["epoch"] == 2  # the file was only marked, not retrained


def test_failed_runs_leave_no_folder_and_resume_picks_the_latest_resumable_run(finished_run, tmp_path, capsys):
    data, run, _ = finished_run
    project = tmp_path / "runs"
    _unfinished_copy(run, project / "exp", next_epoch=1)
    for bad in (dict(head_args="min_stride=64"), dict(weights=str(tmp_path / "missing.pt")), dict(loss="nope")):
        code, _, _ = cli(train.main, flags(data=data, project=project, **{**RUN, **bad}), capsys)
        assert code == 2 and sorted(p.name for p in project.iterdir()) == ["exp"]
    newer = project / "exp2"  # a run killed before its first epoch ended: no last.pt
    newer.mkdir()
    (newer / "args.yaml").write_text("epochs: 3\n")
    from segment.checkpoints import find_resume_checkpoint

    assert find_resume_checkpoint(True, project) == project / "exp" / "weights" / "last.pt"


# ----------------------------------------------------------------------------- 17. oracles for weak tests
class _Truth(torch.nn.Module):
    """A 'model' whose logits are the one-hot of the class id written in the image's red channel."""

    def __init__(self, nc: int) -> None:
        super().__init__()
        self.nc = nc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0] * 255).round().long()
        return torch.nn.functional.one_hot(ids, self.nc).permute(0, 3, 1, 2).float() * 10


def test_evaluate_scores_a_perfect_model_exactly_one_with_two_mask_sizes():
    """Images at the eval size 16x16; masks at 16x16 and 32x32 (the same 4x4 block layout): the logits are
    resized back to each mask's size, so a perfect model scores exactly 1.0 (ignored pixels excluded), and
    a model wrong on one block scores the hand-computed IoU."""
    from types import SimpleNamespace

    from segment.val import evaluate

    coarse = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 2], [0, 0, 2, 2], [1, 1, 1, 0]])
    m16 = coarse.repeat_interleave(4, 0).repeat_interleave(4, 1)
    m32 = coarse.repeat_interleave(8, 0).repeat_interleave(8, 1)
    images = torch.stack([m16.to(torch.uint8).expand(3, 16, 16)] * 2)
    m32_ign = m32.clone()
    m32_ign[:3, :3] = 255
    data = SimpleNamespace(nc=3, ignore_index=255, names=["a", "b", "c"])
    res = evaluate(_Truth(3), [(images, [m16, m32_ign], [0, 1])], data, torch.device("cpu"), progress=False)
    assert res.metrics["mIoU"] == 1.0 and res.metrics["pixel_acc"] == 1.0 and res.num_images == 2
    assert int(res.confusion.sum()) == 16 * 16 + 32 * 32 - 9
    wrong = images.clone()
    wrong[1, :, :4, :4] = 1  # image 2's top-left block (class 0) predicted as class 1: 8x8 px at 32x32, 9 ignored
    res = evaluate(_Truth(3), [(wrong, [m16, m32_ign], [0, 1])], data, torch.device("cpu"), progress=False)
    n0 = int((m16 == 0).sum()) + int((m32 == 0).sum())  # class-0 pixels counted (the ignored ones are class 0)
    n1 = int((m16 == 1).sum()) + int((m32 == 1).sum())
    iou0, iou1 = (n0 - 9 - 55) / (n0 - 9), n1 / (n1 + 55)
    assert res.metrics["per_class"]["a"]["iou"] == pytest.approx(iou0, abs=1e-12)
    assert res.metrics["per_class"]["b"]["iou"] == pytest.approx(iou1, abs=1e-12)


def test_lr_schedule_table():
    from segment.trainer import lr_lambda

    poly, cos = lr_lambda(110, 10, 0.01, False), lr_lambda(110, 10, 0.01, True)
    # warm-up 0.1 -> 1 over 10 iterations, then decay to lrf over the remaining 100
    table = {0: (0.1, 0.1), 5: (0.55, 0.55), 10: (1.0, 1.0), 60: (0.01 + 0.99 * 0.5 ** 0.9, 0.505),
             110: (0.01, 0.01), 200: (0.01, 0.01)}
    for it, (p, c) in table.items():
        assert poly(it) == pytest.approx(p, abs=1e-12) and cos(it) == pytest.approx(c, abs=1e-12), it
    assert lr_lambda(100, 0, 0.2, True)(25) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + 2 ** -0.5), abs=1e-12)


def test_model_ema_closed_form():
    import math

    from utils.torch_utils import ModelEMA

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expect = 0.0
    for t in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(t))
        ema.update(model)
        d = 0.9 * (1 - math.exp(-t / 2.0))
        expect = d * expect + (1 - d) * t
        assert float(ema.ema.weight) == pytest.approx(expect, abs=1e-6), t


def test_cache_ram_gives_bit_identical_items(tiny_data):
    from utils.augment import AugmentConfig, train_transform, val_transform
    from utils.datasets import SegDataset

    data = load_data_config(tiny_data)
    items = check_split(data, "train").items
    tf = train_transform((32, 48), 255, AugmentConfig(0.5, 2.0, 0.5, 0.3))
    a, b = SegDataset(items, data.mask_spec, tf, train=True), SegDataset(items, data.mask_spec, tf, train=True, cache="ram")
    assert b.cache_bytes() > 0
    for key in [(i, 1000 + i) for i in range(len(items))] * 2:
        x, y = a[key], b[key]
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    va, vb = (SegDataset(items, data.mask_spec, val_transform((32, 48)), train=False, cache=c) for c in (None, "ram"))
    assert all(torch.equal(va[i][0], vb[i][0]) and torch.equal(va[i][1], vb[i][1]) for i in range(len(items)))


def test_cache_plan_hand_computed(monkeypatch):
    from utils import datasets
    from utils.datasets import AUTO_CACHE_LIMIT, cache_plan

    assert cache_plan("auto", 100, 50, free=1000) == (True, True, None)  # limit min(1 GiB, 1000 / 4) = 250
    assert cache_plan("auto", 200, 100, free=1000) == (True, False, None)  # train fits, train + val does not
    train, val, note = cache_plan("auto", 300, 10, free=1000)
    assert (train, val) == (False, True) and "~0.0 GiB decoded is over --cache auto's 0.0 GiB" in note
    monkeypatch.setattr(datasets, "available_memory", lambda: None)  # no /proc/meminfo: the 1 GiB limit alone
    assert cache_plan("auto", AUTO_CACHE_LIMIT, 0)[:2] == (True, True)
    assert cache_plan("auto", AUTO_CACHE_LIMIT + 1, 0)[0] is False
    monkeypatch.setattr(datasets, "available_memory", lambda: 400)  # free memory read when not given: 400 / 4
    assert cache_plan("auto", 100, 0)[:2] == (True, True) and cache_plan("auto", 101, 0)[:2] == (False, True)
    assert cache_plan("auto", AUTO_CACHE_LIMIT + 1, 0, free=2**40)[0] is False  # 1 GiB even with 1 TiB free
    assert cache_plan("ram", 2**40, 2**40, free=0) == (True, True, None)  # forced
    assert cache_plan("none", 1, 1, free=2**40) == cache_plan(None, 1, 1) == (False, False, None)
    with pytest.raises(UserError, match="--cache disk: use auto, ram or none"):
        cache_plan("disk", 1, 1)


@pytest.mark.parametrize("cache, limit, expect", [
    ("auto", None, (True, True)), ("none", None, (False, False)), ("auto", 8 * 40 * 56 * 4 + 1, (True, False))])
def test_trainer_caches_what_cache_auto_allows(tiny_data, tmp_path, monkeypatch, cache, limit, expect):
    """The default --cache auto caches the tiny dataset (train 8 and val 4 images of 40x56: the check's pixel
    counts give exactly the bytes the cache then holds); with a limit between train and train + val only
    train is cached; --cache none caches nothing."""
    from segment.trainer import Trainer
    from utils import datasets

    monkeypatch.setattr(datasets, "available_memory", lambda: None)
    if limit is not None:
        monkeypatch.setattr(datasets, "AUTO_CACHE_LIMIT", limit)
    args = train.build_parser().parse_args([])
    assert args.cache == "auto"  # the default
    for k, v in {**TINY, "epochs": 1, "data": str(tiny_data), "project": str(tmp_path / "runs"), "workers": 0,
                 "cache": cache}.items():
        setattr(args, k, v)
    t = Trainer(args)
    per_image = 40 * 56 * 4  # RGB uint8 + a uint8 mask
    got = (t.train_ds.cache_bytes(), t.val_loader.dataset.cache_bytes())
    assert got == (8 * per_image if expect[0] else 0, 4 * per_image if expect[1] else 0)
    assert datasets.decoded_bytes(check_split(load_data_config(tiny_data), "train"), t.data.mask_spec) == 8 * per_image


@pytest.mark.parametrize("clip, expect", [(1.0, 2.0 - 1.0), (0.0, 2.0 - 100.0), (1e9, 2.0 - 100.0)])
def test_grad_clip_clips_exactly(clip, expect):
    """One parameter with gradient 100 and plain SGD (lr 1): clipping to 1 moves it by exactly 1; --grad-clip 0
    (off) and a huge limit move it by 100. A step that ignored clipping would fail the first case."""
    from argparse import Namespace

    from segment.trainer import Trainer

    tr = Trainer.__new__(Trainer)
    tr.model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        tr.model.weight.fill_(2.0)
    tr.args, tr.amp, tr.ema = Namespace(grad_clip=clip), False, None
    tr.optimizer = torch.optim.SGD(tr.model.parameters(), lr=1.0)
    tr.scaler = torch.amp.GradScaler("cuda", enabled=False)
    assert tr._step((tr.model.weight * 100).sum())
    assert float(tr.model.weight) == pytest.approx(expect, abs=1e-6)


def test_tversky_alpha_beta_asymmetry():
    from tests.test_losses import loss

    # class 0: I 1/2, FP 3/4, FN 1/2; class 1: I 1/4, FP 1/2, FN 3/4 (see test_losses' example); smooth 1
    def t(a, b):
        return 1 - ((0.5 + 1) / (0.5 + a * 0.75 + b * 0.5 + 1) + (0.25 + 1) / (0.25 + a * 0.5 + b * 0.75 + 1)) / 2

    assert loss("tversky", alpha=0.3, beta=0.7) == pytest.approx(t(0.3, 0.7), abs=1e-6)
    assert loss("tversky", alpha=0.9, beta=0.1) == pytest.approx(t(0.9, 0.1), abs=1e-6)
    assert abs(t(0.9, 0.1) - t(0.3, 0.7)) > 1e-3  # the two weightings really differ on this example


def test_conv_bn_fusion_uses_running_statistics():
    from models.conv import Conv

    torch.manual_seed(0)
    m = Conv(3, 4, 3).train()
    for _ in range(5):  # non-trivial running mean/var, then random affine parameters
        m(torch.randn(2, 3, 8, 8) * 3 + 2)
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 2)
        m.bn.bias.uniform_(-1, 1)
    assert m.bn.running_mean.abs().max() > 0.1 and (m.bn.running_var - 1).abs().max() > 0.1
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    ref = m(x)
    m.fuse()
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_metrics_json_writes_null_never_nan(finished_run, tmp_path):
    """val.py on a split where classes 1 and 2 are absent: their accuracy is 0/0. metrics.json must say null
    (json.dumps would happily write NaN, which strict JSON readers refuse)."""
    data, run, _ = finished_run
    root = Path(load_data_config(data).root)
    shutil.copytree(root, tmp_path / "d", ignore=shutil.ignore_patterns("*.yaml"))
    for f in (tmp_path / "d" / "masks" / "val").glob("*.png"):
        cv2.imwrite(str(f), np.zeros_like(cv2.imread(str(f), cv2.IMREAD_UNCHANGED)))
    y = write_yaml(tmp_path / "d.yaml", path=str(tmp_path / "d"), train="images/train", val="images/val", nc=3,
                   names=["c0", "c1", "c2"])
    with one_thread():
        val.run(weights=str(run / "weights" / "best.pt"), data=str(y), split="val", project=str(tmp_path / "v"),
                workers=0)
    text = (tmp_path / "v" / "exp" / "metrics.json").read_text()

    def no_constants(name):
        raise AssertionError(f"{name} in metrics.json")

    doc = json.loads(text, parse_constant=no_constants)
    assert doc["per_class"]["c1"]["acc"] is None and doc["per_class"]["c2"]["acc"] is None and "null" in text
    assert doc["per_class"]["c0"]["acc"] is not None