"""Compiled code, librosa's and agf's own (:mod:`agf.models.fused`): one numba cache that agf
controls, filled once under a file lock.

librosa compiles numba functions on first use and caches them beside its own sources. Two
processes compiling at once (two first runs, worker processes, Ray workers sharing a virtualenv)
can leave that cache inconsistent, after which chroma features segfault in every process until
the cache files are deleted. agf points numba at a cache folder of its own (``NUMBA_CACHE_DIR``,
unless the environment already sets one) and runs each process's first feature computation
under an exclusive lock on that folder, so a concurrent first run waits and then loads what the
first one compiled instead of compiling beside it.
"""

import contextlib
import fcntl
import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/agf/numba`` (``~/.cache/agf/numba``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agf" / "numba"


def use_own_cache() -> None:
    """Point numba's cache at :func:`cache_dir`; call before numba is first imported."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))


@contextlib.contextmanager
def compile_lock():
    """Hold the cache folder's lock while code that may compile runs (other processes wait)."""
    folder = Path(os.environ.get("NUMBA_CACHE_DIR") or cache_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".agf-compile.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # an unwritable cache: numba compiles in memory and writes nothing to race on
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
