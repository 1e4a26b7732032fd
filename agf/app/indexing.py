"""The similarity indexes: refreshing the artist vectors, building an index per space, their state."""

import hashlib
import json

import numpy as np

from agf.errors import AgfError
from agf.progress import say
from agf.store import Store
from agf.store.artists import ArtistDirectory, artist_rows
from agf.store.index import build_index, list_indexes, save_index
from agf.store.paths import inside, read_store_file, replace_text

SOURCE_TABLES = ("tracks", "agf", "embeddings", "models")
#: What the artist directory a search reads is made of, and where ``agf index build`` keeps it.
DIRECTORY_TABLES = ("tracks", "artists", "genres")
DIRECTORY = "indexes/artists.directory"


def source_version(store: Store, tables: tuple[str, ...] = SOURCE_TABLES) -> str:
    """A fingerprint of ``tables`` (default: those the vectors come from): it changes whenever
    any of them is written, since every commit writes parts of new names."""
    names = [p.name for t in tables for p in store.parts(t)]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def save_directory(store: Store) -> None:
    """Keep every artist's row (:func:`~agf.store.artists.artist_rows`) beside the indexes, so
    that a search reads a JSON file instead of starting a query engine."""
    content = json.dumps({"version": source_version(store, DIRECTORY_TABLES), "artists": artist_rows(store)})
    replace_text(inside(store.root, DIRECTORY, "the artist directory"), content)


def artist_directory(store: Store) -> ArtistDirectory:
    """The artists, from the directory ``agf index build`` kept when its tables have not been
    written since (and it reads as agf wrote it), else from the tables."""
    try:
        kept = json.loads(read_store_file(store.root, DIRECTORY, "the artist directory"))
    except (AgfError, ValueError):
        kept = None
    if (isinstance(kept, dict) and kept.get("version") == source_version(store, DIRECTORY_TABLES)
            and isinstance(kept.get("artists"), list) and all(map(_artist_row, kept["artists"]))):
        return ArtistDirectory(kept["artists"])
    return ArtistDirectory(artist_rows(store))


def _artist_row(row) -> bool:
    """Whether ``row`` is an artist row as agf writes them (a hostile store may hold anything)."""
    return (isinstance(row, dict) and type(row.get("artist_id")) is int and isinstance(row.get("name"), str)
            and type(row.get("tracks")) is int and (row.get("top_genre") is None or isinstance(row["top_genre"], str))
            and isinstance(row.get("genres"), list) and all(isinstance(g, str) for g in row["genres"]))


def build_indexes(store: Store, spaces: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Refresh ``artist_vectors`` and build the artist and track indexes of each space."""
    from agf.app.spaces import refresh_artist_vectors, track_spaces  # here: a search needs neither, nor their imports

    refresh_artist_vectors(store)
    save_directory(store)
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
