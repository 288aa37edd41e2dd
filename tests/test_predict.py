"""The one inference path: predict.py sources and outputs, predict == val, sliding window, TTA, tracing, bad input."""
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.model import build_model, model_config
from segment import predict, val
from segment.evaluate import eval_loader, evaluate
from segment.inference import InferenceConfig, combine, infer_members, slide_logits, window_starts
from tests.conftest import write_dataset
from utils.checkpoint import save_checkpoint
from utils.dataconfig import load_data_config


def make_checkpoint(path: Path, data_yaml: Path | None, nc: int = 3, img_size=(40, 56), seed: int = 0) -> Path:
    """An untrained but *varied* model: BatchNorm statistics calibrated on random images and a zero
    classifier bias make its argmax change from pixel to pixel (a briefly trained tiny model predicts
    one class everywhere, which would make the equality tests vacuous)."""
    torch.manual_seed(seed)
    cfg = model_config(nc, backbone="mobilenet_v3_small", head="segment")
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: running stats = the calibration batches' stats
            m.reset_running_stats()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, *img_size))
        model.head.classifier.bias.zero_()
    model.eval()
    ckpt = {"model": model.state_dict(), "model_cfg": cfg, "nc": nc, "names": [f"c{i}" for i in range(nc)],
            "ignore_index": 255, "palette": None, "img_size": list(img_size),
            "data": str(data_yaml) if data_yaml else None}
    save_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    data = write_dataset(tmp / "data", {"train": 2, "val": 3}, hw=(40, 56))
    weights = make_checkpoint(tmp / "best.pt", data)
    return tmp, data, weights


def write_images(folder: Path, sizes, seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(p)
    return out


def read_png(p: Path) -> np.ndarray:
    return cv2.imread(str(p), cv2.IMREAD_UNCHANGED)


# ---------------------------------------------------------------------------------------------- predict.py
def test_folder_of_mixed_sizes_with_a_corrupt_file(setup, tmp_path, capsys):
    _, _, weights = setup
    sizes = [(40, 56), (33, 71), (90, 64)]
    write_images(tmp_path / "src", sizes)
    (tmp_path / "src" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "src" / "notes.md").write_text("ignored: not an image")
    with pytest.raises(SystemExit) as e:
        predict.main(["--weights", str(weights), "--source", str(tmp_path / "src"), "--project", str(tmp_path / "out"),
                      "--save-conf", "--device", "cpu", "--batch-size", "2"])
    assert e.value.code == 1  # the run goes on, but says it was not clean
    out = capsys.readouterr()
    assert f"skipped {tmp_path / 'src' / 'broken.jpg'}: image cannot be decoded" in out.out
    assert "3 images, 0 video frames" in out.out and "Traceback" not in out.err
    run = tmp_path / "out" / "exp"
    classes = set()
    for i, (h, w) in enumerate(sizes):
        m = read_png(run / "masks" / f"img{i}.png")
        assert m.shape == (h, w) and m.dtype == np.uint8 and m.max() < 3
        classes |= set(np.unique(m).tolist())
        assert read_png(run / "color" / f"img{i}.png").shape == (h, w, 3)
        assert read_png(run / "overlay" / f"img{i}.jpg").shape == (h, w, 3)
        conf = read_png(run / "conf" / f"img{i}.png")
        assert conf.shape == (h, w) and conf.min() >= 255 // 3  # max of 3 probabilities >= 1/3
    assert len(classes) > 1, "the test model must predict several classes"
    assert sorted(p.name for p in (run / "masks").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_txt_list_relative_paths_and_missing_entry(setup, tmp_path):
    _, _, weights = setup
    a = write_images(tmp_path / "a", [(40, 56)])
    write_images(tmp_path / "b", [(24, 30)], seed=1)  # the same stem img0 in another folder
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\na/img0.png\n\n{tmp_path / 'b' / 'img0.png'}\nmissing.png\n")
    out = predict.run(weights=weights, source=str(lst), project=str(tmp_path / "out"), device="cpu")
    assert out["images"] == 2 and out["failed"] == [(str(tmp_path / "missing.png"), "file not found")]
    masks = tmp_path / "out" / "exp" / "masks"
    assert read_png(masks / "img0.png").shape == (40, 56) and read_png(masks / "img0_2.png").shape == (24, 30)
    assert a[0].is_file()


def test_short_video_keeps_frame_count_and_fps(setup, tmp_path):
    _, _, weights = setup
    src = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 7.0, (56, 40))
    rng = np.random.default_rng(0)
    for _ in range(9):
        vw.write(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    vw.release()
    out = predict.run(weights=weights, source=str(src), project=str(tmp_path / "out"), device="cpu", batch_size=4)
    assert out["frames"] == 9 and out["images"] == 0 and not out["failed"]
    cap = cv2.VideoCapture(str(tmp_path / "out" / "exp" / "clip.mp4"))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (40, 56, 3)
        n += 1
    assert n == 9 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)


def test_predict_masks_equal_val_predictions(setup, tmp_path):
    tmp, data_yaml, weights = setup
    out = predict.run(weights=weights, source=str(tmp / "data" / "images" / "val"), project=str(tmp_path / "p"),
                      device="cpu", batch_size=2)
    data = load_data_config(data_yaml)
    loader = eval_loader(data, "val", (40, 56), 2, 0, log=lambda *a: None)
    model, _ = __import__("segment.common", fromlist=["load_model"]).load_model(weights, torch.device("cpu"))
    res = evaluate(model, loader, data, torch.device("cpu"), keep_examples=10, progress=False)
    assert len(res.examples) == 3
    for (image_path, _), (_, _, pred) in zip(loader.dataset.items, res.examples):
        mask = read_png(Path(out["save_dir"]) / "masks" / f"{image_path.stem}.png")
        assert np.array_equal(mask, pred.numpy()), image_path


def test_predictor_api(setup, tmp_path):
    _, _, weights = setup
    [p] = write_images(tmp_path, [(37, 45)])
    pred = predict.Predictor(weights, device="cpu")
    mask = pred(p)
    assert mask.shape == (37, 45) and mask.dtype == np.uint8
    rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pred(rgb), mask)  # an array and its path give the same answer
    probs = pred.probabilities(rgb)
    assert probs.shape == (3, 37, 45) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5) and np.array_equal(probs.argmax(0), mask)


@pytest.mark.slow
def test_more_than_255_classes_write_uint16(tmp_path):
    weights = make_checkpoint(tmp_path / "many.pt", None, nc=300, img_size=(32, 32))
    [p] = write_images(tmp_path / "s", [(32, 40)])
    predict.run(weights=weights, source=str(p), project=str(tmp_path / "o"), device="cpu")
    m = read_png(tmp_path / "o" / "exp" / "masks" / "img0.png")
    assert m.dtype == np.uint16 and m.shape == (32, 40) and m.max() < 300
    assert np.array_equal(m, predict.Predictor(weights, device="cpu")(p))


def test_classes_keep_only_some(setup, tmp_path):
    _, _, weights = setup
    [p] = write_images(tmp_path / "s", [(40, 56)])
    full = predict.Predictor(weights, device="cpu")(p)
    predict.run(weights=weights, source=str(p), project=str(tmp_path / "o"), device="cpu", classes=[1])
    m = read_png(tmp_path / "o" / "exp" / "masks" / "img0.png")
    assert np.array_equal(m, np.where(full == 1, 1, 255))


# ---------------------------------------------------------------------------------------------- bad input
def _refused(argv, capsys, code=2):
    with pytest.raises(SystemExit) as e:
        predict.main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_source_matching_nothing_says_what_was_looked_for(setup, tmp_path, capsys):
    _, _, weights = setup
    (tmp_path / "empty").mkdir()
    base = ["--weights", str(weights), "--project", str(tmp_path / "out"), "--device", "cpu"]
    err = _refused(base + ["--source", str(tmp_path / "empty")], capsys)
    assert "the folder holds no images (.jpg" in err
    err = _refused(base + ["--source", str(tmp_path / "*.png")], capsys)
    assert "the pattern matches no images" in err
    err = _refused(base + ["--source", str(tmp_path / "nope")], capsys)
    assert "no such file or folder" in err
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind


def test_unopenable_video_bad_weights_and_classes(setup, tmp_path, capsys):
    _, _, weights = setup
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)
    [img] = write_images(tmp_path / "s", [(40, 56)])
    base = ["--project", str(tmp_path / "out"), "--device", "cpu"]
    err = _refused(base + ["--weights", str(weights), "--source", str(tmp_path / "junk.mp4")], capsys)
    assert "junk.mp4: video cannot be opened" in err
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    err = _refused(base + ["--weights", str(tmp_path / "model.onnx"), "--source", str(img)], capsys)
    assert "model.onnx" in err
    err = _refused(base + ["--weights", str(tmp_path / "w.h5"), "--source", str(img)], capsys)
    assert "w.h5: file not found" in err
    err = _refused(base + ["--weights", str(weights), "--source", str(img), "--classes", "7"], capsys)
    assert "--classes 7: the model has classes 0..2" in err
    err = _refused(base + ["--weights", str(weights), "--source", str(img), "--slide", "4"], capsys)
    assert "--slide 4:" in err
    assert not (tmp_path / "out").exists()


def test_nothing_is_overwritten_without_exist_ok(setup, tmp_path):
    _, _, weights = setup
    [img] = write_images(tmp_path / "s", [(40, 56)])
    first = predict.run(weights=weights, source=str(img), project=str(tmp_path / "o"), device="cpu")
    marker = Path(first["save_dir"]) / "masks" / "img0.png"
    marker.write_bytes(b"old")
    second = predict.run(weights=weights, source=str(img), project=str(tmp_path / "o"), device="cpu")
    assert second["save_dir"].endswith("exp2") and marker.read_bytes() == b"old"
    predict.run(weights=weights, source=str(img), project=str(tmp_path / "o"), device="cpu", exist_ok=True)
    assert marker.read_bytes() != b"old"


# ---------------------------------------------------------------------------------------------- slide / TTA
class Pointwise:
    """A backend whose logits at a pixel depend on that pixel only: any tiling must give the same logits."""

    fixed_size = None
    meta: dict = {}

    def __init__(self, nc=4):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(nc, 3, generator=g)
        self.calls = []

    def __call__(self, x):
        self.calls.append(tuple(x.shape))
        return torch.einsum("kc,nchw->nkhw", self.w, x)


def test_window_starts_cover_and_end_flush():
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(53, 16, 8) == [0, 8, 16, 24, 32, 37]
    assert window_starts(32, 16, 16) == [0, 16]


def test_slide_blends_overlaps_exactly():
    x = torch.rand(2, 3, 37, 53)
    b = Pointwise()
    whole = b(x)
    b.calls.clear()
    blended = slide_logits(b, x, (16, 16), 0.5, window_batch=5)
    assert torch.allclose(blended, whole, atol=1e-6)
    # rows start at 0 8 16 21, columns at 0 8 16 24 32 37: 4 x 6 windows of 16x16 per image, forwarded at
    # most 5 at a time, so memory follows window and batch
    assert sum(c[0] for c in b.calls) == 2 * 4 * 6 and max(c[0] for c in b.calls) == 5
    assert all(c[-2:] == (16, 16) for c in b.calls)


def test_covering_window_equals_whole_image(setup):
    _, _, weights = setup
    model, _ = __import__("segment.common", fromlist=["load_model"]).load_model(weights, torch.device("cpu"))
    from segment.inference import TorchBackend

    b = TorchBackend(model)
    x = torch.rand(1, 3, 45, 61)
    whole = infer_members(b, x, InferenceConfig())[0]
    slid = infer_members(b, x, InferenceConfig(slide=(64, 64)))[0]
    assert torch.equal(whole, slid)


def test_val_slide_with_covering_window_equals_whole(setup, tmp_path):
    _, data, weights = setup
    whole = val.run(weights=weights, data=str(data), img_size=[40, 56], project=str(tmp_path / "v"), device="cpu",
                    workers=0)
    slid = val.run(weights=weights, data=str(data), slide=[64, 64], project=str(tmp_path / "v"), device="cpu",
                   workers=0)
    assert slid["mIoU"] == whole["mIoU"] and slid["per_class"] == whole["per_class"]
    saved = json.loads((Path(slid["save_dir"]) / "metrics.json").read_text())
    assert saved["slide"] == {"window": [64, 64], "overlap": pytest.approx(1 / 3), "scale": 1.0}


def test_tta_scale_one_without_flip_equals_plain():
    b = Pointwise()
    x = torch.rand(2, 3, 24, 40)
    plain = infer_members(b, x, InferenceConfig())
    tta = infer_members(b, x, InferenceConfig(tta=True, scales=(1.0,), flip=False))
    for i in range(2):
        p, t = combine(plain, i, (31, 45)), combine(tta, i, (31, 45), probs=True)  # as evaluate/predict call it
        assert torch.equal(p.argmax(0), t.argmax(0))
        assert torch.allclose(t, p.softmax(0), atol=1e-6)  # TTA scores are probabilities


def test_tta_averages_probabilities_over_flip():
    b = Pointwise()  # flip-equivariant: the flipped member, flipped back, equals the plain one
    x = torch.rand(1, 3, 16, 20)
    members = infer_members(b, x, InferenceConfig(tta=True, scales=(1.0, 0.5), flip=True))
    assert len(members) == 4 and members[2].shape[-2:] == (8, 10)
    assert torch.allclose(members[1], members[0], atol=1e-6)
    by_hand = sum(torch.nn.functional.interpolate(m, size=(16, 20), mode="bilinear", align_corners=False).softmax(1)
                  for m in members)[0] / 4
    assert torch.allclose(combine(members, 0, (16, 20)), by_hand, atol=1e-6)


def test_val_prints_single_scale_and_tta(setup, tmp_path, capsys):
    _, data, weights = setup
    out = val.run(weights=weights, data=str(data), tta=True, tta_scales=[1.0], no_flip=True,
                  project=str(tmp_path / "v"), device="cpu", workers=0)
    text = capsys.readouterr().out
    assert "mIoU: single-scale" in text and "| TTA" in text
    assert out["tta"]["mIoU"] == out["mIoU"]  # scale 1.0 without flip is the plain prediction
    saved = json.loads((Path(out["save_dir"]) / "metrics.json").read_text())
    assert saved["tta"]["settings"] == {"scales": [1.0], "flip": False}
    # each pass reports its own cost; the single-scale line does not claim to be TTA
    speed = [ln for ln in text.splitlines() if "ms inference" in ln]
    assert len(speed) == 2 and speed[0].startswith("Speed:") and "TTA" not in speed[0], speed
    assert speed[1].startswith("TTA speed:") and "TTA scales 1" in speed[1], speed
    assert set(saved["tta"]["speed_ms"]) == {"pre", "inference", "post"}


def test_predict_slide_and_tta_combined(setup, tmp_path):
    _, _, weights = setup
    [img] = write_images(tmp_path / "s", [(50, 70)])
    pred = predict.Predictor(weights, device="cpu", slide=[32, 32], tta=True, batch_size=3)
    probs = pred.probabilities(img)
    assert probs.shape == (3, 50, 70) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert np.array_equal(pred(img), probs.argmax(0))


# ---------------------------------------------------------------------------------------------- tracing
@pytest.mark.parametrize("cfg", [dict(backbone="mobilenet_v3_small", head="segment"),
                                 dict(backbone="mobilenet_v3_small", head="unet"),
                                 dict(backbone="mobilenet_v3_small", head="yolov5"),
                                 pytest.param(dict(cfg="yolov8n_seg.yaml"), marks=pytest.mark.slow)],
                         ids=["segment", "unet", "yolov5", "yolov8n"])
def test_forward_traces_cleanly_at_other_sizes(cfg):
    torch.manual_seed(0)
    model = build_model(model_config(3, **cfg)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # a shape branch would warn here
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, torch.rand(1, 3, 64, 96), check_trace=False)
    x = torch.rand(2, 3, 67, 93)
    with torch.no_grad():
        eager = model(x)
        got = traced(x)
    assert got.shape == (2, 3, 67, 93)
    assert torch.allclose(got, eager, atol=1e-5)
