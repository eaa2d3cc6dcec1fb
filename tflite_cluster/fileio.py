"""Reading model files and writing outputs atomically (temp file in the target folder, fsync,
rename), so an interrupted or failed run never leaves a damaged or half-written model."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import InputFileError, OutputError


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    try:
        if path.is_dir():
            raise InputFileError(path, "is a folder, not a model file")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except PermissionError:
        raise InputFileError(path, "permission denied") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None


def write_atomic(path: str | Path, data, *, overwrite: bool = False, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    An existing ``path`` is replaced only with ``overwrite``. ``mode`` sets the permissions
    (default: 0o666 less the umask, like a new file).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(path, "is a folder")
    if path.exists() and not overwrite:
        raise OutputError(path, "already exists (use --force to overwrite)")
    if not folder.is_dir():
        raise OutputError(path, f"folder {folder} does not exist")
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(path, f"cannot write in {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(path, f"cannot write: {exc.strerror or exc}") from None
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
