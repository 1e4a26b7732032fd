"""Paths read from a store are untrusted: each must stay inside the store and name a regular file.

A store may come from someone else. Its rows, sidecars and journals name files by path; a hostile
store could name ``/etc/passwd``, climb out with ``..``, lead out through a symlink, or name a
FIFO that blocks a reader forever. Every such path goes through :func:`inside` before use, and
files are read through :func:`open_regular`, which refuses anything but a regular file.
"""

import hashlib
import os
import stat
from pathlib import Path

from agf.errors import AgfError


def inside(root: Path, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root``.

    Parameters
    ----------
    root : Path
        The store's directory, already resolved.
    relative : str or PathLike
        The path as the store records it: relative, without ``..``.
    what : str
        What recorded the path (e.g. ``"models row 'cnn-genre-1a2b'"``), for the error message.

    Raises
    ------
    AgfError
        For an absolute path, a ``..`` component, an empty path, or a symlink leading out.
    """
    text = os.fspath(relative)
    rel = Path(text)
    if not text or rel.is_absolute() or ".." in rel.parts:
        raise AgfError(f"{what} names {text!r}, a path outside the store: refused (the store may be hostile)")
    path = root / rel
    if not path.resolve().is_relative_to(root):
        raise AgfError(f"{what} names {text!r}, which a symlink leads outside the store: refused "
                       f"(the store may be hostile)")
    return path


def open_regular(path: Path):
    """Open ``path`` for binary reading only if it is a regular file (symlinks are followed).

    A FIFO would block the reader and a device never ends, so both are refused before any read.
    Raises ``OSError`` (``EINVAL`` for a file that is not regular), like ``open`` does.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise OSError(22, f"not a regular file ({kind})", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    # From here the file object alone owns the descriptor: never closed twice, even when a signal
    # handler's exception lands between two lines (a second close could hit a reused number).
    return os.fdopen(fd, "rb")


def replace_text(path: Path, text: str) -> None:
    """Make ``text`` the content of ``path`` all at once: written beside it, then renamed over it,
    so a reader sees the old file or the new, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a regular file's bytes, read in blocks (a FIFO or a device is refused:
    it would block or never end)."""
    digest = hashlib.sha256()
    with open_regular(Path(path)) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_store_file(root: Path, relative: str | os.PathLike, what: str) -> bytes:
    """The bytes of a file the store records, after :func:`inside` and :func:`open_regular`."""
    path = inside(root, relative, what)
    try:
        with open_regular(path) as fh:
            return fh.read()
    except OSError as exc:
        raise AgfError(f"{what}: {path} cannot be read: {exc.strerror or exc}") from None


def path_text(path: str | os.PathLike) -> str:
    """A file system path as text a table can hold (valid UTF-8).

    A name that is not UTF-8 (say ``bad\\xff.mp3`` written by another system) keeps its
    undecodable bytes as ``\\xNN`` escapes, so it is stored and shown instead of failing.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")
