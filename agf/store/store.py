"""The store: one directory of Parquet tables, frame matrices, indexes and models.

``Store.open`` checks the format version; writers hold an exclusive lock and every write is a
:class:`~agf.store.parts.Transaction`, so a crash or Ctrl-C never leaves a half-written table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import gc
import json
import os
import re
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agf.version import __version__
from agf.errors import AgfError
from agf.store.parts import COMMIT_LOCK, DEFAULT_WAIT, Transaction, commit_lock, finish_commits, recover
from agf.store.paths import inside, open_regular, replace_text
from agf.store.schemas import SCHEMAS, VECTOR_COLUMNS, conform

if TYPE_CHECKING:  # duckdb and pyarrow.dataset load when a query runs: a search needs neither
    import duckdb

#: 3: no pickled model files (factor models are ``model.npz``); 2: readers' commit lock.
FORMAT_VERSION = 3


# Writer-lock descriptors this process holds. A forked child (an ingest worker) must not keep one
# open: the lock would outlive the writer until the child exits, refusing the next writer.
_HELD_LOCKS: set[int] = set()


# DuckDB connections a forked child inherited: kept, never closed or destroyed there (see below).
_INHERITED_CONNECTIONS: list = []


def _enter_forked_child() -> None:
    """A forked child (an ingest worker) lets go of the parent's writer locks, and leaves every
    object it inherited to the parent: a DuckDB connection destroyed in the child joins
    scheduler threads only the parent has, and the child crashes. So the child's garbage
    collector never looks at them (a store dropped into a reference cycle reaches a worker as
    garbage), and a reused connection is set aside rather than released."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)  # the child's reference only: the parent keeps its lock
        except OSError:
            pass
    _HELD_LOCKS.clear()
    gc.freeze()


os.register_at_fork(after_in_child=_enter_forked_child)

DEFAULT_CONFIG = {
    "sample_rate": 22050,
    "clip_seconds": 30.0,
    # "native": the fma feature set at each file's own rate, as FMA computed its released values
    "fma_rate": "store",
    "frames": {
        # log-mel for the CNNs (docs/METHOD.md): 128 bands, n_fft 1024, hop 512, dB
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

    def __init__(self, root: Path, config: dict, writable: bool, lock_fd: int | None = None,
                 wait: float = DEFAULT_WAIT):
        self.root = root
        self.config = config
        self.writable = writable
        self.wait = wait
        self._lock_fd = lock_fd
        self._connections = threading.local()

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, root, *, create: bool = False, write: bool = False, older: bool = False,
             wait: float = DEFAULT_WAIT, **config) -> "Store":
        """Open the store at ``root``; with ``create``, make it first if it does not exist.

        ``config`` (e.g. ``sample_rate=22050``) applies only to a store being created. ``older``
        (with ``write``) opens a store of an older format, for :mod:`agf.store.migrations` only.
        ``wait`` is how many seconds a commit waits for readers before giving up.
        Raises :class:`AgfError` for a missing or malformed store, a store of another format,
        or a store locked by another writer.
        """
        root = Path(root).expanduser().resolve()
        meta_path = root / "store.json"
        if not meta_path.exists():
            if (root / "tables").exists():  # a store whose store.json was lost: defaults would misread it
                raise AgfError(f"{root} holds an agf store's tables but no store.json; restore store.json (its sample "
                               f"rate and frame parameters) rather than let agf guess them")
            if not create:
                raise AgfError(f"no agf store at {root} (run `agf ingest` or `agf demo` to create one)")
            cls._create(root, config)
            write = True
        meta = _read_config(meta_path)
        version = meta["format_version"]
        if version > FORMAT_VERSION:
            raise AgfError(
                f"store {root} has format version {version}, newer than this agf understands "
                f"({FORMAT_VERSION}); upgrade agf to open it"
            )
        if version < FORMAT_VERSION and not (older and write):
            raise AgfError(f"store {root} has format version {version}, older than this agf's ({FORMAT_VERSION}): "
                           f"run `agf migrate --store {root}` to upgrade it in place")
        lock_fd = cls._lock(root) if write else None
        store = cls(root, meta, writable=write, lock_fd=lock_fd, wait=wait)
        store.found_version = version  # before any migration
        if write:
            recover(root, store.tables_dir)
        return store

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
        }
        for sub in ("tables", "frames", "indexes", "models"):
            (root / sub).mkdir(exist_ok=True)
        (root / COMMIT_LOCK).touch()
        store = cls(root, meta, writable=True, lock_fd=cls._lock(root))
        try:
            txn = Transaction(root)
            for name, schema in SCHEMAS.items():
                txn.write_part(store.table_dir(name), schema.empty_table())
            txn.commit()
            store.save_config()  # store.json last: a store exists once its tables do
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
        """Release the writer lock, and this thread's query connection."""
        self._release_connection()
        if self._lock_fd is not None:
            _HELD_LOCKS.discard(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def save_config(self) -> None:
        """Write ``store.json`` from :attr:`config` (a temporary file, then renamed)."""
        replace_text(self.root / "store.json", json.dumps(self.config, indent=2, sort_keys=True))

    # -- layout ---------------------------------------------------------------------------------

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def sample_rate(self) -> int:
        return int(self.config["sample_rate"])

    def report_dir(self, name: str) -> Path:
        """``reports/<name>/``: where a command writes files for people to read (not created here)."""
        return inside(self.root, f"reports/{name}", "a report folder")

    def table_dir(self, name: str) -> Path:
        if name not in SCHEMAS:
            raise AgfError(f"unknown table {name!r}; tables are: {', '.join(SCHEMAS)}")
        return self.tables_dir / name

    def parts(self, name: str) -> list[Path]:
        """The visible Parquet parts of table ``name``, oldest first.

        Each is a regular file inside the store: the folder is checked once (a symlink leading
        out is refused), then each part by one ``lstat`` (agf never writes a symlink or a FIFO
        there), so a store of many parts costs no path resolution per part on every query.
        """
        folder = inside(self.root, self.table_dir(name).relative_to(self.root), f"table {name}")
        parts = sorted(folder.glob("*.parquet"))
        for part in parts:
            if not stat.S_ISREG(part.lstat().st_mode):
                raise AgfError(f"table {name}: {part.name} is not a regular file: refused (the store may be hostile)")
        return parts

    # -- writing --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, params: dict | None = None) -> Iterator["TableChanges"]:
        """Change several tables all-or-nothing, the way sqlite-utils' ``db.atomic()`` does.

        The changes gathered in the block commit together when it ends; if it raises, nothing
        is committed. ``params`` (how the rows were made) is recorded in every new part's
        Parquet metadata (``agf`` key).

        Examples
        --------
        >>> with store.transaction(params={"model_id": m}) as tx:
        ...     tx.delete_where("predictions", "model_id = ? AND track_id = ANY(?)", [m, ids])
        ...     tx.append("predictions", rows)
        """
        if not self.writable:
            raise AgfError("store opened read-only")
        changes = TableChanges()
        yield changes
        self._commit(changes, params or {})

    def _commit(self, changes: "TableChanges", params: dict) -> None:
        metadata = {"format_version": FORMAT_VERSION, "versions": library_versions(), "params": params}
        txn = Transaction(self.root, txn_id=f"{time.time_ns():016x}", wait=self.wait)
        try:
            for name, conditions in changes.deletions.items():
                predicate, params = _predicate(conditions)
                if not self.query(f"SELECT count(*) AS n FROM {name} WHERE {predicate}", params)["n"][0].as_py():
                    continue  # e.g. tagging new files: nothing to replace, no part to read
                for part in self.parts(name):
                    self._delete_rows(txn, name, part, conditions)
            for name, rows in changes.replaced.items():
                txn.delete_parts(self.parts(name))
                txn.write_part(self.table_dir(name), rows, metadata)
            for name, tables in changes.appended.items():
                if not any(t.num_rows for t in tables):
                    continue
                txn.write_part(self.table_dir(name), _concat(name, tables), metadata)
            txn.commit()
        except BaseException:
            txn.abort()
            raise

    def _delete_rows(self, txn: Transaction, name: str, part: Path, conditions: list[tuple[str, list]]) -> None:
        """Rewrite ``part`` without the rows any of ``conditions`` matches; a part none matches is
        left as it is, and the rewritten one keeps its place in the table's order."""
        try:
            rows = pq.read_table(part)
        except (pa.ArrowException, OSError) as exc:
            raise damaged(name, exc) from None
        gone = _matching(rows, conditions)
        if not gone.true_count:
            return
        txn.delete_parts([part])
        if gone.true_count < rows.num_rows:
            import pyarrow.compute as pc

            txn.write_part(self.table_dir(name), rows.filter(pc.invert(gone)), stem=f"{part.stem.split('~')[0]}~{txn.txn_id}")

    def compact(self, names: list[str] | None = None) -> dict[str, tuple[int, int]]:
        """Merge each table's parts into one, keeping rows and their order identical.

        Returns ``{table: (parts_before, parts_after)}`` for the tables that were compacted.
        """
        done = {}
        for name in names or list(SCHEMAS):
            parts = self.parts(name)
            if len(parts) <= 1:
                continue
            try:
                merged = _concat(name, [pq.read_table(p) for p in parts])
            except (pa.ArrowException, OSError) as exc:
                raise damaged(name, exc) from None
            with self.transaction(params={"compacted_parts": len(parts)}) as tx:
                tx.replace(name, merged)
            done[name] = (len(parts), len(self.parts(name)))
        return done

    # -- reading --------------------------------------------------------------------------------

    def vector_size(self, name: str, parts: list[Path] | None = None) -> int | None:
        """The size every vector of table ``name`` has, or ``None`` (none yet, or mixed sizes).

        Read from the footers of its ``parts`` (default: its parts now), which the commit that
        wrote them made all-or-nothing.
        """
        column = VECTOR_COLUMNS.get(name)
        if column is None:
            return None
        sizes = {part_vector_size(part, column) for part in (self.parts(name) if parts is None else parts)} - {0}
        dim = sizes.pop() if len(sizes) == 1 else None
        return dim if dim and dim <= MAX_DIM else None

    def catalog_sql(self, sizes: dict[str, int | None] | None = None) -> str:
        """``schema.sql`` with its placeholders filled in: ``parts_<table>`` relations and vector
        types (``FLOAT[n]`` for the tables whose ``sizes`` are known; default: their sizes now)."""

        def fill(match: re.Match) -> str:
            kind, name = match.group(1), match.group(2)
            if kind == "parts":
                return f"parts_{name}"
            dim = sizes.get(name) if sizes is not None else self.vector_size(name)
            return f"FLOAT[{dim}]" if dim else "FLOAT[]"

        return re.sub(r"\{(parts|vector):(\w+)\}", fill, SCHEMA_SQL.read_text())

    def connect(self, listing: dict[str, list[Path]] | None = None) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a view per store table, and no access to any file.

        Each table's parts (``listing``; default: :meth:`parts` of every table now) are handed
        to DuckDB as an Arrow dataset, vectors read at their fixed size when known (as fast as
        DuckDB's own Parquet reader); then DuckDB's external access is switched off and its
        configuration locked, so no statement run on this connection can read, write or load
        anything else: not a path, not an extension, not another database.
        """
        import duckdb

        listing = listing if listing is not None else self._listing()
        sizes = {name: self.vector_size(name, parts) for name, parts in listing.items()}
        con = duckdb.connect(":memory:")
        try:
            for name, parts in listing.items():
                con.register(f"parts_{name}", _dataset(name, parts, sizes[name]))
            con.execute(self.catalog_sql(sizes))
            con.execute(SANDBOX_SQL)
        except (duckdb.Error, pa.ArrowException, OSError) as exc:  # e.g. a damaged part or a folder removed by hand
            con.close()
            raise AgfError(f"the store's tables cannot be read: {_one_line(exc)}") from None
        except BaseException:
            con.close()
            raise
        return con

    def _listing(self) -> dict[str, list[Path]]:
        return {name: self.parts(name) for name in SCHEMAS}

    def _reused_connection(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection for agf's own queries, kept while no table's parts change: a
        new connection costs tens of milliseconds, a look at the parts a few. A forked child
        makes its own (a DuckDB connection is not to be shared across a fork)."""
        listing = self._listing()
        key = (os.getpid(), tuple(str(p) for parts in listing.values() for p in parts))
        held = getattr(self._connections, "held", None)
        if held is None or held[0] != key:
            self._release_connection()
            self._connections.held = (key, self.connect(listing))
        return self._connections.held[1]

    def _release_connection(self) -> None:
        held = getattr(self._connections, "held", None)
        if held is not None and held[0][0] == os.getpid():
            held[1].close()
        elif held is not None:  # a parent's, inherited over a fork: neither closed nor destroyed here
            _INHERITED_CONNECTIONS.append(held[1])
        self._connections.held = None

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        """Run agf's own ``sql`` (with bound ``params``) over the store's views: an Arrow table."""
        return self._run(sql, params)

    def vectors(self, table: str, where: str | None = None, params: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of ``table`` (rows matching ``where``, with ``?`` bound to ``params``), by id.

        Parameters
        ----------
        table : str
            A table with a vector column: ``features_<set>``, ``embeddings``, ``agf``, ``artist_vectors``.
        where : str, optional
            A DuckDB predicate over the table's columns, e.g. ``"model_id = ?"``.

        Returns
        -------
        ids : np.ndarray, shape (n,), int64
            The rows' ids (``track_id`` or ``artist_id``), ascending.
        matrix : np.ndarray, shape (n, dim), float32
            Their vectors; ``(0, 0)`` when no row matches.
        """
        column = VECTOR_COLUMNS.get(_known(table))
        if column is None:
            raise AgfError(f"table {table} has no vectors; tables with vectors: {', '.join(VECTOR_COLUMNS)}")
        key = SCHEMAS[table].field(0).name
        rows = self.query(f"SELECT {key}, {column} FROM {table}" + (f" WHERE {where}" if where else "") + f" ORDER BY {key}",
                          params)
        ids = rows[key].to_numpy().astype(np.int64)
        if not len(ids):
            return ids, np.zeros((0, 0), np.float32)
        flat = rows[column].combine_chunks()
        return ids, np.asarray(flat.flatten(), np.float32).reshape(len(ids), -1)

    def sql(self, sql: str, *, timeout: float | None = None) -> pa.Table:
        """Run a user's read-only statement over the store's tables, in DuckDB's sandbox.

        Parameters
        ----------
        sql : str
            One or more ``SELECT`` statements (``EXPLAIN`` of one too); anything that would write,
            attach, load or configure is refused before it runs.
        timeout : float, optional
            Seconds after which the query is interrupted with an :class:`AgfError`.

        Returns
        -------
        pyarrow.Table
            The last statement's result.
        """
        return self._run(sql, read_only=True, timeout=timeout)

    def _run(self, sql: str, params: list | None = None, read_only: bool = False, timeout: float | None = None) -> pa.Table:
        import duckdb

        with self.snapshot():
            # a user's statement gets a connection of its own, closed after; agf's reuse one
            con = self.connect() if read_only else self._reused_connection()
            try:
                if not read_only:
                    return con.sql(sql, params=params or None).to_arrow_table()
                _refuse_writes(con, sql)
                return _interruptible(con, sql, timeout)
            except (duckdb.Error, pa.ArrowException, OSError) as exc:
                scanned = re.search(r"registered as 'parts_(\w+)' failed: (.*)", str(exc), re.DOTALL)
                raise (damaged(scanned[1], scanned[2]) if scanned else AgfError(_one_line(exc))) from None
            finally:
                if read_only:
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
            parts = self.parts(name)
            try:
                return sum(pq.read_metadata(p).num_rows for p in parts)
            except (pa.ArrowException, OSError) as exc:
                raise damaged(name, exc) from None

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
            "agf_version": __version__,
            "format_version": self.config["format_version"],
            "sample_rate": self.sample_rate,
            "tables": tables,
            "frames": frames,
            "indexes": indexes,
            "models": models.to_pylist(),
        }


def _dataset(name: str, parts: list[Path], dim: int | None):
    """Table ``name``'s ``parts`` as one Arrow dataset, its vectors read as ``dim``-long when
    known (a cast from variable lists costs half as much again)."""
    import pyarrow.dataset as ds  # here: it imports pandas, which a search never needs

    schema, column = SCHEMAS[name], VECTOR_COLUMNS.get(name)
    if column and dim:
        schema = schema.set(schema.get_field_index(column), pa.field(column, pa.list_(pa.float32(), dim)))
    return ds.dataset([str(p) for p in parts], format="parquet", schema=schema)


class TableChanges:
    """The changes of one :meth:`Store.transaction`, gathered by its table verbs."""

    def __init__(self):
        self.appended: dict[str, list[pa.Table]] = defaultdict(list)
        self.replaced: dict[str, pa.Table] = {}
        self.deletions: dict[str, list[tuple[str, list]]] = defaultdict(list)

    def append(self, table: str, rows: pa.Table) -> None:
        """Add ``rows`` to ``table`` (a new part)."""
        self.appended[_known(table)].append(conform(table, rows))

    def replace(self, table: str, rows: pa.Table) -> None:
        """Make ``rows`` the whole content of ``table``."""
        if table in self.deletions:
            raise AgfError(f"table {table}: replaced and deleted from in one transaction")
        self.replaced[_known(table)] = conform(table, rows)

    def delete_where(self, table: str, where: str, params: list | None = None) -> None:
        """Delete the rows of ``table`` stored before this transaction that match ``where``, a
        DuckDB predicate over its columns with ``?`` placeholders bound to ``params``."""
        if table in self.replaced:
            raise AgfError(f"table {table}: replaced and deleted from in one transaction")
        self.deletions[_known(table)].append((where, list(params or [])))


def _known(table: str) -> str:
    if table not in SCHEMAS:
        raise AgfError(f"unknown table {table!r}; tables are: {', '.join(SCHEMAS)}")
    return table


def _predicate(conditions: list[tuple[str, list]]) -> tuple[str, list]:
    """One predicate true where any of ``conditions`` is (a NULL outcome is no match), and its parameters."""
    return (f"(({' OR '.join(f'({where})' for where, _ in conditions)}) IS TRUE)",
            [p for _, params in conditions for p in params])


def _matching(rows: pa.Table, conditions: list[tuple[str, list]]) -> pa.BooleanArray:
    """Which of ``rows`` any condition matches, in their order."""
    import duckdb

    predicate, params = _predicate(conditions)
    con = duckdb.connect(":memory:")
    try:
        con.register("part_rows", rows)
        con.execute(SANDBOX_SQL)
        matched = con.sql(f"SELECT {predicate} AS gone FROM part_rows", params=params or None).to_arrow_table()
    finally:
        con.close()
    return matched["gone"].combine_chunks()


def part_vector_size(part: Path, column: str) -> int | None:
    """The fixed size of ``column``'s vectors in one part: 0 for a part without rows, ``None``
    for variable-length vectors. Cached per file version: parts never change once written."""
    status = part.stat()
    return _footer_vector_size(str(part), status.st_mtime_ns, status.st_size, column)


@functools.lru_cache(maxsize=4096)
def _footer_vector_size(path: str, mtime_ns: int, size: int, column: str) -> int | None:
    try:
        footer = pq.read_metadata(path)
        kind = footer.schema.to_arrow_schema().field(column).type
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise AgfError(f"{path}: its footer cannot be read ({_one_line(exc)[:200]}): run `agf check`") from None
    if footer.num_rows == 0:
        return 0
    return kind.list_size if pa.types.is_fixed_size_list(kind) else None


def _read_config(path: Path) -> dict:
    """``store.json``, checked: a store from someone else may hold anything there."""
    try:
        with open_regular(path) as fh:
            meta = json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise AgfError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    problem = _config_problem(meta)
    if problem:
        raise AgfError(f"{path} is malformed: {problem}")
    return meta


def _config_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"format_version {version!r} is not a positive integer"
    rate, seconds = meta.get("sample_rate"), meta.get("clip_seconds")
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1000 <= rate <= 384_000:
        return f"sample_rate {rate!r} is not a rate in Hz"
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= 3600:
        return f"clip_seconds {seconds!r} is not a duration in seconds"
    if meta.get("fma_rate", "store") not in ("store", "native"):
        return f"fma_rate {meta.get('fma_rate')!r} is neither 'store' nor 'native'"
    frames = meta.get("frames")
    if not isinstance(frames, dict) or set(frames) != set(DEFAULT_CONFIG["frames"]):
        return f"frames must describe {', '.join(DEFAULT_CONFIG['frames'])}"
    for kind, params in frames.items():
        if not isinstance(params, dict) or set(params) != set(DEFAULT_CONFIG["frames"][kind]):
            return f"frames.{kind} must give {', '.join(DEFAULT_CONFIG['frames'][kind])}"
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16
                   for k, v in params.items() if k != "dtype") or params["dtype"] != "float16":
            return f"frames.{kind} holds values agf never writes"
    return None


def _concat(name: str, tables: list[pa.Table]) -> pa.Table:
    """Concatenate parts of one table, dropping empty ones (their vector type is unsized)."""
    tables = [conform(name, t) for t in tables]
    nonempty = [t for t in tables if t.num_rows] or tables[:1]
    return pa.concat_tables(nonempty, promote_options="permissive")


#: Applied to every connection after the views exist. External access off: no file, URL,
#: extension or database outside the registered tables; the configuration locked so that no
#: statement can switch it back on.
SANDBOX_SQL = """
SET autoinstall_known_extensions = false;
SET autoload_known_extensions = false;
SET enable_external_access = false;
SET lock_configuration = true;
"""
MAX_DIM = 1 << 20
# EXPLAIN [ANALYZE] [(options)] <statement>: ANALYZE runs the statement, so it is judged as that statement.
_EXPLAIN = re.compile(r"\s*explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?", re.IGNORECASE)


def _refuse_writes(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise unless every statement of ``sql`` is a ``SELECT`` (or ``EXPLAIN`` of one)."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise AgfError(_one_line(exc)) from None
    if not statements:
        raise AgfError("no SQL statement given")
    for statement in statements:
        if statement.type == duckdb.StatementType.EXPLAIN:
            wrapped = _EXPLAIN.match(statement.query)
            if not wrapped:
                raise AgfError("agf sql is read-only: cannot tell which statement this EXPLAIN wraps")
            _refuse_writes(con, statement.query[wrapped.end():])
        elif statement.type != duckdb.StatementType.SELECT:
            kind = statement.type.name.replace("_", " ")
            raise AgfError(f"agf sql is read-only: {kind} statements are not allowed")


def _interruptible(con: duckdb.DuckDBPyConnection, sql: str, timeout: float | None) -> pa.Table:
    """Run ``sql`` on a worker thread while this one waits, so that Ctrl-C or the time limit can
    interrupt DuckDB (a signal reaches Python only between bytecodes, never inside a query)."""
    outcome: dict = {}
    done = threading.Event()  # waited on, not Thread.join: an interrupted join can wrongly report the thread ended

    def work():
        try:
            outcome["table"] = con.sql(sql).to_arrow_table()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    deadline = time.monotonic() + timeout if timeout else None
    threading.Thread(target=work, name="agf-sql", daemon=True).start()
    try:
        while not done.wait(0.05):
            if deadline is not None and time.monotonic() >= deadline:
                con.interrupt()
                done.wait()
                raise AgfError(f"the query ran past its time limit of {timeout:g} s")
    except KeyboardInterrupt:
        con.interrupt()
        done.wait()
        raise AgfError("query interrupted") from None
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["table"]


def damaged(table: str, cause: Exception | str) -> AgfError:
    """The one-line error for a table part that cannot be read, pointing to ``agf check``."""
    return AgfError(f"table {table} has a damaged part ({_one_line(cause)[:300]}): run `agf check` to find it")


def _one_line(exc: Exception | str) -> str:
    text = " ".join(str(exc).split())
    return text[:500]
