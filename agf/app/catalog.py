"""Browsing a store: what ``agf serve`` shows, as plain data (dicts and lists).

One :class:`Catalog` per served store reads what every page needs once (artists, their genres
and a track of each to listen to, the factors and their descriptions, the indexes), so that a
page costs an index search and at most a query or two.
"""

import mimetypes
from pathlib import Path

from agf.app.similar import Similar
from agf.errors import AgfError
from agf.ingest.audio import AUDIO_TYPES
from agf.models.factors import FactorAtlas
from agf.store import Store
from agf.store.artists import slug
from agf.store.index import list_indexes
from agf.store.paths import open_regular
from agf.store.registry import latest_model


def audio_type(path: Path) -> str:
    """The content type an audio file is served as, by its name (a manifest may name any file)."""
    return AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


#: Rows a query page shows at most; the rest are counted, not sent.
SQL_ROWS = 1000
SQL_SECONDS = 10.0


class NotFound(AgfError):
    """What was asked for is not in the store (a page or an API answers 404)."""


class Catalog:
    """A read-only store, ready to browse."""

    def __init__(self, store: Store):
        self.store = store
        self.similar = Similar(store, quiet=True)
        self.artists_by_id = self.similar.directory.by_id
        self.atlas = FactorAtlas(store)
        indexes = list_indexes(store)
        self.spaces = sorted((m["space"] for m in indexes if m["level"] == "artist"), key=_space_order)
        self.track_spaces = sorted(m["space"] for m in indexes if m["level"] == "track")
        self.listen = {r["artist_id"]: r["track_id"] for r in store.query(
            "SELECT artist_id, min(track_id) AS track_id FROM tracks WHERE path IS NOT NULL GROUP BY 1").to_pylist()}
        self.genres = sorted({g for a in self.artists_by_id.values() for g in a["genres"]})
        # name and genre keys, made once: a search compares them for every artist
        self._keys = [(slug(a["name"]), {slug(g) for g in a["genres"]}, a) for a in self.artists_by_id.values()]
        self._maps: dict[tuple[str, str], dict] = {}
        self._transfer = None

    # -- the front page ---------------------------------------------------------------------------

    def summary(self) -> dict:
        """Counts of tracks, artists and models, and when the last track was ingested."""
        facts = self.store.query("SELECT count(*) AS tracks, max(ingested_at) AS last_ingest FROM tracks").to_pylist()[0]
        models = self.store.query("SELECT kind, target, model_id, created_at FROM models ORDER BY created_at DESC").to_pylist()
        return {"path": str(self.store.root), "tracks": facts["tracks"], "artists": len(self.artists_by_id),
                "last_ingest": facts["last_ingest"], "models": models, "spaces": self.spaces}

    def find_artists(self, q: str = "", genre: str | None = None, limit: int = 50) -> list[dict]:
        """At most ``limit`` artists whose name contains ``q`` (case and accents ignored), of
        ``genre`` if given: those whose name starts with it first, then by name."""
        if limit < 1:
            raise AgfError(f"limit must be a positive number of artists, not {limit}")
        key, wanted = slug(q or ""), slug(genre) if genre else None
        found = [(name, a) for name, genres, a in self._keys if key in name and (wanted is None or wanted in genres)]
        found.sort(key=lambda f: (not f[0].startswith(key), f[0]))
        return [_artist_summary(a) for _, a in found[:limit]]

    # -- an artist ------------------------------------------------------------------------------

    def resolve(self, name: str | None = None, artist_id: int | None = None) -> dict:
        """The artist named ``name`` (or of ``artist_id``); :class:`NotFound` when there is none."""
        try:
            return self.similar.directory.resolve(name, artist_id)
        except AgfError as exc:  # unknown is 404; a name several artists share is a question (400)
            unknown = artist_id is not None or slug(name or "") not in self.similar.directory.by_key
            raise (NotFound(str(exc)) if unknown else exc) from None

    def artist(self, artist_id: int, k: int = 5) -> dict:
        """An artist's page: its facts, tracks, factors in words, and nearest artists per space, each
        with why (the factors the two share) and a track to listen to."""
        artist = self.resolve(artist_id=artist_id)
        tracks = self.store.query(
            "SELECT track_id, title, duration_s, genre_top, path IS NOT NULL AS playable FROM tracks "
            "WHERE artist_id = ? ORDER BY track_id", [artist_id]).to_pylist()
        return {**_artist_summary(artist), "genres": artist["genres"], "tracks_list": tracks,
                "factors": self.atlas.strongest(artist_id),
                "neighbours": {space: self.neighbours(artist, space, k) for space in self.spaces}}

    def neighbours(self, artist: dict, space: str, k: int = 5) -> list[dict]:
        """The ``k`` nearest artists in ``space`` with ``why`` and ``listen`` (a track id or None)."""
        try:
            rows = self.similar.artists(artist, k, space)
        except AgfError:  # this artist has no vector in that space
            return []
        sources = [space.removeprefix("agf:")] if space.startswith("agf:") else None
        mine = set(artist["genres"])
        return [{**row, "why": self.atlas.shared(artist["artist_id"], row["artist_id"], sources),
                 "shared_genres": sorted(mine & set(self.artists_by_id[row["artist_id"]]["genres"])),
                 "listen": self.listen.get(row["artist_id"])} for row in rows]

    def similar_artists(self, name: str | None = None, artist_id: int | None = None, k: int = 10,
                        space: str | None = None) -> list[dict]:
        """The rows of ``agf similar NAME -k K --space SPACE --json``."""
        if space is not None and space not in self.spaces:
            raise NotFound(f"no artist index for space {space!r}; spaces are: {', '.join(self.spaces) or 'none'}")
        return self.similar.artists(self.resolve(name, artist_id), k, space)

    # -- a track --------------------------------------------------------------------------------

    def track(self, track_id: int, k: int = 5) -> dict:
        """A track's facts, every genre's probability from the newest tagging model, and similar
        tracks by other artists."""
        rows = self.store.query(
            "SELECT t.track_id, t.title, t.artist_id, a.name AS artist, t.album_id, t.duration_s, t.genre_top, "
            "t.path IS NOT NULL AS playable FROM tracks t JOIN artists a USING (artist_id) WHERE t.track_id = ?",
            [track_id]).to_pylist()
        if not rows:
            raise NotFound(f"no track with id {track_id}")
        similar = []
        if self.track_spaces:
            space = self.similar.default_space("track")
            try:
                similar = self.similar.tracks(track_id, k, space)
            except AgfError:  # not embedded yet
                similar = []
        return {**rows[0], "genres": self.genre_probabilities(track_id), "similar": similar}

    def genre_probabilities(self, track_id: int) -> dict:
        """``{"model_id", "genres": [{"genre", "probability"}]}`` from the newest transfer model:
        its stored predictions, else computed from the track's stored embeddings."""
        row = latest_model(self.store, "transfer", "genre")
        if row is None:
            return {"model_id": None, "genres": [], "note": "no genre classifier yet: agf train --target transfer"}
        stored = self.store.query("SELECT genre, probability FROM predictions WHERE model_id = ? AND track_id = ? "
                                  "ORDER BY probability DESC", [row["model_id"], track_id]).to_pylist()
        if stored:
            return {"model_id": row["model_id"], "genres": stored}
        from agf.models.serving import load_transfer, transfer_probabilities

        if self._transfer is None or self._transfer[0] != row["model_id"]:
            self._transfer = (row["model_id"], load_transfer(self.store, row["model_id"]))
        try:
            classes, probabilities = transfer_probabilities(self.store, row["model_id"], [track_id], self._transfer[1])
        except AgfError as exc:
            return {"model_id": row["model_id"], "genres": [], "note": str(exc)}
        ranked = sorted(zip(classes, probabilities[0].tolist()), key=lambda c: -c[1])
        return {"model_id": row["model_id"], "genres": [{"genre": g, "probability": p} for g, p in ranked]}

    def audio(self, track_id: int):
        """The track's recorded audio file, opened (a regular file only), and its media type."""
        rows = self.store.query("SELECT path FROM tracks WHERE track_id = ? AND path IS NOT NULL", [track_id]).to_pylist()
        if not rows:
            raise NotFound(f"no audio for track {track_id}")
        path = Path(rows[0]["path"])
        try:
            fh = open_regular(path)
        except (AgfError, OSError) as exc:
            raise NotFound(f"the audio of track {track_id} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        return fh, audio_type(path)

    # -- the map and SQL ------------------------------------------------------------------------

    def map(self, space: str | None = None, method: str = "pca") -> dict:
        """The artists of ``space`` in 2-D (see :func:`agf.app.maps.map_points`), computed once."""
        from agf.app.maps import map_points

        space = space or self.similar.default_space("artist")
        if space not in self.spaces:
            raise NotFound(f"no artist index for space {space!r}; spaces are: {', '.join(self.spaces) or 'none'}")
        if (space, method) not in self._maps:
            self._maps[(space, method)] = map_points(self.store, space, method)
        return self._maps[(space, method)]

    def sql(self, query: str, limit: int = SQL_ROWS, timeout: float = SQL_SECONDS) -> dict:
        """A read-only query in ``agf sql``'s sandbox, bounded in time and in the rows sent back."""
        table = self.store.sql(query, timeout=timeout)
        shown = table.slice(0, limit)
        return {"columns": table.column_names, "rows": shown.to_pylist(), "total_rows": table.num_rows,
                "truncated": table.num_rows > limit}


def _space_order(space: str) -> tuple[int, str]:
    """``combined`` first, then the factor spaces, then the embedding spaces."""
    return (0 if space == "combined" else 1 if space.startswith("agf:") else 2, space)


def _artist_summary(artist: dict) -> dict:
    return {"artist_id": artist["artist_id"], "name": artist["name"], "tracks": artist["tracks"],
            "top_genre": artist["top_genre"]}
