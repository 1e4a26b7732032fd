"""Similar artists and tracks: answering queries over the saved indexes."""

import csv
import json
from pathlib import Path

import numpy as np

from agf.app.indexing import artist_directory, default_space, source_version
from agf.errors import AgfError
from agf.progress import say
from agf.store import Store
from agf.store.artists import slug
from agf.store.index import load_index


class Similar:
    """Answers similar-artist and similar-track queries over one store's saved indexes."""

    def __init__(self, store: Store, quiet: bool = False):
        self.store = store
        self.directory = artist_directory(store)
        self.facts = self.directory.by_id
        self.quiet = quiet
        self._version: str | None = None
        self._indexes: dict[tuple[str, str], object] = {}
        self._defaults: dict[str, str] = {}

    def _index(self, space: str, level: str):
        """The saved index of ``space``, read once per service; then, once, a warning if its data
        changed since it was built."""
        if (space, level) in self._indexes:
            return self._indexes[(space, level)]
        vi = load_index(self.store, space, level)
        self._version = self._version or source_version(self.store)
        if vi.meta["source_version"] != self._version:
            say(f"warning: the {level} index of {space!r} is older than the data it was built from; "
                f"`agf index build --space {space}` refreshes it", self.quiet)
        self._indexes[(space, level)] = vi
        return vi

    def default_space(self, level: str = "artist") -> str:
        """``combined`` when it has an index of ``level``, else the first space that has one (read once)."""
        if level not in self._defaults:
            self._defaults[level] = default_space(self.store, level)
        return self._defaults[level]

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
        _check_k(k)
        space = space or self.default_space("artist")
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
        _check_k(k)
        space = space or self.default_space("track")
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


def _check_k(k: int) -> None:
    if k < 1:
        raise AgfError(f"k must be a positive number of neighbours, not {k}")


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
