"""``agf check``: every file of a store verified against what the store records.

Table parts are read through (footer, schema and every row group), frame files are checked
against their ``.npy`` header and size, indexes against the sha256 in their sidecar, and model
files against their ``models`` row. With ``repair``, damaged parts, frame files and indexes are
moved to ``quarantine/<time>/`` (nothing is deleted) and each finding says which command rebuilds
what was lost.
"""

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agf.errors import AgfError
from agf.store.frames import FrameCache
from agf.store.index import read_sidecar
from agf.store.registry import load_payload
from agf.store.parts import commit_lock
from agf.store.paths import inside, read_store_file
from agf.store.schemas import SCHEMAS
from agf.store.store import Store

_INGESTED = "agf ingest --force (with the same sources)"
#: What rebuilds each table's rows once a damaged part is set aside.
REBUILD = {
    **{name: _INGESTED for name in ("tracks", "artists", "albums", "genres", "ingest_errors")},
    **{name: _INGESTED for name in SCHEMAS if name.startswith("features_")},
    "clusters": "agf factors build", "artist_bow": "agf factors build", "agf": "agf factors build",
    "embeddings": "agf embed", "artist_vectors": "agf index build", "models": "agf factors build, agf train",
    "predictions": "agf tag (or agf train --target transfer)",
}


def check_store(store: Store, repair: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Verify every part, frame file, index and model file of ``store``.

    Parameters
    ----------
    store : Store
        Opened for writing when ``repair`` is set.
    repair : bool
        Move damaged parts, frame files and indexes to ``quarantine/<time>/``.

    Returns
    -------
    findings : list of dict
        One per damaged file: ``kind``, ``name``, ``file`` (relative to the store), ``problem``,
        ``rebuild`` (the command that rebuilds it) and ``action``. Empty when all is sound.
    checked : dict
        How many files of each kind were checked (``parts``, ``frames``, ``indexes``, ``models``).
    """
    if repair and not store.writable:
        raise AgfError("agf check --repair needs the store opened for writing")
    checked: dict[str, int] = {}
    findings = [*_parts(store, checked), *_frames(store, checked), *_indexes(store, checked)]
    if not any(f["kind"] == "table" and f["name"] == "models" for f in findings):
        findings += _models(store, checked)
    if repair:
        quarantine = store.root / "quarantine" / dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        with commit_lock(store.root, exclusive=True, wait=store.wait):  # no reader mid-way through a moved part
            for finding in findings:
                finding["action"] = _set_aside(store.root, finding, quarantine)
    return findings, checked


def _finding(kind: str, name: str, path: Path, root: Path, problem: str, rebuild: str) -> dict:
    return {"kind": kind, "name": name, "file": str(path.relative_to(root)), "problem": problem,
            "rebuild": rebuild, "action": "none"}


def _parts(store: Store, checked: dict) -> list[dict]:
    out = []
    for name, schema in SCHEMAS.items():
        for part in sorted(store.table_dir(name).glob("*.parquet")):
            checked["parts"] = checked.get("parts", 0) + 1
            problem = _part_problem(store, part, schema)
            if problem:
                out.append(_finding("table", name, part, store.root, problem, REBUILD[name]))
    return out


def _part_problem(store: Store, part: Path, schema: pa.Schema) -> str | None:
    try:
        inside(store.root, part.parent.relative_to(store.root), "a table folder")
        if not stat.S_ISREG(part.lstat().st_mode):  # as Store.parts judges a part
            return "not a regular file"
        parquet = pq.ParquetFile(part)
        missing = [f.name for f in schema if f.name not in parquet.schema_arrow.names]
        if missing:
            return f"lacks column(s) {', '.join(missing)}"
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
    except (AgfError, pa.ArrowException, OSError) as exc:
        return " ".join(str(exc).split())[:200]
    return None


def _frames(store: Store, checked: dict) -> list[dict]:
    out = []
    for kind in store.config["frames"]:
        cache = FrameCache.of(store, kind)
        for path in sorted((store.root / "frames" / kind).glob("*/*.npy")):
            checked["frames"] = checked.get("frames", 0) + 1
            problem = _frame_problem(cache, path)
            if problem:
                out.append(_finding("frames", kind, path, store.root, problem, _INGESTED))
    return out


def _frame_problem(cache: FrameCache, path: Path) -> str | None:
    try:
        # read as every command reads frames: inside the store, a regular file, a valid .npy of
        # finite frames as wide as the store's settings say
        frames = cache.read(int(path.stem))
        if frames.dtype != np.float16:
            return f"holds {frames.dtype} of shape {frames.shape}, not float16 frames × bins"
    except ValueError:
        return "not a frame file agf wrote (its name is no track id)"
    except AgfError as exc:
        return " ".join(str(exc).split())[:200]
    return None


def _indexes(store: Store, checked: dict) -> list[dict]:
    out = []
    for sidecar in sorted((store.root / "indexes").glob("*.json")):
        checked["indexes"] = checked.get("indexes", 0) + 1
        path = sidecar.with_suffix(".faiss")
        try:
            meta = read_sidecar(store, sidecar)
            data = read_store_file(store.root, path.relative_to(store.root), "an index")
            problem = None if hashlib.sha256(data).hexdigest() == meta["sha256"] else "does not match the sha256 in its sidecar"
        except AgfError as exc:
            problem = " ".join(str(exc).split())[:200]
        if problem:
            out.append(_finding("index", path.stem, path, store.root, problem, "agf index build"))
    return out


def _models(store: Store, checked: dict) -> list[dict]:
    out = []
    for row in store.query("SELECT model_id, kind, path FROM models ORDER BY created_at").to_pylist():
        checked["models"] = checked.get("models", 0) + 1
        try:
            load_payload(store, row["model_id"])  # inside the store, a regular file, its recorded sha256
        except AgfError as exc:
            named = store.root / (row["path"] or "models")
            path = named if named.resolve().is_relative_to(store.root) else store.root / "models"
            out.append(_finding("model", row["model_id"], path, store.root, " ".join(str(exc).split())[:200],
                                "agf factors build" if row["kind"] == "factors" else "agf train"))
    return out


def _set_aside(root: Path, finding: dict, quarantine: Path) -> str:
    """Move a damaged file into ``quarantine`` (models stay: their rows still name them)."""
    source = root / finding["file"]
    if finding["kind"] == "model" or not (source.exists() or source.is_symlink()):
        return f"left in place: run {finding['rebuild']}"
    target = quarantine / finding["file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return f"moved to {target.relative_to(root)}: run {finding['rebuild']}"
