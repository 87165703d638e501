"""Resolving client-given relative paths against a configured root; anything that escapes it is refused.

Shared by the API (validation at POST) and the worker (resolution at run time), so both agree.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PathEscapesRoot(ValueError):
    """An absolute path, a `..` part, or a symlink that leads outside the root."""


def resolve_under_root(root: Path, relative: str) -> Path:
    """`root/relative`, fully resolved (symlinks followed), guaranteed to lie inside `root`."""
    if not relative or "\x00" in relative:
        raise PathEscapesRoot("path is empty or holds a NUL byte")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise PathEscapesRoot(f"path {relative!r} must be relative to the dataset root, not absolute")
    if ".." in pure.parts:
        raise PathEscapesRoot(f"path {relative!r} may not contain '..'")
    root_resolved = root.resolve()
    target = (root_resolved / Path(*pure.parts)).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise PathEscapesRoot(f"path {relative!r} leads outside the dataset root (symlink?)")
    return target
