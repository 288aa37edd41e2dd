"""YAML reading and writing. Only ``yaml.safe_load``: a tag such as ``!!python/object`` is an error."""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML mapping safely; missing files, bad syntax and unsafe tags raise UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: YAML file not found")
    raw = p.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UserError(f"{p}: not a YAML file (binary content); give a text YAML file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start}: 0x{raw[e.start]:02x}; saved in a legacy 8-bit "
                        f"encoding?); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise UserError(f"{p}: refused, the YAML uses a tag that is not plain data ({e.problem}); "
                        f"only plain YAML is read") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text of plain data, keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def literal(text: str) -> Any:
    """A Python literal ('None', '2', '[1, 2]') as its value; anything else (a bare word such as
    'nearest', or text too deep to parse) stays the string. Never evaluates code."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
