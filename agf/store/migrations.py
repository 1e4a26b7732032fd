"""Upgrading a store written by an older agf, in place, one format version at a time.

- 1 → 2: readers hold ``commit.lock`` shared while they read; version 1 had none.
- 2 → 3: factor models were pickles (``model.pkl``), which can run code when loaded; each is
  converted to ``model.npz`` (arrays and JSON only) after its recorded sha256 is checked. The
  pickle is read by an unpickler that builds no object of any class: it knows numpy's array
  constructors and turns agf's and scikit-learn's classes into plain records of attributes, so
  even a hostile pickle cannot run code here. Still, a store of unknown origin should not be
  migrated: it can hold other surprises, and its models would be trusted from then on.
"""

import io
import pickle

import pyarrow as pa

from agf.errors import AgfError
from agf.store.registry import flatten_state, load_payload, npz_bytes, sha256_bytes
from agf.store.parts import COMMIT_LOCK
from agf.store.paths import inside
from agf.store.store import FORMAT_VERSION, Store


def migrate(root) -> dict:
    """Upgrade the store at ``root`` to this agf's format; returns the versions before and after."""
    with Store.open(root, write=True, older=True) as store:
        while (version := store.config["format_version"]) < FORMAT_VERSION:
            STEPS[version](store)
            store.config["format_version"] = version + 1
            store.save_config()
        return {"path": str(store.root), "format_version_before": store.found_version,
                "format_version": store.config["format_version"]}


def _add_commit_lock(store: Store) -> None:
    (store.root / COMMIT_LOCK).touch()


def _models_to_arrays(store: Store) -> None:
    models = store.query("SELECT * FROM models ORDER BY created_at").to_pylist()
    pickled = [row for row in models if (row["path"] or "").endswith(".pkl")]
    if not pickled:
        return
    converted = []
    for row in pickled:
        _, data = load_payload(store, row["model_id"])  # the path stays in the store, the sha256 matches
        payload = npz_bytes(flatten_state(_unpickle_factor_model(data, row["model_id"])))
        old = inside(store.root, row["path"], f"models row {row['model_id']!r}")
        old.with_name("model.npz").write_bytes(payload)
        row.update(path=str(old.with_name("model.npz").relative_to(store.root)), sha256=sha256_bytes(payload))
        converted.append(old)
    with store.transaction(params={"migrated": "pickled models to npz"}) as tx:
        tx.replace("models", pa.Table.from_pylist(models))
    for old in converted:  # only once the rows name the new files
        old.unlink(missing_ok=True)


STEPS = {1: _add_commit_lock, 2: _models_to_arrays}


class _Record:
    """What an unpickled object becomes here: its attributes, nothing else (no methods run)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


# The classes a factor model pickle holds; each becomes a _Record. Numpy's array and scalar
# constructors are the only real callables allowed: they build arrays from bytes.
_RECORDED = {
    ("agf.models.factors", "Dictionary"),
    ("sklearn.decomposition._lda", "LatentDirichletAllocation"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._mt19937", "MT19937"),
}
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_NUMPY_NAMES = ("dtype", "_frombuffer", "scalar", "_reconstruct", "ndarray")


class _FactorModelUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _RECORDED:
            return _Record
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a factor model")


def _unpickle_factor_model(data: bytes, model_id: str) -> dict:
    try:
        model = _FactorModelUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError, IndexError) as exc:
        raise AgfError(f"model {model_id} is not a factor model agf wrote ({exc}); nothing was migrated") from None
    if not isinstance(model, dict) or not all(isinstance(model.get(k), _Record) for k in ("dictionary", "lda")):
        raise AgfError(f"model {model_id} is not a factor model agf wrote; nothing was migrated")
    return {"dictionary": model["dictionary"], "lda": model["lda"]}
