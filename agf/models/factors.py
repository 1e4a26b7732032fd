"""Artist Group Factors in the store: each source's inputs read, its model and rows persisted.

For each source (docs/METHOD.md), a track's points for :class:`~agf.models.group_factors.ArtistGroupFactors`:

- ``mfcc`` / ``dmfcc``: the frame-level MFCC vectors of the track (or their frame-to-frame
  differences), streamed from the frame cache;
- ``fma`` / ``essentia``: its one descriptor vector;
- ``tags``: its genre ids (``tracks.genres``) as words; with ``free_tags`` its free tags too.
"""

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from agf.errors import AgfError
from agf.models.group_factors import COLLAPSE_SHARE, ArtistGroupFactors, Dictionary, Words, artist_bags, diagnostics
from agf.progress import say
from agf.store import FrameCache, Store, fixed_vectors
from agf.store.registry import flatten_state, latest_model, load_arrays, save_arrays, unflatten_state

FRAME_SOURCES = ("mfcc", "dmfcc")
VECTOR_SOURCES = ("fma", "essentia")
SOURCES = (*FRAME_SOURCES, *VECTOR_SOURCES, "tags")
#: What a CNN can be trained against: the top-level genre, and each source's factors.
CNN_TARGETS = ("genre", *(f"agf:{s}" for s in SOURCES))
KIND = "factors"


@dataclass
class FactorParams:
    """Options of ``agf factors build``; the defaults are the authors' (K=2048, 40 topics, raw
    frames, every artist fitted, genre ids as the tags source's words). docs/METHOD.md gives
    the measured effect of each departure."""

    clusters: int = 2048
    topics: int = 40
    min_tracks: int = 1
    seed: int = 0
    max_fit_points: int = 256 * 2048
    kmeans_iterations: int = 20
    lda_passes: int = 10
    standardise: bool = False
    free_tags: bool = False

    def estimator(self, source: str, verbose: bool = False) -> ArtistGroupFactors:
        """The estimator these options describe, for ``source``."""
        return ArtistGroupFactors(n_clusters=self.clusters, n_topics=self.topics, min_tracks=self.min_tracks,
                                  standardise=self.standardise, max_fit_points=self.max_fit_points,
                                  kmeans_iterations=self.kmeans_iterations, lda_passes=self.lda_passes,
                                  random_state=self.seed, name=source, verbose=verbose)


# -- reading a source's points ------------------------------------------------------------------


class TrackPoints(Sequence):
    """The points of one source for ``track_ids``, read when indexed: frames (n, 13), one
    vector (1, d), or for ``tags`` the track's words (a list of str)."""

    def __init__(self, store: Store, source: str, tracks: list[dict], free_tags: bool = False):
        self.source, self.tracks, self.free_tags = source, tracks, free_tags
        if source in FRAME_SOURCES:
            self.cache = FrameCache.of(store, "mfcc")
        elif source in VECTOR_SOURCES:
            ids, matrix = store.vectors(f"features_{source}")
            if not len(ids):
                raise AgfError(f"the {source} feature set is not stored: ingest with --features {source}")
            self.vectors = dict(zip(ids.tolist(), matrix))

    @classmethod
    def usable(cls, store: Store, source: str, tracks: list[dict], free_tags: bool = False) -> "TrackPoints":
        """The points of those ``tracks`` that have points of ``source``."""
        points = cls(store, source, tracks, free_tags)
        points.tracks = [t for t in tracks if points.has(t["track_id"])]
        return points

    def has(self, track_id: int) -> bool:
        if self.source in FRAME_SOURCES:
            return track_id in self.cache
        return self.source == "tags" or track_id in self.vectors

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i: int):
        track_id = self.tracks[i]["track_id"]
        if self.source == "mfcc":
            return self.cache.load(track_id).astype(np.float32)
        if self.source == "dmfcc":
            return np.diff(self.cache.load(track_id).astype(np.float32), axis=0)
        if self.source == "tags":
            return _words(self.tracks[i], self.free_tags)
        return self.vectors[track_id][None, :]

    @property
    def artists(self) -> np.ndarray:
        """The artist of each track: (n_tracks,) int64."""
        return np.asarray([t["artist_id"] for t in self.tracks], np.int64)


def _words(track: dict, free_tags: bool = True) -> list[str]:
    """A track's words for the tags source: its genre ids (FMA's ``track.genres``, as the authors
    use them) and, with ``free_tags``, its free tags too."""
    genres = [f"genre:{g}" for g in track["genres"] or []]
    return genres + [f"tag:{t.casefold()}" for t in track["tags"] or []] if free_tags else genres


# -- building and updating ----------------------------------------------------------------------


def _fitted_with_free_tags(model_row: dict) -> bool:
    try:
        return bool(json.loads(model_row["params"]).get("free_tags"))
    except (ValueError, TypeError, AttributeError):  # a row from a hostile store: the authors' default
        return False


def _subset(points: TrackPoints, keep) -> TrackPoints:
    """``points`` restricted to the tracks ``keep(track)`` accepts."""
    subset = copy.copy(points)
    subset.tracks = [t for t in points.tracks if keep(t)]
    return subset


def _tracks(store: Store) -> list[dict]:
    return store.query("SELECT track_id, artist_id, genres, tags FROM tracks ORDER BY track_id").to_pylist()


def default_sources(store: Store, free_tags: bool = False) -> list[str]:
    """The sources the stored data supports: mfcc, dmfcc, each stored descriptor set, tags (when
    a track has a genre, or with ``free_tags`` a tag)."""
    sources = list(FRAME_SOURCES)
    sources += [s for s in VECTOR_SOURCES if store.count(f"features_{s}")]
    words = "len(genres) > 0 OR len(tags) > 0" if free_tags else "len(genres) > 0"
    if store.query(f"SELECT count(*) AS n FROM tracks WHERE {words}")["n"][0].as_py():
        sources.append("tags")
    return sources


def parse_sources(store: Store, spec: str | None, free_tags: bool = False) -> list[str]:
    if not spec:
        return default_sources(store, free_tags)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in SOURCES]
    if unknown:
        raise AgfError(f"unknown factor source(s) {unknown}; choose from {', '.join(SOURCES)}")
    return names


def build_factors(store: Store, sources: list[str], params: FactorParams, quiet: bool = False) -> list[dict]:
    """Fit and store the factors of each source; returns one summary per source."""
    tracks = _tracks(store)
    if not tracks:
        raise AgfError("the store has no tracks: run `agf ingest` first")
    return [_build_source(store, source, tracks, params, quiet) for source in sources]


def _build_source(store: Store, source: str, tracks: list[dict], params: FactorParams, quiet: bool) -> dict:
    started = time.perf_counter()
    points = TrackPoints.usable(store, source, tracks, params.free_tags)
    if source == "tags" and not any(len(w) for w in points):
        raise AgfError("tags: no track has a genre" + ("" if params.free_tags else " (add --free-tags to use tags)"))
    estimator = params.estimator(source, verbose=not quiet)
    estimator.fit(points, points.artists)
    seconds = time.perf_counter() - started
    checks = diagnostics(estimator.factors_, estimator.bags_)
    size = estimator.dictionary_.size
    summary = {
        "source": source, "clusters": size if source != "tags" else None, "words": size,
        "words_used": int(np.count_nonzero(estimator.bags_.getnnz(axis=0))), "topics": params.topics,
        "tracks": len(points), "artists_fit": estimator.n_fitted_, "artists": len(estimator.artist_ids_),
        "perplexity": round(estimator.perplexity_, 2), **checks, "seconds": round(seconds, 2),
    }
    if checks["collapsed"]:
        say(f"warning: the {source} factors have collapsed: {checks['largest_topic_share']:.0%} of artists share one "
            f"dominant topic ({checks['dominant_topics']} distinct); fewer --clusters or --topics, or more artists, "
            f"may help", quiet)
    elif checks["largest_topic_share"] > COLLAPSE_SHARE:
        say(f"note: {checks['largest_topic_share']:.0%} of artists share one dominant {source} topic, as "
            f"{checks['same_words_share']:.0%} have the very same words: their factors are alike by right", quiet)
    model_id = save_arrays(store, KIND, source, flatten_state({"dictionary": estimator.dictionary_, "lda": estimator.lda_}),
                           {**asdict(params), "clusters_used": size},
                           {k: summary[k] for k in ("perplexity", "artists_fit", "artists", "tracks", "seconds")})
    _write_rows(store, source, model_id, points, estimator.words_, estimator.artist_ids_, estimator.bags_,
                estimator.factors_, replace_model=True)
    return {"model_id": model_id, **summary}


def load_factor_model(store: Store, model_id: str, verbose: bool = False) -> ArtistGroupFactors:
    """A stored factor model: the fitted estimator, its :class:`Dictionary` and LDA.

    Only arrays and JSON are read (``model.npz``); what the file holds is checked for shape
    before it is used, so a file from a hostile store is an error, not a crash.
    """
    from agf.models.lda import VectorisedLDA

    state = unflatten_state(load_arrays(store, model_id))
    try:
        saved, fitted = state["dictionary"], state["lda"]
        dictionary = Dictionary(str(saved["source"]), saved.get("mean"), saved.get("scale"), saved.get("centroids"),
                                saved.get("vocabulary"))
        components = np.asarray(fitted["components_"])  # in the dtype fitted (float32 bags fit float32)
        lda = VectorisedLDA(n_components=components.shape[0], max_doc_update_iter=int(fitted["max_doc_update_iter"]),
                            mean_change_tol=float(fitted["mean_change_tol"]))
        lda.components_, lda.n_features_in_ = components, components.shape[1]
        lda.exp_dirichlet_component_ = np.asarray(fitted["exp_dirichlet_component_"])
        lda.doc_topic_prior_ = float(fitted["doc_topic_prior_"])
        lda.topic_word_prior_ = float(fitted["topic_word_prior_"])
        consistent = (components.ndim == 2 and components.dtype.kind == "f"
                      and lda.exp_dirichlet_component_.shape == components.shape
                      and components.shape[1] == dictionary.size and _dictionary_consistent(dictionary))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise AgfError(f"factor model {model_id} is incomplete ({type(exc).__name__}: {exc})") from None
    if not consistent:
        raise AgfError(f"factor model {model_id} holds arrays of inconsistent shapes or values; it was damaged")
    return ArtistGroupFactors.fitted(dictionary, lda, verbose=verbose)


def _dictionary_consistent(dictionary: Dictionary) -> bool:
    if dictionary.vocabulary is not None:
        return isinstance(dictionary.vocabulary, dict) and all(isinstance(i, int) for i in dictionary.vocabulary.values())
    width = dictionary.centroids.shape[1] if dictionary.centroids.ndim == 2 else -1
    if not dictionary.mean.shape == dictionary.scale.shape == (width,):
        return False
    # as agf fits them: finite numbers, each scale positive (a NaN or a zero scale would send
    # every point to no cluster at all)
    arrays = (dictionary.mean, dictionary.scale, dictionary.centroids)
    return all(a.dtype.kind in "fiu" and np.isfinite(a).all() for a in arrays) and bool((dictionary.scale > 0).all())


def _write_rows(store: Store, source: str, model_id: str, points: TrackPoints, words: list[Words],
                artist_ids: np.ndarray, bags, factors, replace_model: bool) -> None:
    counted = sorted((t["track_id"], w) for t, w in zip(points.tracks, words) if w is not None)
    clusters = pa.table({
        "track_id": pa.array([t for t, _ in counted], pa.int64()),
        "source": [source] * len(counted),
        "model_id": [model_id] * len(counted),
        "cluster_ids": [w[0] for _, w in counted],
        "counts": [w[1] for _, w in counted],
    })
    bow = pa.table({
        "artist_id": pa.array(artist_ids, pa.int64()),
        "source": [source] * len(artist_ids),
        "model_id": [model_id] * len(artist_ids),
        "word_ids": [bags[i].indices.astype(np.int32) for i in range(len(artist_ids))],
        "weights": [bags[i].data.astype(np.float32) for i in range(len(artist_ids))],
    })
    agf = pa.table({
        "artist_id": pa.array(artist_ids, pa.int64()),
        "source": [source] * len(artist_ids),
        "model_id": [model_id] * len(artist_ids),
        "factors": fixed_vectors(factors),
    })
    with store.transaction(params={"model_id": model_id, "source": source}) as tx:
        for name, rows in {"clusters": clusters, "artist_bow": bow, "agf": agf}.items():
            if replace_model:  # identical data and seed give the same model id: replace its rows, not duplicate them
                tx.delete_where(name, "model_id = ?", [model_id])
            tx.append(name, rows)


def update_factors(store: Store, sources: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Project tracks and artists added since each source's model was fitted, without refitting.

    New tracks get their cluster counts; artists that have no factors under the current model
    get a bag-of-words and an LDA projection. Existing rows are not changed.
    """
    tracks = _tracks(store)
    results = []
    for source in sources or SOURCES:
        row = latest_model(store, KIND, source)
        if row is None:
            if sources:
                raise AgfError(f"no {source} factors to update: run `agf factors build --source {source}` first")
            continue
        estimator = load_factor_model(store, row["model_id"], verbose=not quiet)
        points = TrackPoints.usable(store, source, tracks, _fitted_with_free_tags(row))
        known = set(store.query("SELECT track_id FROM clusters WHERE model_id = ?", [row["model_id"]])["track_id"].to_pylist())
        have = set(store.query("SELECT artist_id FROM agf WHERE model_id = ?", [row["model_id"]])["artist_id"].to_pylist())
        new_tracks = _subset(points, lambda t: t["track_id"] not in known)
        words = estimator.count_words(new_tracks)
        new_artists = _subset(points, lambda t: t["artist_id"] not in have)
        stored = {r["track_id"]: (np.asarray(r["cluster_ids"], np.int32), np.asarray(r["counts"], np.int32))
                  for r in store.query("SELECT track_id, cluster_ids, counts FROM clusters WHERE model_id = ? AND "
                                       "list_contains(?, track_id)", [row["model_id"], [t["track_id"] for t in new_artists.tracks]]
                                       ).to_pylist()}
        stored.update((t["track_id"], w) for t, w in zip(new_tracks.tracks, words))
        artist_ids, bags, _ = artist_bags(new_artists.artists, [stored.get(t["track_id"]) for t in new_artists.tracks],
                                          estimator.dictionary_.size)
        _write_rows(store, source, row["model_id"], new_tracks, words, artist_ids, bags, estimator.project(bags),
                    replace_model=False)
        n_new = sum(w is not None for w in words)
        results.append({"source": source, "model_id": row["model_id"], "new_tracks": n_new, "new_artists": len(artist_ids)})
    if not results:
        raise AgfError("no factors to update yet: run `agf factors build` first")
    return results


def current_factors(store: Store, source: str) -> tuple[list[int], np.ndarray]:
    """Artist ids and their AGF matrix (n_artists, topics) under the newest model of ``source``."""
    row = latest_model(store, KIND, source)
    if row is None:
        return [], np.zeros((0, 0), np.float32)
    ids, matrix = store.vectors("agf", "model_id = ?", [row["model_id"]])
    return ids.tolist(), matrix


class FactorAtlas:
    """Every source's current factors, read once, described in words people can read.

    A factor is described by its most typical artists (those with the highest weight on it)
    and, for the tags source, by its top words (the genres it weighs most).
    """

    #: Below this share of an artist's mixture a factor is not worth naming (the strongest always is).
    MINOR = 0.05

    def __init__(self, store: Store):
        self.names = {r["artist_id"]: r["name"] for r in store.query("SELECT artist_id, name FROM artists").to_pylist()}
        self.factors = {}
        for source in SOURCES:
            ids, matrix = current_factors(store, source)
            if ids:
                self.factors[source] = ({a: i for i, a in enumerate(ids)}, ids, matrix)
        self.words = _factor_words(store, "tags") if "tags" in self.factors else {}
        self._typical: dict[tuple[str, int], list[int]] = {}

    def vector(self, source: str, artist_id: int) -> np.ndarray | None:
        """The artist's factors (n_topics,) under ``source``, or ``None``."""
        row_of, _, matrix = self.factors.get(source, ({}, [], None))
        return matrix[row_of[artist_id]] if artist_id in row_of else None

    def describe(self, source: str, factor: int, excluding: tuple[int, ...] = (), top: int = 3) -> dict:
        """``typical_artists`` (names, the ``excluding`` ids left out) and ``top_words`` of a factor."""
        key = (source, factor)
        if key not in self._typical:
            _, ids, matrix = self.factors[source]
            self._typical[key] = [ids[i] for i in np.argsort(-matrix[:, factor])[: top + 8]]
        typical = [a for a in self._typical[key] if a not in excluding][:top]
        return {"typical_artists": [self.names.get(a, str(a)) for a in typical],
                "top_words": self.words.get(factor, []) if source == "tags" else []}

    def strongest(self, artist_id: int, top: int = 3) -> list[dict]:
        """The artist's strongest factors per source, each described."""
        rows = []
        for source in self.factors:
            vector = self.vector(source, artist_id)
            if vector is None:
                continue
            for rank, factor in enumerate(np.argsort(-vector)[:top]):
                if rank and vector[factor] < self.MINOR:
                    break
                rows.append({"source": source, "factor": int(factor), "weight": round(float(vector[factor]), 3),
                             **self.describe(source, int(factor), (artist_id,), top)})
        return rows

    def shared(self, a: int, b: int, sources: list[str] | None = None, top: int = 3) -> list[dict]:
        """Why artists ``a`` and ``b`` are alike: the factors both weigh, strongest shared weight
        (the smaller of the two) first, at most ``top`` per source."""
        rows = []
        for source in sources or list(self.factors):
            va, vb = self.vector(source, a), self.vector(source, b)
            if va is None or vb is None:
                continue
            both = np.minimum(va, vb)
            for factor in np.argsort(-both)[:top]:
                if both[factor] < self.MINOR:
                    break
                rows.append({"source": source, "factor": int(factor), "shared": round(float(both[factor]), 3),
                             "weight": round(float(va[factor]), 3), "neighbour_weight": round(float(vb[factor]), 3),
                             **self.describe(source, int(factor), (a, b), top)})
        return sorted(rows, key=lambda r: -r["shared"])


def show_artist(store: Store, artist: dict, top: int = 3) -> dict:
    """An artist's strongest factors per source, each described in words (see :class:`FactorAtlas`);
    factors under 5 % of the artist's mixture are left out, the strongest always kept."""
    rows = [{**r, "typical_artists": ", ".join(r["typical_artists"]), "top_words": ", ".join(r["top_words"])}
            for r in FactorAtlas(store).strongest(artist["artist_id"], top)]
    if not rows:
        raise AgfError(f"{artist['name']} has no factors yet: run `agf factors build` (or `agf factors update`)")
    return {"artist": artist["name"], "artist_id": artist["artist_id"], "tracks": artist["tracks"], "factors": rows}


def _factor_words(store: Store, source: str, top: int = 3) -> dict[int, list[str]]:
    """Each factor's ``top`` words by LDA weight, genre ids named by the genres table."""
    estimator = load_factor_model(store, latest_model(store, KIND, source)["model_id"])
    dictionary, lda = estimator.dictionary_, estimator.lda_
    titles = {f"genre:{r['genre_id']}": r["title"] for r in store.query("SELECT genre_id, title FROM genres").to_pylist()}
    word_of = {i: titles.get(w, w.removeprefix("tag:")) for w, i in dictionary.vocabulary.items()}
    return {f: [word_of[i] for i in np.argsort(-row)[:top]] for f, row in enumerate(lda.components_)}
