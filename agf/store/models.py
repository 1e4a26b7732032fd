"""Model files: saved under ``models/<model_id>/``, named by their sha256, verified on load."""

import hashlib
import json
import os
import pickle
import pyarrow as pa

from agf.errors import AgfError
from agf.store.store import Store, library_versions, now_utc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(store: Store, kind: str, target: str, payload: bytes, params: dict, metrics: dict, filename: str) -> str:
    """Write ``payload`` as ``models/<model_id>/<filename>`` and add its ``models`` row.

    The id is ``<kind>-<target>-<first 12 hex of sha256>``; returns it.
    """
    digest = sha256_bytes(payload)
    model_id = f"{kind}-{target.replace(':', '-')}-{digest[:12]}"
    folder = store.root / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{filename}.tmp"
    tmp.write_bytes(payload)
    os.replace(tmp, folder / filename)
    (folder / "meta.json").write_text(json.dumps({"params": params, "metrics": metrics, "versions": library_versions(), "sha256": digest}, indent=2))
    row = {
        "model_id": model_id,
        "kind": kind,
        "target": target,
        "params": json.dumps(params, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True),
        "path": str((folder / filename).relative_to(store.root)),
        "sha256": digest,
        "created_at": now_utc(),
    }
    # The same bytes again (a deterministic rerun) is the same model: replace its row, don't duplicate it.
    store.write(append={"models": pa.Table.from_pylist([row])}, keep_where={"models": f"model_id <> '{model_id}'"},
                params={"model_id": model_id})
    return model_id


def model_row(store: Store, model_id: str) -> dict:
    rows = store.query("SELECT * FROM models WHERE model_id = ?", [model_id]).to_pylist()
    if not rows:
        raise AgfError(f"no model {model_id!r} in the store (see: agf sql \"select model_id, kind, target from models\")")
    return rows[0]


def latest_model(store: Store, kind: str, target: str) -> dict | None:
    """The newest model of ``kind`` for ``target``, or ``None``."""
    rows = store.query(
        "SELECT * FROM models WHERE kind = ? AND target = ? ORDER BY created_at DESC LIMIT 1", [kind, target]
    ).to_pylist()
    return rows[0] if rows else None


def load_payload(store: Store, model_id: str) -> tuple[dict, bytes]:
    """The model's row and file bytes, after checking the file's sha256 against the row."""
    row = model_row(store, model_id)
    path = store.root / row["path"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgfError(f"model file {path} is missing: {exc.strerror}") from None
    if sha256_bytes(data) != row["sha256"]:
        raise AgfError(f"model file {path} does not match its recorded sha256; it was changed or damaged")
    return row, data


def save_pickle(store: Store, kind: str, target: str, obj, params: dict, metrics: dict) -> str:
    """Save a scikit-learn/numpy object bundle (pickled, with the library versions in meta.json)."""
    return save_model(store, kind, target, pickle.dumps(obj, protocol=5), params, metrics, "model.pkl")


def load_pickle(store: Store, model_id: str):
    _, data = load_payload(store, model_id)
    return pickle.loads(data)  # noqa: S301 - our own file, verified by sha256 above

