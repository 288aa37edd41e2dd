"""Dataset YAMLs, split listing, synthetic generation, augmentation and the seeded sampler."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CAMVID, write_dataset
from utils.augment import train_transform, val_transform
from utils.dataconfig import load_data_config
from utils.dataset_check import check_split
from utils.datasets import SegDataset, SeededSampler, build_loader, class_weights_from_counts
from utils.errors import UserError
from utils.synthetic import shapes_sample
from utils.yamlio import dump_yaml


def test_yaml_keys_names_mapping_and_txt_split(tmp_path):
    root = tmp_path / "d"
    write_dataset(root, {"train": 3, "val": 2})
    (root / "list.txt").write_text("images/train/000.png\n# comment\nimages/train/002.png\n")
    y = tmp_path / "d.yaml"
    y.write_text(dump_yaml({"path": str(root), "train": ["images/train", "images/val"], "val": "list.txt",
                            "nc": 3, "names": {0: "a", 1: "b", 2: "c"}}))
    d = load_data_config(y)
    assert d.names == ["a", "b", "c"] and d.ignore_index == 255 and d.root == root
    assert len(d.split_images("train")) == 5
    assert [p.name for p in d.split_images("val")] == ["000.png", "002.png"]
    with pytest.raises(UserError, match="no 'test' split"):
        d.split_images("test")


def test_glob_splits_select_by_file_name_and_a_pattern_that_matches_nothing_is_refused(tmp_path):
    """Splitting one folder by sequence prefix (CamVid's 0006R0_*, data/camvid_holdout.yaml) with glob entries."""
    root = tmp_path / "d"
    write_dataset(root, {"train": 5})
    for kind in ("images", "masks"):
        for i, name in enumerate(["A_0", "A_1", "B_0", "B_1", "A_2"]):
            (root / kind / "train" / f"{i:03d}.png").rename(root / kind / "train" / f"{name}.png")
    (root / "images" / "train" / "A_notes.txt").write_text("not an image")
    (root / "images" / "extra" / "deep").mkdir(parents=True)
    (root / "images" / "train" / "B_1.png").rename(root / "images" / "extra" / "deep" / "B_1.png")
    y = tmp_path / "d.yaml"
    y.write_text(dump_yaml({"path": str(root), "train": ["images/train/A_*", str(root / "images/train/B_[0]*")],
                            "val": "images/**/B_?.png", "test": "images/train/C_*", "nc": 3,
                            "names": ["a", "b", "c"]}))
    d = load_data_config(y)
    assert [p.name for p in d.split_images("train")] == ["A_0.png", "A_1.png", "A_2.png", "B_0.png"]
    assert [p.relative_to(root).as_posix() for p in d.split_images("val")] == [
        "images/extra/deep/B_1.png", "images/train/B_0.png"]
    with pytest.raises(UserError, match=r"split 'test': the pattern .*C_\* matches no image"):
        d.split_images("test")
    report = check_split(d, "train", workers=1, use_cache=False)  # each image finds its mask by name
    assert not report.problems and [m.relative_to(root).as_posix() for _, m in report.items] == [
        "masks/train/A_0.png", "masks/train/A_1.png", "masks/train/A_2.png", "masks/train/B_0.png"]


def test_relative_path_uses_seg_datasets_dir_and_reports_where_it_looked(tmp_path, monkeypatch):
    write_dataset(tmp_path / "sets" / "mine", {"train": 1, "val": 1})
    y = tmp_path / "mine.yaml"
    y.write_text(dump_yaml({"path": "mine", "train": "images/train", "val": "images/val", "nc": 3,
                            "names": ["a", "b", "c"]}))
    monkeypatch.setenv("SEG_DATASETS_DIR", str(tmp_path / "sets"))
    assert load_data_config(y).root == tmp_path / "sets" / "mine"
    monkeypatch.setenv("SEG_DATASETS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(UserError) as e:
        load_data_config(y)
    assert str(tmp_path / "elsewhere" / "mine") in str(e.value) and "SEG_DATASETS_DIR" in str(e.value)


@pytest.mark.parametrize("bad, message", [
    ({"nc": 2}, "nc is 2 but 'names' has 3"),
    ({"ignore_index": 1}, "ignore_index 1 must be outside 0..2"),
    ({"palette": [[0, 0, 0]]}, "palette has 1 colours for 3 classes"),
    ({"palette": [[0, 0, 0], [1, 2], [3, 4, 5]]}, r"palette\[1\] must be an \[R, G, B\]"),
])
def test_invalid_yaml_values(tmp_path, bad, message):
    y = tmp_path / "x.yaml"
    y.write_text(dump_yaml({"path": str(tmp_path), "train": "a", "val": "b", "nc": 3, "names": ["a", "b", "c"], **bad}))
    with pytest.raises(UserError, match=message):
        load_data_config(y)


def test_python_tag_in_yaml_is_refused(tmp_path):
    y = tmp_path / "evil.yaml"
    y.write_text("path: !!python/object/apply:os.system ['echo pwned > %s']\ntrain: a\n" % (tmp_path / "pwned"))
    with pytest.raises(UserError, match="refused, the YAML uses a tag"):
        load_data_config(y)
    assert not (tmp_path / "pwned").exists()


def test_shapes_generation_is_deterministic():
    a_img, a_mask = shapes_sample(np.random.default_rng([0, 5]))
    b_img, b_mask = shapes_sample(np.random.default_rng([0, 5]))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert set(np.unique(a_mask)) <= {0, 1, 2, 3, 4, 255} and (a_mask == 255).any()


def test_shapes_yaml_generates_into_datasets_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_DATASETS_DIR", str(tmp_path))
    d = load_data_config("data/shapes.yaml")
    assert d.root == tmp_path / "shapes"
    assert len(d.split_images("train")) == 320 and len(d.split_images("val")) == 64
    assert (tmp_path / "shapes" / "masks" / "val" / "0000.png").is_file()


def test_shapes_older_generation_is_replaced_but_user_folders_are_not(tmp_path, monkeypatch):
    from utils.synthetic import STAMP, SHAPES_VERSION

    monkeypatch.setenv("SEG_DATASETS_DIR", str(tmp_path))
    old = tmp_path / "shapes"
    (old / "images" / "train").mkdir(parents=True)
    (old / "images" / "train" / "old.jpg").write_bytes(b"x")
    (old / STAMP).write_text("shapes 1\n")  # an older generator's output: replaced, not mixed
    d = load_data_config("data/shapes.yaml")
    assert not (old / "images" / "train" / "old.jpg").exists() and len(d.split_images("train")) == 320
    assert (old / STAMP).read_text().split() == ["shapes", str(SHAPES_VERSION)]
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary folders left behind

    monkeypatch.setenv("SEG_DATASETS_DIR", str(tmp_path / "user"))
    mine = tmp_path / "user" / "shapes" / "images" / "train"
    mine.mkdir(parents=True)
    (mine / "mine.jpg").write_bytes(b"x")  # a folder we did not generate is never touched
    d = load_data_config("data/shapes.yaml")
    assert [p.name for p in d.split_images("train")] == ["mine.jpg"]


def test_train_and_val_items(tiny_data):
    d = load_data_config(tiny_data)
    items = [(p, p.parent.parent.parent / "masks" / p.parent.name / p.name) for p in d.split_images("train")]
    ds = SegDataset(items, d.mask_spec, train_transform((32, 48), d.ignore_index), train=True)
    img, mask, i = ds[(1, 123)]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 48) and mask.shape == (32, 48) and i == 1
    again = ds[(1, 123)]
    assert torch.equal(img, again[0]) and torch.equal(mask, again[1])  # same seed, same augmentation
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}
    vs = SegDataset(items, d.mask_spec, val_transform((32, 48)), train=False)
    img, mask, _ = vs[0]
    assert img.shape == (3, 32, 48) and mask.shape == (40, 56)  # masks stay at their original size


def test_crop_cuts_patches_at_the_image_scale():
    """--crop: the image is resized to the image size first, then cut: with no random scale a 16x24 crop
    of a 32x48 resize shows the same pixels as the resize itself, at the same scale."""
    from utils.augment import AugmentConfig

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (64, 96), dtype=np.uint8)
    aug = AugmentConfig(1.0, 1.0, 0.0, 0.0, crop=(16, 24))
    out = train_transform((32, 48), 255, aug)(image=img, mask=mask)
    assert out["image"].shape == (16, 24, 3) and out["mask"].shape == (16, 24)
    full = train_transform((32, 48), 255, AugmentConfig(1.0, 1.0, 0.0, 0.0))(image=img, mask=mask)["image"]
    hits = [(y, x) for y in range(17) for x in range(25) if np.array_equal(full[y:y + 16, x:x + 24], out["image"])]
    assert len(hits) == 1


def test_seeded_sampler_order_depends_only_on_seed_and_epoch():
    s = SeededSampler(10, shuffle=True, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert [i for i, _ in s] != [i for i, _ in full]
    shards = [list(SeededSampler(10, True, 3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(x) == 4 for x in shards)  # padded to equal length for training
    ev = [list(SeededSampler(10, False, 0, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for x in ev for i, _ in x) == list(range(10))  # eval shards: each image once


def test_loader_batches_equal_with_and_without_workers(tiny_data):
    d = load_data_config(tiny_data)
    items = [(p, Path(str(p).replace("/images/", "/masks/"))) for p in d.split_images("train")]
    ds = SegDataset(items, d.mask_spec, train_transform((32, 48), d.ignore_index), train=True)
    out = []
    for workers in (0, 2):
        loader = build_loader(ds, 4, workers, shuffle=True, seed=7)
        loader.sampler.set_epoch(1)
        out.append([(x.clone(), y.clone(), idx) for x, y, idx in loader])
    for (x0, y0, i0), (x1, y1, i1) in zip(*out):
        assert i0 == i1 and torch.equal(x0, x1) and torch.equal(y0, y1)


def test_auto_class_weights():
    w = class_weights_from_counts([900, 90, 10, 0])
    assert w[3] == 0.0 and w[0] < w[1] < w[2]
    assert np.mean(w[:3]) == pytest.approx(1.0, abs=1e-5)
    p = np.array([0.9, 0.09, 0.01])
    raw = 1 / np.log(1.02 + p)
    assert w[:3] == pytest.approx(list(raw / raw.mean()), abs=1e-5)


@pytest.mark.skipif(not (CAMVID / "images").is_dir(), reason="CamVid not found ($SEG_DATASETS_DIR/camvid or ../shared/datasets/camvid)")
def test_camvid_holdout_yaml_validates_on_a_train_sequence_it_does_not_train_on(monkeypatch):
    monkeypatch.setenv("SEG_DATASETS_DIR", str(CAMVID.parent))
    data_dir = Path(__file__).resolve().parents[1] / "data"
    d = load_data_config(data_dir / "camvid_holdout.yaml")
    train, val = d.split_images("train"), d.split_images("val")
    seq = lambda files: sorted({p.name.split("_")[0] for p in files})  # noqa: E731
    assert (len(train), len(val)) == (266, 101) and seq(train) == ["0001TP", "0016E5"] and seq(val) == ["0006R0"]
    assert "test" not in d.splits  # a choice made with this file cannot look at test
    assert sorted(train + val) == load_data_config(data_dir / "camvid.yaml").split_images("train")  # all of train
