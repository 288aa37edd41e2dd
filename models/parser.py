"""The one YAML graph parser: YOLO-style ``[from, repeats, module, args]`` rows -> Backbone + Head.

File format, as in YOLOv5/v8::

    nc: 80                       # overridden by the dataset's nc
    activation: SiLU             # optional: the activation of every block (models/conv.py: ACTIVATIONS)
    scales:                      # or depth_multiple / width_multiple (+ optional max_channels)
      n: [0.33, 0.25, 1024]      # depth, width, max_channels
    backbone: [[from, repeats, module, args], ...]
    head:     [[from, repeats, module, args], ...]    # optional; ends with a module giving nc channels

Rows are numbered across both lists, as in the comments of YOLO YAMLs. ``from`` is -1 (the previous
row; for row 0 the image), another negative offset, an earlier row's index, or a list of those (the
module then gets a list of tensors). Args are plain YAML values; strings are read with
``ast.literal_eval`` ('None' -> None), the name ``nc`` is the number of classes, and names listed under
``scale_args`` take their value for the chosen scale. Repeats n > 1 become
max(round(n * depth), 1); channel counts become ceil(min(c, max_channels) * width / 8) * 8.

The parser reads what it needs from the block classes (see models/blocks.py): ``c1`` as first parameter,
``width_args``, ``repeat_arg``, ``multi_input``. It learns output channels and strides by building the
graph row by row and running each new row once on a zero image of DRY_RUN_SIZE (eval mode, no grad), so a
new block needs nothing but ``@MODULES.register()`` and a bad row fails at that row.

Backbone / head split: the backbone exposes, for every stride its rows produce, the last row at that
stride; these are its contract features (finest first), which any registered head can use. Head rows may
use those backbone rows and earlier head rows; any other backbone row is an error.

Every problem with a file is a ``UserError`` of one line: ``<file>: row <i> (<section>): <problem>``.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from models.contract import Backbone, Head
from models.registry import ACTIVATIONS, MODULES
from utils.errors import UserError
from utils.yamlio import literal

LOGGER = logging.getLogger(__name__)
DRY_RUN_SIZE = 64  # side of the probe image: strides up to 64 are measurable


@dataclass(frozen=True)
class Row:
    """One parsed row: where it reads from and what was built (``args`` are the constructor's)."""

    index: int
    section: str
    src: int | list[int]  # `from` as written
    inputs: tuple[int, ...]  # absolute row indices; -1 is the image
    repeats: int
    module: str
    args: list[Any]

    @property
    def multi(self) -> bool:
        return isinstance(self.src, list)


def _run_rows(layers: nn.ModuleList, rows: list[Row], y: dict[int, torch.Tensor]) -> torch.Tensor:
    x = None
    for layer, row in zip(layers, rows):
        x = layer([y[i] for i in row.inputs] if row.multi else y[row.inputs[0]])
        y[row.index] = x
    assert x is not None
    return x


class GraphBackbone(Backbone):
    """The backbone rows of a YAML graph; returns the last row at every stride, finest first."""

    mean = (0.0, 0.0, 0.0)  # YOLO graphs take [0, 1] RGB as it is
    std = (1.0, 1.0, 1.0)

    def __init__(self, layers: list[nn.Module], rows: list[Row], feature_rows: list[int], channels: list[int],
                 strides: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.rows = rows
        self.feature_rows = feature_rows
        self.channels = channels
        self.strides = strides
        self.check_contract()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y: dict[int, torch.Tensor] = {-1: x}
        _run_rows(self.layers, self.rows, y)
        return [y[i] for i in self.feature_rows]


class GraphHead(Head):
    """The head rows of a YAML graph, reading backbone rows from the contract features."""

    def __init__(self, layers: list[nn.Module], rows: list[Row], feature_rows: list[int], out_stride: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.rows = rows
        used = {i for r in rows for i in r.inputs}
        self.feature_map = {r: j for j, r in enumerate(feature_rows) if r in used}  # backbone row -> feature index
        self.out_stride = out_stride

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return _run_rows(self.layers, self.rows, {r: features[j] for r, j in self.feature_map.items()})


def make_divisible(c: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` not below ``c``."""
    return math.ceil(c / divisor) * divisor


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _resolve_arg(v: Any, names: dict[str, Any]) -> Any:
    if isinstance(v, list):
        return [_resolve_arg(a, names) for a in v]
    if not isinstance(v, str):
        return v
    return names[v] if v in names else literal(v)


def _multipliers(graph: dict[str, Any], scale: str | None, where: str) -> tuple[float, float, float]:
    """(depth, width, max_channels) for ``scale``."""
    scales = graph.get("scales")
    if scales:
        if not isinstance(scales, dict):
            raise UserError(f"{where}: 'scales' must map a scale name to [depth, width, max_channels]")
        if scale is None:
            scale = next(iter(scales))
            LOGGER.warning("%s: no scale given (--scale or a name such as yolov8n_seg.yaml); using '%s'", where, scale)
        if scale not in scales:
            raise UserError(f"{where}: unknown scale '{scale}'; choose from: {', '.join(map(str, scales))}")
        vals = scales[scale]
        if not (isinstance(vals, list) and len(vals) in (2, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals)):
            raise UserError(f"{where}: scale '{scale}' must be [depth, width, max_channels], got {vals!r}")
        depth, width, max_ch = (list(vals) + [math.inf])[:3]
        return float(depth), float(width), float(max_ch)
    if scale is not None:
        raise UserError(f"{where}: has no 'scales', so --scale {scale} does not apply; drop --scale")
    return (_number(graph, "depth_multiple", 1.0, where), _number(graph, "width_multiple", 1.0, where),
            _number(graph, "max_channels", math.inf, where))


def _scale_args(graph: dict[str, Any], scale: str | None, where: str) -> dict[str, Any]:
    """Names whose value depends on the scale, usable in row args: ``scale_args: {c3k: {n: False, m: True}}``.

    YOLO11's reference parser switches C3k2's ``c3k`` on for scales m/l/x in code; here the file says it.
    """
    table = graph.get("scale_args") or {}
    scales = graph.get("scales") or {}
    if not isinstance(table, dict):
        raise UserError(f"{where}: 'scale_args' must map a name to {{scale: value}}")
    chosen = scale if scale is not None else next(iter(scales), None)
    out = {}
    for key, per_scale in table.items():
        if not isinstance(per_scale, dict) or chosen not in per_scale:
            raise UserError(f"{where}: scale_args '{key}' needs a value for scale '{chosen}' (a mapping scale -> value)")
        if key == "nc":
            raise UserError(f"{where}: scale_args may not redefine 'nc'")
        out[str(key)] = per_scale[chosen]
    return out


def _activation(graph: dict[str, Any], where: str) -> Callable[[], nn.Module] | None:
    """The factory of the file's ``activation:`` (None for the blocks' own SiLU)."""
    name = graph.get("activation", "SiLU")
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UserError(f"{where}: unknown activation {name!r}; choose from: {', '.join(ACTIVATIONS.names())}")
    return None if name == "SiLU" else ACTIVATIONS.get(name)


def swap_activation(module: nn.Module, make: Callable[[], nn.Module]) -> int:
    """Replace every SiLU inside ``module`` (a freshly built row, owned by this graph alone) by ``make()``;
    returns how many were replaced."""
    swapped = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.SiLU:
                setattr(parent, child_name, make())
                swapped += 1
    return swapped


def _check_swapped(p: "_RowParser", graph: dict[str, Any], where: str) -> None:
    """An ``activation:`` that found no SiLU to replace would build the file's graph unchanged, silently."""
    if p.act is not None and p.swapped == 0:
        raise UserError(f"{where}: 'activation: {graph['activation']}' replaces the SiLU of the graph's blocks, "
                        f"and this graph has none (its blocks bring their own activation); remove the key")


def _number(graph: dict[str, Any], key: str, default: float, where: str) -> float:
    v = graph.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise UserError(f"{where}: '{key}' must be a positive number, got {v!r}")
    return float(v)


def _shape(t: Any) -> str:
    return "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


class _RowParser:
    """Builds rows one at a time, keeping the probe outputs of earlier rows for shape inference."""

    def __init__(self, where: str, nc: int, ch: int, depth: float, width: float, max_ch: float,
                 act: Callable[[], nn.Module] | None = None) -> None:
        self.where, self.depth, self.width, self.max_ch, self.act = where, depth, width, max_ch, act
        self.swapped = 0  # SiLU modules replaced by the file's activation
        self.names = {"nc": nc}
        self.probe: dict[int, torch.Tensor] = {-1: torch.zeros(1, ch, DRY_RUN_SIZE, DRY_RUN_SIZE)}
        self.strides: dict[int, int] = {-1: 1}
        self.n_backbone = 0
        self.allowed_backbone_rows: set[int] | None = None  # the backbone's feature rows, once it is built

    def fail(self, i: int, section: str, problem: str) -> UserError:
        return UserError(f"{self.where}: row {i} ({section}): {problem}")

    def inputs(self, i: int, section: str, src: Any) -> tuple[int, ...]:
        items = src if isinstance(src, list) else [src]
        if not items or not all(_is_int(f) for f in items):
            raise self.fail(i, section, f"'from' must be an int or a list of ints, got {src!r}")
        out = []
        for f in items:
            a = i + f if f < 0 else f
            if i == 0 and f == -1:
                a = -1  # row 0 reads the image
            elif i == 0:
                raise self.fail(i, section, f"from {f} is out of range (row 0 can only read the image: from -1)")
            elif a >= i:
                raise self.fail(i, section, f"from {f} points forward (a row may only use rows 0..{i - 1})")
            elif a < 0:
                raise self.fail(i, section, f"from {f} is out of range (row {i} has only rows 0..{i - 1} before it)")
            allowed = self.allowed_backbone_rows
            if allowed is not None and 0 <= a < self.n_backbone and a not in allowed:
                raise self.fail(i, section, f"from {f} uses backbone row {a}, which is not a backbone feature "
                                            f"(the last row at its stride); head rows may use backbone rows "
                                            f"{', '.join(map(str, sorted(allowed)))}")
            out.append(a)
        return tuple(out)

    def constructor_args(self, i: int, section: str, cls: Any, name: str, raw: list[Any], n: int,
                         c_in: list[int], multi: bool) -> list[Any]:
        """The row's args as the constructor takes them: input channels, repeats, width-scaled channels."""
        params = _params(cls)
        pnames = [p.name for p in params]
        full, given = _resolve_arg(raw, self.names), list(raw)  # `given` tracks what the file wrote per slot
        if pnames[:1] == ["c1"]:
            if multi and not getattr(cls, "multi_input", False):
                raise self.fail(i, section, f"{name} takes one input but 'from' lists {len(c_in)}; "
                                            f"join them with a Concat row first")
            full.insert(0, c_in if multi else c_in[0])
            given.insert(0, None)
        repeat_here = bool(getattr(cls, "repeat_arg", False))
        if repeat_here:
            if "n" not in pnames:
                raise self.fail(i, section, f"{name} declares repeat_arg but has no parameter 'n'")
            if len(full) < pnames.index("n"):
                raise self.fail(i, section, self.arg_problem(name, params, raw, repeat_here))
            full.insert(pnames.index("n"), n)
            given.insert(pnames.index("n"), None)
        try:
            inspect.signature(cls).bind(*full)
        except TypeError:
            raise self.fail(i, section, self.arg_problem(name, params, raw, repeat_here)) from None
        except ValueError:
            pass  # no introspectable signature: let the constructor judge
        for arg_name in getattr(cls, "width_args", ("c2",)):
            k = pnames.index(arg_name) if arg_name in pnames else len(full)
            # a class count (`nc`) is never width-scaled
            if k < len(full) and _is_int(full[k]) and given[k] != "nc":
                full[k] = make_divisible(min(full[k], self.max_ch) * self.width)
        return full

    @staticmethod
    def arg_problem(name: str, params: list[inspect.Parameter], args: list[Any], repeat_here: bool) -> str:
        shown = [p for p in params if p.name != "c1" and not (repeat_here and p.name == "n")]
        sig = ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in shown)
        return f"wrong number of args for {name}: got {len(args)} {args!r}, expected args ({sig})"

    def build(self, i: int, section: str, row: Any) -> tuple[nn.Module, Row]:
        """Validate, build and probe one row."""
        if not (isinstance(row, list) and len(row) == 4):
            raise self.fail(i, section, f"expected [from, repeats, module, args], got {row!r}")
        src, n, name, args = row
        if not isinstance(name, str):
            raise self.fail(i, section, f"module must be a name, got {name!r}")
        if name not in MODULES:
            close = difflib.get_close_matches(name, MODULES.names(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise self.fail(i, section, f"unknown module '{name}'; {hint}(known: {', '.join(MODULES.names())})")
        if not _is_int(n) or n < 1:
            raise self.fail(i, section, f"repeats must be an integer >= 1, got {n!r}")
        if not isinstance(args, list):
            raise self.fail(i, section, f"args must be a list, got {args!r}")
        inputs = self.inputs(i, section, src)
        multi = isinstance(src, list)
        n = max(round(n * self.depth), 1) if n > 1 else n
        cls = MODULES.get(name)
        c_in = [int(self.probe[a].shape[1]) for a in inputs]
        full = self.constructor_args(i, section, cls, name, args, n, c_in, multi)
        copies = n if n > 1 and not getattr(cls, "repeat_arg", False) else 1  # stacked, or repeats inside
        x: Any = [self.probe[a] for a in inputs] if multi else self.probe[inputs[0]]
        shown = ", ".join(f"row {a} {_shape(self.probe[a])} (stride {self.strides[a]})" if a >= 0
                          else f"image {_shape(self.probe[a])}" for a in inputs)
        modules = []
        for k in range(copies):
            args_k = full
            if k > 0:
                shown = f"copy {k} of the row, after {_shape(x)}"
                if _param_names(cls)[:1] == ["c1"]:
                    args_k = [int(x.shape[1])] + full[1:]  # later copies read the previous copy's channels
            m = self.instantiate(i, section, cls, name, args_k)
            if self.act is not None:
                self.swapped += swap_activation(m, self.act)
            if multi and hasattr(m, "set_input_strides"):
                m.set_input_strides([self.strides[a] for a in inputs])
            x = self.probe_run(i, section, m, name, x, shown)
            modules.append(m)
        self.probe[i] = x
        self.strides[i] = self.stride_of(i, section, x)
        module = modules[0] if copies == 1 else nn.Sequential(*modules)
        return module, Row(i, section, src, inputs, n, name, full)

    def instantiate(self, i: int, section: str, cls: Any, name: str, full: list[Any]) -> nn.Module:
        try:
            return cls(*full)
        except Exception as e:  # a constructor's complaint about its arguments
            raise self.fail(i, section, f"{name}{tuple(full)!r} failed to build: {_first_line(e)}") from None

    def probe_run(self, i: int, section: str, m: nn.Module, name: str, x: Any, shown: str) -> torch.Tensor:
        m.eval()
        try:
            with torch.no_grad():
                out = m(x)
        except Exception as e:  # channel or size mismatch between this row and its inputs
            raise self.fail(i, section, f"{name} does not fit its input ({shown}): {_first_line(e)}") from None
        finally:
            m.train()
        if not (isinstance(out, torch.Tensor) and out.ndim == 4):
            raise self.fail(i, section, f"{name} must return one N x C x H x W tensor, got {_shape(out)}")
        return out

    def stride_of(self, i: int, section: str, x: torch.Tensor) -> int:
        h, w = x.shape[-2:]
        if h < 1 or DRY_RUN_SIZE % h or h != w:
            raise self.fail(i, section, f"output size {h}x{w} of a {DRY_RUN_SIZE}x{DRY_RUN_SIZE} probe is not "
                                        f"a whole stride (strides up to {DRY_RUN_SIZE} are supported)")
        return DRY_RUN_SIZE // h


def _params(cls: Any) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return []


def _param_names(cls: Any) -> list[str]:
    return [p.name for p in _params(cls)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def parse_model(graph: dict[str, Any], nc: int | None = None, scale: str | None = None,
                name: str = "<graph>") -> tuple[GraphBackbone, GraphHead | None]:
    """Build the backbone (and, if the file has head rows, the head) of a YOLO-style YAML graph."""
    if not isinstance(graph, dict):
        raise UserError(f"{name}: a model YAML must be a mapping, got {type(graph).__name__}")
    backbone_rows, head_rows = graph.get("backbone"), graph.get("head") or []
    if not isinstance(backbone_rows, list) or not backbone_rows:
        raise UserError(f"{name}: needs a non-empty 'backbone' list of [from, repeats, module, args] rows")
    if not isinstance(head_rows, list):
        raise UserError(f"{name}: 'head' must be a list of [from, repeats, module, args] rows")
    nc = nc if nc is not None else graph.get("nc")
    if not _is_int(nc) or nc < 1:
        raise UserError(f"{name}: number of classes unknown or invalid (nc={nc!r})")
    depth, width, max_ch = _multipliers(graph, scale, name)
    p = _RowParser(name, nc, int(_number(graph, "ch", 3, name)), depth, width, max_ch, _activation(graph, name))
    p.names.update(_scale_args(graph, scale, name))
    p.n_backbone = len(backbone_rows)

    built = [p.build(i, "backbone", spec) for i, spec in enumerate(backbone_rows)]
    last_at = {p.strides[i]: i for i in range(len(backbone_rows))}  # later rows win: the last at each stride
    feature_rows = [last_at[s] for s in sorted(last_at)]
    backbone = GraphBackbone([m for m, _ in built], [r for _, r in built], feature_rows,
                             [int(p.probe[i].shape[1]) for i in feature_rows], sorted(last_at))
    if not head_rows:
        _check_swapped(p, graph, name)
        return backbone, None

    p.allowed_backbone_rows = set(feature_rows)
    built = [p.build(len(backbone_rows) + k, "head", spec) for k, spec in enumerate(head_rows)]
    last = len(backbone_rows) + len(head_rows) - 1
    out_c = int(p.probe[last].shape[1])
    if out_c != nc:
        raise p.fail(last, "head", f"the head's last row gives {out_c} channels, expected nc={nc} "
                                   f"(end the head with a SegOutput row, args [nc, ...])")
    _check_swapped(p, graph, name)
    return backbone, GraphHead([m for m, _ in built], [r for _, r in built], feature_rows, p.strides[last])
