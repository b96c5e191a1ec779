"""Writing files and folders whole or not at all: everything is written under a temporary sibling name and renamed
into place when complete, so a crash or an error never leaves a half-written file where a reader (a resumed
conversion, a rerun, another process) would take it for a finished one.

The temporary names are per process (`tempfile`), so two writers of one path never write into each other's file;
the last rename wins. Files and folders get the permissions a plain `open()` / `mkdir()` would give them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_mode(mode: int) -> int:
    """`mode` less the process umask (`tempfile` creates 0600 files and 0700 folders)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write in the block: renamed onto `path` when the block ends, deleted when it
    raises. For writers that take a path (`pyarrow.parquet.ParquetWriter`); text and bytes use `write_atomically`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(descriptor)
    staging = Path(name)
    try:
        staging.chmod(_default_mode(0o666))
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a whole file or nothing: `data` (text as UTF-8, or bytes) into a temporary sibling renamed onto `path`."""
    with staged_file(path) as staging:
        if isinstance(data, str):
            staging.write_text(data, encoding="utf-8")
        else:
            staging.write_bytes(data)
    return Path(path)


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A new empty sibling of `folder` to fill in the block: when the block ends it replaces `folder` (any previous
    one is renamed aside to `.{name}-previous`, then deleted); when it raises it is deleted and `folder` is untouched.

    A crash between the two renames leaves the previous folder aside and none in place; the next call puts it back
    before staging, so a reader finds the old folder or the complete new one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    previous = folder.with_name(f".{folder.name}-previous")
    if previous.is_dir() and not folder.exists():
        previous.rename(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        staging.chmod(_default_mode(0o777))
        yield staging
        if folder.exists():
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
            staging.rename(folder)
            shutil.rmtree(previous)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["staged_file", "staged_folder", "write_atomically"]
