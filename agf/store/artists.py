"""Finding an artist by name (case- and accent-insensitive) or by id, with helpful errors."""

import difflib
import unicodedata
from collections import defaultdict

from agf.errors import AgfError
from agf.store.store import Store


def slug(text: str) -> str:
    """Case- and accent-insensitive key of a name: 'Émile  Zola' -> 'emile zola'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).casefold().split())


def artist_rows(store: Store) -> list[dict]:
    """Every artist with its track count, most frequent top genre and every genre of its tracks
    (``genres``: titles, ancestors included), by artist_id."""
    return store.query(
        "WITH named AS (SELECT t.artist_id, list(DISTINCT g.title ORDER BY g.title) AS genres FROM tracks t "
        "JOIN genres g ON list_contains(t.genres_all, g.genre_id) GROUP BY 1) "
        "SELECT a.artist_id, a.name, count(t.track_id) AS tracks, mode(t.genre_top) AS top_genre, "
        "coalesce(any_value(named.genres), []) AS genres FROM artists a LEFT JOIN tracks t USING (artist_id) "
        "LEFT JOIN named USING (artist_id) GROUP BY a.artist_id, a.name ORDER BY a.artist_id"
    ).to_pylist()


class ArtistDirectory:
    """Artists by id and by name key, for resolving many names with one query."""

    def __init__(self, rows: list[dict]):
        self.by_id = {r["artist_id"]: r for r in rows}
        self.by_key: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.by_key[slug(r["name"])].append(r)

    def resolve(self, name: str | None = None, artist_id: int | None = None) -> dict:
        """The artist row (artist_id, name, tracks, top_genre) for a name or an id.

        An unknown name raises :class:`AgfError` naming the closest known names; an ambiguous
        name lists the candidates with their ids.
        """
        if artist_id is not None:
            if artist_id not in self.by_id:
                raise AgfError(f"no artist with id {artist_id}")
            return self.by_id[artist_id]
        key = slug(name or "")
        found = self.by_key.get(key, [])
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(f"{a['name']} (--id {a['artist_id']})" for a in found)
            raise AgfError(f"{len(found)} artists are named {name!r}: {listed}")
        close = difflib.get_close_matches(key, list(self.by_key), n=3, cutoff=0.5)
        close += [k for k in self.by_key if key and key in k and k not in close]
        hint = f"; did you mean {', '.join(repr(self.by_key[k][0]['name']) for k in close[:3])}?" if close else ""
        raise AgfError(f"no artist named {name!r}{hint}")


def resolve_artist(store: Store, name: str | None = None, artist_id: int | None = None) -> dict:
    """Resolve one artist by name or id (see :meth:`ArtistDirectory.resolve`)."""
    return ArtistDirectory(artist_rows(store)).resolve(name, artist_id)
