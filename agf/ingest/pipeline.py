"""The ingest pipeline: candidates in, rows and frame matrices out, in parallel and resumable.

Workers decode each file once and compute every requested feature from it; the parent
assigns ids, writes frame matrices and commits one atomic part per ``part_size`` tracks, so an
interrupted ingest keeps everything up to its last part and the next run resumes (files whose
audio sha256 is stored are skipped).
"""

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from agf.engine import LOCAL, Engine, connect, map_tasks, usable_cores
from agf.ingest.audio import AudioError, decode_clip, decoder_messages, resample
from agf.ingest.compiled import compile_lock
from agf.ingest.features import DEFAULT_FEATURES, FRAME_EXTRACTORS, VECTOR_EXTRACTORS, Spectra
from agf.ingest.metadata import Candidate, GenreRow
from agf.store.artists import slug
from agf.progress import progress_bar
from agf.store import SCHEMAS, FrameCache, Store, fixed_vectors, now_utc
from agf.store.paths import path_text, sha256_file


@dataclass
class IngestSummary:
    """What one ingest did; ``track_ids`` and ``errors`` say it per candidate (by position)."""

    ingested: int = 0
    skipped: int = 0
    failed: int = 0
    listed: int = 0  # tracks stored from FMA's metadata and released features, their audio elsewhere
    warned: int = 0  # ingested, but the decoder complained (its words are in ingest_errors)
    seconds: float = 0.0
    track_ids: dict[int, int] = field(default_factory=dict, repr=False)
    errors: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def files_per_second(self) -> float:
        done = self.ingested + self.skipped + self.failed
        return done / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"ingested": self.ingested, "skipped": self.skipped, "failed": self.failed, "listed": self.listed,
                "decoder_warnings": self.warned,
                "seconds": self.seconds, "files_per_second": round(self.files_per_second, 2)}


#: Seconds one file may take to read, decode and featurise before it becomes an error row.
FILE_SECONDS = 300.0


@dataclass
class ExtractConfig:
    """What a worker needs to turn a file into a result: the store's rates and frame parameters."""

    sample_rate: int
    clip_seconds: float
    frames: dict
    features: tuple[str, ...]
    file_seconds: float = FILE_SECONDS
    fma_native: bool = False  # the fma set at each file's own rate, as FMA released it

    @classmethod
    def of(cls, store_config: dict, features: tuple[str, ...] = DEFAULT_FEATURES,
           file_seconds: float = FILE_SECONDS) -> "ExtractConfig":
        """From a store's configuration (``Store.config``)."""
        return cls(int(store_config["sample_rate"]), float(store_config["clip_seconds"]), store_config["frames"],
                   tuple(features), file_seconds, store_config.get("fma_rate", "store") == "native")


# -- the worker side ------------------------------------------------------------------------------

_IN_WORKER = False  # a worker process may take over file descriptor 2 (see decoder_messages)


def enter_worker() -> None:
    """Set up a worker process of the ingest map: decoders' complaints are recorded per file."""
    global _IN_WORKER
    _IN_WORKER = True


def extract(path: Path, config: ExtractConfig) -> dict:
    """Decode ``path`` once and compute every frame matrix and feature vector from that clip.

    Returns ``{"native_rate", "duration_s", "frames": {kind: (n_frames, n_bins)}, "vectors":
    {feature_set: (dim,)}}``; raises :class:`AudioError` with the failing stage.
    """
    with decoder_messages(enabled=_IN_WORKER) as messages:  # kept off the terminal, recorded per file
        native, native_rate, duration = decode_clip(path, config.clip_seconds, notes=messages)
    y = resample(native, native_rate, config.sample_rate)
    start = max(0.0, (duration - config.clip_seconds) / 2)
    spectra = Spectra(y, config.sample_rate, path=path, clip=(start, start + len(y) / config.sample_rate))
    # FMA computed its released features at each file's own rate: with fma_native, so does agf
    fma_spectra = Spectra(native, native_rate) if config.fma_native and native_rate != config.sample_rate else spectra
    try:
        frames, vectors = _features(spectra, config, fma_spectra)
    except Exception as exc:  # noqa: BLE001 - any failure of one file is that file's error row
        raise AudioError("features", f"{type(exc).__name__}: {exc}") from None
    if not all(np.isfinite(a).all() for a in (*frames.values(), *vectors.values())):
        raise AudioError("features", "features are not finite: the samples lie far outside [-1, 1]")
    return {"native_rate": native_rate, "duration_s": duration, "frames": frames, "vectors": vectors,
            "warnings": messages}


def _features(spectra: Spectra, config: ExtractConfig,
              fma_spectra: Spectra | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range audio is caught by the caller
        # float16 here, as stored: half the bytes to send back to the parent
        frames = {kind: fn(spectra, **config.frames[kind]).astype(np.float16) for kind, fn in FRAME_EXTRACTORS.items()}
        vectors = {name: VECTOR_EXTRACTORS[name](fma_spectra if name == "fma" and fma_spectra else spectra,
                                                  config.frames["logmel"]) for name in config.features}
    return frames, vectors


_WARM: set[tuple[str, ...]] = set()


def warm_up(config: ExtractConfig) -> None:
    """Run the feature code once on a second of noise, in this process, before workers fork.

    The first file a fresh process extracts costs ~2 s more than the rest (librosa's and
    SciPy's lazy imports, numba's cache loads); forked workers inherit a warm parent instead of
    each paying that on every chunk. Essentia decodes files itself and is not warmed.
    """
    features = tuple(f for f in config.features if f != "essentia")
    if features in _WARM:
        return
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, config.sample_rate).astype(np.float32)
    with compile_lock():  # the first computation compiles librosa's numba code: never two processes at once
        _features(Spectra(noise, config.sample_rate), replace(config, features=features))
    _WARM.add(features)


def extract_file(job: tuple[int, str], *, config: ExtractConfig, known: frozenset = frozenset()) -> tuple:
    """A worker's task: hash file ``job = (index, path)`` and, unless its sha256 is in ``known``,
    decode it and compute its features within ``config.file_seconds``.

    Returns ``("ok", index, sha256, extract(...))``, ``("skip", index, sha256)`` or
    ``("error", index, stage, message)``.
    """
    index, path = job
    warm_up(config)  # a no-op in a worker forked from a warm parent; a Ray worker compiles here, locked
    try:
        with time_bound(config.file_seconds):
            return _one_file(index, path, config, known)
    except FileTooSlow:
        return ("error", index, "decode", f"took longer than {config.file_seconds:g} s (--file-timeout): skipped")


def _one_file(index: int, path: str, config: ExtractConfig, known: frozenset) -> tuple:
    try:
        sha = sha256_file(Path(path))
    except OSError as exc:
        return ("error", index, "read", f"cannot read file: {exc.strerror or exc}")
    if sha in known:
        return ("skip", index, sha)
    try:
        return ("ok", index, sha, extract(Path(path), config))
    except AudioError as exc:
        return ("error", index, exc.stage, str(exc))


class FileTooSlow(BaseException):
    """Raised by :func:`time_bound`; a BaseException, so the feature code's own ``except Exception``
    cannot turn it into a different error."""


@contextlib.contextmanager
def time_bound(seconds: float):
    """Raise :class:`FileTooSlow` in this thread once ``seconds`` have passed.

    A SIGALRM timer: only the main thread receives signals, so elsewhere (a Ray task's thread)
    the block runs unbounded. Python code is interrupted between bytecodes; a call stuck inside
    one C function is interrupted when it returns.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise FileTooSlow()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the parent side ------------------------------------------------------------------------------


class _Ids:
    """Store ids of artists, albums and genres, known ones first, new ones assigned as met."""

    def __init__(self, store: Store):
        self.artists = {r["source_id"]: r["artist_id"] for r in store.query("SELECT source_id, artist_id FROM artists").to_pylist()}
        self.albums = {r["source_id"]: r["album_id"] for r in store.query("SELECT source_id, album_id FROM albums").to_pylist()}
        genres = store.query("SELECT genre_id, title, parent_id FROM genres").to_pylist()
        self.genre_by_id = {g["genre_id"]: g for g in genres}
        self.genre_by_name = {slug(g["title"]): g["genre_id"] for g in genres}
        self._next_artist = max(self.artists.values(), default=0)
        self._next_album = max(self.albums.values(), default=0)
        self.new_artists: list[dict] = []
        self.new_albums: list[dict] = []
        self.new_genres: list[dict] = []

    def add_genre_tree(self, rows: list[GenreRow]) -> None:
        for row in rows:
            if row.genre_id not in self.genre_by_id:
                record = {"genre_id": row.genre_id, "title": row.title, "parent_id": row.parent_id, "top_level": row.top_level}
                self.genre_by_id[row.genre_id] = record
                self.genre_by_name.setdefault(slug(row.title), row.genre_id)
                self.new_genres.append(record)

    def genre(self, name: str) -> int:
        key = slug(name)
        if key not in self.genre_by_name:
            genre_id = max(self.genre_by_id, default=0) + 1  # new names are rare: no counter needed
            record = {"genre_id": genre_id, "title": name, "parent_id": None, "top_level": genre_id}
            self.genre_by_id[genre_id] = record
            self.genre_by_name[key] = genre_id
            self.new_genres.append(record)
        return self.genre_by_name[key]

    def with_ancestors(self, genre_ids: list[int]) -> list[int]:
        out: list[int] = []
        for genre_id in genre_ids:
            while genre_id is not None and genre_id not in out:
                out.append(genre_id)
                genre_id = self.genre_by_id.get(genre_id, {}).get("parent_id")
        return sorted(out)

    def artist(self, c: Candidate) -> int:
        name = c.artist or "unknown"
        key = c.artist_source_id or slug(name)
        if key not in self.artists:
            self.artists[key] = self._next_artist = self._next_artist + 1
            self.new_artists.append({"artist_id": self.artists[key], "source_id": key, "name": name})
        return self.artists[key]

    def album(self, c: Candidate, artist_id: int) -> int | None:
        if not (c.album or c.album_source_id):
            return None
        key = c.album_source_id or f"{artist_id}/{slug(c.album)}"
        if key not in self.albums:
            self.albums[key] = self._next_album = self._next_album + 1
            self.new_albums.append({"album_id": self.albums[key], "source_id": key, "title": c.album, "artist_id": artist_id})
        return self.albums[key]

    def drain(self) -> dict[str, list[dict]]:
        out = {"artists": self.new_artists, "albums": self.new_albums, "genres": self.new_genres}
        self.new_artists, self.new_albums, self.new_genres = [], [], []
        return out


class _Batch:
    """Rows waiting to be committed as one part per table."""

    def __init__(self):
        self.tracks: list[dict] = []
        self.vectors: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.errors: list[dict] = []
        self.replaced_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.tracks) + len(self.errors)

    def tables(self, ids: _Ids) -> tuple[dict[str, pa.Table], dict[str, list[int]]]:
        tables = {"tracks": pa.Table.from_pylist(self.tracks, schema=SCHEMAS["tracks"])}
        for name, rows in self.vectors.items():
            track_ids = pa.array([r[0] for r in rows], pa.int64())
            tables[f"features_{name}"] = pa.table({"track_id": track_ids, "vector": fixed_vectors(np.stack([r[1] for r in rows]))})
        if self.errors:
            tables["ingest_errors"] = pa.Table.from_pylist(self.errors, schema=SCHEMAS["ingest_errors"])
        for name, rows in ids.drain().items():
            if rows:
                tables[name] = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
        return tables, self.replaced_ids


def ingest(store: Store, candidates: list[Candidate], genre_tree: list[GenreRow] | None = None,
           **options) -> IngestSummary:
    """Ingest ``candidates`` into ``store``: tracks, artists, albums, genres, features, frames.

    ``options`` are :func:`ingest_parts`'s (features, workers, force, part_size, engine, quiet,
    file_seconds).
    """
    summary = IngestSummary()
    for _ in ingest_parts(store, candidates, summary, genre_tree, **options):
        pass
    return summary


def ingest_parts(
    store: Store,
    candidates: list[Candidate],
    summary: IngestSummary,
    genre_tree: list[GenreRow] | None = None,
    features: tuple[str, ...] = DEFAULT_FEATURES,
    workers: int | None = None,
    force: bool = False,
    part_size: int = 64,
    engine: Engine = LOCAL,
    quiet: bool = False,
    file_seconds: float = FILE_SECONDS,
) -> Iterator[list[int]]:
    """:func:`ingest`, a part at a time: yields the positions in ``candidates`` that each
    committed part settled (stored, skipped or failed), as ``summary`` records them.

    The workers go on with the files in flight while the caller works on a part (``agf tag``
    embeds it), and the pool lives for the whole run.

    Parameters
    ----------
    workers : int, optional
        Worker processes (default: every core).
    force : bool
        Recompute files whose audio is already stored, keeping their track ids.
    part_size : int
        Files per committed part; an interruption loses at most the part in progress.
    engine : Engine
        Where decoding and features run: this machine's worker processes, or Ray tasks. Either
        way this process assigns ids, writes frames and commits parts.
    file_seconds : float
        Seconds one file may take before it becomes an ``ingest_errors`` row (0: no bound).
    """
    if engine.is_ray:
        connect(engine)  # before any work: an unreachable cluster is an error, not a stall
    started = time.perf_counter()
    workers = workers or usable_cores()
    stored = store.query("SELECT source_id, audio_sha256, track_id FROM tracks").to_pylist()
    known = {r["audio_sha256"]: r["track_id"] for r in stored if r["audio_sha256"]}
    # a file agf wrote genre tags into is the track it was, under its new sha256
    known.update((r["sha256_after"], r["track_id"]) for r in store.query(
        "SELECT sha256_after, track_id FROM tag_writes WHERE sha256_after IS NOT NULL").to_pylist())
    listed = {r["source_id"]: r["track_id"] for r in stored}  # a track stored without audio is known by its id
    awaiting_audio = {r["source_id"]: r["track_id"] for r in stored if not r["audio_sha256"]}
    ids = _Ids(store)
    ids.add_genre_tree(genre_tree or [])
    next_track = [max((r["track_id"] for r in stored), default=0) + 1]
    caches = {kind: FrameCache.of(store, kind) for kind in FRAME_EXTRACTORS}
    config = ExtractConfig.of(store.config, features, file_seconds)
    seen: dict[str, int] = {}  # audio sha256 -> track id, for duplicates within this run
    batch = _Batch()
    settled: list[int] = []  # positions in candidates that the part in progress settles

    def commit() -> list[int]:
        nonlocal batch, settled
        if len(batch) or ids.new_genres:
            tables, replaced = batch.tables(ids)
            _commit(store, tables, replaced, config)
        done, batch, settled = settled, _Batch(), []
        return done

    def without_audio(index: int, candidate: Candidate) -> None:
        """A track FMA lists whose audio is elsewhere: its metadata and released features."""
        if candidate.source_id in listed:
            summary.skipped += 1
            summary.track_ids[index] = listed[candidate.source_id]
            return
        track_id, next_track[0] = next_track[0], next_track[0] + 1
        listed[candidate.source_id] = summary.track_ids[index] = track_id
        for name, vector in candidate.released.items():
            batch.vectors.setdefault(name, []).append((track_id, vector))
        batch.tracks.append(_track_row(track_id, candidate, None, None, ids))
        summary.listed += 1

    def handle(result: tuple) -> None:
        kind, index = result[0], audio[result[1]]
        candidate = candidates[index]
        settled.append(index)
        if kind == "error":
            batch.errors.append({"path": path_text(Path(candidate.path).resolve()), "stage": result[2], "error": result[3], "at": now_utc()})
            summary.failed += 1
            summary.errors[index] = result[3]
            return
        sha = result[2]
        if kind == "skip" or (sha in seen) or (sha in known and not force):
            summary.skipped += 1
            summary.track_ids[index] = seen.get(sha) or known[sha]
            return
        if sha in known or candidate.source_id in awaiting_audio:  # recomputed, or its audio has come
            track_id = known.get(sha) or awaiting_audio.pop(candidate.source_id)
            batch.replaced_ids.append(track_id)
        else:
            track_id, next_track[0] = next_track[0], next_track[0] + 1
        seen[sha] = summary.track_ids[index] = track_id
        data = result[3]
        for kind_name, matrix in data["frames"].items():
            caches[kind_name].write(track_id, matrix)
        for name, vector in {**data["vectors"], **candidate.released}.items():  # FMA's released values win
            batch.vectors.setdefault(name, []).append((track_id, vector))
        batch.tracks.append(_track_row(track_id, candidate, sha, data, ids))
        summary.ingested += 1
        if data["warnings"]:  # decoded, with complaints: counted, and kept where they can be read
            summary.warned += 1
            batch.errors.append({"path": path_text(Path(candidate.path).resolve()), "stage": "decode warning",
                                 "error": " | ".join(data["warnings"])[:2000], "at": now_utc()})

    audio = [i for i, c in enumerate(candidates) if c.path is not None]  # position in the run -> in candidates
    for index, candidate in enumerate(candidates):
        if candidate.path is None:
            settled.append(index)
            without_audio(index, candidate)
            if len(settled) >= part_size:
                yield commit()
    files = [candidates[i] for i in audio]
    with progress_bar(len(files), "ingest", "files", quiet) as bar:
        if files and not engine.is_ray:
            warm_up(config)  # before the workers fork: they inherit a warm parent
        # locally in the files' order, so the same files get the same ids (and factors) whatever the timing;
        # on Ray in completion order, so results are committed as they stream in
        results = map_tasks(engine, extract_file, [(i, str(c.path)) for i, c in enumerate(files)], workers=workers,
                            shared={"config": config, "known": frozenset() if force else frozenset(known)},
                            setup=enter_worker)
        for result in results:
            handle(result)
            bar.advance()
            if len(settled) >= part_size:
                yield commit()
        yield commit()
    summary.seconds = time.perf_counter() - started


def _track_row(track_id: int, c: Candidate, sha: str | None, data: dict | None, ids: _Ids) -> dict:
    """A ``tracks`` row; without ``data`` (audio elsewhere) path, sha256 and rate are null."""
    artist_id = ids.artist(c)
    genre_ids = list(c.genre_ids) or [ids.genre(n) for n in c.genre_names]
    return {
        "track_id": track_id,
        "source_id": c.source_id,
        # absolute: a relative path means nothing from elsewhere
        "path": path_text(Path(c.path).resolve()) if c.path is not None else None,
        "audio_sha256": sha,
        "title": c.title,
        "artist_id": artist_id,
        "album_id": ids.album(c, artist_id),
        "duration_s": data["duration_s"] if data else c.duration_s,
        "sample_rate": data["native_rate"] if data else None,
        "genre_top": c.genre_top,
        "genres": genre_ids,
        "genres_all": list(c.genre_all_ids) or ids.with_ancestors(genre_ids),
        "tags": c.tags,
        "split": c.split,
        "subset": c.subset,
        "ingested_at": now_utc(),
    }


def _commit(store: Store, tables: dict[str, pa.Table], replaced: list[int], config: ExtractConfig) -> None:
    params = {"sample_rate": config.sample_rate, "clip_seconds": config.clip_seconds, "frames": config.frames}
    with store.transaction(params=params) as tx:
        for name, rows in tables.items():
            if replaced and "track_id" in rows.column_names:  # --force on stored audio: the old rows go too
                tx.delete_where(name, "list_contains(?, track_id)", [replaced])
            tx.append(name, rows)
