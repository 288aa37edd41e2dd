"""Attention gates, the newer heads (lraspp, deeplabv3plus, ocr), dict outputs, the YOLO11 graph and the
code-free reader of reference classification checkpoints."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from models import build_model, model_config
from models.attention import CBAM, SCSE
from models.parser import parse_model
from models.yolo_pretrained import load_classification_weights, read_classification_checkpoint
from segment.export import logit_limit
from utils.errors import UserError
from utils.losses import SegLoss
from utils.yamlio import load_yaml
from yolo_cls_fakes import Evil, make_cls_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NC = 4
sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731

# YOLO11 backbone rows 0-10, parameters per row, from the reference implementation (ultralytics 8.4.190,
# DetectionModel("yolo11<s>.yaml"), read 2026-12-01)
YOLO11_ROWS = {
    "n": [464, 4672, 6640, 36992, 26080, 147712, 87040, 295424, 346112, 164608, 249728],
    "s": [928, 18560, 26080, 147712, 103360, 590336, 346112, 1180672, 1380352, 656896, 990976],
    "m": [1856, 73984, 111872, 590336, 444928, 2360320, 1380352, 2360320, 1380352, 656896, 990976],
    "l": [1856, 73984, 173824, 590336, 691712, 2360320, 2234368, 2360320, 2234368, 656896, 1455616],
    "x": [2784, 166272, 389760, 1327872, 1553664, 5309952, 5022720, 5309952, 5022720, 1476864, 3264768],
}


def _x() -> torch.Tensor:
    # channel 0 = [1, 3], channel 1 = [2, -2] on a 1 x 2 map
    return torch.tensor([[[[1.0, 3.0]], [[2.0, -2.0]]]])


def test_scse_matches_hand_computation():
    g = SCSE(2)
    with torch.no_grad():
        g.cse.fc1.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)), g.cse.fc1.bias.zero_()
        g.cse.fc2.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)), g.cse.fc2.bias.zero_()
        g.sse.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)), g.sse.bias.fill_(-4.0)
        y = g(_x())
    # cSE: hidden = relu(mean ch0 = 2) = 2 -> gates sigmoid(2), sigmoid(-2); sSE: sigmoid(x0 + x1 - 4) per pixel
    c0, c1 = sig(2), sig(-2)
    s = [sig(1 + 2 - 4), sig(3 - 2 - 4)]
    want = [[1 * (c0 + s[0]), 3 * (c0 + s[1])], [2 * (c1 + s[0]), -2 * (c1 + s[1])]]
    assert y.flatten().tolist() == pytest.approx(sum(want, []), abs=1e-6)


def test_cbam_matches_hand_computation():
    g = CBAM(2)
    with torch.no_grad():
        g.mlp[0].weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)), g.mlp[0].bias.zero_()
        g.mlp[2].weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)), g.mlp[2].bias.zero_()
        g.spatial.weight.zero_(), g.spatial.bias.zero_()
        g.spatial.weight[0, 0, 3, 3], g.spatial.weight[0, 1, 3, 3] = 1.0, -1.0  # centre tap: mean - max
        y = g(_x())
    # channel gate: MLP(avg) + MLP(max) = [relu(2) + relu(3), 0] -> sigmoid(5), sigmoid(0)
    a0, a1 = sig(5), sig(0)
    x0, x1 = [1 * a0, 3 * a0], [2 * a1, -2 * a1]
    s = [sig((x0[p] + x1[p]) / 2 - max(x0[p], x1[p])) for p in range(2)]
    want = [[x0[0] * s[0], x0[1] * s[1]], [x1[0] * s[0], x1[1] * s[1]]]
    assert y.flatten().tolist() == pytest.approx(sum(want, []), abs=1e-6)


BACKBONES = [dict(backbone="resnet18"), dict(backbone="mobilenet_v3_small"),
             dict(cfg="models/yolov8n_seg.yaml"), dict(cfg="models/yolo11n_seg.yaml")]
HEADS = [("lraspp", {}), ("deeplabv3plus", {}), ("ocr", {}), ("unet", {"attention": "scse"}),
         ("segment", {"attention": "cbam"}), ("yolov5", {"attention": "cbam"})]


@pytest.mark.parametrize("head,args", HEADS, ids=[h + "".join(f"-{v}" for v in a.values()) for h, a in HEADS])
@pytest.mark.parametrize("bb", BACKBONES, ids=[next(iter(b.values())).split("/")[-1] for b in BACKBONES])
def test_new_heads_train_and_infer_at_odd_sizes(bb, head, args):
    torch.manual_seed(0)
    model = build_model(model_config(NC, head=head, head_args=args, **bb)).train()
    out = model(torch.rand(2, 3, 97, 131))
    main = out["out"] if isinstance(out, dict) else out
    assert main.shape == (2, NC, 97, 131)
    if head == "ocr":
        assert set(out) == {"out", "ocr_aux"} and out["ocr_aux"].shape == main.shape
    loss, parts = SegLoss("ce", output_weights=model.output_weights)(out, torch.randint(0, NC, (2, 97, 131)))
    loss.backward()
    first = next(model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    with torch.no_grad():
        y = model.eval()(torch.rand(1, 3, 61, 45))
    assert isinstance(y, torch.Tensor) and y.shape == (1, NC, 61, 45)


@pytest.mark.parametrize("low_stride,out_stride", [(8, 8), (4, 4)])
def test_lraspp_equals_the_papers_order_of_upsample_then_classify(low_stride, out_stride):
    """The head classifies the gated deep map before upsampling it (cheaper at a stride-4 skip); the
    paper's order (upsample the width-channel map, then the 1x1 classifier) must give the same logits."""
    torch.manual_seed(0)
    model = build_model(model_config(NC, cfg="models/yolov8n_seg.yaml", head="lraspp",
                                     head_args={"low_stride": low_stride})).eval()
    head = model.head
    assert head.out_stride == out_stride and model.backbone.strides[head.low] == out_stride
    with torch.no_grad():
        for m in head.modules():  # non-trivial BN statistics, so the gate and the bias both matter
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
        feats = model.backbone(torch.rand(1, 3, 70, 98))
        high, low = feats[-1], feats[head.low]
        gated = head.cbr(high) * head.scale(high.mean((2, 3), keepdim=True))
        up = torch.nn.functional.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)
        want = head.low_classifier(low) + head.high_classifier(up)
        got = head(feats)
    assert got.shape == (1, NC, *low.shape[-2:]) and low.shape[-1] == math.ceil(98 / out_stride)
    assert torch.allclose(got, want, atol=1e-5) and want.abs().max() > 0.1


def test_attention_gates_sit_in_every_decoder_block():
    from models.attention import CBAM as G

    for head, n in (("unet", 4), ("yolov5", 3), ("segment", 1)):
        model = build_model(model_config(NC, backbone="resnet18", head=head, head_args={"attention": "cbam",
                                                                                        "min_stride": 2 if head == "unet" else 4}))
        assert sum(isinstance(m, G) for m in model.head.modules()) == n, head


def test_dict_output_loss_is_weighted_sum():
    target = torch.tensor([[[0, 1], [1, 255]]])
    zeros = torch.zeros(1, 2, 2, 2)
    crit = SegLoss("ce", aux_weight=0.4, output_weights={"ocr_aux": 0.25})
    total, parts = crit({"out": zeros, "ocr_aux": zeros, "aux": zeros}, target)
    assert float(parts["ce"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(parts["ocr_aux"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(total) == pytest.approx((1 + 0.25 + 0.4) * math.log(2), abs=1e-6)
    with pytest.raises(KeyError, match="no loss weight"):
        crit({"out": zeros, "other": zeros}, target)


def test_deeplab_output_stride_by_dilation_matches_torchvision():
    m = build_model(model_config(NC, backbone="resnet50", head="deeplabv3plus", head_args={"output_stride": 8}))
    assert m.backbone.strides == [2, 4, 8, 8, 8] and m.stride == 8 and m.head.out_stride == 4
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    state = {m.backbone.source_key(k): v for k, v in m.backbone.state_dict().items()}
    ref.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        feats = m.backbone.eval()(x)
        r = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
    assert feats[-1].shape == (1, 2048, 8, 10)
    assert torch.allclose(feats[-1], r, atol=1e-5)
    m16 = build_model(model_config(NC, backbone="resnet18", head="deeplabv3plus"))  # default: 16 where it can dilate
    assert m16.backbone.strides[-2:] == [16, 16]
    assert build_model(model_config(NC, backbone="mobilenet_v3_small", head="deeplabv3plus")).backbone.strides[-1] == 32


@pytest.mark.parametrize("kw,args,msg", [
    (dict(backbone="mobilenet_v3_small"), {"output_stride": 16}, "mobilenet_v3_small backbone cannot reach stride 16 by dilation"),
    (dict(cfg="models/yolov8n_seg.yaml"), {"output_stride": 8}, "GraphBackbone backbone cannot reach stride 8"),
    (dict(backbone="resnet18"), {"output_stride": 4}, "deeplabv3plus takes 8, 16, 32"),
])
def test_unreachable_output_stride_is_refused(kw, args, msg):
    with pytest.raises(UserError, match=msg):
        build_model(model_config(NC, head="deeplabv3plus", head_args=args, **kw))


def test_unknown_attention_is_refused():
    with pytest.raises(UserError, match=r"attention=sse: unknown attention gate; choose from: cbam, scse, se"):
        build_model(model_config(NC, backbone="resnet18", head="unet", head_args={"attention": "sse"}))


ONNX_CASES = [("lraspp", {}, dict(backbone="mobilenet_v3_small")), ("deeplabv3plus", {}, dict(backbone="resnet18")),
              ("ocr", {}, dict(backbone="resnet18")), ("unet", {"attention": "scse"}, dict(backbone="mobilenet_v3_small")),
              ("yolov5", {"attention": "cbam"}, dict(backbone="mobilenet_v3_small")),
              (None, {}, dict(cfg="models/yolo11n_seg.yaml"))]


@pytest.mark.parametrize("head,args,bb", ONNX_CASES, ids=[str(h) + "".join(f"-{v}" for v in a.values())
                                                         for h, a, _ in ONNX_CASES])
def test_onnx_export_parity(head, args, bb, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(model_config(NC, head=head, head_args=args, **bb)).eval()
    x = torch.rand(1, 3, 97, 131)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {2: "h", 3: "w"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in ((97, 131), (64, 96)):
        xi = torch.rand(1, 3, *hw)
        with torch.no_grad():
            ref = model(xi).numpy()
        got = sess.run(None, {"images": xi.numpy()})[0]
        assert got.shape == (1, NC, *hw)
        assert np.abs(got - ref).max() <= logit_limit(float(np.abs(ref).max())), hw  # export.py's own bound


@pytest.mark.parametrize("scale", list(YOLO11_ROWS))
def test_yolo11_backbone_rows_match_reference_counts(scale):
    backbone, head = parse_model(load_yaml(ROOT / "models" / "yolo11_seg.yaml"), nc=NC, scale=scale)
    assert [r.module for r in backbone.rows][-2:] == ["SPPF", "C2PSA"]
    assert [sum(p.numel() for p in layer.parameters()) for layer in backbone.layers] == YOLO11_ROWS[scale]
    assert backbone.strides == [2, 4, 8, 16, 32] and head is not None and head.out_stride == 4


# ----------------------------------------------------------------- classification checkpoints
def test_classification_checkpoint_loads_by_row_name_and_shape(tmp_path):
    f = tmp_path / "yolo11n-cls.pt"
    src = make_cls_checkpoint(f, str(ROOT / "models" / "yolo11_seg.yaml"), "n")
    assert not any(k.startswith("ultralytics") for k in sys.modules)  # the classes existed only while saving
    ckpt = read_classification_checkpoint(f)
    assert [t for t, _ in ckpt.rows] == ["Conv", "Conv", "C3k2", "Conv", "C3k2", "Conv", "C3k2", "Conv", "C3k2",
                                         "C2PSA", "Classify"]
    cfg = model_config(NC, cfg="models/yolo11n_seg.yaml")
    model = build_model(cfg)
    n, total, lines = load_classification_weights(model, ckpt, cfg)
    # every backbone tensor but SPPF's (row 9; yolo11-cls has none): 240 - 12
    assert (n, total) == (228, 240) and len(lines) == 10
    assert lines[-1] == "row 10 C2PSA <- file row 9: 42/42 tensors"
    got = model.backbone.layers[10].m[0].attn.qkv.conv.weight
    assert torch.equal(got, src.model[9].m[0].attn.qkv.conv.weight.float())
    assert torch.equal(model.backbone.layers[2].cv1.bn.running_var, src.model[2].cv1.bn.running_var.float())
    assert not torch.equal(model.backbone.layers[9].cv1.conv.weight, torch.zeros_like(model.backbone.layers[9].cv1.conv.weight))


def test_classification_checkpoint_of_another_scale_or_family_is_refused(tmp_path):
    f = tmp_path / "yolov8s-cls.pt"
    make_cls_checkpoint(f, str(ROOT / "models" / "yolov8_seg.yaml"), "s", drop_types=("SPPF",))
    ckpt = read_classification_checkpoint(f)
    cfg = model_config(NC, cfg="models/yolov8n_seg.yaml")
    with pytest.raises(UserError, match=r"holds yolov8s-cls.yaml \(scale s; its first conv has 32 channels, the "
                                        r"model's 16\), the model is yolov8_seg.yaml scale n"):
        load_classification_weights(build_model(cfg), ckpt, cfg)
    cfg = model_config(NC, cfg="models/yolo11s_seg.yaml")
    with pytest.raises(UserError, match=r"holds yolov8s-cls.yaml \(scale s; rows Conv, Conv, C2f, .*another family"):
        load_classification_weights(build_model(cfg), ckpt, cfg)
    cfg = model_config(NC, cfg="models/yolov8s_seg.yaml")
    n, total, _ = load_classification_weights(build_model(cfg), ckpt, cfg)
    assert (n, total) == (150, 162)  # all but SPPF's 12


def test_malicious_pickle_is_refused_and_nothing_runs(tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    # a genuine-looking -cls.pt whose train_args unpickle to os.system("touch <marker>")
    f = tmp_path / "yolov8n-cls.pt"
    make_cls_checkpoint(f, str(ROOT / "models" / "yolov8_seg.yaml"), "n", extra={"train_args": Evil(marker)})
    with pytest.raises(UserError, match=r"refused: the file asks for (posix|os|nt)\.system, which is neither.*"
                                        r"Nothing from the file was run"):
        read_classification_checkpoint(f)
    assert not marker.exists()
    torch.save({"model": Evil(marker)}, tmp_path / "bare.pt")  # no module classes at all
    with pytest.raises(UserError, match=r"refused: the file asks for (posix|os|nt)\.system"):
        read_classification_checkpoint(tmp_path / "bare.pt")
    assert not marker.exists()
    r = _train("--data", str(tiny_data), "--cfg", "models/yolov8n_seg.yaml", "--weights", str(f),
               "--project", str(tmp_path / "runs"))
    assert r.returncode == 2 and "system" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "segment/train.py", "--img-size", "64", "--epochs", "1", "--batch-size", "4",
                           "--workers", "0", "--device", "cpu", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_refusals_are_one_line_and_leave_no_run_folder(tiny_data, tmp_path, capsys):
    """In-process through train.main (the CLI's own error wrapper; the subprocess path is covered by
    test_malicious_pickle_is_refused_and_nothing_runs): 3 interpreter starts cost ~30 s of CI."""
    from segment import train

    f = tmp_path / "yolo11s-cls.pt"
    make_cls_checkpoint(f, str(ROOT / "models" / "yolo11_seg.yaml"), "s")
    cases = [(["--backbone", "resnet18", "--head", "unet", "--head-args", "attention=sse"], "unknown attention gate"),
             (["--backbone", "mobilenet_v3_small", "--head", "deeplabv3plus", "--head-args", "output_stride=8"],
              "cannot reach stride 8 by dilation"),
             (["--cfg", str(ROOT / "models" / "yolo11n_seg.yaml"), "--weights", str(f)], "holds yolo11s-cls.yaml (scale s")]
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            train.main(["--img-size", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                        "--data", str(tiny_data), "--project", str(tmp_path / "runs"), "--name", "x", *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 0 and msg in err, err
        assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_ocr_and_yolo11_train_and_validate_from_the_cli(tiny_data, tmp_path, capsys, monkeypatch):
    """The CLI parsers in-process (train.main / val.main, argv as typed; the interpreter start of three
    subprocesses cost ~20 s of CI: the scripts' own start-up is covered by the subprocess CLI tests)."""
    from segment import train, val

    monkeypatch.chdir(ROOT)  # the model YAML is given relative to the repo, as in the README
    common = ["--img-size", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    f = tmp_path / "yolo11n-cls.pt"
    make_cls_checkpoint(f, str(ROOT / "models" / "yolo11_seg.yaml"), "n")
    train.main([*common, "--data", str(tiny_data), "--cfg", "models/yolo11n_seg.yaml", "--weights", str(f),
                "--project", str(tmp_path), "--name", "y11"])
    assert "Loaded 228/240 backbone tensors" in capsys.readouterr().out
    train.main([*common, "--data", str(tiny_data), "--backbone", "mobilenet_v3_small", "--head", "ocr",
                "--aux-weight", "0.4", "--project", str(tmp_path), "--name", "ocr"])
    best = tmp_path / "ocr" / "weights" / "best.pt"
    capsys.readouterr()  # the training's epoch lines also say mIoU: only val's output counts below
    out = val.main(["--weights", str(best), "--data", str(tiny_data), "--img-size", "64", "--device", "cpu",
                    "--workers", "0", "--project", str(tmp_path), "--name", "v"])
    assert 0.0 <= out["mIoU"] <= 1.0 and "mIoU" in capsys.readouterr().out


def graph_with_gates() -> dict:
    """yolov8_seg.yaml with SE, scSE and CBAM rows after SPPF (rows 10-12), head indices shifted."""
    graph = load_yaml(ROOT / "models" / "yolov8_seg.yaml")
    graph["backbone"] += [[-1, 1, "SE", [16]], [-1, 1, "scSE", [16]], [-1, 1, "CBAM", [16, 7]]]
    graph["head"][-1][0] = [i + 3 for i in graph["head"][-1][0]]
    return graph


def test_gate_rows_in_a_yaml_graph():
    backbone, head = parse_model(graph_with_gates(), nc=NC, scale="n")
    counts = [sum(p.numel() for p in layer.parameters()) for layer in backbone.layers[10:]]
    # 256 channels at scale n, hidden 16: MLP 256*16 + 16 + 16*256 + 256 = 8464; sSE 1x1 256 -> 1 (+ bias);
    # CBAM's spatial 7x7 conv 2 -> 1 (+ bias)
    assert counts == [8464, 8464 + 257, 8464 + 99]
    assert backbone.channels[-1] == 256 and backbone.feature_rows[-1] == 12
    model = build_model({**model_config(NC, cfg="models/yolov8n_seg.yaml"), "graph": graph_with_gates()}).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 97, 131)).shape == (1, NC, 97, 131)


def test_benchmark_takes_head_options():
    from segment.benchmark import model_configs, parse_args

    combos = model_configs(parse_args(["--backbones", "resnet18", "--heads",
                                       "unet@attention=scse,deeplabv3plus@output_stride=8@width=64"]))
    assert [(b, h, c["head"], c["head_args"]) for b, h, c in combos] == [
        ("resnet18", "unet@attention=scse", "unet", {"attention": "scse"}),
        ("resnet18", "deeplabv3plus@output_stride=8@width=64", "deeplabv3plus", {"output_stride": 8, "width": 64})]
