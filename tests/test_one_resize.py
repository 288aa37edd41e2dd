"""Logits resized once, from the head's stride straight to the image's size: the model, the inference path
(val, predict), export --out-size and the ONNX backend."""
import json
from dataclasses import replace

import onnx
import pytest
import torch
import torch.nn.functional as F

from models.model import build_model, model_config
from segment import export, val
from segment.evaluate import eval_loader, evaluate
from segment.common import preprocess
from segment.inference import InferenceConfig, StridedLogits, TorchBackend, combine, infer_members, predict_batch
from segment.onnx_backend import META_KEY, OnnxBackend
from tests.conftest import write_dataset
from tests.test_export import assert_faithful
from tests.test_predict import Pointwise, make_checkpoint
from utils.dataconfig import load_data_config
from utils.errors import UserError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(model_config(3, backbone="mobilenet_v3_small", head="segment")).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the logits vary from pixel to pixel
        m.train()
        m(torch.rand(4, 3, 64, 96))
        m.eval()
    return m


def head_logits(model, x):
    """What the head returns for ``x`` (its strided logits, before any resize)."""
    seen = []
    handle = model.head.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_unpadded_input_resizes_the_heads_logits_once_to_the_output_size(model):
    x = torch.rand(2, 3, 64, 96)  # a multiple of the stride (32): no pad
    coarse = head_logits(model, x)
    assert coarse.shape[-2:] == (16, 24)  # the segment head's stride 4
    with torch.no_grad():
        out = model(x, (90, 120))
        by_hand = F.interpolate(coarse, size=(90, 120), mode="bilinear", align_corners=False)
        assert out.shape == (2, 3, 90, 120) and torch.equal(out, by_hand)
        assert torch.equal(model.forward_static(x, (90, 120)), by_hand)
        # the former way (to the input size, then to the output size) gives other values: one interpolation
        # is not two, so this is a real change and the test above would see a return to two resizes
        twice = F.interpolate(model(x), size=(90, 120), mode="bilinear", align_corners=False)
        assert not torch.equal(out, twice)
        assert (out.argmax(1) == twice.argmax(1)).float().mean() > 0.9
        # asking for the input size is the plain forward, bit for bit
        assert torch.equal(model(x, (64, 96)), model(x))


def test_padded_input_is_cropped_at_its_own_size_before_the_resize(model):
    x = torch.rand(1, 3, 40, 56)  # padded to 64x64 inside: the crop must come first
    with torch.no_grad():
        ref = F.interpolate(model(x), size=(50, 70), mode="bilinear", align_corners=False)
        assert torch.equal(model(x, (50, 70)), ref)
        assert torch.equal(model.forward_static(x, (50, 70)), ref)


def test_an_output_size_is_refused_in_training():
    torch.manual_seed(0)
    m = build_model(model_config(3, backbone="mobilenet_v3_small", head="segment")).train()
    with pytest.raises(ValueError, match="inference"):
        m(torch.rand(2, 3, 64, 96), (90, 120))


def test_strided_members_are_resized_once_per_image(model):
    x = torch.rand(3, 3, 64, 96).contiguous(memory_format=torch.channels_last)  # as infer_members runs it
    b = TorchBackend(model)
    [m] = infer_members(b, x, InferenceConfig(), strided=True)
    assert isinstance(m, StridedLogits) and m.logits.shape[-2:] == (16, 24) and m.geometry == (64, 96, 64, 96)
    with torch.no_grad():
        ref = model(x, (90, 120))
    assert torch.equal(combine([m], 1, (90, 120)), ref[1])
    # each image from its own strided logits: its neighbours and their output sizes play no part
    alone = StridedLogits(m.logits[2:].clone(), m.geometry)
    assert torch.equal(combine([m], 2, (50, 60)), combine([alone], 0, (50, 60)))
    assert torch.equal(combine([m], 2, (50, 60)),
                       F.interpolate(m.logits[2:], size=(50, 60), mode="bilinear", align_corners=False)[0])
    # probabilities of a lone member are the softmax of its logits
    assert torch.allclose(combine([m], 0, (90, 120), probs=True), ref[0].softmax(0), atol=1e-6)
    # TTA: members are strided too, the flipped one mirrored back after its resize; scale 1.0 without a flip
    # is exactly the plain prediction
    tta = infer_members(b, x, InferenceConfig(tta=True, scales=(1.0,), flip=True), strided=True)
    assert [t.flipped for t in tta] == [False, True] and torch.equal(tta[0].logits, m.logits)
    with torch.no_grad():
        mirrored = model(x.flip(-1).contiguous(memory_format=torch.channels_last), (90, 120)).flip(-1)
    assert torch.equal(tta[1].at(1, (90, 120)), mirrored[1:2])
    plain_tta = infer_members(b, x, InferenceConfig(tta=True, scales=(1.0,), flip=False), strided=True)
    assert torch.equal(combine(plain_tta, 0, (90, 120), probs=True).argmax(0), ref[0].argmax(0))
    # sliding windows are stitched at the input size; a module that is not a SegmentationModel, or a
    # backend callable as p(x) only, gives input-size logits, which combine resizes
    [slid] = infer_members(b, x, InferenceConfig(slide=(64, 64)), strided=True)
    assert slid.shape[-2:] == (64, 96)
    conv = TorchBackend(torch.nn.Conv2d(3, 4, 1))
    [plain] = infer_members(conv, x, InferenceConfig(), strided=True)
    assert not conv.has_strided and plain.shape[-2:] == (64, 96)
    [pw] = infer_members(Pointwise(), x, InferenceConfig(), strided=True)
    assert torch.equal(combine([pw], 0, (90, 120)),
                       F.interpolate(pw[:1], size=(90, 120), mode="bilinear", align_corners=False)[0])


def test_padded_strided_member_is_cropped_first(model):
    x = torch.rand(2, 3, 40, 56).contiguous(memory_format=torch.channels_last)
    [m] = infer_members(TorchBackend(model), x, InferenceConfig(), strided=True)
    assert m.geometry == (40, 56, 64, 64)
    with torch.no_grad():
        ref = F.interpolate(model(x), size=(50, 70), mode="bilinear", align_corners=False)
    assert torch.equal(combine([m], 1, (50, 70)), ref[1])
    # mirrored: the padding is on the right of the mirrored input, so the mirror comes after the crop
    with torch.no_grad():
        xf = x.flip(-1).contiguous(memory_format=torch.channels_last)
        mirrored = F.interpolate(model(xf), size=(50, 70), mode="bilinear", align_corners=False).flip(-1)
        flipped = replace(TorchBackend(model).strided(xf), flipped=True)
    assert torch.equal(flipped.at(1, (50, 70)), mirrored[1:2])


def test_predict_batch_of_mixed_sizes_resizes_each_image_to_its_own(model):
    images = (torch.rand(3, 3, 64, 96) * 255).to(torch.uint8)
    b = TorchBackend(model)
    sizes = [(90, 120), (50, 60), (90, 120)]
    batch = predict_batch(b, images, sizes, InferenceConfig(), torch.device("cpu"))
    x = preprocess(images, torch.device("cpu")).contiguous(memory_format=torch.channels_last)
    s = b.strided(x)
    for i, size in enumerate(sizes):
        one = F.interpolate(s.logits[i:i + 1], size=size, mode="bilinear", align_corners=False)[0]
        assert torch.equal(batch[i], one)
    with torch.no_grad():
        twice = F.interpolate(model(x), size=(90, 120), mode="bilinear", align_corners=False)
    assert not torch.equal(batch[0], twice[0])  # really one resize, not the former two


def test_evaluate_scores_the_one_resize_prediction(tmp_path):
    """val at a reduced input size: the confusion matrix and the loss are those of model(x, mask size), built
    by hand; the loss (a function of the logits, not only of their argmax) tells the former path apart."""
    data = load_data_config(write_dataset(tmp_path / "d", {"val": 3}, hw=(40, 56)))
    weights = make_checkpoint(tmp_path / "m.pt", None)
    m = export.load_model(weights, torch.device("cpu"))[0].eval()
    loader = eval_loader(data, "val", (32, 64), 2, 0, log=lambda *a: None)

    def ce(scores, target):
        return F.cross_entropy(scores, target, ignore_index=255), None

    res = evaluate(m, loader, data, torch.device("cpu"), loss_fn=ce, progress=False)
    cm = torch.zeros(3, 3, dtype=torch.long)
    losses, former = [], []
    for images, masks, _ in loader:
        x = preprocess(images, torch.device("cpu")).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            logits = m(x, (40, 56))
            two = F.interpolate(m(x), size=(40, 56), mode="bilinear", align_corners=False)
        for k, t in enumerate(masks):
            keep = t != 255
            cm += torch.bincount(t[keep] * 3 + logits[k].argmax(0)[keep], minlength=9).view(3, 3)
            losses.append(float(ce(logits[k:k + 1], t[None])[0]))
            former.append(float(ce(two[k:k + 1], t[None])[0]))
    assert torch.equal(res.confusion.long(), cm) and res.num_images == 3
    assert res.loss == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert abs(sum(former) / 3 - res.loss) > 1e-5 * abs(res.loss)


def test_export_out_size_graph_returns_the_images_size_and_scores_like_the_pt(tmp_path):
    data = write_dataset(tmp_path / "d", {"train": 2, "val": 3}, hw=(40, 56))
    weights = make_checkpoint(tmp_path / "best.pt", data)
    out = tmp_path / "m.onnx"
    res = export.main(["--weights", str(weights), "--img-size", "32", "--out-size", "40", "56",
                       "--output", str(out)])
    assert all(r["ok"] for r in res["verify"]) and [r["size"] for r in res["verify"]] == [[32, 32]]
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[META_KEY])
    assert meta["out_size"] == [40, 56] and meta["img_size"] == [32, 32]
    be = OnnxBackend(out)
    model = export.load_model(weights, torch.device("cpu"))[0].eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = be(x)
        assert y.shape == (1, 3, 40, 56)
        assert_faithful(y, model(x, (40, 56)))
    a = val.run(weights=str(weights), data=str(data), img_size=[32, 32], project=str(tmp_path), name="pt", workers=0)
    b = val.run(weights=str(out), project=str(tmp_path), name="onnx", workers=0)
    assert abs(a["mIoU"] - b["mIoU"]) <= 1e-3 and b["num_images"] == 3
    # its logits are not at a window's size: sliding windows are refused, with one line
    with pytest.raises(UserError, match=r"^--slide: this graph returns its logits at 40x56 \(exported with --out-size"):
        val.run(weights=str(out), slide=[32, 32], project=str(tmp_path), name="slide", workers=0)
    # an --argmax graph gives class ids at the output size, those of the logits graph
    ids = tmp_path / "ids.onnx"
    export.main(["--weights", str(weights), "--img-size", "32", "--out-size", "40", "56", "--argmax",
                 "--output", str(ids)])
    assert torch.equal(OnnxBackend(ids).labels(x), y.argmax(1))


def test_out_size_is_refused_on_a_dynamic_graph_and_writes_nothing(tmp_path, capsys):
    weights = make_checkpoint(tmp_path / "best.pt", None)
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as e:
        export.main(["--weights", str(weights), "--dynamic", "--out-size", "40", "56", "--output", str(out)])
    assert e.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --out-size needs a static graph"), err
    with pytest.raises(UserError, match=r"^--out-size 4: give H or H W"):
        export.run(weights=weights, out_size=[4], output=str(out))
    ts = tmp_path / "m.torchscript"
    with pytest.raises(UserError, match=r"^--out-size applies to --format onnx"):
        export.run(weights=weights, out_size=[40, 56], format="torchscript", output=str(ts))
    with pytest.raises(ValueError, match="static graph"):  # the function refuses it too, not only the CLI
        export.export_onnx(export.load_model(weights, torch.device("cpu"))[0].eval(), out, (32, 32), 1, True, 17,
                           False, {"names": ["a", "b", "c"], "nc": 3}, (40, 56))
    assert not out.exists() and not ts.exists()


def test_peer_speed_times_our_reduced_size_with_one_logit_resize(model, tmp_path):
    """benchmarks/peer_speed.py's @HxW rows run the model as the inference path does (one resize of the
    logits, to the image); --two-resizes keeps the former path beside it. Traced for ONNX, the one-resize
    graph has one Resize fewer."""
    from benchmarks.peer_speed import Rescaled, export_plain

    x = torch.rand(1, 3, 40, 56)
    small = F.interpolate(x, size=(32, 64), mode="bilinear", align_corners=False)
    once, twice = Rescaled(model, (32, 64)).eval(), Rescaled(model, (32, 64), once=False).eval()
    with torch.no_grad():
        assert torch.equal(once(x), model(small, (40, 56)))
        assert torch.equal(twice(x), F.interpolate(model(small), size=(40, 56), mode="bilinear", align_corners=False))
    ops = []
    for name, net in (("once", once), ("twice", twice)):
        export_plain(net, tmp_path / f"{name}.onnx", (40, 56), 17)
        ops.append([n.op_type for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node])
    assert ops[1].count("Resize") == ops[0].count("Resize") + 1, ops
    # traced as static exports are (forward_static): at 32x64, a multiple of the stride, no pad in either
    assert ops[0].count("Pad") == ops[1].count("Pad") == 0, ops
