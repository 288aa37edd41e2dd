"""The three mask formats decode to identical arrays for the same content."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.masks import MaskError, MaskSpec, find_mask, read_mask

NAMES = ("background", "road", "car")
PALETTE = ((0, 0, 0), (128, 64, 128), (0, 0, 142))
SPEC = MaskSpec(3, 255, NAMES, PALETTE, ignore_color=(255, 255, 255))
# two rectangles, the second over the first: labelme corners are inclusive pixel coordinates
RECTS = [("road", (2, 3, 20, 12)), ("car", (10, 8, 25, 17))]  # label, (x0, y0, x1, y1)
H, W = 20, 30


def reference() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for label, (x0, y0, x1, y1) in RECTS:
        m[y0:y1 + 1, x0:x1 + 1] = NAMES.index(label)
    return m


def write_labelme(path: Path, shape_type: str = "polygon", size: bool = True) -> None:
    shapes = []
    for label, (x0, y0, x1, y1) in RECTS:
        pts = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]] if shape_type == "polygon" else [[x0, y0], [x1, y1]]
        shapes.append({"label": label, "points": pts, "shape_type": shape_type})
    doc = {"shapes": shapes, **({"imageHeight": H, "imageWidth": W} if size else {})}
    path.write_text(json.dumps(doc))


def test_index_palette_rgb_and_labelme_agree(tmp_path):
    ref = reference()
    Image.fromarray(ref, "L").save(tmp_path / "index.png")
    p = Image.fromarray(ref, "P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))  # VOC-style: without a YAML palette, indices
    p.save(tmp_path / "pal.png")
    Image.fromarray(np.asarray(PALETTE, np.uint8)[ref], "RGB").save(tmp_path / "rgb.png")
    write_labelme(tmp_path / "poly.json")
    write_labelme(tmp_path / "rect.json", "rectangle")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    no_palette = MaskSpec(3, 255, NAMES)
    assert np.array_equal(read_mask(tmp_path / "pal.png", no_palette), ref)
    for name in ("index.png", "rgb.png", "poly.json", "rect.json"):
        out = read_mask(tmp_path / name, SPEC)
        assert out.shape == (H, W) and np.array_equal(out, ref), name
    # with a YAML palette a P-mode file is read by colour: these colours are foreign to it
    with pytest.raises(MaskError, match=r"2 colour\(s\) not in the palette: \(0, 255, 0\), \(255, 0, 0\)"):
        read_mask(tmp_path / "pal.png", SPEC)


def test_rgb_ignore_color_and_unknown_colours(tmp_path):
    rgb = np.asarray(PALETTE, np.uint8)[reference()]
    rgb[0, 0] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert read_mask(tmp_path / "a.png", SPEC)[0, 0] == 255
    rgb[1, 1] = (1, 2, 3)
    rgb[1, 2] = (9, 9, 9)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    with pytest.raises(MaskError) as e:
        read_mask(tmp_path / "b.png", SPEC)
    assert "2 colour(s) not in the palette" in e.value.reason and "(1, 2, 3)" in e.value.reason
    assert sorted(e.value.colors) == [(1, 2, 3), (9, 9, 9)]


def test_labelme_background_and_errors(tmp_path):
    write_labelme(tmp_path / "m.json", size=False)
    no_bg = MaskSpec(3, 255, ("sky", "road", "car"))
    m = read_mask(tmp_path / "m.json", no_bg, image_hw=(H, W))
    assert m[0, 0] == 255 and m[3, 2] == 1  # nothing named background: uncovered pixels are ignored
    with pytest.raises(MaskError, match="no imageHeight"):
        read_mask(tmp_path / "m.json", no_bg)
    (tmp_path / "bad.json").write_text(json.dumps({"shapes": [{"label": "truck", "points": [[0, 0], [1, 1], [0, 1]]}]}))
    with pytest.raises(MaskError, match="label 'truck' is not in the data YAML's names"):
        read_mask(tmp_path / "bad.json", SPEC, (4, 4))


def test_find_mask_swaps_last_images_component(tmp_path):
    img = tmp_path / "images" / "set" / "images" / "train" / "a.jpg"
    img.parent.mkdir(parents=True)
    img.touch()
    target = tmp_path / "images" / "set" / "masks" / "train" / "a.png"
    assert find_mask(img) is None
    target.parent.mkdir(parents=True)
    target.touch()
    assert find_mask(img) == target
    target.unlink()
    beside = img.with_suffix(".json")
    beside.touch()
    assert find_mask(img) == beside
