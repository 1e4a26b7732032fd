"""The similarity indexes: refreshing the artist vectors, building an index per space, their state."""

import hashlib

import numpy as np

from agf.app.spaces import refresh_artist_vectors, track_spaces
from agf.errors import AgfError
from agf.progress import say
from agf.store import Store
from agf.store.index import build_index, list_indexes, save_index

SOURCE_TABLES = ("tracks", "agf", "embeddings", "models")


def source_version(store: Store) -> str:
    """A fingerprint of the tables the vectors come from: changes whenever any of them is written."""
    names = [p.name for t in SOURCE_TABLES for p in store.parts(t)]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def build_indexes(store: Store, spaces: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Refresh ``artist_vectors`` and build the artist and track indexes of each space."""
    refresh_artist_vectors(store)
    version = source_version(store)
    artist = artist_vectors(store)
    built = []
    for level, available in (("artist", artist), ("track", track_spaces(store))):
        for space, (ids, matrix) in available.items():
            if spaces and space not in spaces:
                continue
            vi = build_index(matrix, np.asarray(ids), space, level, version)
            save_index(store, vi)
            m = vi.meta
            say(f"{level} index {space}: {m['kind']} over {m['count']} x {m['dim']} on {m['device']}, "
                f"recall@10 {m['recall_at_10']}, {m['build_seconds']} s", quiet)
            built.append({k: m[k] for k in ("space", "level", "kind", "count", "dim", "device", "recall_at_10", "build_seconds")})
    if spaces and not built:
        raise AgfError(f"no space named {', '.join(spaces)}; spaces are: {', '.join(artist)}")
    return built


def artist_vectors(store: Store) -> dict[str, tuple[list[int], np.ndarray]]:
    """Every space's artist ids and vectors (n_artists, dim), from ``artist_vectors``."""
    spaces = store.query("SELECT DISTINCT space FROM artist_vectors ORDER BY space")["space"].to_pylist()
    out = {}
    for space in spaces:
        ids, matrix = store.vectors("artist_vectors", "space = ?", [space])
        out[space] = (ids.tolist(), matrix)
    return out


def index_status(store: Store) -> list[dict]:
    """Every saved index with its sidecar facts and whether its source data changed since."""
    current = source_version(store)
    return [{"space": m["space"], "level": m["level"], "kind": m["kind"], "count": m["count"], "dim": m["dim"],
             "recall_at_10": m["recall_at_10"], "built_at": m["built_at"], "stale": m["source_version"] != current}
            for m in list_indexes(store)]


def default_space(store: Store, level: str = "artist") -> str:
    spaces = [m["space"] for m in list_indexes(store) if m["level"] == level]
    if not spaces:
        raise AgfError("no similarity index yet: run `agf index build`")
    return "combined" if "combined" in spaces else spaces[0]
