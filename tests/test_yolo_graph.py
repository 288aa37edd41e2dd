"""YOLO graph models from YAML: every file x scale builds and trains, exact published backbone sizes,
DCN start state, fusion equality, per-layer summary, and one-line errors for bad files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from models import HEADS, build_model, model_config
from models.registry import ACTIVATIONS
from models.dcn import DCNConv
from models.elan import RepConv
from models.parser import GraphBackbone, GraphHead, parse_model
from models.summary import format_layer_table, layer_summary
from utils.errors import UserError
from utils.torch_utils import count_params, randomize_bn

ROOT = Path(__file__).resolve().parents[1]
NC = 5
SCALED = ("yolov5_seg.yaml", "yolov8_seg.yaml", "yolov5_dcn_seg.yaml")
UNSCALED = ("yolov9t_seg.yaml", "yolov9s_seg.yaml", "yolov9c_seg.yaml", "yolov7_seg.yaml")
ALL = [(f, s) for f in SCALED for s in "nsmlx"] + [(f, None) for f in UNSCALED]
HEAVY = {(f, s) for f in SCALED for s in "lx"} | {("yolov9c_seg.yaml", None)}


def build(cfg: str, scale: str | None = None, head: str | None = None, nc: int = NC) -> nn.Module:
    return build_model(model_config(nc=nc, cfg=str(ROOT / "models" / cfg), scale=scale, head=head))


def load_graph(cfg: str) -> dict:
    return yaml.safe_load((ROOT / "models" / cfg).read_text())


# --- every file at every scale ------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,scale", [c for c in ALL if c not in HEAVY])
def test_forward_backward_odd_size(cfg: str, scale: str | None) -> None:
    torch.manual_seed(0)
    model = build(cfg, scale)
    assert isinstance(model.backbone, GraphBackbone) and isinstance(model.head, GraphHead)
    big = scale == "m"  # keep the m scale cheap: one small image
    x = torch.rand(1 if big else 2, 3, *((35, 41) if big else (67, 93)))
    out = model(x)
    assert out.shape == (x.shape[0], NC, *x.shape[-2:])
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("cfg,scale", sorted(HEAVY, key=str))
def test_heavy_scales_forward(cfg: str, scale: str | None) -> None:
    model = build(cfg, scale).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 35, 41))
    assert out.shape == (1, NC, 35, 41)


# --- exactness against the published architectures ----------------------------------------------------

REFERENCE = [  # (file, scale, backbone params, P3/P4/P5 channels)
    ("yolov5_seg.yaml", "n", 1_046_368, (64, 128, 256)),
    ("yolov5_seg.yaml", "s", 4_171_456, (128, 256, 512)),
    ("yolov8_seg.yaml", "n", 1_272_656, (64, 128, 256)),
    ("yolov8_seg.yaml", "s", 5_079_712, (128, 256, 512)),
    ("yolov9t_seg.yaml", None, 708_720, (64, 96, 128)),
    ("yolov9s_seg.yaml", None, 2_820_576, (128, 192, 256)),
    ("yolov9c_seg.yaml", None, 8_985_280, (512, 512, 512)),
    ("yolov5_dcn_seg.yaml", "n", 1_140_226, (64, 128, 256)),
    ("yolov7_seg.yaml", None, 3_121_824, (128, 256, 256)),  # = published yolov7-tiny rows 0-37, see below
]


@pytest.mark.parametrize("cfg,scale,params,p345", REFERENCE)
def test_backbone_matches_reference(cfg: str, scale: str | None, params: int, p345: tuple[int, int, int]) -> None:
    graph = load_graph(cfg)
    backbone, _ = parse_model({"backbone": graph["backbone"], "scales": graph.get("scales")}, nc=NC, scale=scale)
    assert count_params(backbone) == params
    assert backbone.strides == [2, 4, 8, 16, 32]
    assert tuple(backbone.channels[2:]) == p345
    assert backbone.feature_rows == [0, 2, 4, 6, 9]


def _tiny_elan(c_: int, c2: int) -> list:
    return [[-1, 1, "Conv", [c_, 1, 1]], [-2, 1, "Conv", [c_, 1, 1]], [-1, 1, "Conv", [c_, 3, 1]],
            [-1, 1, "Conv", [c_, 3, 1]], [[-1, -2, -3, -4], 1, "Concat", [1]], [-1, 1, "Conv", [c2, 1, 1]]]


def test_yolov7_tiny_rows_equal_published_rows() -> None:
    # The published yolov7-tiny.yaml rows 0-37, one layer per row (activation does not change counts).
    rows = [[-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [64, 3, 2]], *_tiny_elan(32, 64)]
    for c_ in (64, 128, 256):
        rows += [[-1, 1, "MP", []], *_tiny_elan(c_, 2 * c_)]
    rows += [[-1, 1, "Conv", [256, 1, 1]], [-2, 1, "Conv", [256, 1, 1]], [-1, 1, "SP", [5]], [-2, 1, "SP", [9]],
             [-3, 1, "SP", [13]], [[-1, -2, -3, -4], 1, "Concat", [1]], [-1, 1, "Conv", [256, 1, 1]],
             [[-1, -7], 1, "Concat", [1]], [-1, 1, "Conv", [256, 1, 1]]]
    published, _ = parse_model({"backbone": rows}, nc=NC)
    ours, _ = parse_model({"backbone": load_graph("yolov7_seg.yaml")["backbone"]}, nc=NC)
    assert count_params(published) == count_params(ours) == 3_121_824
    assert published.channels == ours.channels and published.strides == ours.strides
    assert published.feature_rows == [0, 7, 14, 21, 37]


@pytest.mark.parametrize("scale,p5,c2f_repeats", [("n", 256, 2), ("m", 576, 4), ("l", 512, 6), ("x", 640, 6)])
def test_scale_rules(scale: str, p5: int, c2f_repeats: int) -> None:
    # width: ceil(min(c, max_channels) * width / 8) * 8; depth: max(round(n * depth), 1), inside C2f
    backbone, _ = parse_model({"backbone": load_graph("yolov8_seg.yaml")["backbone"],
                               "scales": load_graph("yolov8_seg.yaml")["scales"]}, nc=NC, scale=scale)
    assert backbone.channels[-1] == p5
    assert backbone.rows[4].repeats == c2f_repeats and backbone.rows[4].args[2] == c2f_repeats
    assert len(backbone.layers[4].m) == c2f_repeats


def test_scale_from_file_name_and_stacking() -> None:
    cfg = model_config(nc=NC, cfg="models/yolov5s_dcn_seg.yaml")
    assert cfg["scale"] == "s" and Path(cfg["cfg_file"]).name == "yolov5_dcn_seg.yaml"
    assert build_model(cfg).backbone.channels[-1] == 512
    # a module without internal repeats is stacked; later copies read the previous copy's channels
    graph = {"depth_multiple": 1.0, "width_multiple": 1.0,
             "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 3, "Conv", [32, 3, 1]]]}
    backbone, head = parse_model(graph, nc=NC)
    assert head is None and isinstance(backbone.layers[1], nn.Sequential) and len(backbone.layers[1]) == 3
    assert count_params(backbone.layers[1]) == (16 * 32 * 9 + 64) + 2 * (32 * 32 * 9 + 64)


def test_config_rebuilds_the_same_model() -> None:
    # checkpoints store model.cfg (the YAML's content included), not the file
    model = build("yolov5_dcn_seg.yaml", "n")
    again = build_model(model.cfg)
    again.load_state_dict(model.state_dict())  # strict: same names and shapes
    assert again.cfg["scale"] == "n" and count_params(again) == count_params(model)


@pytest.mark.parametrize("act,cls", [("ReLU", nn.ReLU), ("LeakyReLU", nn.LeakyReLU), ("Hardswish", nn.Hardswish)])
def test_activation_key_swaps_every_silu_and_nothing_else(act: str, cls: type, tmp_path: Path) -> None:
    """`activation:` gives the same graph and parameters with another activation: equal, weight for weight, to
    the SiLU model with its SiLU modules replaced by hand; a checkpoint's config rebuilds it; SiLU is default."""
    silu = build("yolov8_seg.yaml", "n").eval()
    n_silu = sum(isinstance(m, nn.SiLU) for m in silu.modules())
    path = tmp_path / "yolov8_act_seg.yaml"
    path.write_text(yaml.safe_dump({**load_graph("yolov8_seg.yaml"), "activation": act}, sort_keys=False))
    other = build(str(path), "n").eval()
    assert n_silu == 43 and not any(isinstance(m, nn.SiLU) for m in other.modules())
    assert sum(isinstance(m, cls) for m in other.modules()) == n_silu
    other.load_state_dict(silu.state_dict())  # strict: the activation owns no tensors
    by_hand = silu
    for parent in list(by_hand.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(parent, name, ACTIVATIONS.get(act)())  # LeakyReLU: the registry's slope 0.1
    x = torch.rand(2, 3, 67, 93)
    with torch.no_grad():
        assert torch.equal(other(x), by_hand(x))
    assert isinstance(build_model(other.cfg).backbone.layers[0].act, cls)
    relu_file = build("yolov8n_relu_seg.yaml")
    assert relu_file.cfg["scale"] == "n" and count_params(relu_file) == count_params(silu)
    assert isinstance(relu_file.backbone.layers[0].act, nn.ReLU)
    relu_graph = load_graph("yolov8_relu_seg.yaml")  # a copy of yolov8_seg.yaml but for the key: kept so
    assert relu_graph.pop("activation") == "ReLU" and relu_graph == load_graph("yolov8_seg.yaml")


@pytest.mark.parametrize("head", HEADS.names())
def test_yaml_backbone_with_registered_head(head: str) -> None:
    model = build("yolov8_seg.yaml", "n", head=head)
    assert not isinstance(model.head, GraphHead) and model.cfg["head"] == head
    assert count_params(model.backbone) == 1_272_656
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 67, 93)).shape == (1, NC, 67, 93)


# --- DCN and fusion -----------------------------------------------------------------------------------

def test_dcn_starts_on_the_regular_grid() -> None:
    model = build("yolov5_dcn_seg.yaml", "n")
    units = [m for m in model.backbone.modules() if isinstance(m, DCNConv)]
    assert len(units) == 2 + 3 + 1  # C3_DCN repeats at rows 4, 6, 8 after depth 0.33
    for m in units:
        assert m.offset.out_channels == 27 and m.offset.kernel_size == (3, 3) and m.offset.bias is not None
        assert not m.offset.weight.any() and not m.offset.bias.any()
    m = units[0].eval()
    x = torch.randn(2, m.weight.shape[1], 9, 11)
    with torch.no_grad():
        offset, mask = m.offsets_and_mask(x)
        assert offset.shape == (2, 18, 9, 11) and not offset.any()
        assert torch.equal(mask, torch.full_like(mask, 0.5))
        # zero offsets and mask 0.5: exactly a regular convolution with half the kernel
        expected = m.act(m.bn(nn.functional.conv2d(x, 0.5 * m.weight, m.bias, padding=1)))
        assert torch.allclose(m(x), expected, atol=1e-5)


def test_dcn_thop_rule_counts_kernel_and_offsets() -> None:
    thop = pytest.importorskip("thop")
    m = nn.Sequential(DCNConv(8, 16)).eval()  # as inside a model: the unit is a leaf for thop
    macs, _ = thop.profile(m, inputs=(torch.zeros(1, 8, 9, 11),), verbose=False,
                           custom_ops={DCNConv: DCNConv.thop_ops})
    assert macs == 9 * 11 * (16 * 8 * 9 + 27 * 8 * 9)


@pytest.mark.parametrize("cfg,scale", [("yolov9t_seg.yaml", None), ("yolov5_dcn_seg.yaml", "n"),
                                       ("yolov8_seg.yaml", "n"), ("yolov7_seg.yaml", None)])
def test_fuse_keeps_outputs(cfg: str, scale: str | None) -> None:
    torch.manual_seed(0)
    model = build(cfg, scale)
    randomize_bn(model)
    model.eval()
    x = torch.rand(1, 3, 67, 93)
    with torch.no_grad():
        before = model(x)
        n_before = count_params(model)
        model.fuse()
        after = model(x)
    assert (after - before).abs().max().item() < 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_params(model) < n_before
    reps = [m for m in model.modules() if isinstance(m, RepConv)]
    assert all(not hasattr(m, "conv1") and isinstance(m.conv, nn.Conv2d) for m in reps)
    assert (len(reps) > 0) == cfg.startswith("yolov9")


@pytest.mark.parametrize("g,bn", [(1, False), (2, True)])
def test_repconv_fuse_with_groups_and_identity(g: int, bn: bool) -> None:
    torch.manual_seed(0)
    m = RepConv(8, 8, g=g, bn=bn)
    randomize_bn(m)
    m.eval()
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        before = m(x)
        m.fuse()
        m.fuse()  # idempotent
        assert (m(x) - before).abs().max().item() < 1e-5


# --- summary ------------------------------------------------------------------------------------------

def test_layer_summary_rows() -> None:
    model = build("yolov8_seg.yaml", "n")
    s = layer_summary(model, (64, 96))
    json.dumps(s)
    rows = s["layers"]
    assert [r["index"] for r in rows] == list(range(20))
    assert rows[0] == {"index": 0, "from": -1, "repeats": 1, "module": "Conv", "args": [3, 16, 3, 2],
                       "params": 464, "out_shape": [1, 16, 32, 48]}
    assert rows[4]["repeats"] == 2 and rows[4]["args"] == [64, 64, 2, True]
    assert rows[10]["args"] == [None, 2, "nearest"] and rows[11]["from"] == [-1, 6]
    assert rows[9]["out_shape"] == [1, 256, 2, 3]
    assert rows[19]["module"] == "SegOutput" and rows[19]["args"] == [[32, 64, 128], NC, 32]
    assert rows[19]["out_shape"] == [1, NC, 16, 24]
    assert sum(r["params"] for r in rows) == s["params"] == count_params(model)
    assert s["gflops"] > 0
    table = format_layer_table(s).splitlines()
    assert len(table) == 22 and "SegOutput" in table[-2]
    assert table[-1] == f"total: 20 rows, {s['params']:,} parameters, {s['gflops']:.1f} GFLOPs"


# --- errors for people --------------------------------------------------------------------------------

def _bad(tmp_path: Path, edit) -> str:
    graph = load_graph("yolov8_seg.yaml")
    edit(graph)
    path = tmp_path / "yolov8_seg.yaml"
    path.write_text(yaml.safe_dump(graph, sort_keys=False))
    with pytest.raises(UserError) as err:
        build_model(model_config(nc=NC, cfg=str(path), scale="n"))
    msg = str(err.value)
    assert "\n" not in msg
    return msg.replace(str(path), "FILE")


def _set(section: str, k: int, row: list):
    return lambda g: g[section].__setitem__(k, row)


BAD = [
    (_set("head", 2, [-1, 3, "C2ff", [512]]),
     "FILE: row 12 (head): unknown module 'C2ff'; did you mean 'C2f'? (known: "),
    (_set("head", 1, [[-1, 14], 1, "Concat", [1]]),
     "FILE: row 11 (head): from 14 points forward (a row may only use rows 0..10)"),
    (_set("backbone", 1, [-3, 1, "Conv", [128, 3, 2]]),
     "FILE: row 1 (backbone): from -3 is out of range (row 1 has only rows 0..0 before it)"),
    (_set("backbone", 3, [-1, 1, "Conv", [256, 3, 2, None, 1, 1, True, 7]]),
     "FILE: row 3 (backbone): wrong number of args for Conv: got 8 [256, 3, 2, None, 1, 1, True, 7], "
     "expected args (c2, k=1, s=1, p=None, g=1, d=1, act=True)"),
    (_set("backbone", 2, [-1, 3, "C2f", []]),
     "FILE: row 2 (backbone): wrong number of args for C2f: got 0 [], "
     "expected args (c2, shortcut=False, g=1, e=0.5)"),
    (_set("backbone", 0, [-1, 1, "ADown", [64]]),
     "FILE: row 0 (backbone): ADown does not fit its input (image 1x3x64x64): "),
    (_set("head", 0, [-1, 1, "Conv", [256, 1, 1]]),
     "FILE: row 11 (head): Concat does not fit its input (row 10 1x64x2x2 (stride 32), "
     "row 6 1x128x4x4 (stride 16)): "),
    (_set("head", 1, [[-1, 5], 1, "Concat", [1]]),
     "FILE: row 11 (head): from 5 uses backbone row 5, which is not a backbone feature (the last row at its "
     "stride); head rows may use backbone rows 0, 2, 4, 6, 9"),
    (_set("head", 1, [[-1, 6], 1, "Conv", [64]]),
     "FILE: row 11 (head): Conv takes one input but 'from' lists 2; join them with a Concat row first"),
    (lambda g: g["head"].pop(), "FILE: row 18 (head): the head's last row gives 32 channels, expected nc=5 "
                                "(end the head with a SegOutput row, args [nc, ...])"),
    (lambda g: g["scales"].pop("n"), "FILE: unknown scale 'n'; choose from: s, m, l, x"),
    (lambda g: g.__setitem__("activation", "Swish"),
     "FILE: unknown activation 'Swish'; choose from: Hardswish, LeakyReLU, ReLU, SiLU"),
]


@pytest.mark.parametrize("edit,expected", BAD, ids=[e[1].split(": ", 2)[-1][:30] for e in BAD])
def test_bad_yaml_one_line_error(tmp_path: Path, edit, expected: str) -> None:
    msg = _bad(tmp_path, edit)
    assert msg.startswith(expected), msg
    if "does not fit" in expected:
        assert ("channels" in msg) if "ADown" in expected else ("Sizes of tensors must match" in msg)


def test_activation_key_refused_where_no_block_has_silu() -> None:
    """yolov7's backbone blocks bring their own LeakyReLU (ConvLeaky): `activation: ReLU` would change nothing
    there, so it is refused rather than ignored; its SegOutput head has SiLU, so the full file accepts it."""
    graph = {"backbone": load_graph("yolov7_seg.yaml")["backbone"], "activation": "ReLU"}
    with pytest.raises(UserError) as err:
        parse_model(graph, nc=NC, name="v7.yaml")
    assert str(err.value) == ("v7.yaml: 'activation: ReLU' replaces the SiLU of the graph's blocks, and this graph "
                              "has none (its blocks bring their own activation); remove the key")
    backbone, head = parse_model({**load_graph("yolov7_seg.yaml"), "activation": "ReLU"}, nc=NC)
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == 4 and not any(
        isinstance(m, nn.ReLU) for m in backbone.modules())


def test_args_are_literals_not_code(tmp_path: Path) -> None:
    msg = _bad(tmp_path, _set("backbone", 0, [-1, 1, "Conv", ["__import__('os').getcwd()", 3, 2]]))
    assert msg.startswith("FILE: row 0 (backbone): Conv(3, \"__import__('os').getcwd()\", 3, 2) failed to build: ")


def test_p3_graph_is_the_seg_graph_without_its_stride_4_stage() -> None:
    """yolov8_seg_p3.yaml = yolov8_seg.yaml minus rows 16-18 (Upsample, Concat with P2, C2f) and SegOutput's
    P2 lateral. At scale n, 11 classes, the missing parameters by hand: the C2f(64 + 32 -> 32, one
    bottleneck of 16 channels, no shortcut): cv1 96*32 + 2*32, cv2 48*32 + 2*32, two 3x3 convs 16*16*9 + 2*16
    each; the lateral 1x1 Conv 32*32 + 2*32."""
    full, p3 = build("yolov8_seg.yaml", "n", nc=11), build("yolov8_seg_p3.yaml", "n", nc=11)
    c2f = (96 * 32 + 64) + (48 * 32 + 64) + 2 * (16 * 16 * 9 + 32)
    assert count_params(full) == 1_484_539 and count_params(p3) == 1_484_539 - c2f - (32 * 32 + 64) == 1_474_043
    assert load_graph("yolov8_seg_p3.yaml")["backbone"] == load_graph("yolov8_seg.yaml")["backbone"]
    assert load_graph("yolov8_seg_p3.yaml")["head"][:6] == load_graph("yolov8_seg.yaml")["head"][:6]
    assert p3.head.out_stride == 8 and full.head.out_stride == 4
    p3.eval()
    with torch.no_grad():
        assert p3(torch.rand(1, 3, 72, 100)).shape == (1, 11, 72, 100)  # padded to /32 inside, cropped back
