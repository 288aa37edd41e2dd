"""Packaging: LICENSE, pyproject console commands resolve to callables, requirements list ONNX Runtime."""
import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_console_scripts_resolve_and_license_present():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = proj["project"]["scripts"]
    assert set(scripts) == {f"unet-lite-{c}" for c in ("train", "val", "predict", "export", "benchmark")}
    for name, target in scripts.items():
        mod, func = target.split(":")
        fn = getattr(importlib.import_module(mod), func)
        assert callable(fn), name
        # the wrapped entry script has a main() taking argv
        assert callable(importlib.import_module(f"segment.{name.split('-')[-1]}").main)
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    req = (ROOT / "requirements.txt").read_text()
    deps = proj["project"]["dependencies"]
    for pkg in ("onnx>=", "onnxruntime>="):
        assert pkg in req and any(d.startswith(pkg) for d in deps)


def test_console_wrapper_exits_zero_on_success(monkeypatch, capsys):
    from segment import cli

    monkeypatch.setattr("sys.argv", ["unet-lite-benchmark", "--backbones", "resnet18", "--heads", "segment",
                                     "--no-latency", "--img-size", "64", "64"])
    assert cli.benchmark() == 0
    assert "resnet18" in capsys.readouterr().out
