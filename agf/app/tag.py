"""``agf tag``: batch genre tagging of new music with the stored CNNs and transfer classifier.

Files stream through in chunks: each chunk is ingested (stored audio is not recomputed),
embedded by every CNN the transfer model reads, classified, and committed, while the ingest
workers go on with the next files; memory stays bounded by the chunk and an interruption keeps
every finished chunk.
"""

import time
from pathlib import Path
from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from agf.errors import AgfError
from agf.ingest import Candidate, IngestSummary, ingest_parts
from agf.ingest.metadata import read_files, read_manifest
from agf.engine import LOCAL, Engine
from agf.models.serving import (classify, embedding_chunks, embedding_groups, embedding_matrix, embedding_rows, load_cnn,
                                load_transfer, pick_device, prediction_rows, run_precision)
from agf.app.filetags import GenrePolicy, write_tags
from agf.app.playlists import playlist_entries, write_m3u
from agf.progress import progress_bar, say
from agf.store import Store
from agf.store.registry import latest_model
from agf.store.paths import path_text

STAGES = ("ingest", "embed", "classify", "write")


class Tagger:
    """A transfer model and its CNNs, loaded once, tagging chunks of files.

    ``seconds`` accumulates the time spent per stage (:data:`STAGES`).
    """

    def __init__(self, store: Store, model_id: str | None = None, device: str = "auto", engine: Engine = LOCAL,
                 precision: str = "auto"):
        self.store = store
        self.model_id = model_id or latest_transfer(store)
        try:
            self.transfer = load_transfer(store, self.model_id)
        except AgfError as exc:
            raise AgfError(f"cannot load transfer model {self.model_id}: {exc}") from None
        self.classes = self.transfer[1]["classes"]
        self.device, self.engine = device, engine
        self.precision = run_precision(device, precision, engine)
        # Locally the CNNs are loaded once here; on Ray, each actor loads its own.
        self.cnns = {m: None if engine.is_ray else load_cnn(store, m, pick_device(device))[:2]
                     for m in self.transfer[1]["models"]}
        self.seconds: dict[str, float] = defaultdict(float)

    def tag(self, candidates: Iterable[Candidate], top: int = 3, workers: int | None = None, chunk_size: int = 256,
            total: int | None = None, quiet: bool = False) -> Iterator[dict]:
        """Tag ``candidates``; yields one row per file: its top genres, or why it has none.

        One ingest runs over all the files, committing a part per ``chunk_size`` files; each
        part is embedded, classified and committed while the ingest workers go on decoding.
        """
        candidates = list(candidates)
        summary = IngestSummary()
        parts = ingest_parts(self.store, candidates, summary, workers=workers, part_size=chunk_size, engine=self.engine,
                             quiet=True)
        with progress_bar(total, "tag", "files", quiet) as bar:
            while True:
                started = time.perf_counter()
                part = next(parts, None)
                self._lap("ingest", started)
                if part is None:
                    return
                yield from self._rows(candidates, sorted(part), summary, top)
                bar.advance(len(part))

    def _rows(self, candidates: list[Candidate], part: list[int], summary: IngestSummary, top: int) -> list[dict]:
        """The rows of the files at positions ``part``, their stored tracks embedded and classified."""
        ids = list(dict.fromkeys(summary.track_ids[i] for i in part if i in summary.track_ids))
        probabilities = dict(zip(ids, self._predict(ids))) if ids else {}
        rows = []
        for index in part:
            c, track_id = candidates[index], summary.track_ids.get(index)
            if track_id is None:
                rows.append({"path": path_text(c.path), "track_id": None, "genre": None, "probability": None, "top": None,
                             "error": summary.errors.get(index, "not ingested")})
                continue
            p = probabilities[track_id]
            order = p.argsort()[::-1][:top]
            rows.append({"path": path_text(c.path), "track_id": track_id, "genre": self.classes[order[0]],
                         "probability": round(float(p[order[0]]), 4),
                         "top": ", ".join(f"{self.classes[i]} {p[i]:.2f}" for i in order), "error": None})
        return rows

    def _predict(self, ids: list[int]) -> np.ndarray:
        """Embed ``ids`` where a CNN has not yet, classify the vectors held, and store the new
        embeddings with the predictions in one commit: (n, genres) probabilities."""
        started = time.perf_counter()
        new_rows, computed = [], {}
        for models, todo in embedding_groups(self.store, list(self.cnns), ids):
            loaded = None if self.engine.is_ray else {m: self.cnns[m] for m in models}
            for model_id, chunk_ids, chunk in embedding_chunks(self.store, models, todo, self.device, self.engine, loaded,
                                                               precision=self.precision):
                new_rows.append(embedding_rows(model_id, chunk_ids, chunk))
                computed.setdefault(model_id, {}).update(zip(chunk_ids, chunk))
        blocks = []
        for model_id in self.cnns:
            held = computed.get(model_id, {})
            stored = [t for t in ids if t not in held]  # embedded by an earlier run: read, not recomputed
            held.update(zip(stored, embedding_matrix(self.store, [model_id], stored) if stored else []))
            blocks.append(np.stack([held[t] for t in ids]))
        self._lap("embed", started)
        started = time.perf_counter()
        probabilities = classify(self.transfer, np.concatenate(blocks, axis=1))
        self._lap("classify", started)
        started = time.perf_counter()
        with self.store.transaction(params={"model_id": self.model_id, "models": list(self.cnns),
                                            "precision": self.precision, "tagged": len(ids)}) as tx:
            for rows in new_rows:
                tx.append("embeddings", rows)
            # tagging again with the same model replaces that model's rows for those tracks
            tx.delete_where("predictions", "model_id = ? AND list_contains(?, track_id)", [self.model_id, ids])
            tx.append("predictions", pa.Table.from_pylist(prediction_rows(ids, self.model_id, self.classes, probabilities)))
        self._lap("write", started)
        return probabilities

    def _lap(self, stage: str, started: float) -> None:
        self.seconds[stage] += time.perf_counter() - started


def files_to_tag(paths: list[Path] | None = None, manifest: Path | None = None, *,
                 notes: list[str] | None = None) -> list[Candidate]:
    """The files a tagging run reads: a manifest's rows (paths relative to the first folder of
    ``paths`` if any, else to the manifest), or the files and folders of ``paths`` (a line
    naming the files a folder holds in formats agf does not read goes to ``notes``)."""
    paths = [Path(p).expanduser() for p in paths or []]
    if manifest:
        return read_manifest(Path(manifest).expanduser(), paths[0] if paths and paths[0].is_dir() else None)
    if paths:
        return read_files(paths, notes=notes)
    raise AgfError("give the files or folders to tag, or --manifest")


def tag_files(store: Store, candidates: list[Candidate], *, model: str | None = None, top: int = 3,
              workers: int | None = None, chunk_size: int = 256, device: str = "auto", precision: str = "auto",
              engine: Engine = LOCAL, quiet: bool = False, write: GenrePolicy | None = None, dry_run: bool = False,
              m3u: Path | None = None) -> Iterator[dict]:
    """Tag ``candidates`` with the transfer model ``model`` (default: the newest), one row per file
    as its chunk commits, then say how it went. The store must be open for writing.

    With ``write``, the genres that policy chooses go into each file's own tags (see
    :mod:`agf.app.filetags`; ``dry_run`` shows them and touches no file); with ``m3u``, the
    tagged files are written to that playlist, grouped by their top genre.
    """
    tagger = Tagger(store, model, device, engine, precision)
    started, done, failed, tagged = time.perf_counter(), 0, 0, []
    rows = tagger.tag(candidates, top=top, workers=workers, chunk_size=chunk_size, total=len(candidates), quiet=quiet)
    if write is not None:
        rows = write_tags(store, rows, tagger.model_id, write, dry_run=dry_run)
    for row in rows:
        done, failed = done + 1, failed + (row["error"] is not None)
        if row["track_id"] is not None:
            tagged.append((row["genre"], row["track_id"], row["path"]))
        yield row
    seconds = time.perf_counter() - started
    say(f"tagged {done - failed} files with {tagger.model_id} ({tagger.precision}), {failed} failed, in "
        f"{seconds:.1f} s ({done / max(seconds, 1e-9):.1f} files/s)", quiet)
    if m3u is not None:
        tagged.sort(key=lambda g: g[0])  # grouped by genre, in the files' order within each
        facts = {e["track_id"]: e for e in playlist_entries(store, [t for _, t, _ in tagged])}
        entries = [{**facts.get(t, {}), "path": path} for _, t, path in tagged]  # the file tagged, not a copy stored
        written = write_m3u(m3u, entries, [g for g, _, _ in tagged])
        say(f"playlist {written['playlist']}: {written['entries']} files by genre", quiet)


def latest_transfer(store: Store) -> str:
    """The newest transfer model's id; an error naming the commands that make one if there is none."""
    row = latest_model(store, "transfer", "genre")
    if row is None:
        raise AgfError("no genre classifier in the store: run `agf train --target all`, `agf embed`, "
                       "`agf train --target transfer` first")
    return row["model_id"]
