"""Playlists: extended M3U (UTF-8) of stored tracks, for any player.

Each entry is ``#EXTINF:<seconds>,<artist> - <title>`` then the file's absolute path; a
playlist grouped by genre marks each entry with ``#EXTGRP:<genre>``. Tracks stored without
audio (FMA metadata alone) have no path and are left out.
"""

from pathlib import Path

from agf.errors import AgfError
from agf.store import Store


def playlist_entries(store: Store, track_ids: list[int]) -> list[dict]:
    """Path, duration, artist and title of ``track_ids`` that have audio, in the order given."""
    rows = {r["track_id"]: r for r in store.query(
        "SELECT t.track_id, t.path, t.duration_s, t.title, a.name AS artist FROM tracks t JOIN artists a USING (artist_id) "
        "WHERE t.path IS NOT NULL AND list_contains(?, t.track_id)", [list(track_ids)]).to_pylist()}
    return [rows[t] for t in track_ids if t in rows]


def artists_tracks(store: Store, artist_ids: list[int]) -> list[int]:
    """The tracks of ``artist_ids``, artist by artist in that order, each artist's by track id."""
    rows = store.query("SELECT artist_id, track_id FROM tracks WHERE path IS NOT NULL AND list_contains(?, artist_id) "
                       "ORDER BY track_id", [list(artist_ids)]).to_pylist()
    return [r["track_id"] for a in artist_ids for r in rows if r["artist_id"] == a]


def write_m3u(path: Path, entries: list[dict], groups: list[str] | None = None) -> dict:
    """Write ``entries`` (from :func:`playlist_entries`) as an extended M3U at ``path``;
    ``groups`` (one per entry) adds ``#EXTGRP`` lines. Returns ``{"playlist", "entries"}``."""
    path = Path(path).expanduser()
    lines = ["#EXTM3U"]
    for n, entry in enumerate(entries):
        if groups is not None:
            lines.append(f"#EXTGRP:{_one_line(groups[n])}")
        seconds = round(entry["duration_s"]) if entry.get("duration_s") else -1
        title = " - ".join(_one_line(x) for x in (entry.get("artist"), entry.get("title")) if x) or Path(entry["path"]).stem
        lines += [f"#EXTINF:{seconds},{title}", str(Path(entry["path"]).resolve())]
    try:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:
        raise AgfError(f"cannot write the playlist {path}: {exc.strerror or exc}") from None
    return {"playlist": str(path.resolve()), "entries": len(entries)}


def _one_line(text) -> str:
    """A tag's text on one line: a newline in a title would start a new playlist entry."""
    return " ".join(str(text).split())


def neighbours_playlist(store: Store, rows: list[dict], path: Path) -> dict:
    """A playlist of what ``agf similar`` found: the neighbour artists' clips, artist by artist
    in rank order, or the similar tracks themselves."""
    if rows and "track_id" in rows[0]:
        track_ids = [r["track_id"] for r in rows]
    else:
        track_ids = artists_tracks(store, [r["artist_id"] for r in rows])
    return write_m3u(path, playlist_entries(store, track_ids))
