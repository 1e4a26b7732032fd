"""The store: one directory of Parquet tables, frame matrices, indexes and models.

``Store.open`` checks the format version; writers hold an exclusive lock and every write is a
:class:`~agf.store.parts.Transaction`, so a crash or Ctrl-C never leaves a half-written table.
"""

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from agf import __version__
from agf.errors import AgfError
from agf.store.parts import COMMIT_LOCK, Transaction, commit_lock, finish_commits, recover
from agf.store.schemas import SCHEMAS, VECTOR_COLUMNS, conform

FORMAT_VERSION = 2


def _add_commit_lock(root: Path) -> None:
    """Version 2 readers hold ``commit.lock`` shared while reading; version 1 had none."""
    (root / COMMIT_LOCK).touch()


# Writer-lock descriptors this process holds. A forked child (an ingest worker) must not keep one
# open: the lock would outlive the writer until the child exits, refusing the next writer.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)  # the child's reference only: the parent keeps its lock
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)

# from-version -> the function that upgrades a store of that version to the next, in place
MIGRATIONS = {1: _add_commit_lock}
DEFAULT_CONFIG = {
    "sample_rate": 22050,
    "clip_seconds": 30.0,
    "frames": {
        # log-mel for the CNNs (METHOD.md): 128 bands, n_fft 1024, hop 512, dB
        "logmel": {"n_mels": 128, "n_fft": 1024, "hop_length": 512, "dtype": "float16"},
        # frame-level MFCC for the mfcc/dmfcc factors: 13 coefficients of 40 mel bands, n_fft 2048, hop 1024
        "mfcc": {"n_mfcc": 13, "n_mels": 40, "n_fft": 2048, "hop_length": 1024, "dtype": "float16"},
    },
}
SCHEMA_SQL = Path(__file__).resolve().parent.parent / "schema.sql"
_LIBRARIES = ("librosa", "torch", "scikit-learn", "faiss-cpu", "duckdb", "pyarrow", "numpy")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose output a derived table depends on."""
    versions = {"agf": __version__}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Store:
    """A store directory. Open it with :meth:`open`; create one with ``create=True``.

    Parameters
    ----------
    root : Path
        The store directory (``store.json``, ``tables/``, ``frames/``, ``indexes/``, ``models/``).
    config : dict
        The content of ``store.json``.
    writable : bool
        Whether this process holds the writer lock.
    """

    def __init__(self, root: Path, config: dict, writable: bool, lock_fd: int | None = None):
        self.root = root
        self.config = config
        self.writable = writable
        self._lock_fd = lock_fd

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, root, *, create: bool = False, write: bool = False, **config) -> "Store":
        """Open the store at ``root``; with ``create``, make it first if it does not exist.

        ``config`` (e.g. ``sample_rate=22050``) applies only to a store being created.
        Raises :class:`AgfError` for a missing store, a store of a newer format, or a store
        locked by another writer.
        """
        root = Path(root).expanduser().resolve()
        meta_path = root / "store.json"
        if not meta_path.exists():
            if not create:
                raise AgfError(f"no agf store at {root} (run `agf ingest` or `agf demo` to create one)")
            cls._create(root, config)
            write = True
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AgfError(f"cannot read {meta_path}: {exc}") from None
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AgfError(
                f"store {root} has format version {version}, newer than this agf understands "
                f"({FORMAT_VERSION}); upgrade agf to open it"
            )
        if version < FORMAT_VERSION and not write:
            raise AgfError(f"store {root} has format version {version}, older than this agf's ({FORMAT_VERSION}): "
                           f"run `agf migrate --store {root}` to upgrade it in place")
        lock_fd = cls._lock(root) if write else None
        store = cls(root, meta, writable=write, lock_fd=lock_fd)
        store.found_version = version  # before any migration
        if write:
            recover(root, store.tables_dir)
            store._migrate()
        return store

    def _migrate(self) -> None:
        """Upgrade an older store in place, one version at a time (each step saved)."""
        while (version := self.config["format_version"]) < FORMAT_VERSION:
            if version not in MIGRATIONS:
                self.close()
                raise AgfError(f"store {self.root} has format version {version}, which this agf cannot upgrade")
            MIGRATIONS[version](self.root)
            self.config["format_version"] = version + 1
            self._save_meta()

    @classmethod
    def _create(cls, root: Path, config: dict) -> None:
        root.mkdir(parents=True, exist_ok=True)
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise AgfError(f"unknown store settings: {sorted(unknown)}")
        meta = {
            "format_version": FORMAT_VERSION,
            "created_by": f"agf {__version__}",
            "created_at": now_utc().isoformat(),
            **json.loads(json.dumps(DEFAULT_CONFIG)),
            **config,
            "dims": {},
        }
        for sub in ("tables", "frames", "indexes", "models"):
            (root / sub).mkdir(exist_ok=True)
        _add_commit_lock(root)
        store = cls(root, meta, writable=True, lock_fd=cls._lock(root))
        try:
            txn = Transaction(root)
            for name, schema in SCHEMAS.items():
                txn.write_part(store.table_dir(name), schema.empty_table())
            txn.commit()
            store._save_meta()  # store.json last: a store exists once its tables do
        finally:
            store.close()

    @staticmethod
    def _lock(root: Path) -> int:
        fd = os.open(root / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgfError(f"store {root} is being written by another agf process") from None
        _HELD_LOCKS.add(fd)
        return fd

    def close(self) -> None:
        """Release the writer lock."""
        if self._lock_fd is not None:
            _HELD_LOCKS.discard(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _save_meta(self) -> None:
        tmp = self.root / "store.json.tmp"
        tmp.write_text(json.dumps(self.config, indent=2, sort_keys=True))
        os.replace(tmp, self.root / "store.json")

    # -- layout ---------------------------------------------------------------------------------

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def sample_rate(self) -> int:
        return int(self.config["sample_rate"])

    def table_dir(self, name: str) -> Path:
        if name not in SCHEMAS:
            raise AgfError(f"unknown table {name!r}; tables are: {', '.join(SCHEMAS)}")
        return self.tables_dir / name

    def parts(self, name: str) -> list[Path]:
        """The visible Parquet parts of table ``name``, oldest first."""
        return sorted(self.table_dir(name).glob("*.parquet"))

    # -- writing --------------------------------------------------------------------------------

    def write(
        self,
        append: dict[str, pa.Table] | None = None,
        replace: dict[str, pa.Table] | None = None,
        keep_where: dict[str, str] | None = None,
        params: dict | None = None,
    ) -> None:
        """Change several tables in one atomic transaction.

        Parameters
        ----------
        append : {table: rows}
            Rows added as a new part.
        replace : {table: rows}
            The table's new content; its old parts are dropped.
        keep_where : {table: predicate}
            The table is rewritten keeping only rows matching a DuckDB predicate over its
            columns (e.g. ``"source <> 'mfcc'"``), followed by its ``append`` rows.
        params : dict
            How the rows were made; recorded in every new part's Parquet metadata (``agf`` key).
        """
        if not self.writable:
            raise AgfError("store opened read-only")
        append, replace = dict(append or {}), dict(replace or {})
        for name, predicate in (keep_where or {}).items():
            kept = conform(name, self.query(f"SELECT * FROM {name} WHERE {predicate}"))
            added = append.pop(name, None)
            replace[name] = _concat(name, [kept] + ([added] if added is not None else []))
        metadata = {"format_version": FORMAT_VERSION, "versions": library_versions(), "params": params or {}}
        txn = Transaction(self.root, txn_id=f"{time.time_ns():016x}")
        try:
            for name, table in {**append, **replace}.items():
                table = conform(name, table)
                self._record_dim(name, table, replacing=name in replace)
                txn.write_part(self.table_dir(name), table, metadata)
            for name in replace:
                txn.delete_parts(self.parts(name))
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        self._save_meta()

    def _record_dim(self, name: str, table: pa.Table, replacing: bool) -> None:
        column = VECTOR_COLUMNS.get(name)
        if column is None or table.num_rows == 0:
            return
        kind = table.schema.field(column).type
        dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
        dims = self.config.setdefault("dims", {})
        if replacing or name not in dims:
            dims[name] = dim
        elif dims[name] != dim:
            dims[name] = None  # mixed sizes: the view falls back to FLOAT[]

    def compact(self, names: list[str] | None = None) -> dict[str, tuple[int, int]]:
        """Merge each table's parts into one, keeping rows and their order identical.

        Returns ``{table: (parts_before, parts_after)}`` for the tables that were compacted.
        """
        done = {}
        for name in names or list(SCHEMAS):
            parts = self.parts(name)
            if len(parts) <= 1:
                continue
            merged = _concat(name, [pq.read_table(p) for p in parts])
            self.write(replace={name: merged}, params={"compacted_parts": len(parts)})
            done[name] = (len(parts), len(self.parts(name)))
        return done

    # -- reading --------------------------------------------------------------------------------

    def catalog_sql(self) -> str:
        """``schema.sql`` with its placeholders filled in for this store."""
        dims = self.config.get("dims", {})

        def fill(match: re.Match) -> str:
            kind, name = match.group(1), match.group(2)
            if kind == "parts":
                glob = str(self.table_dir(name) / "*.parquet").replace("'", "''")
                return f"read_parquet('{glob}')"
            dim = dims.get(name)
            return f"FLOAT[{dim}]" if dim else "FLOAT[]"

        return re.sub(r"\{(parts|vector):(\w+)\}", fill, SCHEMA_SQL.read_text())

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a view per store table."""
        con = duckdb.connect(":memory:")
        try:
            con.execute(self.catalog_sql())
        except duckdb.Error as exc:  # e.g. a table folder removed by hand
            con.close()
            raise AgfError(f"the store's tables cannot be read: {_one_line(exc)}") from None
        return con

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        """Run ``sql`` over the store's views and return the result as an Arrow table."""
        return self._run(sql, params)

    def sql(self, sql: str) -> pa.Table:
        """Run a user's read-only statement: anything that would modify data is refused."""
        return self._run(sql, read_only=True)

    def _run(self, sql: str, params: list | None = None, read_only: bool = False) -> pa.Table:
        with self.snapshot():
            con = self.connect()
            try:
                if read_only:
                    _refuse_writes(con, sql)
                return con.sql(sql, params=params or None).to_arrow_table()
            except duckdb.Error as exc:
                raise AgfError(_one_line(exc)) from None
            finally:
                con.close()

    @contextlib.contextmanager
    def snapshot(self):
        """Read the store as of one commit: no commit is applied while the block runs.

        A commit that a killed writer left half-applied is finished first, when this process
        may write the store's files (else the reader waits for the next writer to finish it).
        """
        try:
            finish_commits(self.root)
        except OSError:
            pass
        with commit_lock(self.root, exclusive=False):
            yield

    def count(self, name: str) -> int:
        """Rows in table ``name``, from the parts' footers."""
        with self.snapshot():
            return sum(pq.read_metadata(p).num_rows for p in self.parts(name))

    def info(self) -> dict:
        """The store's path, format, tables (rows, parts, bytes), frame caches, indexes and models."""
        tables = []
        for name in SCHEMAS:
            parts = self.parts(name)
            tables.append(
                {
                    "table": name,
                    "rows": self.count(name),
                    "parts": len(parts),
                    "bytes": sum(p.stat().st_size for p in parts),
                }
            )
        frames = {}
        for kind, params in self.config.get("frames", {}).items():
            files = list((self.root / "frames" / kind).glob("*/*.npy"))
            frames[kind] = {**params, "tracks": len(files), "bytes": sum(f.stat().st_size for f in files)}
        indexes = sorted(p.stem for p in (self.root / "indexes").glob("*.faiss"))
        models = self.query("SELECT model_id, kind, target, created_at FROM models ORDER BY created_at")
        return {
            "path": str(self.root),
            "format_version": self.config["format_version"],
            "sample_rate": self.sample_rate,
            "tables": tables,
            "frames": frames,
            "indexes": indexes,
            "models": models.to_pylist(),
        }


def _concat(name: str, tables: list[pa.Table]) -> pa.Table:
    """Concatenate parts of one table, dropping empty ones (their vector type is unsized)."""
    tables = [conform(name, t) for t in tables]
    nonempty = [t for t in tables if t.num_rows] or tables[:1]
    return pa.concat_tables(nonempty, promote_options="permissive")


_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _refuse_writes(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise unless every statement of ``sql`` only reads."""
    statements = con.extract_statements(sql)
    if not statements:
        raise AgfError("no SQL statement given")
    for statement in statements:
        if statement.type not in _READ_ONLY:
            kind = statement.type.name.replace("_", " ")
            raise AgfError(f"agf sql is read-only: {kind} statements are not allowed")


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:500]
