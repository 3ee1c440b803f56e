"""Disk-tier helpers: make a load a real disk read by dropping the checkpoint from the page cache."""

from __future__ import annotations

import os
from pathlib import Path


def drop_page_cache(path: str | Path) -> int:
    """posix_fadvise(DONTNEED) every file under path; returns how many files were advised.

    The kernel may keep pages that are still mapped or dirty; on most systems this makes the
    next read of a clean checkpoint come from the disk.
    """
    if not hasattr(os, "posix_fadvise"):
        return 0
    n = 0
    root = Path(path)
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n
