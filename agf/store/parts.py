"""Atomic writes of Parquet parts: a redo journal makes a group of part changes all-or-nothing.

A transaction writes every new part under a hidden temporary name (``.<txn>-<n>.parquet.tmp``,
invisible to the ``*.parquet`` globs that readers use), then writes a journal listing the renames
and deletions, then applies it, then removes the journal. A crash before the journal exists leaves
only temporary files, which :func:`recover` deletes; a crash after it is finished by
:func:`recover` replaying the journal. Readers therefore always see a table as it was before or
after a transaction, never half-way.
"""

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

JOURNAL_DIR = "journal"


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
    _count: int = 0

    def write_part(self, table_dir: Path, table: pa.Table, metadata: dict | None = None) -> Path:
        """Write ``table`` as a hidden temporary part of ``table_dir``; it appears on commit."""
        table_dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        name = f"{self.txn_id}-{self._count:04d}"
        tmp = table_dir / f".{name}.parquet.tmp"
        if metadata:
            kv = dict(table.schema.metadata or {})
            kv[b"agf"] = json.dumps(metadata, sort_keys=True).encode()
            table = table.replace_schema_metadata(kv)
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
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
        self.renames.clear()
        self.deletions.clear()


def _apply(root: Path, journal: Path) -> None:
    ops = json.loads(journal.read_text())
    for tmp, final in ops["renames"]:
        if (root / tmp).exists():
            os.replace(root / tmp, root / final)
    for part in ops["deletions"]:
        (root / part).unlink(missing_ok=True)
    journal.unlink()


def recover(root: Path, tables_dir: Path) -> None:
    """Finish committed transactions and delete the leftovers of uncommitted ones.

    Call only while holding the store's writer lock.
    """
    journal_dir = root / JOURNAL_DIR
    if journal_dir.exists():
        for stale in journal_dir.glob("*.json.tmp"):
            stale.unlink()
        for journal in sorted(journal_dir.glob("*.json")):
            _apply(root, journal)
    if tables_dir.exists():
        for tmp in tables_dir.glob("*/.*.parquet.tmp"):
            tmp.unlink()
