"""Filesystem helpers: atomic writes and run-directory naming."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, IO

from utils.errors import UserError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(fileobj)`` so that readers see either the old or the new file.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
    ``path`` (an atomic operation on POSIX and Windows). If ``write`` raises, ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


_SAFE_NAME = re.compile(r"^[A-Za-z0-9._\-][A-Za-z0-9._\-/]*$")


def check_run_name(project: str | os.PathLike, name: str) -> Path:
    """``project/name`` after checking that ``name`` stays inside ``project``.

    Absolute paths, '..' components, '.', odd characters and symlinks leading out are refused.
    """
    parts = Path(name).parts if name else ()
    if not parts or Path(name).is_absolute() or ".." in parts or not _SAFE_NAME.match(name):
        raise UserError(f"--name '{name}': use a plain folder name (letters, digits, '.', '_', '-'); "
                        f"absolute paths and '..' are refused so runs stay inside --project")
    base = Path(project) / name
    if not base.resolve().is_relative_to(Path(project).resolve()):
        raise UserError(f"--name '{name}': {base} resolves to {base.resolve()}, outside --project {project} "
                        f"(a symlink?); choose another name")
    return base


def run_dir(project: str | os.PathLike, name: str, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """``project/name``, or ``project/name2``, ``name3``... when it exists and ``exist_ok`` is False.

    ``name`` must stay inside ``project`` (see ``check_run_name``).
    """
    base = check_run_name(project, name)
    path = base
    if path.exists() and not exist_ok:
        n = 2
        while (base.parent / f"{base.name}{n}").exists():
            n += 1
        path = base.parent / f"{base.name}{n}"
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path
