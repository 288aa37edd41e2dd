"""Dataset YAMLs: where the images are, which split is which, what the classes are.

    path: camvid            # relative -> $SEG_DATASETS_DIR/camvid, else <repo>/datasets/camvid
    train: images/train     # a folder, a .txt list of image paths, a glob (images/train/0001TP_*), or a list of these
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

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.masks import MaskSpec
from utils.yamlio import load_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = set("*?[")  # an entry holding one of these (and naming no file) is a pattern


def datasets_dir() -> Path:
    """Where relative dataset paths live: $SEG_DATASETS_DIR, else <repo>/datasets."""
    env = os.environ.get("SEG_DATASETS_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "datasets"


def cache_dir() -> Path:
    """Folder for derived, re-creatable files (dataset checks): $SEG_CACHE_DIR, else <datasets>/.cache."""
    env = os.environ.get("SEG_CACHE_DIR")
    return Path(env).expanduser() if env else datasets_dir() / ".cache"


class EmptySplitError(UserError):
    """A split that is absent, not a folder or list, or holds no image: no --skip-bad can help."""


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
        """Sorted image files of ``split``; unknown or empty splits raise EmptySplitError, a list that is not
        UTF-8 or a stem present twice raise UserError."""
        if split not in self.splits:
            raise EmptySplitError(f"{self.yaml_file}: no '{split}' split (has: {', '.join(self.splits) or 'none'})")
        files: list[Path] = []
        for entry in self.splits[split]:
            p = Path(entry) if Path(entry).is_absolute() else self.root / entry
            if p.is_dir():
                files += image_files(p)
            elif _GLOB_CHARS & set(str(entry)) and not p.exists():
                files += _glob_images(p, split, self.yaml_file)
            elif p.suffix == ".txt" and p.is_file():
                try:  # utf-8-sig: a list saved by Notepad starts with a byte-order mark, not part of the path
                    text = p.read_text(encoding="utf-8-sig")
                except UnicodeDecodeError as e:
                    raise UserError(f"{p}: split '{split}' list is not UTF-8 text (byte {e.start}); "
                                    f"save it as UTF-8, one image path per line") from None
                for line in text.splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        f = Path(line)
                        files.append(f if f.is_absolute() else self.root / f)
            else:
                raise EmptySplitError(f"{self.yaml_file}: split '{split}': {p} is neither a folder, a .txt list "
                                      f"nor a glob pattern")
        if not files:
            raise EmptySplitError(f"{self.yaml_file}: split '{split}' is empty (no images in {', '.join(self.splits[split])})")
        _refuse_duplicates(self.yaml_file, split, files)
        return files


def _glob_images(pattern: Path, split: str, yaml_file: Path) -> list[Path]:
    """Image files matching ``pattern`` (``*``, ``?``, ``[...]``, ``**``), sorted; a pattern that matches no
    image is an error of its own, so a typo cannot silently shrink a split."""
    files = sorted(f for f in map(Path, glob.glob(str(pattern), recursive=True))
                   if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise EmptySplitError(f"{yaml_file}: split '{split}': the pattern {pattern} matches no image "
                              f"({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted, following symlinked folders (each real folder once, so a
    link back up the tree cannot loop)."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to a folder already listed
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in filenames:
            f = Path(dirpath) / name
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                out.append(f)
    return sorted(out)


def _refuse_duplicates(yaml_file: Path, split: str, files: list[Path]) -> None:
    """Two images that share a folder and a stem (a.jpg, a.png) would both be paired with mask a.png;
    the same file listed twice would be trained on twice. Both are refused, naming the files."""
    by_stem: dict[Path, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.with_suffix(""), []).append(f)
    dups = [fs for fs in by_stem.values() if len(fs) > 1]
    if dups:
        shown = "; ".join(" + ".join(str(f) for f in fs) for fs in dups[:5]) + (" ..." if len(dups) > 5 else "")
        raise UserError(f"{yaml_file}: split '{split}': {len(dups)} image name(s) occur more than once, and each "
                        f"would be paired with the same mask: {shown}. Keep one file per name (rename or remove "
                        f"the others)")


def _rgb(value: Any, what: str, yaml_file: Path) -> tuple[int, int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise UserError(f"{yaml_file}: {what} must be an [R, G, B] triple of 0..255 integers, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_key(raw: dict[str, Any], key: str, yaml_file: Path, default: int | None = None) -> int:
    """An integer entry of the data YAML, or one line naming the key and the value found."""
    v = raw.get(key, default)
    if not _is_int(v):
        raise UserError(f"{yaml_file}: '{key}' must be an integer, got {v!r} ({type(v).__name__})")
    return int(v)


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
        if not all(_is_int(k) for k in names_raw) or sorted(names_raw) != list(range(len(names_raw))):
            raise UserError(f"{yaml_file}: 'names' as a mapping needs the integer ids 0..{len(names_raw) - 1} as "
                            f"keys, got {list(names_raw)!r}; or write a list: names: [a, b, ...]")
        names = [str(names_raw[i]) for i in sorted(names_raw)]
    elif isinstance(names_raw, list):
        names = [str(n) for n in names_raw]
    else:
        raise UserError(f"{yaml_file}: 'names' must be a list or an {{id: name}} mapping")
    nc = _int_key(raw, "nc", yaml_file)
    if nc == 1:
        # One class cannot be segmented against nothing: every pixel would be class 0 (or ignored), the
        # loss is 0 and mIoU 1.0 whatever the model does. The binary story is two classes.
        raise UserError(f"{yaml_file}: nc: 1 is refused: a binary dataset has two classes, background and the "
                        f"object. Write nc: 2, names: [background, {names[0] if names else 'object'}], with mask "
                        f"values 0 = background, 1 = object (masks saved as 0/255: remap 255 -> 1, or set "
                        f"ignore_index: 255 only if 255 means 'unlabelled')")
    if nc != len(names) or nc < 1:
        raise UserError(f"{yaml_file}: nc is {nc} but 'names' has {len(names)} entries")
    ignore_index = _int_key(raw, "ignore_index", yaml_file, 255)
    if 0 <= ignore_index < nc or not 0 <= ignore_index <= 65535:
        raise UserError(f"{yaml_file}: ignore_index {ignore_index} must be outside 0..{nc - 1} and within 0..65535")
    palette = None
    if raw.get("palette") is not None:
        if not isinstance(raw["palette"], list):
            raise UserError(f"{yaml_file}: 'palette' must be a list of [R, G, B] triples, got {raw['palette']!r}")
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
