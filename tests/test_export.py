"""export.py: ONNX/TorchScript parity with PyTorch, metadata, argmax graphs, INT8, refusals, registry parity."""
import json
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from models import BACKBONES, HEADS, build_model, model_config
from segment import export, val
from segment.onnx_backend import META_KEY, OnnxBackend
from tests.test_predict import make_checkpoint
from tests.conftest import write_dataset
from utils.errors import UserError


def assert_faithful(out: torch.Tensor, ref: torch.Tensor) -> None:
    """The exported graph's logits equal PyTorch's within export.py's own bound for logits of that scale."""
    assert (out - ref).abs().max() <= export.logit_limit(float(ref.abs().max()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = write_dataset(tmp / "data", {"train": 4, "val": 3}, hw=(40, 56))
    weights = make_checkpoint(tmp / "best.pt", data)
    return tmp, data, weights


def test_dynamic_onnx_is_verified_at_three_sizes_and_carries_metadata(setup):
    tmp, data, weights = setup
    out = tmp / "dyn.onnx"
    res = export.main(["--weights", str(weights), "--dynamic", "--output", str(out)])
    sizes = [tuple(r["size"]) for r in res["verify"]]
    assert sizes[0] == (40, 56) and len(sizes) == 3
    assert any(h % 32 and w % 32 for h, w in sizes[1:])  # one size not divisible by 32
    assert all(r["ok"] and r["max_abs_diff"] <= r["limit"] and r["argmax_agree"] >= 0.9999 for r in res["verify"])
    assert all(r["limit"] >= export.LOGIT_TOL for r in res["verify"])
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[META_KEY])
    assert meta["names"] == ["c0", "c1", "c2"] and meta["nc"] == 3 and meta["ignore_index"] == 255
    assert meta["img_size"] == [40, 56] and meta["model"] == "mobilenet_v3_small+segment" and meta["dynamic"]
    be = OnnxBackend(out)
    assert be.fixed_size is None and not be.outputs_labels
    x = torch.rand(2, 3, 45, 61).contiguous(memory_format=torch.channels_last)
    model = export.load_model(weights, torch.device("cpu"))[0]
    with torch.no_grad():
        assert_faithful(be(x), model(x))


def test_onnx_through_val_equals_pt(setup, tmp_path):
    tmp, data, weights = setup
    onnx_file = tmp_path / "m.onnx"
    export.main(["--weights", str(weights), "--output", str(onnx_file)])
    a = val.run(weights=str(weights), data=str(data), project=str(tmp_path), name="pt", workers=0)
    b = val.run(weights=str(onnx_file), project=str(tmp_path), name="onnx", workers=0)  # data from the metadata
    assert abs(a["mIoU"] - b["mIoU"]) <= 1e-3 and a["num_images"] == b["num_images"] == 3


def test_argmax_graph_outputs_uint8_labels(setup, tmp_path):
    tmp, data, weights = setup
    out = tmp_path / "am.onnx"
    export.main(["--weights", str(weights), "--argmax", "--dynamic", "--output", str(out)])
    be = OnnxBackend(out)
    assert be.outputs_labels and be.session.get_outputs()[0].type == "tensor(uint8)"
    x = torch.rand(1, 3, 40, 56)
    model = export.load_model(weights, torch.device("cpu"))[0]
    with torch.no_grad():
        ref = model(x).argmax(1)
    assert torch.equal(be.labels(x), ref)
    assert torch.equal(be(x).argmax(1), ref)  # one-hot stand-in for logits keeps whole-image masks exact


def test_static_graph_declares_its_size_and_torchscript_matches(setup, tmp_path):
    tmp, data, weights = setup
    be = OnnxBackend(export.main(["--weights", str(weights), "--output", str(tmp_path / "s.onnx")])["file"])
    assert be.fixed_size == (40, 56)
    with pytest.raises(UserError, match="--dynamic"):
        be(torch.rand(1, 3, 48, 56))
    res = export.main(["--weights", str(weights), "--format", "torchscript", "--output", str(tmp_path / "m.ts")])
    assert res["verify"][0]["ok"] and (tmp_path / "m.ts").stat().st_size > 1000


def test_int8_runs_and_scores_close_to_fp32(setup, tmp_path):
    tmp, data, weights = setup
    out = tmp_path / "q.onnx"
    res = export.main(["--weights", str(weights), "--int8", "--data", str(data), "--calib-images", "4",
                       "--output", str(out)])["int8"]
    q = tmp_path / "q-int8.onnx"
    assert q.is_file() and out.is_file()
    meta = OnnxBackend(q).meta
    assert meta["int8"] and meta["names"] == ["c0", "c1", "c2"]
    assert res["calib_images"] == 4
    # stated bound for this tiny untrained model: within 5 mIoU points of fp32
    assert abs(res["fp32"]["mIoU"] - res["int8"]["mIoU"]) <= 0.05
    types = {init.data_type for init in onnx.load(str(q)).graph.initializer}
    assert onnx.TensorProto.INT8 in types  # weights really are int8


def test_int8_speedup_is_the_median_of_alternating_pairs(monkeypatch):
    """The VM here changes speed for minutes at a time: fp32 timed in one block and int8 in the next
    compares two speeds of the machine. A fake clock: fp32 costs 2 units, int8 1, and everything after
    the first 10 rounds runs 3x slower; timed in blocks the speed-up would read 2/3 or 2/6, timed in
    alternation each round's ratio is 2. Odd rounds call int8 first."""
    from segment import int8
    from utils import timing

    clock = {"t": 0.0, "calls": 0}
    order: list[str] = []

    class Fake:
        def __init__(self, name, cost):
            self.name, self.cost = name, cost

        def __call__(self, x):
            clock["calls"] += 1
            order.append(self.name)
            slow = 3.0 if clock["calls"] > 4 + 20 else 1.0  # after the warm-up (2 x 2) and 10 rounds of 2
            clock["t"] += self.cost * slow / 1e3  # seconds, so perf_counter deltas are cost * slow ms

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
    medians, ratios = int8.paired_latency_ms([Fake("fp32", 2.0), Fake("int8", 1.0)], batch=1, img_size=(8, 8),
                                             runs=20)
    assert ratios == pytest.approx([1.0, 2.0], abs=1e-9)
    assert medians == pytest.approx([4.0, 2.0], abs=1e-9)  # 10 calls at 2 and 10 at 6: the midpoint
    assert order[4:10] == ["fp32", "int8", "int8", "fp32", "fp32", "int8"]


def test_paired_ratio_takes_each_rounds_own_ratio():
    """Per-round medians (10, 10), (20, 5), (100, 10): ratios 1, 4, 10 -> 4, where the ratio of the overall
    medians would be 20 / 10 = 2. A round's several calls count by their median (9, 10, 11 -> 10)."""
    from utils.timing import paired_ratio

    assert paired_ratio([[9.0, 10.0, 11.0], [20.0], [100.0]], [[10.0], [5.0], [10.0]]) == pytest.approx(4.0)
    assert paired_ratio([[4.0]], [[2.0, 2.0, 50.0]]) == pytest.approx(2.0)


def test_rounds_faster_counts_the_rounds_the_other_side_won():
    """Per-round medians, ref (10, 10, 10, 10) against other (9, 11, 10, 5): faster in rounds 1 and 4; a tie
    (round 3) is not a win. The paired ratio of the same rounds is the median of (1.11, 0.91, 1, 2) = 1.06."""
    from utils.timing import paired_ratio, rounds_faster

    ref, other = [[10.0]] * 4, [[9.0], [11.0, 11.0, 90.0], [10.0], [5.0]]
    assert rounds_faster(ref, other) == 2
    assert rounds_faster(other, ref) == 1
    assert paired_ratio(ref, other) == pytest.approx((10 / 9 + 1.0) / 2)


def _fails(argv, capsys, text, code=2):
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and text in err and "Traceback" not in err, err
    return err


def test_refusals_write_nothing(setup, tmp_path, capsys, monkeypatch):
    tmp, data, weights = setup
    out = tmp_path / "x.onnx"
    out.write_bytes(b"old")
    _fails(["--weights", str(weights), "--output", str(out)], capsys, "--exist-ok")
    assert out.read_bytes() == b"old"
    _fails(["--weights", str(weights), "--int8", "--argmax", "--output", str(tmp_path / "y.onnx")], capsys, "--argmax")
    _fails(["--weights", str(weights), "--opset", "9", "--output", str(tmp_path / "y.onnx")], capsys, "--opset 9")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    _fails(["--weights", str(weights), "--output", str(tmp_path / "y.onnx")], capsys, "pip install onnxruntime")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


def _export_with_and_without_metadata(weights, tmp_path):
    """m.onnx as export.py writes it, and bare.onnx: the same graph with our metadata stripped (as if
    exported by another tool)."""
    src = export.main(["--weights", str(weights), "--output", str(tmp_path / "m.onnx")])["file"]
    proto = onnx.load(src)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    return src, bare


def test_onnx_without_metadata_needs_names(setup, tmp_path):
    tmp, data, weights = setup
    src, bare = _export_with_and_without_metadata(weights, tmp_path)
    with pytest.raises(UserError, match="no unet-lite metadata"):
        OnnxBackend(bare)
    be = OnnxBackend(bare, names=["a", "b", "c"])
    assert be.nc == 3 and be.names == ["a", "b", "c"]
    with pytest.raises(UserError, match="3 classes but 2 names"):
        OnnxBackend(src, names=["a", "b"])
    # val.py: --data supplies the names of a bare file (and scores it like the .pt); without it, one line
    a = val.run(weights=str(weights), data=str(data), project=str(tmp_path), name="pt", workers=0)
    b = val.run(weights=str(bare), data=str(data), project=str(tmp_path), name="bare", workers=0)
    assert abs(a["mIoU"] - b["mIoU"]) <= 1e-3 and list(b["per_class"]) == ["c0", "c1", "c2"]
    with pytest.raises(UserError, match="pass --data"):
        val.run(weights=str(bare), project=str(tmp_path), name="nodata", workers=0)


def test_argmax_graph_refuses_blending_and_confidence(setup, tmp_path, capsys):
    """An --argmax graph has class ids, not logits: --slide, --tta (val and predict) and --save-conf are
    refused in one line with nothing written, instead of averaging one-hot votes or saving 1.0 everywhere."""
    from segment import predict

    tmp, data, weights = setup
    am = tmp_path / "am.onnx"
    export.main(["--weights", str(weights), "--argmax", "--dynamic", "--output", str(am)])
    img = sorted((data.parent / "images" / "val").iterdir())[0]
    runs = tmp_path / "runs"
    for entry, argv, text in [
        (val.main, ["--weights", str(am), "--tta", "--project", str(runs)], "--tta: this ONNX graph was exported with --argmax"),
        (val.main, ["--weights", str(am), "--slide", "32", "32", "--project", str(runs)], "--slide: this ONNX graph"),
        (predict.main, ["--weights", str(am), "--source", str(img), "--tta", "--project", str(runs)], "--tta: this ONNX"),
        (predict.main, ["--weights", str(am), "--source", str(img), "--save-conf", "--project", str(runs)],
         "--save-conf: this ONNX graph was exported with --argmax"),
    ]:
        with pytest.raises(SystemExit) as e:
            entry(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and text in err and "Traceback" not in err, err
    assert not runs.exists()
    out = predict.run(weights=str(am), source=str(img), project=str(runs), name="plain")  # whole-image masks work
    assert (runs / "plain" / "masks" / (img.stem + ".png")).is_file() and out["images"] == 1


def test_dcn_needs_opset_19(capsys):
    model = build_model(model_config(3, cfg="models/yolov5_dcn_seg.yaml", scale="n"))
    with pytest.raises(UserError, match="DeformConv only from opset 19"):
        export.check_opset(model, 17)
    export.check_opset(model, 19)


def _parity(cfg, tmp_path, sizes=((64, 96), (67, 93))):
    torch.manual_seed(0)
    model = build_model(cfg).eval().fuse()
    path = tmp_path / "m.onnx"
    export.export_onnx(model, path, sizes[0], 1, True, 19, False, {"names": ["a", "b", "c"], "nc": 3})
    rows = export.verify(model, OnnxBackend(path), list(sizes), 1, False, runs=1)
    assert all(r["ok"] for r in rows), rows


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("head", HEADS.names())
def test_registry_parity_dynamic(backbone, head, tmp_path):
    _parity(model_config(3, backbone=backbone, head=head), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("yaml,scale", [("yolov5_seg.yaml", "n"), ("yolov5_dcn_seg.yaml", "n"), ("yolov7_seg.yaml", None),
                                        ("yolov8_seg.yaml", "n"), ("yolov9t_seg.yaml", None), ("yolov9s_seg.yaml", None),
                                        ("yolov9c_seg.yaml", None), ("yolo11_seg.yaml", "n"), ("yolo11_seg.yaml", "m"),
                                        ("yolov8_relu_seg.yaml", "n")])
def test_yolo_yaml_parity_dynamic(yaml, scale, tmp_path):
    """Every YOLO YAML at its smallest scale, and YOLO11 at m, where C3k2 switches to C3k units (the other
    scales change only repeat counts and widths; benchmarks/export_parity.py checks all 24 variants)."""
    _parity(model_config(3, cfg=f"models/{yaml}", scale=scale), tmp_path)


def test_static_batch_graph_runs_any_batch_and_int8_needs_a_full_batch(setup, tmp_path, capsys):
    """A graph exported with --batch-size 4 runs 6 images (a full chunk and a short one filled up with
    copies) and val's 3-image batch, with the .pt's results; --int8 refuses calibration images that do
    not fill one batch of it, before anything is written."""
    tmp, data, weights = setup
    out = tmp_path / "b4.onnx"
    export.main(["--weights", str(weights), "--batch-size", "4", "--output", str(out)])
    be = OnnxBackend(out)
    assert be.fixed_batch == 4
    model = export.load_model(weights, torch.device("cpu"))[0]
    x = torch.rand(6, 3, 40, 56)
    with torch.no_grad():
        assert_faithful(be(x), model(x))
    a = val.run(weights=str(weights), data=str(data), project=str(tmp_path), name="pt", workers=0)
    b = val.run(weights=str(out), project=str(tmp_path), name="b4", workers=0)
    assert abs(a["mIoU"] - b["mIoU"]) <= 1e-3 and b["num_images"] == 3
    _fails(["--weights", str(weights), "--batch-size", "4", "--int8", "--data", str(data), "--calib-images", "2",
            "--output", str(tmp_path / "q.onnx")], capsys, "do not fill one batch")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "q-int8.onnx").exists()


def test_argmax_graph_keeps_class_ids_above_255(tmp_path):
    """uint8 would wrap class 280 to 24: with more than 256 classes the argmax graph outputs int32."""
    torch.manual_seed(0)
    model = build_model(model_config(300, backbone="mobilenet_v3_small", head="segment")).eval().fuse()
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 300][-1]
    with torch.no_grad():
        last.bias[280] += 1e3  # class 280 wins everywhere
    path = tmp_path / "am300.onnx"
    export.export_onnx(model, path, (32, 32), 1, False, 17, True, {"names": [str(i) for i in range(300)], "nc": 300})
    be = OnnxBackend(path)
    assert be.outputs_labels and be.session.get_outputs()[0].type == "tensor(int32)"
    labels = be.labels(torch.rand(1, 3, 32, 32))
    assert labels.shape == (1, 32, 32) and bool((labels == 280).all())


def test_data_yaml_stands_in_for_missing_ignore_index_and_palette(setup, tmp_path):
    """An .onnx without our metadata takes names, ignore_index and palette from --data in predict (masks
    of dropped classes hold the YAML's ignore index, not 255); a graph's own metadata wins; an argmax
    graph refuses Predictor.probabilities."""
    from segment import predict
    from utils.yamlio import dump_yaml, load_yaml

    tmp, data, weights = setup
    src, bare = _export_with_and_without_metadata(weights, tmp_path)
    cfg = load_yaml(data)
    cfg.update(ignore_index=7, palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    data7 = tmp_path / "data7.yaml"
    data7.write_text(dump_yaml(cfg))
    assert OnnxBackend(bare, names=["a", "b", "c"], ignore_index=7).meta["ignore_index"] == 7
    assert OnnxBackend(src, ignore_index=7, palette=[[0, 0, 0]] * 3).meta["ignore_index"] == 255  # its own wins
    img = sorted((data.parent / "images" / "val").iterdir())[0]
    ref = predict.Predictor(weights)(str(img))
    keep = int(ref[0, 0])  # a class that really occurs, so both kept and dropped pixels exist unless uniform
    predict.run(weights=str(bare), source=str(img), data=str(data7), classes=[keep], project=str(tmp_path / "runs"),
                name="bare")
    import cv2

    mask = cv2.imread(str(tmp_path / "runs" / "bare" / "masks" / f"{img.stem}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, np.where(ref == keep, keep, 7))
    colour = cv2.imread(str(tmp_path / "runs" / "bare" / "color" / f"{img.stem}.png"))[..., ::-1]
    assert tuple(colour[0, 0]) == tuple(cfg["palette"][keep])
    am = tmp_path / "am.onnx"
    export.main(["--weights", str(weights), "--argmax", "--output", str(am)])
    with pytest.raises(UserError, match="not probabilities"):
        predict.Predictor(am).probabilities(str(img))


def test_int8_can_leave_the_resizes_at_the_graphs_ends_in_fp32(tmp_path):
    """peer_speed.py times 'image in, logits at the image size out' graphs whose first and last Resize are
    the deployed path's pre/post-processing (run outside the exported model): with fp32_io_resizes those
    two stay fp32 while the Resize inside the network is still quantized (by default the last one is
    quantized too)."""
    from segment.int8 import io_resizes, quantize

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Conv2d(4, 3, 1)

        def forward(self, x):
            y = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # to the model size
            y = F.interpolate(self.a(y), scale_factor=2.0, mode="bilinear", align_corners=False)  # the model's
            return F.interpolate(self.b(y), size=x.shape[-2:], mode="bilinear", align_corners=False)  # back

    fp32 = tmp_path / "w.onnx"
    torch.onnx.export(Wrapped().eval(), (torch.rand(1, 3, 24, 20),), str(fp32), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["output"])
    resizes = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Resize"]
    assert len(resizes) == 3 and io_resizes(onnx.load(str(fp32))) == [resizes[0], resizes[2]]
    calib = [(torch.randint(0, 256, (3, 24, 20), dtype=torch.uint8),) for _ in range(2)]

    def int8_resizes(dst):  # ORT runs a Resize in int8 when it reads a DequantizeLinear and feeds a QuantizeLinear
        g = onnx.load(str(dst)).graph
        made_by = {o: n.op_type for n in g.node for o in n.output}
        read_by = {i: n.op_type for n in g.node for i in n.input}
        return [n.name for n in g.node if n.op_type == "Resize"
                and made_by.get(n.input[0]) == "DequantizeLinear" and read_by.get(n.output[0]) == "QuantizeLinear"]

    quantize(fp32, tmp_path / "all.onnx", calib)
    quantize(fp32, tmp_path / "ends.onnx", calib, fp32_io_resizes=True)
    assert int8_resizes(tmp_path / "all.onnx") == resizes[1:]  # the first reads the fp32 input either way
    assert int8_resizes(tmp_path / "ends.onnx") == [resizes[1]]


def test_static_graph_at_a_multiple_of_the_stride_has_no_pad_or_crop(setup, tmp_path):
    """At a multiple of the stride the model's pad and crop are no-op copies that ONNX Runtime keeps; a static
    export leaves them out (forward_static), a dynamic one must keep them (it runs at other sizes). Both give
    the model's logits; forward_static is forward() bit for bit, and falls back to it at other sizes."""
    _, _, weights = setup
    model = export.load_model(weights, torch.device("cpu"))[0].eval()
    meta = {"names": ["c0", "c1", "c2"], "nc": 3}
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model.forward_static(x), ref)
        odd = torch.rand(1, 3, 40, 56)
        assert torch.equal(model.forward_static(odd), model(odd))
    counts = {}
    for name, dynamic in (("static", False), ("dynamic", True)):
        path = tmp_path / f"{name}.onnx"
        export.export_onnx(model, path, (64, 96), 1, dynamic, 17, False, meta)
        nodes = onnx.load(str(path)).graph.node
        made = {o: n for n in nodes for o in n.output}

        def from_resize(t):  # the logits' resize, or a Slice of it
            n = made.get(t)
            return n is not None and (n.op_type == "Resize" or n.op_type == "Slice" and from_resize(n.input[0]))

        crops = sum(n.op_type == "Slice" and from_resize(n.input[0]) for n in nodes)
        counts[name] = (sum(n.op_type == "Pad" for n in nodes), crops)
        assert_faithful(OnnxBackend(path)(x), ref)
    assert counts == {"static": (0, 0), "dynamic": (1, 2)}


class _Scaled(torch.nn.Module):
    """A model whose logits are ``k`` times another's: the same graph at another logit scale."""

    def __init__(self, net: torch.nn.Module, k: float) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.k


def test_verify_bounds_the_logit_difference_relative_to_the_logits_scale(setup):
    """Float32 rounding is relative: a graph off by 2e-5 of each logit is faithful at any scale (an absolute
    1e-4 refused it once logits passed ~5), while a shift of 3e-4 of the largest logit is refused even though
    it keeps every argmax; small logits keep the 1e-4 absolute floor."""
    _, _, weights = setup
    net = export.load_model(weights, torch.device("cpu"))[0].eval()
    big, small = _Scaled(net, 1000.0).eval(), _Scaled(net, 1e-3).eval()
    with torch.no_grad():
        top = max(float(big(x).abs().max()) for _, x in export.test_inputs(1, (40, 56)))
        assert top > 100  # the case the absolute bound got wrong
        rel = export.verify(big, lambda x: big(x) * (1 + 2e-5), [(40, 56)], 1, False, runs=1)[0]
        assert rel["ok"] and rel["max_abs_diff"] > 1e-4 and rel["limit"] == pytest.approx(1e-4 * top)
        shifted = export.verify(big, lambda x: big(x) + 3e-4 * top, [(40, 56)], 1, False, runs=1)[0]
        assert not shifted["ok"] and shifted["argmax_agree"] == 1.0
        floor = export.verify(small, lambda x: small(x) + 2e-4, [(40, 56)], 1, False, runs=1)[0]
        assert not floor["ok"] and floor["limit"] == export.LOGIT_TOL and floor["argmax_agree"] == 1.0
        assert export.verify(small, lambda x: small(x) + 5e-5, [(40, 56)], 1, False, runs=1)[0]["ok"]
