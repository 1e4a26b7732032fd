"""Metadata readers: FMA's CSVs, a manifest CSV, or a bare folder's own tags, to candidates.

Each reader returns :class:`Candidate` objects (one per audio file to ingest) and, for FMA,
the genre tree. Readers never decode audio; a missing file becomes the pipeline's error row.
"""

import ast
import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agf.errors import AgfError
from agf.ingest.audio import AUDIO_EXTENSIONS, UNREAD_EXTENSIONS
from agf.ingest.released import read_released
from agf.store.paths import path_text


@dataclass
class Candidate:
    """One audio file and what its metadata says about it.

    ``path`` is ``None`` for a track FMA's metadata lists whose audio is not in the folder
    given: it is stored with its metadata and ``released`` feature vectors, and no audio.
    """

    path: Path | None
    source_id: str
    title: str | None = None
    artist: str | None = None
    artist_source_id: str | None = None
    album: str | None = None
    album_source_id: str | None = None
    genre_top: str | None = None
    genre_ids: list[int] = field(default_factory=list)  # FMA track.genres
    genre_all_ids: list[int] = field(default_factory=list)  # FMA track.genres_all
    genre_names: list[str] = field(default_factory=list)  # genres named by a manifest or tag
    tags: list[str] = field(default_factory=list)
    split: str | None = None
    subset: str | None = None
    duration_s: float | None = None
    released: dict = field(default_factory=dict)  # feature set -> vector, as FMA released it


@dataclass
class GenreRow:
    genre_id: int
    title: str
    parent_id: int | None
    top_level: int | None


# -- FMA ----------------------------------------------------------------------------------------

FMA_REQUIRED = [("track", "genres"), ("artist", "id"), ("artist", "name")]


def _read_csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            return list(reader)
    except OSError as exc:
        raise AgfError(f"cannot read {path}: {exc.strerror}") from None
    except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
        raise AgfError(f"cannot read {path}, line {reader.line_num}: {exc}") from None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int_list(text: str) -> list[int]:
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
        return [int(v) for v in value]
    except (ValueError, SyntaxError, TypeError):
        raise AgfError(f"malformed genre list {text!r} in tracks.csv") from None


def _str_list(text: str) -> list[str]:
    try:
        return [str(v) for v in ast.literal_eval(text)] if text else []
    except (ValueError, SyntaxError, TypeError):
        return [text]


def fma_audio_path(audio_dir: Path, track_id: int) -> Path:
    """FMA's layout: ``fma_large/000/000002.mp3`` (the folder is track_id // 1000)."""
    return audio_dir / f"{track_id // 1000:03d}" / f"{track_id:06d}.mp3"


def read_fma(metadata_dir: Path, audio_dir: Path, subset: str | None = None) -> tuple[list[Candidate], list[GenreRow]]:
    """Read ``tracks.csv`` (two header rows) and ``genres.csv`` of an FMA ``fma_metadata`` folder.

    The folder's released features (``features.csv``, ``echonest.csv``; see
    :mod:`agf.ingest.released`) come with each track as ``Candidate.released``. A track whose
    audio file is not under ``audio_dir`` (an FMA audio folder holds one subset) is kept, with
    ``path=None``, when it has released features, and left out otherwise. ``subset`` ('small',
    'medium', 'large') keeps only the tracks of that subset (small is in medium is in large).
    """
    metadata_dir = Path(metadata_dir)
    rows = _read_csv_rows(metadata_dir / "tracks.csv")
    if len(rows) < 3:
        raise AgfError(f"{metadata_dir / 'tracks.csv'} has no track rows")
    columns = {(top.strip(), name.strip()): i for i, (top, name) in enumerate(zip(rows[0], rows[1]))}
    missing = [f"{t}.{n}" for t, n in FMA_REQUIRED if (t, n) not in columns]
    if missing:
        raise AgfError(f"tracks.csv lacks required column(s) {', '.join(missing)}")
    body = rows[3:] if rows[2] and rows[2][0] == "track_id" else rows[2:]

    def get(row: list[str], top: str, name: str) -> str:
        i = columns.get((top, name))
        return row[i].strip() if i is not None and i < len(row) else ""

    order = {"small": 0, "medium": 1, "large": 2}
    if subset is not None and subset not in order:
        raise AgfError(f"unknown FMA subset {subset!r}; choose small, medium or large")
    listed = []
    for row in body:
        if not row or not row[0].strip():
            continue
        try:
            track_id = int(row[0])
        except ValueError:
            raise AgfError(f"tracks.csv: track_id {row[0]!r} is not an integer") from None
        track_subset = get(row, "set", "subset") or None
        if not subset or order.get(track_subset or "large", 2) <= order[subset]:
            listed.append((track_id, row, track_subset))
    released = read_released(metadata_dir, {track_id for track_id, _, _ in listed})
    candidates = []
    for track_id, row, track_subset in listed:
        path = fma_audio_path(Path(audio_dir), track_id)
        if not path.exists():
            if track_id not in released:
                continue
            path = None
        candidates.append(
            Candidate(
                path=path,
                source_id=str(track_id),
                title=get(row, "track", "title") or None,
                artist=get(row, "artist", "name") or None,
                artist_source_id=get(row, "artist", "id") or None,
                album=get(row, "album", "title") or None,
                album_source_id=get(row, "album", "id") or None,
                genre_top=get(row, "track", "genre_top") or None,
                genre_ids=_int_list(get(row, "track", "genres")),
                genre_all_ids=_int_list(get(row, "track", "genres_all")),
                tags=_str_list(get(row, "track", "tags")),
                split=get(row, "set", "split") or None,
                subset=track_subset,
                duration_s=_float(get(row, "track", "duration")),
                released=released.get(track_id, {}),
            )
        )
    return candidates, read_fma_genres(metadata_dir / "genres.csv")


def read_fma_genres(path: Path) -> list[GenreRow]:
    """FMA's ``genres.csv`` (genre_id, #tracks, parent, title, top_level) as genre rows."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = {"genre_id", "parent", "title", "top_level"} - set(reader.fieldnames or [])
        if missing:
            raise AgfError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        return [
            GenreRow(
                genre_id=int(r["genre_id"]),
                title=r["title"],
                parent_id=int(r["parent"]) if r["parent"] not in ("", "0") else None,
                top_level=int(r["top_level"]) if r["top_level"] else None,
            )
            for r in reader
        ]


# -- manifest -----------------------------------------------------------------------------------

MANIFEST_FIELDS = ("path", "track_id", "title", "artist", "artist_id", "album", "album_id", "genre", "tags", "split")


def _split_tags(text: str) -> list[str]:
    for sep in ("|", ";"):
        if sep in text:
            return [t.strip() for t in text.split(sep) if t.strip()]
    return [text.strip()] if text.strip() else []


def read_manifest(manifest: Path, audio_dir: Path | None = None, mapping: dict[str, str] | None = None) -> list[Candidate]:
    """Read a manifest CSV: a ``path`` column and any of :data:`MANIFEST_FIELDS`.

    ``mapping`` renames the file's columns to those fields (``{"file": "path"}``). Relative
    paths resolve against ``audio_dir``, or the manifest's folder when it is not given. Several
    tags in one cell are separated by ``|`` or ``;``.
    """
    manifest = Path(manifest)
    mapping = mapping or {}
    bad = [f for f in mapping.values() if f not in MANIFEST_FIELDS]
    if bad:
        raise AgfError(f"--map targets {bad} are not manifest fields ({', '.join(MANIFEST_FIELDS)})")
    try:
        with open(manifest, newline="", encoding="utf-8-sig", errors="replace") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise AgfError(f"cannot read manifest {manifest}: {exc.strerror}") from None
    except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
        raise AgfError(f"cannot read manifest {manifest}, line {reader.line_num}: {exc}") from None
    renamed = {column: mapping.get(column, column) for column in header}
    if "path" not in renamed.values():
        raise AgfError(f"manifest {manifest} has no 'path' column (use --map COLUMN=path)")
    base = Path(audio_dir) if audio_dir else manifest.parent
    candidates, lines = [], {}
    for line, row in enumerate(rows, start=2):
        record = {renamed[k]: (v or "").strip() for k, v in row.items() if k in renamed}
        if not record.get("path"):
            continue
        if record.get("track_id"):
            first = lines.setdefault(record["track_id"], line)
            if first != line:
                raise AgfError(f"manifest {manifest}: track_id {record['track_id']!r} is on lines {first} and {line}; "
                               f"each track needs an id of its own")
        path = Path(record["path"])
        path = path if path.is_absolute() else base / path
        genre = record.get("genre") or None
        candidates.append(
            Candidate(
                path=path,
                source_id=record.get("track_id") or path_text(path),
                title=record.get("title") or path_text(path.stem),
                artist=record.get("artist") or None,
                artist_source_id=record.get("artist_id") or None,
                album=record.get("album") or None,
                album_source_id=record.get("album_id") or None,
                genre_top=genre,
                genre_names=[genre] if genre else [],
                tags=_split_tags(record.get("tags", "")),
                split=record.get("split") or None,
            )
        )
    return candidates


# -- a bare folder ------------------------------------------------------------------------------


def _tag(tags, key: str) -> str | None:
    try:
        values = tags.get(key) if tags else None
    except (KeyError, ValueError):
        return None
    if not values:
        return None
    text = str(values[0]).strip()
    return text or None


def read_folder(folder: Path, *, notes: list[str] | None = None) -> list[Candidate]:
    """Every audio file under ``folder`` (by extension), described by its own tags (mutagen).

    Files without an artist tag get the artist 'unknown'. Hidden files and folders (a name that
    begins with '.') are passed over, as music players pass them over: macOS leaves a '._song.m4a'
    of resource data beside each song it copies to a foreign disk. Linked folders are followed,
    each folder once (a link back up is no loop). A folder with no audio file under it is an error.
    Files of audio formats agf does not read (``UNREAD_EXTENSIONS``) are counted, and a line
    naming them is appended to ``notes``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AgfError(f"{folder} is not a folder")
    paths, unread = _audio_files(folder)
    if not paths:  # most likely the wrong folder: say so rather than do nothing (or make an empty store)
        raise AgfError(f"no audio files under {path_text(folder)}: agf reads {' '.join(sorted(AUDIO_EXTENSIONS))} "
                       f"files (hidden ones are passed over)" + (f"; {_unread_note(unread)}" if unread else ""))
    if unread and notes is not None:
        notes.append(f"{path_text(folder)}: {_unread_note(unread)}")
    return [_tagged(path, path_text(path.relative_to(folder))) for path in paths]


def _unread_note(unread: Counter) -> str:
    """``passed over 3 files in formats agf does not read: 2 .ape, 1 .dsf``."""
    counts = ", ".join(f"{n} {ext}" for ext, n in sorted(unread.items(), key=lambda c: (-c[1], c[0])))
    return f"passed over {unread.total()} file{'s' * (unread.total() != 1)} in formats agf does not read: {counts}"


def _audio_files(folder: Path) -> tuple[list[Path], Counter]:
    """The audio files under ``folder``, in name order, through linked folders, each folder once,
    and the count of files in formats agf does not read, by extension."""
    found, seen, unread = [], set(), Counter()
    for root, folders, files in os.walk(folder, followlinks=True):
        try:
            identity = os.stat(root)
        except OSError:  # a folder gone since it was listed
            folders[:] = []
            continue
        if (identity.st_dev, identity.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((identity.st_dev, identity.st_ino))
        folders[:] = [f for f in folders if not f.startswith(".")]
        shown = [(f, Path(f).suffix.lower()) for f in files if not f.startswith(".")]
        found += [Path(root, f) for f, ext in shown if ext in AUDIO_EXTENSIONS]
        unread.update(ext for _, ext in shown if ext in UNREAD_EXTENSIONS)
    return sorted(p for p in found if p.is_file()), unread


def read_files(paths: list[Path], *, notes: list[str] | None = None) -> list[Candidate]:
    """Files named one by one (any extension: decoding decides) and audio files under named
    folders; ``notes`` as :func:`read_folder`'s."""
    candidates = []
    for path in map(Path, paths):
        if path.is_dir():
            candidates.extend(read_folder(path, notes=notes))
        elif path.exists():
            candidates.append(_tagged(path, path_text(path.resolve())))
        else:
            raise AgfError(f"{path} does not exist")
    return candidates


def _tagged(path: Path, source_id: str) -> Candidate:
    from agf.ingest.tagfiles import open_tags  # mutagen: only where files' tags are read

    try:
        tags = open_tags(path)
    except Exception:  # noqa: BLE001 - unreadable tags (or a FIFO) are not fatal; decoding decides
        tags = None
    names = _ASF_NAMES if type(tags).__name__ == "ASF" else {}
    genre = _tag(tags, names.get("genre", "genre"))
    return Candidate(
        path=path,
        source_id=source_id,
        title=_tag(tags, names.get("title", "title")) or path_text(path.stem),
        artist=_tag(tags, names.get("artist", "artist")) or "unknown",
        album=_tag(tags, names.get("album", "album")),
        genre_top=genre,
        genre_names=[genre] if genre else [],
    )


#: WMA's attribute names, by the names mutagen's "easy" interfaces give other formats' tags (it has
#: none for ASF).
_ASF_NAMES = {"title": "Title", "artist": "Author", "album": "WM/AlbumTitle", "genre": "WM/Genre"}
