"""The Python API: a store opened with :func:`agf.open`, answering what the CLI answers."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from agf.engine import LOCAL, Engine
from agf.errors import AgfError
from agf.store import Store
from agf.store.parts import DEFAULT_WAIT


class Library:
    """A store opened from Python: read-only unless opened with ``write=True``.

    Every method answers as the CLI command of the same name does (``similar`` gives the rows of
    ``agf similar --json``); errors are :class:`agf.AgfError`. Close it, or use it as a context
    manager, to release a writer's lock.
    """

    def __init__(self, store: Store):
        self.store = store
        self._similar = None

    @classmethod
    def open(cls, path="agf-store", *, write: bool = False, create: bool = False, wait: float = DEFAULT_WAIT) -> "Library":
        """See :func:`agf.open`."""
        return cls(Store.open(path, write=write or create, create=create, wait=wait))

    @property
    def path(self) -> Path:
        """The store's folder."""
        return self.store.root

    def close(self) -> None:
        """Release the writer lock, if held."""
        self.store.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"agf.open({str(self.path)!r}{', write=True' if self.store.writable else ''})"

    # -- reading ----------------------------------------------------------------------------------

    def info(self) -> dict:
        """The store's path, format, tables, frame caches, indexes and models (``agf info``)."""
        return self.store.info()

    def sql(self, query: str, *, timeout: float | None = None) -> pa.Table:
        """A read-only query over the store's tables, sandboxed as ``agf sql`` is.

        Parameters
        ----------
        query : str
            ``SELECT`` statements (or ``EXPLAIN`` of one); anything else is refused.
        timeout : float, optional
            Seconds after which the query is interrupted.

        Returns
        -------
        pyarrow.Table
            The last statement's rows (``.to_pandas()``, ``.to_pylist()``).
        """
        return self.store.sql(query, timeout=timeout)

    def vectors(self, table: str, where: str | None = None, params: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids (n,) int64 and vectors (n, dim) float32 of a vector table, e.g.
        ``vectors("embeddings", "model_id = ?", [model_id])`` or ``vectors("features_mfcc")``."""
        return self.store.vectors(table, where, params)

    def similar(self, artist: str | None = None, *, artist_id: int | None = None, k: int = 10,
                space: str | None = None, genre: str | None = None, min_tracks: int = 1) -> list[dict]:
        """The ``k`` artists nearest to ``artist`` (a name, or ``artist_id``) by cosine similarity.

        ``space`` is a saved index's space (default: ``combined`` when built); ``genre`` keeps
        artists with that genre; ``min_tracks`` artists with that many tracks. Returns one dict
        per neighbour: rank, artist_id, artist, similarity, top_genre, tracks.
        """
        service = self._service()
        return service.artists(service.directory.resolve(artist, artist_id), k, space, genre, min_tracks)

    def similar_tracks(self, track_id: int, *, k: int = 10, space: str | None = None, same_artist: bool = False,
                       same_album: bool = True) -> list[dict]:
        """The ``k`` tracks nearest to ``track_id`` in a track space (``agf similar --track``)."""
        return self._service().tracks(track_id, k, space, same_artist=same_artist, same_album=same_album)

    def predictions(self, track_ids: list[int], *, model: str | None = None) -> dict[int, list[tuple[str, float]]]:
        """Each track's stored genre probabilities by a transfer model (default: the newest), most
        probable first: ``{track_id: [(genre, probability), ...]}``."""
        from agf.app.filetags import ranked_predictions
        from agf.app.tag import latest_transfer

        return ranked_predictions(self.store, model or latest_transfer(self.store), list(track_ids))

    def _service(self):
        from agf.app.similar import Similar

        if self._similar is None:  # the artist directory and indexes, read once per Library
            self._similar = Similar(self.store, quiet=True)
        return self._similar

    # -- writing ----------------------------------------------------------------------------------

    def ingest(self, folder, *, manifest=None, fma_metadata=None, features: str | None = None,
               workers: int | None = None, force: bool = False, engine: Engine = LOCAL, quiet: bool = True) -> dict:
        """Ingest the audio under ``folder`` (with a manifest, FMA metadata, or the files' tags), as
        ``agf ingest`` does; returns its summary, with ``notes`` (files passed over in formats agf
        does not read). Needs ``write=True``."""
        from agf.ingest import collect, ingest
        from agf.ingest.features import parse_features

        self._writable("ingest")
        notes = []
        candidates, genre_tree = collect(Path(folder), manifest=manifest, fma_metadata=fma_metadata, notes=notes)
        summary = ingest(self.store, candidates, genre_tree, features=parse_features(features), workers=workers,
                         force=force, engine=engine, quiet=quiet)
        self._similar = None
        return {**summary.as_dict(), "notes": notes}

    def tag(self, paths=None, *, manifest=None, model: str | None = None, top: int = 3, write_tags: bool = False,
            min_probability: float = 0.5, genres_map=None, dry_run: bool = False, m3u=None, workers: int | None = None,
            chunk_size: int = 256, device: str = "auto", precision: str = "auto", quiet: bool = True) -> Iterator[dict]:
        """Tag audio files (or folders of them) with genres, as ``agf tag`` does: yields one row per
        file (path, track_id, genre, probability, top, error) as its chunk commits. Needs ``write=True``.

        With ``write_tags``, at most ``top`` genres at ``min_probability`` or above also go into
        each file's own tags, renamed by ``genres_map`` (a dict, or a JSON or CSV file as for
        ``--genres-map``), and each row says what changed in ``tags``; ``dry_run`` only says it.
        With ``m3u`` (a path), the tagged files are written to that playlist, grouped by genre.
        :meth:`undo_tags` puts the tags back.
        """
        from agf.app.filetags import GenrePolicy, read_genres_map
        from agf.app.tag import files_to_tag, tag_files

        self._writable("tag")
        if dry_run and not write_tags:
            raise AgfError("dry_run=True goes with write_tags=True")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        names = read_genres_map(genres_map) if isinstance(genres_map, (str, Path)) else genres_map
        policy = GenrePolicy(min_probability, top, names) if write_tags else None
        return tag_files(self.store, files_to_tag(paths, manifest), model=model, top=top, workers=workers,
                         chunk_size=chunk_size, device=device, precision=precision, quiet=quiet, write=policy,
                         dry_run=dry_run, m3u=Path(m3u).expanduser() if m3u else None)

    def undo_tags(self, paths=None, *, since=None, dry_run: bool = False) -> list[dict]:
        """Put back the genre tags :meth:`tag` wrote (since ``since``, a datetime or an ISO 8601
        text, UTC unless it says otherwise; to ``paths`` only, if given), as ``agf tag --undo``
        does: one row per file. Needs ``write=True``."""
        from agf.app.filetags import parse_since, undo

        self._writable("undo tags")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        return undo(self.store, since=parse_since(since) if isinstance(since, str) else since,
                    paths=list(paths) if paths else None, dry_run=dry_run)

    def _writable(self, what: str) -> None:
        if not self.store.writable:
            raise AgfError(f"{what} writes to the store: open it with agf.open(path, write=True)")
