"""Similar artists (and tracks): building the indexes of every space and answering queries."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from agf.errors import AgfError
from agf.models.spaces import refresh_artist_vectors, track_spaces
from agf.progress import say
from agf.store import Store
from agf.store.artists import ArtistDirectory, artist_rows, slug
from agf.store.index import build_index, list_indexes, load_index, save_index

SOURCE_TABLES = ("tracks", "agf", "embeddings", "models")


def source_version(store: Store) -> str:
    """A fingerprint of the tables the vectors come from: changes whenever any of them is written."""
    names = [p.name for t in SOURCE_TABLES for p in store.parts(t)]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def build_indexes(store: Store, spaces: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Refresh ``artist_vectors`` and build the artist and track indexes of each space."""
    refresh_artist_vectors(store)
    version = source_version(store)
    artist = _artist_vectors(store)
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


def _artist_vectors(store: Store) -> dict[str, tuple[list[int], np.ndarray]]:
    table = store.query("SELECT space, artist_id, vector FROM artist_vectors ORDER BY space, artist_id")
    out: dict[str, tuple[list[int], np.ndarray]] = {}
    for space in dict.fromkeys(table["space"].to_pylist()):
        rows = [r for r in table.to_pylist() if r["space"] == space]
        out[space] = ([r["artist_id"] for r in rows], np.asarray([r["vector"] for r in rows], np.float32))
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


class Similar:
    """Answers similar-artist and similar-track queries over one store's saved indexes."""

    def __init__(self, store: Store, quiet: bool = False):
        self.store = store
        self.directory = ArtistDirectory(artist_rows(store))
        self.facts = self.directory.by_id
        self.quiet = quiet
        self._version: str | None = None
        self._warned: set[tuple[str, str]] = set()

    def _index(self, space: str, level: str):
        """The saved index of ``space``; once per index read, a warning if its data changed since."""
        vi = load_index(self.store, space, level)
        self._version = self._version or source_version(self.store)
        if vi.meta["source_version"] != self._version and (space, level) not in self._warned:
            self._warned.add((space, level))
            say(f"warning: the {level} index of {space!r} is older than the data it was built from; "
                f"`agf index build --space {space}` refreshes it", self.quiet)
        return vi

    def _allowed(self, ids: np.ndarray, exclude: int, genre: str | None, min_tracks: int) -> np.ndarray:
        keep = [i for i in ids.tolist() if i != exclude and self.facts[i]["tracks"] >= min_tracks
                and (genre is None or slug(genre) in {slug(g) for g in self.facts[i]["genres"]})]
        return np.asarray(keep, dtype=np.int64)

    def artists(self, artist: dict, k: int = 10, space: str | None = None, genre: str | None = None,
                min_tracks: int = 1) -> list[dict]:
        """The ``k`` artists nearest to ``artist`` in ``space`` (cosine similarity), filters applied."""
        return self.many_artists([artist], k, space, genre, min_tracks)[0]

    def many_artists(self, artists: list[dict], k: int = 10, space: str | None = None, genre: str | None = None,
                     min_tracks: int = 1) -> list[list[dict]]:
        """Neighbours of each of ``artists``; without filters, one batched search answers them all."""
        space = space or default_space(self.store)
        vi = self._index(space, "artist")
        queries = []
        for artist in artists:
            try:
                queries.append(vi.vector(artist["artist_id"]))
            except RuntimeError:
                raise AgfError(f"{artist['name']} has no vector in space {space!r}") from None
        if genre is None and min_tracks <= 1:
            sims, ids = vi.search(np.stack(queries), k + 1)
        else:
            found = [vi.search(q, k, self._allowed(vi.ids, a["artist_id"], genre, min_tracks)) for q, a in zip(queries, artists)]
            sims, ids = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
        return [self._rows(artist["artist_id"], s, i, k) for artist, s, i in zip(artists, sims, ids)]

    def _rows(self, query_id: int, sims: np.ndarray, ids: np.ndarray, k: int) -> list[dict]:
        rows = [(s, i) for s, i in zip(sims, ids) if i >= 0 and i != query_id][:k]
        return [{"rank": n, "artist_id": int(i), "artist": self.facts[i]["name"], "similarity": round(float(s), 4),
                 "top_genre": self.facts[i]["top_genre"], "tracks": self.facts[i]["tracks"]}
                for n, (s, i) in enumerate(rows, start=1)]

    def tracks(self, track_id: int, k: int = 10, space: str | None = None, same_artist: bool = False,
               same_album: bool = True) -> list[dict]:
        """The ``k`` tracks nearest to ``track_id`` in a track-level space.

        Tracks by the query's own artist are left out unless ``same_artist`` (they would fill the
        list first); without ``same_album``, tracks of its album are left out too. The search
        itself skips them, so k results come back when k exist.
        """
        space = space or default_space(self.store, "track")
        vi = self._index(space, "track")
        try:
            query = vi.vector(track_id)
        except RuntimeError:
            raise AgfError(f"track {track_id} has no vector in track space {space!r}") from None
        asked = self._track_facts([track_id]).get(track_id)
        if asked is None:
            raise AgfError(f"track {track_id} is in the {space!r} index but not in the tracks table: run `agf index build`")
        allowed = None
        if not same_artist or not same_album:
            excluded = self.store.query(
                "SELECT track_id FROM tracks WHERE (? AND artist_id = ?) OR (? AND album_id = ?)",
                [not same_artist, asked["artist_id"], not same_album, asked["album_id"]])["track_id"].to_numpy()
            allowed = vi.ids[~np.isin(vi.ids, np.append(excluded, track_id))]
        say(f"tracks like {asked['title']!r} by {asked['artist']} (track {track_id}) in {space}"
            + ("" if same_artist else ", other artists only") + ("" if same_album else ", other albums only"), self.quiet)
        sims, ids = vi.search(query, k + 1, allowed)
        rows = [(s, int(i)) for s, i in zip(sims[0], ids[0]) if i >= 0 and i != track_id][:k]
        info = self._track_facts([i for _, i in rows])
        return [{"rank": n, "track_id": i, "title": info[i]["title"], "artist": info[i]["artist"],
                 "similarity": round(float(s), 4), "genre": info[i]["genre_top"]} for n, (s, i) in enumerate(rows, start=1)]

    def _track_facts(self, track_ids: list[int]) -> dict[int, dict]:
        """Title, artist and album of ``track_ids`` only (a store may hold a million tracks)."""
        return {r["track_id"]: r for r in self.store.query(
            "SELECT t.track_id, t.title, t.artist_id, t.album_id, a.name AS artist, t.genre_top FROM tracks t "
            "JOIN artists a USING (artist_id) WHERE t.track_id IN (SELECT unnest(?::BIGINT[]))", [track_ids]).to_pylist()}

    def batch(self, queries: list[dict], k: int, space: str | None = None, genre: str | None = None,
              min_tracks: int = 1):
        """Answer many queries (``{"artist": name}`` or ``{"artist_id": id}``): one dict per query, in order.

        Queries that name no known artist get an ``error``; the others are answered together.
        """
        answers, found = [], []
        for query in queries:
            try:
                artist = self.directory.resolve(query.get("artist"), _int(query.get("artist_id")))
                answers.append({"query": query, "artist_id": artist["artist_id"], "artist": artist["name"]})
                found.append((len(answers) - 1, artist))
            except AgfError as exc:
                answers.append({"query": query, "error": str(exc)})
        if found:
            neighbours = self.many_artists([a for _, a in found], k, space, genre, min_tracks)
            for (position, _), rows_found in zip(found, neighbours):
                answers[position]["neighbours"] = rows_found
        return answers


def _int(value) -> int | None:
    return None if value in (None, "") else int(value)


def read_queries(path: Path) -> list[dict]:
    """Queries from a CSV (columns artist and/or artist_id), a JSON list, or JSON lines."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not ({"artist", "artist_id"} & set(rows[0])):
            raise AgfError(f"{path}: a batch CSV needs an 'artist' or 'artist_id' column")
        return rows
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise AgfError(f"{path}: not JSON or JSON lines ({exc.msg})") from None
    return [{"artist": i} if isinstance(i, str) else {"artist_id": i} if isinstance(i, int) else i for i in items]


#: Okabe and Ito's colour-blind-safe palette; past 8 genres the marker shape changes too.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
MARKERS = ("o", "s", "^", "D")


def draw_map(store: Store, space: str, out: Path, method: str = "pca", labels: int = 15) -> dict:
    """Save :func:`map_figure` of ``space`` as the PNG ``out``; returns what was drawn."""
    import matplotlib.pyplot as plt

    fig, named, artists = map_figure(store, space, method, labels)
    out = Path(out)
    fig.savefig(out, dpi=110, bbox_inches="tight")  # "tight": the legends beside the axes stay in the picture
    plt.close(fig)
    return {"space": space, "artists": artists, "method": method, "named": named, "file": str(out)}


def map_figure(store: Store, space: str, method: str = "pca", labels: int = 15):
    """The artists of ``space`` in 2-D as a matplotlib figure: colour and shape say the top genre,
    size the number of tracks (each with its legend); each genre's largest artists are named
    where their names cover no other. Returns (figure, names placed, number of artists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vectors = _artist_vectors(store)
    if space not in vectors:
        raise AgfError(f"no artist vectors for space {space!r}; spaces are: {', '.join(vectors) or 'none (run agf index build)'}")
    ids, matrix = vectors[space]
    if len(ids) < 3:
        raise AgfError(f"space {space!r} has {len(ids)} artists: too few to draw")
    xy, axis_names = _project(matrix, method)
    facts = ArtistDirectory(artist_rows(store)).by_id
    genre_of = [facts[i]["top_genre"] or "unknown" for i in ids]
    tracks = np.array([facts[i]["tracks"] for i in ids])
    fig, ax = plt.subplots(figsize=(9.5, 7))
    for g, genre in enumerate(sorted(set(genre_of))):
        mask = np.array([x == genre for x in genre_of])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=_size(tracks[mask]), color=PALETTE[g % len(PALETTE)],
                   marker=MARKERS[g // len(PALETTE) % len(MARKERS)], label=genre, alpha=0.8, edgecolors="white",
                   linewidths=0.5)
    genre_legend = ax.legend(title="top genre", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    for handle in genre_legend.legend_handles:  # one size in the genre legend: size has its own legend
        handle.set_sizes([40])
    ax.add_artist(genre_legend)
    examples = sorted({int(v) for v in np.quantile(tracks, [0, 0.5, 1])})
    ax.legend([ax.scatter([], [], s=_size(np.array([n])), color="0.6") for n in examples],
              [f"{n} track{'s' * (n != 1)}" for n in examples], title="size", fontsize=7, title_fontsize=8,
              loc="lower left", bbox_to_anchor=(1.01, 0))
    named = _label_without_overlap(fig, ax, xy, [facts[i]["name"] for i in ids], _labelled_first(genre_of, tracks)[:labels])
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"{len(ids)} artists in {space} ({'t-SNE' if method == 'tsne' else 'PCA'}); the largest of each "
                 f"genre named where the names fit", fontsize=10)
    return fig, named, len(ids)


def _project(matrix: np.ndarray, method: str) -> tuple[np.ndarray, tuple[str, str]]:
    """Artists in 2-D (n, 2) and the names of the two axes."""
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(2, perplexity=min(30, len(matrix) - 1), random_state=0, init="pca").fit_transform(matrix)
        return xy, ("t-SNE dimension 1", "t-SNE dimension 2")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(2, random_state=0).fit(matrix)
        share = pca.explained_variance_ratio_
        return pca.transform(matrix), (f"principal component 1 ({share[0]:.0%} of the variance)",
                                       f"principal component 2 ({share[1]:.0%} of the variance)")
    raise AgfError(f"unknown projection {method!r}; choose pca or tsne")


def _labelled_first(genre_of: list[str], tracks: np.ndarray) -> list[int]:
    """Artists in the order to name them: each genre's largest, then each genre's second, ..."""
    by_genre: dict[str, list[int]] = {}
    for i in np.argsort(-tracks, kind="stable"):
        by_genre.setdefault(genre_of[i], []).append(int(i))
    rank = {i: r for members in by_genre.values() for r, i in enumerate(members)}
    return sorted(rank, key=lambda i: (rank[i], -tracks[i], i))


def _size(tracks: np.ndarray) -> np.ndarray:
    return 14 + 8 * tracks


def _label_without_overlap(fig, ax, xy: np.ndarray, names: list[str], order: list[int]) -> list[str]:
    """Name the points of ``order`` (most important first) beside them, trying four corners and
    skipping a name that would cover one already placed; returns the names placed."""
    renderer = fig.canvas.get_renderer()
    placed, named = [], []
    for i in order:
        for dx, dy, ha, va in ((4, 4, "left", "bottom"), (-4, 4, "right", "bottom"), (4, -4, "left", "top"),
                               (-4, -4, "right", "top")):
            text = ax.annotate(names[i], xy[i], fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va)
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                named.append(names[i])
                break
            text.remove()
    return named
