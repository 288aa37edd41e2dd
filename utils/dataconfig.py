"""Dataset YAMLs: where the images are, which split is which, what the classes are.

    path: camvid            # relative -> $SEG_DATASETS_DIR/camvid, else <repo>/datasets/camvid
    train: images/train     # a folder, a list of folders, or a .txt list of image paths
    val: images/val
    test: images/test       # optional
    nc: 11
    names: [Sky, Building, ...]   # or {0: Sky, 1: Building, ...}
    ignore_index: 11        # default 255
    palette: [[128, 128, 128], ...]   # optional, one RGB per class (colour masks, overlays)
    ignore_color: [0, 0, 0] # optional, colour masks only
    masks: masks            # folder name swapped for 'images' to find a mask (default 'masks')
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.masks import MaskSpec
from utils.yamlio import load_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def datasets_dir() -> Path:
    """Where relative dataset paths live: $SEG_DATASETS_DIR, else <repo>/datasets."""
    env = os.environ.get("SEG_DATASETS_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "datasets"


def cache_dir() -> Path:
    """Folder for derived, re-creatable files (dataset checks): $SEG_CACHE_DIR, else <datasets>/.cache."""
    env = os.environ.get("SEG_CACHE_DIR")
    return Path(env).expanduser() if env else datasets_dir() / ".cache"


@dataclass
class DataConfig:
    """A parsed dataset YAML with its root resolved."""

    yaml_file: Path
    root: Path
    splits: dict[str, list[str]]
    nc: int
    names: list[str]
    ignore_index: int = 255
    palette: list[tuple[int, int, int]] | None = None
    ignore_color: tuple[int, int, int] | None = None
    images_dir: str = "images"
    masks_dir: str = "masks"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_spec(self) -> MaskSpec:
        return MaskSpec(self.nc, self.ignore_index, tuple(self.names),
                        tuple(self.palette) if self.palette else None, self.ignore_color)

    def split_images(self, split: str) -> list[Path]:
        """Sorted image files of ``split``; unknown or empty splits raise UserError."""
        if split not in self.splits:
            raise UserError(f"{self.yaml_file}: no '{split}' split (has: {', '.join(self.splits) or 'none'})")
        files: list[Path] = []
        for entry in self.splits[split]:
            p = Path(entry) if Path(entry).is_absolute() else self.root / entry
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            elif p.suffix == ".txt" and p.is_file():
                for line in p.read_text(encoding="utf-8").splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        f = Path(line)
                        files.append(f if f.is_absolute() else self.root / f)
            else:
                raise UserError(f"{self.yaml_file}: split '{split}': {p} is neither a folder nor a .txt list")
        if not files:
            raise UserError(f"{self.yaml_file}: split '{split}' is empty (no images in {', '.join(self.splits[split])})")
        return files


def _rgb(value: Any, what: str, yaml_file: Path) -> tuple[int, int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise UserError(f"{yaml_file}: {what} must be an [R, G, B] triple of 0..255 integers, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def resolve_data_yaml(data: str | os.PathLike) -> Path:
    """Find a data YAML as given or under the repo's data/ folder (``--data shapes.yaml`` works)."""
    p = Path(data)
    for cand in (p, REPO_ROOT / "data" / p, REPO_ROOT / "data" / p.name, REPO_ROOT / "data" / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    raise UserError(f"--data {data}: file not found (looked in ., {REPO_ROOT / 'data'})")


def load_data_config(data: str | os.PathLike, *, generate: bool = True) -> DataConfig:
    """Parse and validate a dataset YAML, resolving its root; synthetic datasets are generated on first use."""
    yaml_file = resolve_data_yaml(data)
    raw = load_yaml(yaml_file)
    for key in ("train", "val", "nc", "names"):
        if key not in raw:
            raise UserError(f"{yaml_file}: missing key '{key}'")
    names_raw = raw["names"]
    if isinstance(names_raw, dict):
        names = [str(names_raw[i]) for i in sorted(names_raw)]
        if sorted(names_raw) != list(range(len(names_raw))):
            raise UserError(f"{yaml_file}: 'names' ids must be 0..{len(names_raw) - 1}")
    elif isinstance(names_raw, list):
        names = [str(n) for n in names_raw]
    else:
        raise UserError(f"{yaml_file}: 'names' must be a list or an {{id: name}} mapping")
    nc = int(raw["nc"])
    if nc != len(names) or nc < 1:
        raise UserError(f"{yaml_file}: nc is {nc} but 'names' has {len(names)} entries")
    ignore_index = int(raw.get("ignore_index", 255))
    if 0 <= ignore_index < nc or not 0 <= ignore_index <= 65535:
        raise UserError(f"{yaml_file}: ignore_index {ignore_index} must be outside 0..{nc - 1} and within 0..65535")
    palette = None
    if raw.get("palette") is not None:
        palette = [_rgb(c, f"palette[{i}]", yaml_file) for i, c in enumerate(raw["palette"])]
        if len(palette) != nc:
            raise UserError(f"{yaml_file}: palette has {len(palette)} colours for {nc} classes")
    ignore_color = _rgb(raw["ignore_color"], "ignore_color", yaml_file) if raw.get("ignore_color") is not None else None
    splits = {}
    for split in ("train", "val", "test"):
        if raw.get(split):
            v = raw[split]
            splits[split] = [str(x) for x in v] if isinstance(v, list) else [str(v)]
    root = _resolve_root(yaml_file, raw, generate)
    return DataConfig(yaml_file, root, splits, nc, names, ignore_index, palette, ignore_color,
                      str(raw.get("images", "images")), str(raw.get("masks", "masks")), raw)


def _resolve_root(yaml_file: Path, raw: dict[str, Any], generate: bool) -> Path:
    path = Path(str(raw.get("path", "")) or yaml_file.stem).expanduser()
    root = path if path.is_absolute() else datasets_dir() / path
    if raw.get("generate") and generate:
        from utils.synthetic import GENERATORS, is_stale  # only synthetic datasets need it

        name = str(raw["generate"])
        gen = GENERATORS.get(name)
        if gen is None:
            raise UserError(f"{yaml_file}: unknown generator '{name}' (have: {', '.join(GENERATORS)})")
        if not root.is_dir() or is_stale(root, name):
            if root.is_dir():
                print(f"{root}: generated by an older version of the '{name}' generator; regenerating")
            gen(root)
        return root
    if root.is_dir():
        return root
    looked = [str(root)]
    hint = "set SEG_DATASETS_DIR to the folder holding it, or give an absolute 'path' in the YAML"
    if not path.is_absolute() and "SEG_DATASETS_DIR" not in os.environ:
        looked.append("($SEG_DATASETS_DIR is not set)")
    raise UserError(f"{yaml_file}: dataset '{path}' not found; looked in: {', '.join(looked)}; {hint}")
