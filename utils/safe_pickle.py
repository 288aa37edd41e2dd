"""Read a zip-format torch file whose pickle holds whole modules, without importing or running any of it.

The reference YOLO implementation saves its checkpoints (yolov8n-cls.pt, yolo11n-cls.pt, ...) as pickles of
its module objects, so ``torch.load(weights_only=True)`` refuses them, and loading them with the
unrestricted unpickler would run whatever the file names. ``read_module_pickle`` unpickles ``data.pkl`` from the zip itself with a restricted
``pickle.Unpickler`` whose ``find_class`` answers only:

* tensor rebuilding (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``), replaced by our own
  functions that view the raw storage bytes read from the zip (``torch.frombuffer`` + ``as_strided``);
* torch storage types and dtypes (``torch.HalfStorage`` -> a dtype marker, ``torch.float16``);
* plain containers: ``collections.OrderedDict``, ``builtins.set/frozenset/list/dict/tuple``;
* classes under ``ultralytics.``, ``torch.nn.modules.``, ``pathlib.`` and numpy's scalar/array types: each
  becomes an inert ``Placeholder`` subclass that only records its constructor args and pickled state. The
  named module is never imported (nor needs to be installed) and none of its code runs.

Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises ``UnsafePickle``
before it is called: the same guarantee as ``weights_only=True``, for files that cannot be read with it.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

PLACEHOLDER_PREFIXES = ("ultralytics.", "torch.nn.modules.", "pathlib.")
NUMPY_NAMES = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}
PLAIN = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
         ("builtins", "frozenset"): frozenset, ("builtins", "list"): list, ("builtins", "dict"): dict,
         ("builtins", "tuple"): tuple, ("torch", "Size"): tuple}
PLAIN.update({("__builtin__", n): v for (m, n), v in list(PLAIN.items()) if m == "builtins"})  # protocol 2 spelling
STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}


class UnsafePickle(pickle.UnpicklingError):
    """The file names a callable outside the allowed set; nothing it names was imported or called."""


class Placeholder:
    """Inert stand-in for a class of the file: keeps what the pickle gives it, does nothing else."""

    path = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def type_name(self) -> str:
        """The class name, e.g. 'C2f' for ultralytics.nn.modules.block.C2f."""
        return self.path.rsplit(".", 1)[-1]

    def attrs(self) -> dict[str, Any]:
        """The pickled ``__dict__`` (empty when the object carried none)."""
        st = getattr(self, "state", None)
        if isinstance(st, tuple) and st and isinstance(st[0], dict):  # (dict, slots) form
            st = st[0]
        return st if isinstance(st, dict) else {}

    def __repr__(self) -> str:
        return f"<placeholder {self.path}>"


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickle("tensor rebuild without a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` of a torch zip file; see the module docstring for what it accepts."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self._placeholders: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in PLAIN:
            return PLAIN[(module, name)]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(PLACEHOLDER_PREFIXES) or (module, name) in NUMPY_NAMES:
            path = f"{module}.{name}"
            if path not in self._placeholders:
                self._placeholders[path] = type(name, (Placeholder,), {"path": path})
            return self._placeholders[path]
        raise UnsafePickle(f"the file asks for {module}.{name}, which is neither a tensor, a plain container nor a "
                           f"module class; refused")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafePickle(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            t = torch.frombuffer(bytearray(raw), dtype=stype.dtype) if raw else torch.empty(0, dtype=stype.dtype)
            if t.numel() < int(numel):
                raise pickle.UnpicklingError(f"storage {key} holds {t.numel()} values, the pickle says {numel}")
            self._storages[key] = t
        return self._storages[key]


def read_module_pickle(path: str | Path) -> Any:
    """Unpickle a zip-format torch file with ``RestrictedUnpickler``; raises UnsafePickle or ValueError."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError("not a zip-format torch file (torch >= 1.6 writes zips; re-save it with torch.save)") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError("no data.pkl in the archive: not a torch file")
        prefix = pkls[0][: -len("data.pkl")]
        return RestrictedUnpickler(archive.read(pkls[0]), archive, prefix).load()


def module_state(obj: Placeholder, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a placeholder nn.Module: its parameters and persistent buffers, recursively."""
    out: dict[str, torch.Tensor] = {}
    attrs = obj.attrs()
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for k, v in (attrs.get(group) or {}).items():
            if isinstance(v, torch.Tensor) and k not in skip:
                out[prefix + k] = v
    for k, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, Placeholder):
            out.update(module_state(child, f"{prefix}{k}."))
    return out
