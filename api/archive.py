"""A tar.gz streamed member by member: files are read in blocks and compressed as they go, so an archive of a
large adapter is never built in memory or on disk. Only regular files and in-memory bytes go in (a symlink is
refused, never followed), and every member name is a plain relative path, so extracting the archive cannot write
outside the folder it is extracted into.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks: an archive ends padded to a whole record, as tarfile writes it
READ_CHUNK = 1 << 20
Member = tuple[str, Path | bytes]  # (name inside the archive, a regular file or the member's bytes)


class ArchiveError(ValueError):
    """A member that may not go into an archive (bad name, not a regular file, changed while read)."""


def check_member_name(name: str) -> str:
    pure = PurePosixPath(name)
    if not name or "\x00" in name or "\\" in name or pure.is_absolute() or ".." in pure.parts \
            or str(pure) != name.rstrip("/") or name.startswith("./"):
        raise ArchiveError(f"not a plain relative archive member name: {name!r}")
    return name


def _header(name: str, size: int, *, directory: bool, mtime: int) -> bytes:
    info = tarfile.TarInfo(check_member_name(name))
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _open_regular(path: Path) -> tuple[int, int]:
    """(file descriptor, size) of a regular file, opened without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ArchiveError(f"{path.name}: cannot be opened as a regular file ({exc.strerror})") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ArchiveError(f"{path.name}: not a regular file")
    return fd, info.st_size


def tar_gz_stream(folder: str, members: Sequence[Member], *, mtime: int | None = None) -> Iterator[bytes]:
    """Compressed chunks of a tar archive holding `folder/` and, inside it, each member (name, file or bytes).
    Every file is opened and checked before the first byte is produced, so a bad member fails the request, not
    the stream."""
    stamp = int(time.time()) if mtime is None else mtime
    check_member_name(folder)
    opened: list[tuple[str, int, int | bytes]] = []
    try:
        for name, source in members:
            if "/" in name:
                raise ArchiveError(f"member {name!r}: only files directly inside {folder}/")
            check_member_name(name)
            check_member_name(f"{folder}/{name}")
            if isinstance(source, bytes):
                opened.append((name, len(source), source))
            else:
                fd, size = _open_regular(source)
                opened.append((name, size, fd))
    except BaseException:
        _close(opened)
        raise
    return _stream(folder, opened, stamp)


def _close(opened: list[tuple[str, int, int | bytes]]) -> None:
    for _, _, source in opened:
        if isinstance(source, int):
            os.close(source)


def _stream(folder: str, opened: list[tuple[str, int, int | bytes]], mtime: int) -> Iterator[bytes]:
    """Runs (and closes every file) when iterated; a client that goes away closes the generator, and the files."""
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    written = 0

    def put(data: bytes) -> bytes:
        nonlocal written
        written += len(data)
        return gzip.compress(data)

    try:
        yield put(_header(f"{folder}/", 0, directory=True, mtime=mtime))
        for name, size, source in opened:
            yield put(_header(f"{folder}/{name}", size, directory=False, mtime=mtime))
            if isinstance(source, bytes):
                yield put(source)
            else:
                left = size
                while left > 0:
                    chunk = os.read(source, min(READ_CHUNK, left))
                    if not chunk:
                        raise ArchiveError(f"{name}: shrank while it was archived")
                    left -= len(chunk)
                    if out := put(chunk):
                        yield out
            if size % BLOCK:
                yield put(b"\0" * (BLOCK - size % BLOCK))
        end = 2 * BLOCK
        end += (-(written + end)) % RECORD
        yield put(b"\0" * end) + gzip.flush()
    finally:
        _close(opened)
