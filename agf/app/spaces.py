"""Vector spaces for similarity search: artist (and track) vectors derived from stored tables.

Spaces: ``agf:<source>`` (an artist's factors under the newest model of the source),
``emb:<target>`` (the mean clip embedding of the artist's tracks, from the newest CNN of that
target), and ``combined`` (every other space L2-normalised, concatenated, normalised again; a
missing block is zeros). Track-level spaces are ``emb:<target>`` and ``combined`` over clip
embeddings, for ``agf similar --track``.
"""

import numpy as np
import pyarrow as pa

from agf.errors import AgfError
from agf.models.factors import CNN_TARGETS, SOURCES, current_factors
from agf.store import Store
from agf.store.registry import latest_model


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1)).astype(np.float32)


def _track_embeddings(store: Store, target: str) -> tuple[list[int], np.ndarray, str] | None:
    row = latest_model(store, "cnn", target)
    if row is None:
        return None
    ids, matrix = store.vectors("embeddings", "model_id = ?", [row["model_id"]])
    return (ids.tolist(), matrix, row["model_id"]) if len(ids) else None


def _combine(spaces: dict[str, tuple[list[int], np.ndarray]]) -> tuple[list[int], np.ndarray]:
    ids = sorted({i for ids, _ in spaces.values() for i in ids})
    position = {i: n for n, i in enumerate(ids)}
    blocks = []
    for space_ids, matrix in spaces.values():
        block = np.zeros((len(ids), matrix.shape[1]), np.float32)
        block[[position[i] for i in space_ids]] = _normalise(matrix)
        blocks.append(block)
    return ids, _normalise(np.concatenate(blocks, axis=1))


def track_spaces(store: Store) -> dict[str, tuple[list[int], np.ndarray]]:
    """Track-level spaces: ``emb:<target>`` per CNN with embeddings, and ``combined``."""
    spaces = {}
    for target in CNN_TARGETS:
        found = _track_embeddings(store, target)
        if found:
            spaces[f"emb:{target}"] = found[:2]
    if len(spaces) > 1:
        spaces["combined"] = _combine(spaces)
    return spaces


def artist_spaces(store: Store) -> dict[str, tuple[list[int], np.ndarray]]:
    """Artist-level spaces: ``agf:<source>``, ``emb:<target>`` and ``combined``."""
    spaces = {}
    for source in SOURCES:
        ids, matrix = current_factors(store, source)
        if ids:
            spaces[f"agf:{source}"] = (ids, matrix)
    artist_of = {r["track_id"]: r["artist_id"] for r in store.query("SELECT track_id, artist_id FROM tracks").to_pylist()}
    for name, (track_ids, matrix) in track_spaces(store).items():
        if name == "combined":
            continue
        artists = np.asarray([artist_of[t] for t in track_ids])
        unique = np.unique(artists)
        means = np.stack([matrix[artists == a].mean(axis=0) for a in unique])
        spaces[name] = (unique.tolist(), means)
    if len(spaces) > 1:
        spaces["combined"] = _combine(spaces)
    return spaces


def refresh_artist_vectors(store: Store) -> dict[str, int]:
    """Recompute the ``artist_vectors`` table from the stored factors and embeddings."""
    spaces = artist_spaces(store)
    if not spaces:
        raise AgfError("no artist vectors yet: run `agf factors build` (and `agf train`/`agf embed` for CNN spaces)")
    tables = []
    for name, (ids, matrix) in spaces.items():
        tables.append(pa.table({"artist_id": pa.array(ids, pa.int64()), "space": [name] * len(ids),
                                "vector": pa.array(list(matrix.astype(np.float32)), pa.list_(pa.float32()))}))
    with store.transaction(params={"spaces": sorted(spaces)}) as tx:
        tx.replace("artist_vectors", pa.concat_tables(tables))
    return {name: len(ids) for name, (ids, _) in spaces.items()}
