"""Atomic writes of Parquet parts: a redo journal makes a group of part changes all-or-nothing.

A transaction writes every new part under a hidden temporary name (``.<txn>-<n>.parquet.tmp``,
invisible to the ``*.parquet`` globs that readers use), then writes a journal listing the renames
and deletions, then applies it, then removes the journal. A crash before the journal exists leaves
only temporary files, which :func:`recover` deletes; a crash after it is finished by
:func:`recover` replaying the journal. Readers therefore always see a table as it was before or
after a transaction, never half-way.

Applying a journal (renames, then deletions) takes the store's commit lock exclusively and every
reader holds it shared while it lists and reads parts, so a reader never sees a replaced table's
old and new parts together, nor one table of a transaction changed and another not yet.
"""

import contextlib
import fcntl
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from agf.errors import AgfError
from agf.store.paths import inside, open_regular

JOURNAL_DIR = "journal"
COMMIT_LOCK = "commit.lock"


#: Seconds a writer waits for readers to let go of the commit lock before giving up.
DEFAULT_WAIT = 60.0


@contextlib.contextmanager
def commit_lock(root: Path, exclusive: bool, wait: float = DEFAULT_WAIT):
    """Hold the store's commit lock: exclusive to apply a commit, shared to read a snapshot.

    A writer that finds readers holding it says so on stderr and waits at most ``wait`` seconds,
    then raises :class:`AgfError`. A reader that cannot open the lock file (a read-only copy of a
    store) reads unlocked.
    """
    try:
        fd = os.open(Path(root) / COMMIT_LOCK, os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        if exclusive:
            _wait_for_readers(fd, wait)
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _wait_for_readers(fd: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise AgfError(f"gave up after {wait:g} s waiting for readers of the store (agf sql, similar, ...) to "
                           f"finish; nothing was committed: run the command again, or give it a longer --wait")
        if not told:
            sys.stderr.write(f"waiting for readers of the store to finish (at most {wait:g} s, --wait to change)\n")
            told = True
        time.sleep(0.05)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Transaction:
    """A set of part additions and removals under one store root, applied atomically on commit."""

    root: Path
    txn_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    renames: list[tuple[str, str]] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    committed: bool = False
    wait: float = DEFAULT_WAIT
    _count: int = 0

    def write_part(self, table_dir: Path, table: pa.Table, metadata: dict | None = None, stem: str | None = None) -> Path:
        """Write ``table`` as a hidden temporary part of ``table_dir``; it appears on commit.

        ``stem`` names the part (default: the transaction's id and a count); parts are read in
        the order of their names.
        """
        table_dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        name = stem or f"{self.txn_id}-{self._count:04d}"
        tmp = table_dir / f".{name}.parquet.tmp"
        if metadata:
            kv = dict(table.schema.metadata or {})
            kv[b"agf"] = json.dumps(metadata, sort_keys=True).encode()
            table = table.replace_schema_metadata(kv)
        try:
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # e.g. a full disk: leave nothing half-written behind
            raise
        final = table_dir / f"{name}.parquet"
        self.renames.append((str(tmp.relative_to(self.root)), str(final.relative_to(self.root))))
        return final

    def delete_parts(self, parts: list[Path]) -> None:
        """Remove ``parts`` when the transaction commits."""
        self.deletions.extend(str(p.relative_to(self.root)) for p in parts)

    def commit(self) -> None:
        """Make every change visible: write the journal (the commit point), apply it, drop it."""
        if not self.renames and not self.deletions:
            return
        journal_dir = self.root / JOURNAL_DIR
        journal_dir.mkdir(exist_ok=True)
        journal = journal_dir / f"{self.txn_id}.json"
        tmp = journal.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"renames": self.renames, "deletions": self.deletions}))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # the lock before the commit point: a writer that gives up waiting for readers commits nothing
        with commit_lock(self.root, exclusive=True, wait=self.wait):
            os.replace(tmp, journal)
            _fsync_dir(journal_dir)
            self.committed = True
            _apply(self.root, journal)

    def abort(self) -> None:
        """Forget an uncommitted transaction: delete its temporary parts.

        Once the journal is written the transaction is committed; :func:`recover` finishes it.
        """
        if self.committed:
            return
        for tmp, _ in self.renames:
            (self.root / tmp).unlink(missing_ok=True)
        (self.root / JOURNAL_DIR / f"{self.txn_id}.json.tmp").unlink(missing_ok=True)
        self.renames.clear()
        self.deletions.clear()


def _apply(root: Path, journal: Path) -> None:
    try:
        with open_regular(inside(root, journal.relative_to(root), "a journal")) as fh:
            ops = _checked_ops(root, journal, json.loads(fh.read()))
    except FileNotFoundError:
        return  # a reader finished this commit first (see finish_commits)
    except (OSError, ValueError) as exc:
        raise AgfError(f"journal {journal.name} cannot be replayed ({exc}): the store is damaged") from None
    for tmp, final in ops["renames"]:
        if tmp.exists():
            os.replace(tmp, final)
    for part in ops["deletions"]:
        part.unlink(missing_ok=True)
    journal.unlink()


def _checked_ops(root: Path, journal: Path, ops) -> dict[str, list]:
    """A journal's renames and deletions as paths, each a Parquet part under ``tables/``.

    A journal is replayed by readers too, so a hostile store's journal must not rename or
    delete anything but the store's own parts.
    """
    what = f"journal {journal.name}"

    def part(relative) -> Path:
        text = str(relative)
        if not text.startswith("tables/") or not text.endswith((".parquet", ".parquet.tmp")):
            raise AgfError(f"{what} names {text!r}, which is not a table part: refused (the store may be hostile)")
        return inside(root, text, what)

    if not isinstance(ops, dict) or not isinstance(ops.get("renames"), list) or not isinstance(ops.get("deletions"), list):
        raise ValueError("not a journal agf wrote")
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in ops["renames"]):
        raise ValueError("renames are not pairs")
    return {"renames": [(part(a), part(b)) for a, b in ops["renames"]], "deletions": [part(p) for p in ops["deletions"]]}


def finish_commits(root: Path) -> None:
    """Replay the journals of committed transactions that a killed writer left half-applied.

    Safe without the writer lock (any process may call it, a reader too): journals are replayed
    under the exclusive commit lock, and replaying one twice changes nothing.
    """
    journal_dir = inside(root, JOURNAL_DIR, "the journal folder")
    if not journal_dir.exists() or not any(journal_dir.glob("*.json")):
        return
    with commit_lock(root, exclusive=True):
        for journal in sorted(journal_dir.glob("*.json")):
            _apply(root, journal)


def recover(root: Path, tables_dir: Path) -> None:
    """Finish committed transactions and delete the leftovers of uncommitted ones.

    Call only while holding the store's writer lock.
    """
    journal_dir = inside(root, JOURNAL_DIR, "the journal folder")
    if journal_dir.exists():
        for stale in journal_dir.glob("*.json.tmp"):
            stale.unlink()
    finish_commits(root)
    if tables_dir.exists():
        for tmp in tables_dir.glob("*/.*.parquet.tmp"):
            inside(root, tmp.relative_to(root), "a leftover part").unlink()
