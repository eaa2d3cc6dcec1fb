"""Reading model files and writing outputs atomically (temp file in the target folder, fsync,
rename), so an interrupted or failed run never leaves a damaged or half-written model."""

from __future__ import annotations

import mmap
import os
import shutil
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


def map_file(path: str | Path):
    """The file's bytes, memory-mapped read-only (``b""`` for an empty file): big models are
    never read into memory as a whole. Errors name the file."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputFileError(path, "is a folder, not a model file")
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except PermissionError:
        raise InputFileError(path, "permission denied") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def release_pages(data, offset: int, length: int) -> None:
    """Let the kernel drop the pages of a read-only mapping that we are done with (keeps the
    resident memory of a multi-GB model bounded). No-op for bytes."""
    if isinstance(data, mmap.mmap) and length > 0 and hasattr(mmap, "MADV_DONTNEED"):
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(len(data), offset + length)
        try:
            data.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass


class Patches:
    """New bytes at file offsets. Large patches are spilled to an unnamed temporary file so a
    clustered multi-GB model does not sit in memory before it is written."""

    SPILL_BYTES = 1 << 20

    def __init__(self) -> None:
        self._items: list[tuple[int, bytes | tuple[int, int]]] = []
        self._spill = None

    def add(self, offset: int, data) -> None:
        """New ``data`` (any C-contiguous bytes-like object, e.g. an array; copied) at
        ``offset``."""
        data = memoryview(data).cast("B")
        if len(data) >= self.SPILL_BYTES:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile()
            pos = self._spill.seek(0, os.SEEK_END)
            self._spill.write(data)
            self._items.append((offset, (pos, len(data))))
        else:
            self._items.append((offset, bytes(data)))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        """(offset, bytes) pairs, spilled ones read back in chunks of at most 64 MiB."""
        chunk = 64 << 20
        for offset, item in self._items:
            if isinstance(item, bytes):
                yield offset, item
                continue
            pos, length = item
            done = 0
            while done < length:
                n = min(chunk, length - done)
                self._spill.seek(pos + done)
                yield offset + done, self._spill.read(n)
                done += n

    def apply(self, data) -> bytes:
        out = bytearray(data)
        for offset, new in self:
            out[offset:offset + len(new)] = new
        return bytes(out)


def write_atomic(path: str | Path, data=b"", *, overwrite: bool = False, mode: int | None = None,
                 source: str | Path | None = None, patches=(), verify=None) -> None:
    """Write a file through a temporary file in the same folder, fsync, then rename.

    The content is ``data``, or a copy of the file ``source``; then ``patches`` ((offset,
    bytes) pairs) are written over it, and ``verify(mapped_bytes)`` may reject the result
    (raising) before it is renamed into place. An existing ``path`` is replaced only with
    ``overwrite``. ``mode`` sets the permissions (default: 0o666 less the umask).
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
        with os.fdopen(fd, "w+b") as f:
            if source is not None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, f, 16 << 20)
            else:
                f.write(data)
            for offset, new in patches:
                f.seek(offset)
                f.write(new)
            f.flush()
            os.fsync(f.fileno())
            if verify is not None:
                size = f.seek(0, os.SEEK_END)
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
                verify(mapped)
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
