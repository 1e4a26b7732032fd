"""Finding an artist by name (case- and accent-insensitive) or by id, with helpful errors."""

import difflib

from agf.errors import AgfError
from agf.ingest.metadata import slug
from agf.store.store import Store


def resolve_artist(store: Store, name: str | None = None, artist_id: int | None = None) -> dict:
    """The artist row (artist_id, name, tracks) for a name or an id.

    An unknown name raises :class:`AgfError` naming the closest known names; an ambiguous name
    lists the candidates with their ids.
    """
    artists = store.query(
        "SELECT a.artist_id, a.name, count(t.track_id) AS tracks FROM artists a "
        "LEFT JOIN tracks t USING (artist_id) GROUP BY ALL ORDER BY a.artist_id"
    ).to_pylist()
    if artist_id is not None:
        found = [a for a in artists if a["artist_id"] == artist_id]
        if not found:
            raise AgfError(f"no artist with id {artist_id}")
        return found[0]
    key = slug(name or "")
    found = [a for a in artists if slug(a["name"]) == key]
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(f"{a['name']} (--id {a['artist_id']})" for a in found)
        raise AgfError(f"{len(found)} artists are named {name!r}: {listed}")
    by_key = {slug(a["name"]): a["name"] for a in artists}
    close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.5)
    close += [k for k in by_key if key and key in k and k not in close]
    hint = f"; did you mean {', '.join(repr(by_key[k]) for k in close[:3])}?" if close else ""
    raise AgfError(f"no artist named {name!r}{hint}")
