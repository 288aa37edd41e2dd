"""The model zoo, generated from the registries: every backbone x head, the feature contract, pretrained
loading, and the unet-lite recipes / training CLI for one epoch on a tiny synthetic dataset.

Heavy backbones (ResNet-50, EfficientNetV2-S, ConvNeXt-T) are marked slow; they are cheap enough at
these sizes that CI runs them too.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
import yaml

from models import BACKBONES, HEADS, build_model, model_config
from models.backbones import BACKBONE_DIR, TORCHVISION_BACKBONES, pretrained_cache_file
from utils.errors import UserError

ZOO_BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                 "efficientnet_b0", "efficientnet_b1", "efficientnet_v2_s", "convnext_tiny")
ZOO_HEADS = ("segment", "unet", "yolov5")
HEAVY = {"resnet50", "efficientnet_v2_s", "convnext_tiny"}
SIZES = [(64, 64), (67, 93)]  # the second is not a multiple of 32: exercises the model's pad + crop
NC = 5


def _param(*names: str) -> pytest.param:
    return pytest.param(*names, marks=pytest.mark.slow) if names[0] in HEAVY else pytest.param(*names)


BACKBONE_PARAMS = [_param(b) for b in BACKBONES.names()]
COMBO_PARAMS = [_param(b, h) for b in BACKBONES.names() for h in ZOO_HEADS]  # newer heads: tests/test_attention_heads.py


def test_registries_hold_the_zoo():
    assert set(ZOO_BACKBONES) <= set(BACKBONES.names())
    assert set(ZOO_HEADS) <= set(HEADS.names())
    for name in TORCHVISION_BACKBONES:  # every shipped torchvision backbone is described by a YAML
        assert (BACKBONE_DIR / f"{name}.yaml").is_file()


@pytest.mark.parametrize("name", BACKBONE_PARAMS)
def test_backbone_features_match_declared_channels_and_strides(name):
    backbone = BACKBONES.get(name)().eval()
    h, w = 64, 96
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, h, w))
    assert len(feats) == len(backbone.channels) == len(backbone.strides)
    assert [tuple(f.shape) for f in feats] == [(2, c, h // s, w // s) for c, s in zip(backbone.channels, backbone.strides)]
    assert backbone.strides[-4:] == [4, 8, 16, 32]  # the contract every head may rely on
    assert set(backbone.strides) <= {2, 4, 8, 16, 32}


@pytest.mark.parametrize("backbone,head", COMBO_PARAMS)
def test_every_backbone_head_trains_at_any_size(backbone, head):
    torch.manual_seed(0)
    model = build_model(model_config(NC, backbone=backbone, head=head)).train()
    first = next(model.backbone.parameters())  # the stem conv: gradients must flow through the whole backbone
    for h, w in SIZES:
        model.zero_grad()
        logits = model(torch.rand(2, 3, h, w))
        assert logits.shape == (2, NC, h, w)
        logits.logsumexp(1).mean().backward()
        assert first.grad is not None and first.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, *SIZES[1])).shape == (1, NC, *SIZES[1])


@pytest.mark.parametrize("name", BACKBONE_PARAMS)
def test_aux_head_only_in_training(name):
    model = build_model(model_config(NC, backbone=name, head="segment", aux=True)).train()
    outputs = model(torch.rand(2, 3, *SIZES[1]))
    assert set(outputs) == {"out", "aux"}
    out, aux = outputs["out"], outputs["aux"]
    assert out.shape == aux.shape == (2, NC, *SIZES[1])
    (out.mean() + 0.4 * aux.mean()).backward()
    assert all(p.grad is not None for p in model.aux_head.parameters())
    model.eval()
    with torch.no_grad():
        assert isinstance(model(torch.rand(1, 3, 64, 64)), torch.Tensor)  # aux dropped at inference


def test_exact_parameter_counts():
    # resnet18 backbone = torchvision's 11,689,512 minus the fc layer (512*1000 + 1000); the heads below
    # are hand-derived so a silent change to a head's wiring shows up here.
    model = build_model(model_config(NC, backbone="resnet18", head="segment"))
    assert sum(p.numel() for p in model.backbone.parameters()) == 11_689_512 - 513_000
    # SegmentHead, width 128, levels at strides 4..32 (64+128+256+512 channels):
    # laterals 960*128 + 4*256 BN, fusion 1x1 512->128 (65,536 + 256), classifier 128*5 + 5
    assert sum(p.numel() for p in model.head.parameters()) == 123_904 + 65_792 + 645
    # UNetHead on mobilenet_v3_small (16/24/48/96 channels at strides 4..32), widths 64/128/256/256:
    # center 96->256 (25,088), blocks 304->256 (668,672), 280->128 (183,808), 144->64 (46,336), classifier 325
    model = build_model(model_config(NC, backbone="mobilenet_v3_small", head="unet"))
    assert sum(p.numel() for p in model.head.parameters()) == 25_088 + 668_672 + 183_808 + 46_336 + 325
    assert sum(p.numel() for p in model.parameters()) == 870_560 + 924_229


@pytest.mark.parametrize("backbone,min_stride,expect", [("resnet18", 2, 2), ("convnext_tiny", 2, 4)])
def test_unet_decodes_to_stride_2_where_declared(backbone, min_stride, expect):
    model = build_model(model_config(NC, backbone=backbone, head="unet", head_args={"min_stride": min_stride}))
    assert model.head.out_stride == expect
    assert model.eval()(torch.rand(1, 3, 67, 93)).shape == (1, NC, 67, 93)


def test_yolov5_head_uses_the_yolo_blocks_and_reaches_stride_4():
    from models.blocks import C3
    from models.conv import Concat, Conv

    model = build_model(model_config(NC, backbone="mobilenet_v2", head="yolov5", head_args={"min_stride": 4}))
    kinds = {type(m) for m in model.head.modules()}
    assert {C3, Concat, Conv, torch.nn.Upsample} <= kinds
    assert model.head.out_stride == 4
    assert model.eval()(torch.rand(1, 3, 67, 93)).shape == (1, NC, 67, 93)


def test_backbone_yaml_as_cfg_and_user_variant(tmp_path):
    cfg = model_config(NC, cfg="models/backbone/mobilenet_v3_large.yaml", head="unet")
    assert build_model(cfg).backbone.channels == [16, 24, 40, 112, 160]
    # a variant is a YAML, not code: keep MobileNetV3's final 1x1 conv (960 channels) at stride 32
    text = (BACKBONE_DIR / "mobilenet_v3_large.yaml").read_text().replace("[15, 32, 160]", "[16, 32, 960]")
    variant = tmp_path / "mobilenet_v3_large_960.yaml"
    variant.write_text(text)
    model = build_model(model_config(NC, cfg=str(variant), head="yolov5"))
    assert model.backbone.channels[-1] == 960
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, NC, 64, 64)
    variant.write_text(text.replace("[16, 32, 960]", "[16, 32, 900]"))  # wrong channels: caught at build
    with pytest.raises(UserError, match=r"child '16' is declared \[stride 32, 900 channels\]") as e:
        build_model(model_config(NC, cfg=str(variant)))
    assert "\n" not in str(e.value)


# --- --weights pretrained, offline: torchvision's cache under a temporary TORCH_HOME ----------------

def _no_network(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)  # never download in tests
    return tmp_path


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_pretrained_loads_torchvision_cache_file(torch_home, name):
    spec = BACKBONES.get(name)().spec
    weights = torchvision.models.get_weight(spec["weights"])
    state = getattr(torchvision.models, name)(weights=None).state_dict()
    torch.manual_seed(1)
    for v in state.values():  # make every tensor distinguishable from a fresh initialisation
        v.copy_(torch.randn_like(v) if v.is_floating_point() else torch.full_like(v, 7))
    cache = torch_home / "hub" / "checkpoints" / Path(weights.url).name  # e.g. resnet18-f37072fd.pth
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    assert pretrained_cache_file(spec)[1] == cache

    built = BACKBONES.get(name)(pretrained=True)
    later = BACKBONES.get(name)()
    later.load_pretrained()  # the path train.py takes for a model built from a stored config
    for backbone in (built, later):
        mine = backbone.state_dict()
        assert len(mine) > 0
        for k, v in mine.items():
            assert torch.equal(v, state[backbone.source_key(k)]), k


def test_pretrained_missing_cache_is_one_clear_line(torch_home):
    with pytest.raises(UserError) as e:
        BACKBONES.get("resnet18")(pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg


def test_pretrained_unreadable_or_foreign_cache_file(torch_home):
    cache = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"truncated")
    with pytest.raises(UserError, match="cannot read cached weights"):
        BACKBONES.get("resnet18")(pretrained=True)
    # another model's weights under this name; ResNet-34's hold every ResNet-18 tensor with the same shape
    for other in (torchvision.models.mobilenet_v2, torchvision.models.resnet34):
        torch.save(other().state_dict(), cache)
        with pytest.raises(UserError, match="does not fit resnet18") as e:
            BACKBONES.get("resnet18")(pretrained=True)
        assert "\n" not in str(e.value)


def test_fused_model_matches_unfused():
    for head in ("unet", "yolov5"):
        model = build_model(model_config(NC, backbone="mobilenet_v3_small", head=head)).eval()
        x = torch.rand(1, 3, 67, 93)
        with torch.no_grad():
            ref = model(x)
            assert torch.allclose(model.fuse()(x), ref, atol=1e-4), head


# --- recipes and the training CLI, one epoch on a tiny synthetic dataset --------------------------

ROOT = Path(__file__).resolve().parents[1]


def _load_preset(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location(f"recipe_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # safe: a recipe only calls main() under __main__
    return module.PRESET


# the zoo's recipes are those over a registered backbone (the YOLO-graph recipes name a --cfg instead)
RECIPES = [r for r in sorted((ROOT / "unet-lite").glob("*/seg_*.py")) if "backbone" in _load_preset(r)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """8 train / 4 val 64x64 shapes images, written like a user dataset (images/, masks/, a YAML)."""
    from utils.synthetic import SHAPES_NAMES, shapes_sample

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True)
        for i in range(n):
            img, mask = shapes_sample(rng, 64)
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img[..., ::-1])
            cv2.imwrite(str(root / "masks" / split / f"{i}.png"), mask)
    yaml_file = root / "tiny.yaml"
    yaml_file.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: {len(SHAPES_NAMES)}\n"
                         f"names: {SHAPES_NAMES}\nignore_index: 255\n")
    return yaml_file


TRAIN_ARGS = dict(img_size=[64], epochs=1, batch_size=4, workers=0, device="cpu", weights="none", exist_ok=True)


@pytest.mark.parametrize("recipe", [pytest.param(r, id=r.parent.name, marks=[pytest.mark.slow] if
                                                 _load_preset(r).get("backbone") in HEAVY else [])
                                    for r in RECIPES])
def test_recipe_preset_trains_one_epoch(recipe, tiny_data, tmp_path):
    from segment.train import run

    preset = _load_preset(recipe)
    assert preset["backbone"] in BACKBONES and preset.get("head", "segment") in HEADS
    summary = run(preset, data=str(tiny_data), project=str(tmp_path), name="r", **TRAIN_ARGS)
    save_dir = Path(summary["save_dir"])
    assert summary["epochs_run"] == 1 and (save_dir / "weights" / "best.pt").is_file()
    # the preset reached the run (args.yaml is what resume and val read back); the command-line path of a
    # recipe script is test_recipe_script_runs_from_the_command_line's
    args = yaml.safe_load((save_dir / "args.yaml").read_text())
    for key in ("backbone", "head", "loss", "optimizer", "lr0", "cos_lr"):
        if key in preset:
            assert args[key] == preset[key], (key, args[key], preset[key])


def _cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backbone,head", [("mobilenet_v3_small", "yolov5"), ("efficientnet_b0", "unet")])
def test_train_cli_backbone_head(backbone, head, tiny_data, tmp_path):
    """train.py's parser in-process, argv as typed (a subprocess per case cost ~8 s of interpreter start;
    the script's own start-up is test_recipe_script_runs_from_the_command_line's and test_train's)."""
    from segment.train import main

    main(["--data", str(tiny_data), "--backbone", backbone, "--head", head, "--img-size", "64", "--epochs", "1",
          "--batch-size", "4", "--workers", "0", "--device", "cpu", "--aux-weight", "0.4",
          "--project", str(tmp_path), "--name", "cli"])
    assert (tmp_path / "cli" / "weights" / "best.pt").is_file()
    assert yaml.safe_load((tmp_path / "cli" / "args.yaml").read_text())["aux_weight"] == 0.4


def test_recipe_script_runs_from_the_command_line(tiny_data, tmp_path):
    r = _cli("unet-lite/MobileNet/seg_diceloss_mobilenetv3.py", "--data", str(tiny_data), "--backbone",
             "mobilenet_v3_small", "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0",
             "--device", "cpu", "--project", str(tmp_path), "--name", "recipe")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "recipe" / "weights" / "best.pt").is_file()
