"""Artist Group Factors: cluster dictionaries, artist bag-of-words, and LDA topic mixtures.

For each source (docs/METHOD.md):

- ``mfcc`` / ``dmfcc``: K-Means over the frame-level MFCC vectors of every track (or their
  frame-to-frame differences), streamed from the frame cache; a track's words are its frames'
  clusters.
- ``fma`` / ``essentia``: K-Means over one descriptor vector per track; a track is one word.
- ``tags``: every genre id of a track (``tracks.genres``) is a word; with ``free_tags`` its
  free tags are words too.

An artist's bag-of-words counts its tracks' words divided by its number of tracks; LDA over the
artist × word matrix gives each artist a topic mixture, its AGF.

As the authors do: points are clustered raw (``standardise=True`` scales them first) and every
artist with a track is fitted on (``min_tracks`` raises that). Where speed demands otherwise:
the dictionary is FAISS K-Means fitted on at most ``max_fit_points`` points sampled evenly
across tracks (the authors: scikit-learn's MiniBatchKMeans over every frame; FAISS fits and
assigns an order of magnitude faster, see ``bench/factors.py``, with the same factors, see
``bench/fidelity.py``), and every frame is then assigned to its nearest centroid in batches. K
is lowered to a quarter of the points when there are fewer than 4 K points (a small corpus),
and the value used is recorded.
"""

import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from scipy import sparse

from agf.errors import AgfError
from agf.progress import progress_bar, say
from agf.store import FrameCache, Store, fixed_vectors
from agf.store.models import flatten_state, latest_model, load_arrays, save_arrays, unflatten_state

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


# -- reading a source's points ------------------------------------------------------------------


class _Points:
    """The points of one source, per track: frames (n, 13) or one vector (1, d)."""

    def __init__(self, store: Store, source: str):
        self.source = source
        if source in FRAME_SOURCES:
            self.cache = FrameCache(store.root, "mfcc")
        else:
            table = store.query(f"SELECT track_id, vector FROM features_{source}")
            if table.num_rows == 0:
                raise AgfError(f"the {source} feature set is not stored: ingest with --features {source}")
            ids = table["track_id"].to_numpy()
            matrix = np.asarray(table["vector"].combine_chunks().flatten(), dtype=np.float32).reshape(len(ids), -1)
            self.vectors = dict(zip(ids.tolist(), matrix))

    def has(self, track_id: int) -> bool:
        return track_id in self.cache if self.source in FRAME_SOURCES else track_id in self.vectors

    def of(self, track_id: int) -> np.ndarray:
        if self.source == "mfcc":
            return np.asarray(self.cache.read(track_id), dtype=np.float32)
        if self.source == "dmfcc":
            return np.diff(np.asarray(self.cache.read(track_id), dtype=np.float32), axis=0)
        return self.vectors[track_id][None, :]


def _sample(points: _Points, track_ids: list[int], budget: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``budget`` points, spread evenly over tracks, for fitting the dictionary."""
    per_track = max(1, budget // max(1, len(track_ids)))
    chunks = []
    for track_id in track_ids:
        x = points.of(track_id)
        if len(x) > per_track:
            x = x[np.sort(rng.choice(len(x), per_track, replace=False))]
        chunks.append(x)
    return np.concatenate(chunks)


# -- dictionaries -------------------------------------------------------------------------------


@dataclass
class Dictionary:
    """A fitted source: scaler statistics and centroids (K-Means sources) or a vocabulary (tags)."""

    source: str
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    centroids: np.ndarray | None = None
    vocabulary: dict | None = None

    @property
    def size(self) -> int:
        return len(self.vocabulary) if self.vocabulary is not None else len(self.centroids)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid of each row of ``x`` (n, d): (n,) int64 cluster ids."""
        import faiss

        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(self.centroids)
        _, labels = index.search(np.ascontiguousarray((x - self.mean) / self.scale, dtype=np.float32), 1)
        return labels[:, 0]


def fit_dictionary(source: str, points: _Points | None, tracks: list[dict], params: FactorParams) -> Dictionary:
    """Fit the scaler and K-Means (or the tag vocabulary) on ``tracks``."""
    if source == "tags":
        words = sorted({w for t in tracks for w in _words(t, params.free_tags)})
        if not words:
            raise AgfError("tags: no track has a genre" + ("" if params.free_tags else " (add --free-tags to use tags)"))
        return Dictionary(source, vocabulary={w: i for i, w in enumerate(words)})
    import faiss

    rng = np.random.default_rng(params.seed)
    sample = _sample(points, [t["track_id"] for t in tracks], params.max_fit_points, rng)
    mean = sample.mean(axis=0) if params.standardise else np.zeros(sample.shape[1], np.float32)
    scale = sample.std(axis=0) if params.standardise else np.ones(sample.shape[1], np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    k = min(params.clusters, max(2, len(sample) // 4))
    if len(sample) < 2:
        raise AgfError(f"{source}: too few points to cluster ({len(sample)})")
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=params.kmeans_iterations, seed=params.seed,
                          max_points_per_centroid=max(256, len(sample) // k + 1),
                          min_points_per_centroid=1, verbose=False)  # few points per centroid is by design here
    kmeans.train(np.ascontiguousarray((sample - mean) / scale, dtype=np.float32))
    return Dictionary(source, mean=mean.astype(np.float32), scale=scale, centroids=kmeans.centroids.copy())


def _words(track: dict, free_tags: bool = True) -> list[str]:
    """A track's words for the tags source: its genre ids (FMA's ``track.genres``, as the authors
    use them) and, with ``free_tags``, its free tags too."""
    genres = [f"genre:{g}" for g in track["genres"] or []]
    return genres + [f"tag:{t.casefold()}" for t in track["tags"] or []] if free_tags else genres


def histograms(dictionary: Dictionary, points: _Points | None, tracks: list[dict], quiet: bool = True,
               batch_points: int = 1 << 20) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each track's words as sparse counts: ``{track_id: (word_ids, counts)}`` (int32 arrays).

    Frames are assigned in batches of about ``batch_points`` rows, so memory stays bounded.
    """
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if dictionary.source == "tags":
        for t in tracks:
            ids = [dictionary.vocabulary[w] for w in _words(t) if w in dictionary.vocabulary]
            if ids:
                out[t["track_id"]] = _counts(np.asarray(ids))
        return out
    pending: list[tuple[int, np.ndarray]] = []
    size = 0

    def flush():
        nonlocal pending, size
        if not pending:
            return
        labels = dictionary.assign(np.concatenate([x for _, x in pending]))
        offsets = np.cumsum([0] + [len(x) for _, x in pending])
        for (track_id, _), a, b in zip(pending, offsets[:-1], offsets[1:]):
            out[track_id] = _counts(labels[a:b])
        pending, size = [], 0

    with progress_bar(len(tracks), f"assign {dictionary.source}", "tracks", quiet) as bar:
        for t in tracks:
            x = points.of(t["track_id"])
            if len(x):
                pending.append((t["track_id"], x))
                size += len(x)
            if size >= batch_points:
                flush()
            bar.advance()
        flush()
    return out


def _counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, counts = np.unique(labels, return_counts=True)
    return ids.astype(np.int32), counts.astype(np.int32)


def artist_bags(tracks: list[dict], hist: dict, n_words: int) -> tuple[list[int], sparse.csr_matrix, dict[int, int]]:
    """Artist bag-of-words: word counts over the artist's tracks divided by its number of tracks.

    Returns (artist_ids, matrix (n_artists, n_words) CSR float32, tracks per artist); artists
    whose tracks have no words are left out.
    """
    n_tracks: dict[int, int] = defaultdict(int)
    rows: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for t in tracks:
        n_tracks[t["artist_id"]] += 1
        if t["track_id"] in hist:
            ids, counts = hist[t["track_id"]]
            row = rows[t["artist_id"]]
            for i, c in zip(ids.tolist(), counts.tolist()):
                row[i] += c
    artist_ids = sorted(rows)
    data, indices, indptr = [], [], [0]
    for a in artist_ids:
        words = sorted(rows[a].items())
        indices.extend(w for w, _ in words)
        data.extend(c / n_tracks[a] for _, c in words)
        indptr.append(len(indices))
    matrix = sparse.csr_matrix((np.asarray(data, np.float32), indices, indptr), shape=(len(artist_ids), n_words))
    return artist_ids, matrix, dict(n_tracks)


# -- building and updating ----------------------------------------------------------------------


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


def make_lda(topics: int, n_artists: int, passes: int, seed: int):
    """scikit-learn's LDA as the factors use it: batch variational Bayes up to 4,096 artists;
    online (mini-batches of 512) above, with the E-step spread over every core (1.5x on 2 cores;
    below that size starting the worker processes costs more than it saves)."""
    from sklearn.decomposition import LatentDirichletAllocation

    large = n_artists > 4096
    return LatentDirichletAllocation(n_components=topics, learning_method="online" if large else "batch",
                                     max_iter=passes, batch_size=512, random_state=seed,
                                     n_jobs=os.cpu_count() if large else None)


COLLAPSE_SHARE = 0.5


def diagnostics(factors: np.ndarray) -> dict:
    """How well factors tell artists apart.

    Parameters
    ----------
    factors : np.ndarray, shape (n_artists, n_topics)
        Each row a topic mixture.

    Returns
    -------
    dict
        ``dominant_topics`` (distinct strongest topics over the artists), ``largest_topic_share``
        (the share of artists whose strongest topic is the most common one),
        ``near_identical_pairs`` (artist pairs with cosine above 0.9999) and ``collapsed``
        (more than half the artists, of at least 4, share one dominant topic).
    """
    n = len(factors)
    if n == 0:
        return {"dominant_topics": 0, "largest_topic_share": 0.0, "near_identical_pairs": 0, "collapsed": False}
    dominant = np.argmax(factors, axis=1)
    share = float(np.bincount(dominant).max() / n)
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
    near = int((np.triu(unit @ unit.T, k=1) > 0.9999).sum())
    return {"dominant_topics": int(len(np.unique(dominant))), "largest_topic_share": round(share, 3),
            "near_identical_pairs": near, "collapsed": bool(n >= 4 and share > COLLAPSE_SHARE)}


def _build_source(store: Store, source: str, tracks: list[dict], params: FactorParams, quiet: bool) -> dict:
    started = time.perf_counter()
    points = None if source == "tags" else _Points(store, source)
    usable = [t for t in tracks if source == "tags" or points.has(t["track_id"])]
    per_artist = defaultdict(int)
    for t in usable:
        per_artist[t["artist_id"]] += 1
    fitting = [t for t in usable if per_artist[t["artist_id"]] >= params.min_tracks]
    if len({t["artist_id"] for t in fitting}) < 2:
        raise AgfError(f"{source}: fewer than 2 artists have {params.min_tracks}+ tracks; lower --min-tracks")
    say(f"{source}: fitting on {len(fitting)} tracks of {len({t['artist_id'] for t in fitting})} artists", quiet)
    dictionary = fit_dictionary(source, points, fitting, params)
    hist = histograms(dictionary, points, usable, quiet)
    artist_ids, bags, n_tracks = artist_bags(usable, hist, dictionary.size)
    fit_rows = [i for i, a in enumerate(artist_ids) if n_tracks[a] >= params.min_tracks]
    if len(fit_rows) < 2:
        raise AgfError(f"{source}: fewer than 2 artists have words to fit topics on")
    lda = make_lda(params.topics, len(fit_rows), params.lda_passes, params.seed)
    lda.fit(bags[fit_rows])
    perplexity = float(lda.perplexity(bags[fit_rows]))
    factors = lda.transform(bags)
    seconds = time.perf_counter() - started
    checks = diagnostics(factors)
    summary = {
        "source": source, "clusters": dictionary.size if source != "tags" else None,
        "words": dictionary.size, "words_used": int(np.count_nonzero(bags.getnnz(axis=0))), "topics": params.topics,
        "tracks": len(usable), "artists_fit": len(fit_rows), "artists": len(artist_ids),
        "perplexity": round(perplexity, 2), **checks, "seconds": round(seconds, 2),
    }
    if checks["collapsed"]:
        say(f"warning: the {source} factors have collapsed: {checks['largest_topic_share']:.0%} of artists share one "
            f"dominant topic ({checks['dominant_topics']} distinct); fewer --clusters or --topics, or more artists, "
            f"may help", quiet)
    model_id = save_arrays(store, KIND, source, flatten_state({"dictionary": dictionary, "lda": lda}),
                           {**asdict(params), "clusters_used": dictionary.size},
                           {k: summary[k] for k in ("perplexity", "artists_fit", "artists", "tracks", "seconds")})
    _write_rows(store, source, model_id, hist, artist_ids, bags, factors, replace_model=True)
    return {"model_id": model_id, **summary}


def load_factor_model(store: Store, model_id: str):
    """A stored factor model: its :class:`Dictionary` and the fitted LDA that projects bags.

    Only arrays and JSON are read (``model.npz``); what the file holds is checked for shape
    before it is used, so a file from a hostile store is an error, not a crash.
    """
    from sklearn.decomposition import LatentDirichletAllocation

    state = unflatten_state(load_arrays(store, model_id))
    try:
        saved, fitted = state["dictionary"], state["lda"]
        dictionary = Dictionary(str(saved["source"]), saved.get("mean"), saved.get("scale"), saved.get("centroids"),
                                saved.get("vocabulary"))
        components = np.asarray(fitted["components_"])  # in the dtype fitted (float32 bags fit float32)
        lda = LatentDirichletAllocation(n_components=components.shape[0],
                                        max_doc_update_iter=int(fitted["max_doc_update_iter"]),
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
        raise AgfError(f"factor model {model_id} holds arrays of inconsistent shapes; it was damaged")
    return dictionary, lda


def _dictionary_consistent(dictionary: Dictionary) -> bool:
    if dictionary.vocabulary is not None:
        return isinstance(dictionary.vocabulary, dict) and all(isinstance(i, int) for i in dictionary.vocabulary.values())
    width = dictionary.centroids.shape[1] if dictionary.centroids.ndim == 2 else -1
    return dictionary.mean.shape == dictionary.scale.shape == (width,)


def _write_rows(store: Store, source: str, model_id: str, hist: dict, artist_ids: list[int], bags, factors,
                replace_model: bool) -> None:
    track_ids = sorted(hist)
    clusters = pa.table({
        "track_id": pa.array(track_ids, pa.int64()),
        "source": [source] * len(track_ids),
        "model_id": [model_id] * len(track_ids),
        "cluster_ids": [hist[t][0] for t in track_ids],
        "counts": [hist[t][1] for t in track_ids],
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
    append = {"clusters": clusters, "artist_bow": bow, "agf": agf}
    # Rebuilding with identical data and seed gives the same model id: replace its rows, not duplicate them.
    keep = {name: f"model_id <> '{model_id}'" for name in append} if replace_model else None
    store.write(append=append, keep_where=keep, params={"model_id": model_id, "source": source})


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
        dictionary, lda = load_factor_model(store, row["model_id"])
        points = None if source == "tags" else _Points(store, source)
        known = set(store.query("SELECT track_id FROM clusters WHERE model_id = ?", [row["model_id"]])["track_id"].to_pylist())
        usable = [t for t in tracks if source == "tags" or points.has(t["track_id"])]
        new_tracks = [t for t in usable if t["track_id"] not in known]
        hist = histograms(dictionary, points, new_tracks, quiet)
        have = set(store.query("SELECT artist_id FROM agf WHERE model_id = ?", [row["model_id"]])["artist_id"].to_pylist())
        new_artists = {t["artist_id"] for t in usable} - have
        mine = [t for t in usable if t["artist_id"] in new_artists]
        stored = store.query(
            "SELECT track_id, cluster_ids, counts FROM clusters WHERE model_id = ? AND track_id IN "
            "(SELECT unnest(?::BIGINT[]))", [row["model_id"], [t["track_id"] for t in mine]]
        ).to_pylist()
        all_hist = {r["track_id"]: (np.asarray(r["cluster_ids"], np.int32), np.asarray(r["counts"], np.int32)) for r in stored}
        all_hist.update(hist)
        artist_ids, bags, _ = artist_bags(mine, all_hist, dictionary.size)
        factors = lda.transform(bags) if artist_ids else np.zeros((0, lda.n_components))
        _write_rows(store, source, row["model_id"], hist, artist_ids, bags, factors, replace_model=False)
        results.append({"source": source, "model_id": row["model_id"], "new_tracks": len(hist), "new_artists": len(artist_ids)})
    if not results:
        raise AgfError("no factors to update yet: run `agf factors build` first")
    return results


def current_factors(store: Store, source: str) -> tuple[list[int], np.ndarray]:
    """Artist ids and their AGF matrix (n_artists, topics) under the newest model of ``source``."""
    row = latest_model(store, KIND, source)
    if row is None:
        return [], np.zeros((0, 0), np.float32)
    table = store.query("SELECT artist_id, factors FROM agf WHERE model_id = ? ORDER BY artist_id", [row["model_id"]])
    ids = table["artist_id"].to_pylist()
    matrix = np.asarray(table["factors"].combine_chunks().flatten(), np.float32).reshape(len(ids), -1)
    return ids, matrix


def show_artist(store: Store, artist: dict, top: int = 3) -> dict:
    """An artist's strongest factors per source, each described in words people can read.

    A factor is described by its most typical artists (the others with the highest weight on
    it) and, for the tags source, by its top words (the genres it weighs most). Factors under
    5 % of the artist's mixture are left out, the strongest always kept.
    """
    names = {r["artist_id"]: r["name"] for r in store.query("SELECT artist_id, name FROM artists").to_pylist()}
    rows = []
    for source in SOURCES:
        ids, matrix = current_factors(store, source)
        if artist["artist_id"] not in ids:
            continue
        vector = matrix[ids.index(artist["artist_id"])]
        words = _factor_words(store, source) if source == "tags" else {}
        for rank, factor in enumerate(np.argsort(-vector)[:top]):
            if rank and vector[factor] < 0.05:
                break
            typical = [i for i in np.argsort(-matrix[:, factor]) if ids[i] != artist["artist_id"]][:top]
            rows.append({
                "source": source, "factor": int(factor), "weight": round(float(vector[factor]), 3),
                "typical_artists": ", ".join(names[ids[i]] for i in typical),
                "top_words": ", ".join(words.get(int(factor), [])),
            })
    if not rows:
        raise AgfError(f"{artist['name']} has no factors yet: run `agf factors build` (or `agf factors update`)")
    return {"artist": artist["name"], "artist_id": artist["artist_id"], "tracks": artist["tracks"], "factors": rows}


def _factor_words(store: Store, source: str, top: int = 3) -> dict[int, list[str]]:
    """Each factor's ``top`` words by LDA weight, genre ids named by the genres table."""
    dictionary, lda = load_factor_model(store, latest_model(store, KIND, source)["model_id"])
    titles = {f"genre:{r['genre_id']}": r["title"] for r in store.query("SELECT genre_id, title FROM genres").to_pylist()}
    word_of = {i: titles.get(w, w.removeprefix("tag:")) for w, i in dictionary.vocabulary.items()}
    return {f: [word_of[i] for i in np.argsort(-row)[:top]] for f, row in enumerate(lda.components_)}
