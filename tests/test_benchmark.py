"""segment/benchmark.py: table, JSON rows, --cfg, errors and the --layers mode."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segment import benchmark

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--img-size", "64", "96", "--runs", "1", "--warmup", "0"]


def test_table_and_json_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = benchmark.main(["--backbones", "mobilenet_v3_small,resnet18", "--heads", "unet,yolov5", *SMALL,
                           "--train-step", "--batch", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert [(r["backbone"], r["head"]) for r in rows] == [
        ("mobilenet_v3_small", "unet"), ("mobilenet_v3_small", "yolov5"), ("resnet18", "unet"), ("resnet18", "yolov5")]
    saved = json.loads(out.read_text())
    assert saved == rows
    for r in saved:
        assert set(r) == {"backbone", "head", "img_size", "params", "gflops", "latency_ms", "train_step_ms"}
        assert r["img_size"] == [64, 96] and r["params"] > 0 and r["gflops"] > 0 and r["latency_ms"] > 0
        line = f"| {r['backbone']} | {r['head']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} | {r['latency_ms']:.1f} |"
        assert line in printed  # the Markdown table shows exactly the JSON numbers


def test_no_latency_and_backbone_yaml_cfg(capsys):
    rows = benchmark.main(["--cfg", "models/backbone/efficientnet_b0.yaml", "--no-latency", *SMALL])
    assert len(rows) == 1 and rows[0]["backbone"] == "efficientnet_b0" and rows[0]["head"] == "segment"
    assert rows[0]["latency_ms"] is None
    assert "| efficientnet_b0 | segment |" in capsys.readouterr().out


def test_unknown_name_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "segment/benchmark.py", "--backbones", "resnet19"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "resnet19" in r.stderr and "resnet18" in r.stderr


def test_layers_mode_for_a_yolo_graph(tmp_path, capsys):
    pytest.importorskip("models.summary")
    if not (ROOT / "models" / "yolov8_seg.yaml").is_file():
        pytest.skip("models/yolov8_seg.yaml not present")
    out = tmp_path / "layers.json"
    benchmark.main(["--cfg", "models/yolov8_seg.yaml", "--scale", "n", "--img-size", "64", "64", "--layers",
                    "--json", str(out)])
    summary = json.loads(out.read_text())
    assert summary["params"] > 0 and summary["layers"]
    assert capsys.readouterr().out.strip()
