"""Genres into the files' own tags, with undo: ID3 ``TCON`` (MP3, and raw AAC's ID3v2 tag), Vorbis
``GENRE`` (FLAC, Ogg Vorbis, Opus), ``©gen`` (MP4/M4A), APEv2 ``Genre`` (WavPack, Musepack),
``WM/Genre`` (WMA), through mutagen, which rewrites tags and never the audio.

Before a file's tags change, what they held is committed to the store's ``tag_writes`` table
(path, the file's sha256 before and after, the field, old and new values, the model); ``undo``
puts the old values back, removing a field that was absent. The sha256 after writing lets a
later ingest know the retagged file as the track it was.
"""

import csv
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from agf.errors import AgfError
from agf.store import Store, now_utc
from agf.store.paths import sha256_file

#: The field written, by mutagen's file type (the "easy" interfaces map ``genre`` to it).
FIELDS = {"EasyMP3": "TCON", "EasyID3FileType": "TCON", "FLAC": "GENRE", "OggVorbis": "GENRE", "OggOpus": "GENRE",
          "OggFLAC": "GENRE", "OggSpeex": "GENRE", "EasyMP4": "©gen", "EasyTrueAudio": "TCON", "WavPack": "Genre",
          "ASF": "WM/Genre", "Musepack": "Genre", "EasyAAC": "TCON"}
#: File types without an "easy" interface: their field is named as the format names it.
_NAMED_FIELDS = {"WavPack", "ASF", "Musepack"}
#: File types whose tag agf removes with its last field, when agf added it to a file that had none.
_WHOLE_TAGS = {"EasyMP3", "WavPack", "Musepack", "EasyAAC"}


@dataclass
class GenrePolicy:
    """What is written: at most ``top`` genres with a calibrated probability of at least
    ``min_probability``, renamed by ``names`` (the user's vocabulary: a genre it does not name is
    never written; ``None`` writes the model's own names)."""

    min_probability: float = 0.5
    top: int = 1
    names: dict[str, str] | None = None

    def __post_init__(self):
        if not 0 <= self.min_probability <= 1:
            raise AgfError(f"--min-probability is a probability, between 0 and 1, not {self.min_probability}")
        if self.top < 1:
            raise AgfError(f"--top must be at least 1, not {self.top}")
        if self.names is not None and not _is_names(self.names):  # from Python, any object may come
            raise AgfError("a genres map maps the model's genre names to your names, text to text")

    def choose(self, ranked: list[tuple[str, float]]) -> list[str]:
        """The names to write for genres ranked by probability, most probable first."""
        chosen = []
        for genre, probability in ranked:
            name = genre if self.names is None else self.names.get(genre)
            if probability >= self.min_probability and name and name not in chosen:
                chosen.append(name)
            if len(chosen) == self.top:
                break
        return chosen


def read_genres_map(path: Path) -> dict[str, str]:
    """A genres map: JSON ``{"model genre": "your name"}``, or a CSV of two columns (model genre,
    your name; a header row is allowed)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgfError(f"cannot read the genres map {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AgfError(f"{path}: not JSON ({exc.msg})") from None
        if not _is_names(mapping):
            raise AgfError(f"{path}: a genres map is an object of genre names to names")
        return mapping
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if any(len(r) != 2 for r in rows):
        raise AgfError(f"{path}: each line of a genres map CSV is: model genre, your name")
    if rows and [c.strip().lower() for c in rows[0]] in (["genre", "name"], ["model", "name"], ["from", "to"]):
        rows = rows[1:]
    return {a.strip(): b.strip() for a, b in rows}


def _is_names(mapping) -> bool:
    """Whether ``mapping`` is a genres map: a dict of text to text."""
    return isinstance(mapping, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())


# -- one file's genres ------------------------------------------------------------------------------


def _open_tags(path: Path):
    from agf.ingest.tagfiles import NotARegularFile, open_tags

    try:
        audio = open_tags(path)
    except NotARegularFile:
        raise AgfError(f"{path}: not a regular file") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file may trip any of mutagen's parsers: its error, one line
        raise AgfError(f"{path}: its tags cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if audio is None or type(audio).__name__ not in FIELDS:
        raise AgfError(f"{path}: agf writes genres into MP3, FLAC, Ogg Vorbis, Opus, MP4/M4A, WavPack, WMA, "
                       f"Musepack and raw AAC files only")
    return audio


def _key(audio) -> str:
    """The key of the genre field in ``audio.tags``."""
    kind = type(audio).__name__
    return FIELDS[kind] if kind in _NAMED_FIELDS else "genre"


def genre_field(path: Path) -> str:
    """The tag field genres go to in ``path``'s format: ``TCON``, ``GENRE``, ``©gen``, ``Genre`` or ``WM/Genre``."""
    return FIELDS[type(_open_tags(path)).__name__]


def read_genres(path: Path) -> list[str] | None:
    """The genre values of ``path``'s tags, or ``None`` when it has no genre field."""
    return _genres(_open_tags(path))


def _genres(audio) -> list[str] | None:
    key = _key(audio)
    if audio.tags is None or key not in audio.tags:
        return None
    return [str(v) for v in audio.tags[key]]


def write_genres(path: Path, genres: list[str] | None) -> None:
    """Set ``path``'s genre field to ``genres`` (several values where the format allows), or
    remove the field for ``None``; only the tags are rewritten."""
    import mutagen

    audio = _open_tags(path)
    if audio.tags is None:
        if genres is None:
            return
        audio.add_tags()
    key = _key(audio)
    if genres is None:
        if key in audio.tags:
            del audio.tags[key]
    else:
        audio.tags[key] = list(genres)
    try:
        if genres is None and not len(audio.tags.keys()) and type(audio).__name__ in _WHOLE_TAGS:
            audio.delete()  # the ID3 or APEv2 tag agf added to a file that had none goes with its last field
        else:
            audio.save()
    except (mutagen.MutagenError, OSError) as exc:
        raise AgfError(f"{path}: its tags cannot be written ({getattr(exc, 'strerror', None) or exc})") from None


# -- a run's files ----------------------------------------------------------------------------------


def write_tags(store: Store, rows: Iterable[dict], model_id: str, policy: GenrePolicy, *, dry_run: bool = False,
               batch: int = 64) -> Iterator[dict]:
    """Write the chosen genres of tagged files (rows of ``agf tag``) into their tags; yields each
    row with ``tags``: what was (or, with ``dry_run``, would be) written, or why nothing was.

    Files are handled ``batch`` at a time: their old values are committed to ``tag_writes``
    before any of them changes, and the files' new sha256 after.
    """
    pending: list[dict] = []
    for row in rows:
        pending.append(row)
        if len(pending) == batch:
            yield from _write_batch(store, pending, model_id, policy, dry_run)
            pending = []
    yield from _write_batch(store, pending, model_id, policy, dry_run)


def _write_batch(store: Store, rows: list[dict], model_id: str, policy: GenrePolicy, dry_run: bool) -> list[dict]:
    tagged = [r for r in rows if r.get("track_id") is not None]
    ranked = ranked_predictions(store, model_id, [r["track_id"] for r in tagged])
    plans = []
    for row in tagged:
        genres = policy.choose(ranked.get(row["track_id"], []))
        if not genres:
            row["tags"] = f"left untouched: no genre at {policy.min_probability:.2f} or above" + (
                " in the genres map" if policy.names is not None else "")
            continue
        try:
            path = Path(row["path"])
            audio = _open_tags(path)  # read once: the field and the values it holds
            plans.append({"row": row, "path": path, "field": FIELDS[type(audio).__name__], "old": _genres(audio),
                          "new": genres, "before": sha256_file(path)})
        except (AgfError, OSError) as exc:
            row["tags"] = f"left untouched: {getattr(exc, 'strerror', None) or exc}"
    for plan in plans:
        plan["row"]["tags"] = f"{plan['field']}: {_shown(plan['old'])} -> {_shown(plan['new'])}" + (
            " (dry run)" if dry_run else "")
    if dry_run or not plans:
        return rows
    at = now_utc()
    records = [_record(p, model_id, at, None) for p in plans]
    with store.transaction(params={"model_id": model_id, "tag_writes": len(records)}) as tx:
        tx.append("tag_writes", pa.Table.from_pylist(records))  # the old values first: then the files
    written = []
    for plan in plans:
        try:
            write_genres(plan["path"], plan["new"])
            written.append(_record(plan, model_id, at, sha256_file(plan["path"])))
        except AgfError as exc:
            plan["row"]["tags"] = f"left untouched: {exc}"
    with store.transaction(params={"model_id": model_id, "tag_writes": len(written)}) as tx:
        tx.delete_where("tag_writes", "written_at = ? AND sha256_after IS NULL AND list_contains(?, path)",
                        [at, [p["path"] for p in records]])
        if written:
            tx.append("tag_writes", pa.Table.from_pylist(written))
    return rows


def _record(plan: dict, model_id: str, at: dt.datetime, after: str | None) -> dict:
    return {"track_id": plan["row"]["track_id"], "path": str(plan["path"]), "field": plan["field"],
            "old_value": plan["old"], "new_value": plan["new"], "sha256_before": plan["before"], "sha256_after": after,
            "model_id": model_id, "written_at": at}


def ranked_predictions(store: Store, model_id: str, track_ids: list[int]) -> dict[int, list[tuple[str, float]]]:
    """Each track's stored predictions by ``model_id``: (genre, probability), most probable first."""
    ranked: dict[int, list[tuple[str, float]]] = {}
    for r in store.query("SELECT track_id, genre, probability FROM predictions WHERE model_id = ? AND "
                         "list_contains(?, track_id) ORDER BY track_id, rank", [model_id, track_ids]).to_pylist():
        ranked.setdefault(r["track_id"], []).append((r["genre"], r["probability"]))
    return ranked


def _shown(values: list[str] | None) -> str:
    return "(none)" if values is None else "; ".join(values) or "(empty)"


def undo(store: Store, *, since: dt.datetime | None = None, paths: list[Path] | None = None,
         dry_run: bool = False) -> list[dict]:
    """Put back the genre tags agf wrote (since ``since``; to ``paths`` only, if given) as they
    were before its first write in that span, removing a field that was absent.

    A file whose genres are no longer what agf wrote last (changed since, by hand or by another
    tool) is left as it is and reported. Returns one row per file.
    """
    # a write whose sha256 after is missing was cut short: its file changed only if its genres say so (checked below)
    where, params = ["true"], []
    if since is not None:
        where.append("written_at >= ?")
        params.append(since)
    if paths:
        where.append("list_contains(?, path)")
        params.append([str(Path(p).expanduser().resolve()) for p in paths])
    writes = store.query(f"SELECT * FROM tag_writes WHERE {' AND '.join(where)} ORDER BY path, written_at",
                         params).to_pylist()
    by_path: dict[str, list[dict]] = {}
    for w in writes:
        by_path.setdefault(w["path"], []).append(w)
    rows, undone = [], []
    for path, history in by_path.items():
        restore, last = history[0]["old_value"], history[-1]["new_value"]
        row = {"path": path, "field": history[0]["field"], "from": _shown(last), "to": _shown(restore)}
        try:
            current = read_genres(Path(path))
        except (AgfError, OSError) as exc:
            rows.append({**row, "done": f"left as it is: {getattr(exc, 'strerror', None) or exc}"})
            continue
        if current != last:
            rows.append({**row, "done": f"left as it is: its genres ({_shown(current)}) changed since agf wrote them"})
            continue
        if not dry_run:
            try:
                write_genres(Path(path), restore)
            except AgfError as exc:  # this file only: the others are restored, its history kept for another try
                rows.append({**row, "done": f"left as it is: {exc}"})
                continue
            undone.append(history)
        rows.append({**row, "done": "dry run" if dry_run else "restored"})
    if undone:
        with store.transaction(params={"undone": len(undone)}) as tx:
            for history in undone:
                tx.delete_where("tag_writes", "path = ? AND written_at >= ? AND written_at <= ?",
                                [history[0]["path"], history[0]["written_at"], history[-1]["written_at"]])
    if not rows:
        raise AgfError("no genre tags written by agf" + (" since then" if since else "") + (" in those files" if paths else ""))
    return rows


def parse_since(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time (``2026-11-27``, ``2026-11-27T16:00``; UTC unless it says otherwise)."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AgfError(f"--since {text!r} is not a date or time like 2026-11-27T16:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
