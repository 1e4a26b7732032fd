"""Model files: saved under ``models/<model_id>/``, named by their sha256, verified on load.

No model file can run code when it is loaded: fitted state is saved as NumPy arrays
(``model.npz``, read with ``allow_pickle=False``) and networks as torch checkpoints read with
``weights_only=True``. A store may come from someone else, so a model row's path must stay
inside the store (:func:`~agf.store.paths.inside`) and its bytes must match the row's sha256.
"""

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa

from agf.errors import AgfError
from agf.store.paths import inside, read_store_file
from agf.store.store import Store, library_versions, now_utc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(store: Store, kind: str, target: str, payload: bytes, params: dict, metrics: dict, filename: str) -> str:
    """Write ``payload`` as ``models/<model_id>/<filename>`` and add its ``models`` row.

    The id is ``<kind>-<target>-<first 12 hex of sha256>``; returns it.
    """
    digest = sha256_bytes(payload)
    model_id = f"{kind}-{target.replace(':', '-')}-{digest[:12]}"
    folder = inside(store.root, f"models/{model_id}", f"model {model_id}")
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
    with store.transaction(params={"model_id": model_id}) as tx:
        tx.delete_where("models", "model_id = ?", [model_id])
        tx.append("models", pa.Table.from_pylist([row]))
    return model_id


def model_row(store: Store, model_id: str) -> dict:
    """The ``models`` row of ``model_id``; its path is checked to stay inside the store."""
    rows = store.query("SELECT * FROM models WHERE model_id = ?", [model_id]).to_pylist()
    if not rows:
        raise AgfError(f"no model {model_id!r} in the store (see: agf sql \"select model_id, kind, target from models\")")
    return _confined(store, rows[0])


def latest_model(store: Store, kind: str, target: str) -> dict | None:
    """The newest model of ``kind`` for ``target``, or ``None``; its path is checked as in :func:`model_row`."""
    rows = store.query(
        "SELECT * FROM models WHERE kind = ? AND target = ? ORDER BY created_at DESC LIMIT 1", [kind, target]
    ).to_pylist()
    return _confined(store, rows[0]) if rows else None


def _confined(store: Store, row: dict) -> dict:
    """``row``, once its file path is known to stay inside the store (a row from a hostile store
    may name any file: a pickle elsewhere, ``..``, a symlink out)."""
    inside(store.root, row["path"] or "", f"models row {row['model_id']!r}")
    return row


def load_payload(store: Store, model_id: str) -> tuple[dict, bytes]:
    """The model's row and file bytes, after checking the path stays in the store and the sha256."""
    row = model_row(store, model_id)
    data = read_store_file(store.root, row["path"], f"models row {model_id!r}")
    if sha256_bytes(data) != row["sha256"]:
        raise AgfError(f"model file {store.root / row['path']} does not match its recorded sha256; it was changed or damaged")
    return row, data


# -- fitted state as arrays ---------------------------------------------------------------------


def flatten_state(objects: dict) -> dict[str, np.ndarray]:
    """Flatten named objects' attributes into arrays for :func:`save_arrays`.

    Parameters
    ----------
    objects : {name: object or dict}
        Each object's attributes (``vars(obj)``, or the dict itself): numeric arrays are kept as
        ``"<name>.<attr>"`` arrays; numbers, strings, ``None`` and JSON-able lists and dicts go to
        one JSON document under ``"meta"``; anything else (a random generator) is left out.

    Returns
    -------
    dict of str to np.ndarray
        Arrays that ``np.savez`` writes and ``np.load(..., allow_pickle=False)`` reads back.
    """
    arrays, meta = {}, {}
    for name, obj in objects.items():
        for attr, value in (obj if isinstance(obj, dict) else vars(obj)).items():
            key = f"{name}.{attr}"
            if isinstance(value, np.ndarray) and value.dtype != object:
                arrays[key] = value
            elif isinstance(value, np.generic):
                meta[key] = value.item()
            elif _json_able(value):
                meta[key] = value
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def unflatten_state(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """The inverse of :func:`flatten_state`: ``{name: {attr: value}}``."""
    out: dict[str, dict] = {}
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    for key, value in [*((k, v) for k, v in arrays.items() if k != "meta"), *meta.items()]:
        name, _, attr = key.partition(".")
        out.setdefault(name, {})[attr] = value
    return out


def _json_able(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of an ``.npz`` file (numeric and text arrays only: no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_arrays(store: Store, kind: str, target: str, arrays: dict[str, np.ndarray], params: dict, metrics: dict) -> str:
    """Save fitted state as ``model.npz`` (no pickled objects) and add its ``models`` row."""
    return save_model(store, kind, target, npz_bytes(arrays), params, metrics, "model.npz")


def load_arrays(store: Store, model_id: str) -> dict[str, np.ndarray]:
    """The arrays of a ``model.npz``, verified, read without unpickling anything."""
    _, data = load_payload(store, model_id)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise AgfError(f"model {model_id} is not an array file agf can read ({_first_line(exc)}); "
                       f"a store written before agf 0.2 needs `agf migrate`") from None


CHECKPOINT_KEYS = ("state_dict", "config", "mean", "std")


def load_checkpoint(store: Store, model_id: str) -> dict:
    """A torch checkpoint, verified, loaded with ``weights_only=True`` (tensors and plain data only).

    Returns the dict agf saved: ``state_dict``, ``config``, ``mean``, ``std``.
    """
    import pickle

    import torch

    _, data = load_payload(store, model_id)
    try:
        checkpoint = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise AgfError(f"model {model_id} was refused by torch's weights-only loader: {_first_line(exc)}") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in CHECKPOINT_KEYS):
        raise AgfError(f"model {model_id} is not a checkpoint agf wrote (it lacks {', '.join(CHECKPOINT_KEYS)})")
    return checkpoint


def load_weights(model, checkpoint: dict, model_id: str):
    """``model`` with the checkpoint's weights; a mismatch is an :class:`AgfError`, not a traceback."""
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise AgfError(f"model {model_id}'s weights do not fit its network: {_first_line(exc)}") from None
    return model


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
