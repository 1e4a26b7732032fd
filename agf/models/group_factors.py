"""Artist Group Factors on arrays: cluster dictionary, artist bag-of-words, LDA topic mixtures.

:class:`ArtistGroupFactors` is a scikit-learn-shaped estimator that knows nothing of the store:
``fit(points_by_track, artist_of_track)`` then ``transform(...)``. :mod:`agf.models.factors`
reads its inputs from the store and persists what it fits.

A track's points are either frames or descriptors, ``(n_points, d)`` floats, which K-Means
turns into words (a track's words are its points' clusters), or its words themselves, a list
of strings (the tags source), which a vocabulary numbers. An artist's bag-of-words counts its
tracks' words divided by its number of tracks; LDA over the artist × word matrix gives each
artist a topic mixture, its AGF (docs/METHOD.md).

As the authors do, points are clustered raw (``standardise=True`` scales them first) and every
artist with a track is fitted on (``min_tracks`` raises that). Where speed demands otherwise:
the dictionary is FAISS K-Means fitted on at most ``max_fit_points`` points sampled evenly
across tracks (the authors: scikit-learn's MiniBatchKMeans over every frame; FAISS fits and
assigns an order of magnitude faster, see ``bench/factors.py``, with the same factors, see
``bench/fidelity.py``), and every point is then assigned to its nearest centroid in batches.
K is lowered to a quarter of the points when there are fewer than 4 K points (a small
corpus); ``dictionary_.size`` is the value used.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from agf.engine import usable_cores
from agf.errors import AgfError
from agf.progress import progress_bar, say

#: Artists sharing one dominant topic, as a share of all, above which factors count as collapsed.
COLLAPSE_SHARE = 0.5

#: The points the K-Means sample takes from each track it reads past ``max_fit_points`` / 16
#: tracks, where tracks are read in a random order until the sample is full rather than every one
#: for a few points: reading a track costs more than sampling its points (FMA full's 106,574
#: tracks, 4 points each, took 8 s a frame source).
MIN_SAMPLED_POINTS = 16

#: A track's words as sparse counts: (word ids, counts), both int32; ``None`` for a track without points.
Words = tuple[np.ndarray, np.ndarray] | None


@dataclass
class Dictionary:
    """A fitted dictionary: scaler statistics and centroids (points), or a vocabulary (words)."""

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
        # FAISS forms distances 4,096 points at a time: a block of 512 stays in cache (~20 % faster)
        default = faiss.cvar.distance_compute_blas_query_bs
        faiss.cvar.distance_compute_blas_query_bs = 512
        try:
            _, labels = index.search(self.scaled(x), 1)
        finally:
            faiss.cvar.distance_compute_blas_query_bs = default
        return labels[:, 0]

    def scaled(self, x: np.ndarray) -> np.ndarray:
        """Points ``x`` (n, d) in the centroids' space: standardised if the dictionary was, as
        contiguous float32 (raw points, the authors' way, are not copied when already so)."""
        if self.mean.any() or (self.scale != 1).any():
            x = (x - self.mean) / self.scale
        return np.ascontiguousarray(x, dtype=np.float32)


class ArtistGroupFactors:
    """Artist Group Factors, fitted on arrays.

    Parameters
    ----------
    n_clusters : int
        K of the K-Means dictionary (points only; the authors' 2048).
    n_topics : int
        LDA topics: the length of each artist's factor vector (the authors' 40).
    min_tracks : int
        Artists with fewer tracks are projected, not fitted on.
    standardise : bool
        Scale points to zero mean and unit variance before clustering (the authors do not).
    max_fit_points : int
        Points sampled, evenly over tracks, to fit K-Means on.
    kmeans_iterations, lda_passes : int
        Iterations of K-Means and passes of LDA.
    random_state : int
        Seed of the sampling, K-Means and LDA.
    name : str
        What the factors are of (a source's name), for messages and the dictionary.
    verbose : bool
        Say what is fitted, and show progress while assigning points (on stderr).

    Attributes
    ----------
    dictionary_ : Dictionary
    lda_ : sklearn.decomposition.LatentDirichletAllocation
    artist_ids_ : np.ndarray, shape (n_artists,)
        The artists fitted or projected at ``fit``, ascending.
    factors_ : np.ndarray, shape (n_artists, n_topics)
        Their topic mixtures.
    bags_ : scipy.sparse.csr_matrix, shape (n_artists, n_words)
        Their bags-of-words.
    words_ : list of Words
        Each track's words, in the order of ``points_by_track``.
    n_fitted_ : int
        Artists the dictionary and LDA were fitted on.
    perplexity_ : float
        LDA's perplexity on those artists.
    """

    def __init__(self, *, n_clusters: int = 2048, n_topics: int = 40, min_tracks: int = 1, standardise: bool = False,
                 max_fit_points: int = 256 * 2048, kmeans_iterations: int = 20, lda_passes: int = 10,
                 random_state: int = 0, name: str = "points", verbose: bool = False):
        self.n_clusters, self.n_topics, self.min_tracks = n_clusters, n_topics, min_tracks
        self.standardise, self.max_fit_points = standardise, max_fit_points
        self.kmeans_iterations, self.lda_passes, self.random_state = kmeans_iterations, lda_passes, random_state
        self.name, self.verbose = name, verbose

    @classmethod
    def fitted(cls, dictionary: Dictionary, lda, **params) -> "ArtistGroupFactors":
        """An estimator around a dictionary and LDA fitted earlier (e.g. read back from the store)."""
        estimator = cls(n_topics=lda.n_components, name=dictionary.source, **params)
        estimator.dictionary_, estimator.lda_ = dictionary, lda
        return estimator

    def fit(self, points_by_track: Sequence, artist_of_track) -> "ArtistGroupFactors":
        """Fit the dictionary on the tracks of artists with ``min_tracks`` tracks, count every
        track's words, fit LDA on those artists' bags, and project every artist.

        Parameters
        ----------
        points_by_track : sequence of np.ndarray (n_points, d), or of list of str
            Each track's points, or its words; a sequence may read them lazily.
        artist_of_track : array-like of int, shape (n_tracks,)
        """
        artists = np.asarray(artist_of_track, np.int64)
        if len(artists) != len(points_by_track):
            raise ValueError(f"{len(points_by_track)} tracks of points but {len(artists)} artists")
        tracks_per_artist = np.unique(artists, return_counts=True)
        kept = set(tracks_per_artist[0][tracks_per_artist[1] >= self.min_tracks].tolist())
        fitting = [i for i, a in enumerate(artists.tolist()) if a in kept]
        if len(kept) < 2 and self.min_tracks > 1:
            raise AgfError(f"{self.name}: fewer than 2 artists have {self.min_tracks}+ tracks; lower --min-tracks")
        if len(kept) < 2:  # no option helps: factors tell artists apart
            raise AgfError(f"{self.name}: factors need tracks of 2 artists or more; the store has {len(kept)}")
        say(f"{self.name}: fitting on {len(fitting)} tracks of {len(kept)} artists", not self.verbose)
        self.fit_dictionary(points_by_track, fitting)
        self.words_ = self.count_words(points_by_track)
        self.artist_ids_, self.bags_, n_tracks = artist_bags(artists, self.words_, self.dictionary_.size)
        fit_rows = [i for i, a in enumerate(self.artist_ids_.tolist()) if n_tracks[a] >= self.min_tracks]
        if len(fit_rows) < 2:
            raise AgfError(f"{self.name}: fewer than 2 artists have words to fit topics on")
        self.lda_ = fit_lda(self.bags_[fit_rows], self.n_topics, self.lda_passes, self.random_state,
                            f"lda {self.name}", self.verbose)
        self.n_fitted_ = len(fit_rows)
        self.factors_, self.perplexity_ = self.lda_.factors_and_perplexity(self.bags_, fit_rows)
        return self

    def transform(self, points_by_track: Sequence, artist_of_track) -> tuple[np.ndarray, np.ndarray]:
        """The factors of the artists of ``points_by_track``: (artist ids (n_artists,), factors
        (n_artists, n_topics)), artists without any word left out."""
        artist_ids, bags, _ = artist_bags(np.asarray(artist_of_track, np.int64), self.count_words(points_by_track),
                                          self.dictionary_.size)
        return artist_ids, self.project(bags)

    def project(self, bags: sparse.csr_matrix) -> np.ndarray:
        """LDA topic mixtures (n_artists, n_topics) of bags-of-words (n_artists, n_words)."""
        return self.lda_.transform(bags) if bags.shape[0] else np.zeros((0, self.lda_.n_components))

    def count_words(self, points_by_track: Sequence, batch_points: int = 1 << 20) -> list[Words]:
        """Each track's words as sparse counts, in order; points are assigned to centroids in
        batches of about ``batch_points`` rows, so memory stays bounded."""
        if self.dictionary_.vocabulary is not None:
            vocabulary = self.dictionary_.vocabulary
            return [_counts(np.asarray([vocabulary[w] for w in words if w in vocabulary], np.int64))
                    for words in points_by_track]
        out: list[Words] = [None] * len(points_by_track)
        pending: list[tuple[int, np.ndarray]] = []
        size = 0

        def flush():
            nonlocal size
            if pending:
                labels = self.dictionary_.assign(np.concatenate([x for _, x in pending]))
                offsets = np.cumsum([0] + [len(x) for _, x in pending])
                for (i, _), a, b in zip(pending, offsets[:-1], offsets[1:]):
                    out[i] = _counts(labels[a:b])
                pending.clear()
                size = 0

        with progress_bar(len(points_by_track), f"assign {self.name}", "tracks", not self.verbose) as bar:
            for i in range(len(points_by_track)):
                x = points_by_track[i]
                if len(x):
                    pending.append((i, x))
                    size += len(x)
                if size >= batch_points:
                    flush()
                bar.advance()
            flush()
        return out

    def fit_dictionary(self, points_by_track: Sequence, fitting: list[int] | None = None) -> "ArtistGroupFactors":
        """Fit only the dictionary (``fit``'s first stage) on the tracks at ``fitting`` (default: all):
        K-Means on their points, or the vocabulary of their words."""
        self.dictionary_ = self._dictionary(points_by_track, list(range(len(points_by_track))) if fitting is None else fitting)
        return self

    def _dictionary(self, points_by_track: Sequence, fitting: list[int]) -> Dictionary:
        first = next((points_by_track[i] for i in fitting if len(points_by_track[i])), None)
        if first is None:
            raise AgfError(f"{self.name}: no track has any point or word")
        if isinstance(first, (list, tuple)):  # words: the vocabulary is the dictionary
            words = sorted({w for i in fitting for w in points_by_track[i]})
            return Dictionary(self.name, vocabulary={w: i for i, w in enumerate(words)})
        import faiss

        sample = _sample(points_by_track, fitting, self.max_fit_points, np.random.default_rng(self.random_state))
        if len(sample) < 2:
            raise AgfError(f"{self.name}: too few points to cluster ({len(sample)})")
        mean = sample.mean(axis=0) if self.standardise else np.zeros(sample.shape[1], np.float32)
        scale = sample.std(axis=0) if self.standardise else np.ones(sample.shape[1], np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        k = min(self.n_clusters, max(2, len(sample) // 4))
        kmeans = faiss.Kmeans(sample.shape[1], k, niter=self.kmeans_iterations, seed=self.random_state,
                              max_points_per_centroid=max(256, len(sample) // k + 1),
                              min_points_per_centroid=1, verbose=False)  # few points per centroid is by design here
        dictionary = Dictionary(self.name, mean=mean.astype(np.float32), scale=scale)
        kmeans.train(dictionary.scaled(sample))
        dictionary.centroids = kmeans.centroids.copy()
        return dictionary


def _sample(points_by_track: Sequence, indices: list[int], budget: int, rng: np.random.Generator) -> np.ndarray:
    """About ``budget`` points, spread evenly over the tracks at ``indices``, in their order.

    Up to ``budget / MIN_SAMPLED_POINTS`` tracks, each track gives an equal share. Above, the
    tracks are read in a random order, ``MIN_SAMPLED_POINTS`` points from each, until the budget
    is met (so tracks of one point each, as a descriptor source has, are all read).
    """
    many = len(indices) > budget // MIN_SAMPLED_POINTS
    order = rng.permutation(np.asarray(indices)).tolist() if many else indices
    per_track = MIN_SAMPLED_POINTS if many else max(1, budget // max(1, len(indices)))
    chunks: dict[int, np.ndarray] = {}
    taken = 0
    for i in order:
        if taken >= budget:
            break
        x = np.asarray(points_by_track[i], np.float32)
        if len(x) > per_track:
            x = x[np.sort(rng.choice(len(x), per_track, replace=False))]
        chunks[i] = x
        taken += len(x)
    return np.concatenate([chunks[i] for i in indices if i in chunks])


def _counts(labels: np.ndarray) -> Words:
    if not len(labels):
        return None
    ids, counts = np.unique(labels, return_counts=True)
    return ids.astype(np.int32), counts.astype(np.int32)


def artist_bags(artist_of_track: np.ndarray, words: Sequence[Words], n_words: int
                ) -> tuple[np.ndarray, sparse.csr_matrix, dict[int, int]]:
    """Artist bag-of-words: word counts over the artist's tracks divided by its number of tracks.

    Returns
    -------
    artist_ids : np.ndarray, shape (n_artists,), int64
        Ascending; artists whose tracks have no words are left out.
    bags : scipy.sparse.csr_matrix, shape (n_artists, n_words), float32
    tracks_per_artist : dict
        Every artist's number of tracks, those without words too.
    """
    artists = np.asarray(artist_of_track, np.int64)
    found, counts = np.unique(artists, return_counts=True)
    n_tracks = dict(zip(found.tolist(), counts.tolist()))
    have = [i for i, counted in enumerate(words) if counted is not None]
    artist_ids = np.unique(artists[have]) if have else np.zeros(0, np.int64)
    if not have:
        return artist_ids, sparse.csr_matrix((0, n_words), dtype=np.float32), n_tracks
    # every (artist, word, count) of every track at once; the sparse matrix sums an artist's tracks
    rows = np.searchsorted(artist_ids, np.repeat(artists[have], [len(words[i][0]) for i in have]))
    columns = np.concatenate([words[i][0] for i in have])
    values = np.concatenate([words[i][1] for i in have]).astype(np.float64)
    bags = sparse.coo_matrix((values, (rows, columns)), shape=(len(artist_ids), n_words)).tocsr()
    bags.sum_duplicates()
    bags.sort_indices()
    bags = sparse.diags(1.0 / np.asarray([n_tracks[a] for a in artist_ids.tolist()])) @ bags
    return artist_ids, bags.astype(np.float32).tocsr(), n_tracks


def make_lda(topics: int, n_artists: int, passes: int, seed: int):
    """scikit-learn's LDA as the factors use it (with its E-step run over many documents at
    once, :class:`agf.models.lda.VectorisedLDA`): batch variational Bayes up to 4,096 artists;
    online (mini-batches of 512) above."""
    from agf.models.lda import VectorisedLDA  # here: scikit-learn takes a second to import

    large = n_artists > 4096
    return VectorisedLDA(n_components=topics, learning_method="online" if large else "batch", max_iter=passes,
                         batch_size=512, random_state=seed, n_jobs=usable_cores() if large else None)


def fit_lda(bags: sparse.csr_matrix, topics: int, passes: int, seed: int, label: str = "lda", verbose: bool = False):
    """:func:`make_lda` fitted on ``bags`` (n_artists, n_words). Online (above 4,096 artists) it
    is driven one mini-batch at a time, so progress shows throughout (on FMA's 16,341 artists
    a pass takes minutes): the same updates, in the same order, as ``fit`` makes."""
    from sklearn.utils import gen_batches

    lda = make_lda(topics, bags.shape[0], passes, seed)
    if lda.learning_method != "online":
        return lda.fit(bags)
    lda.set_params(total_samples=bags.shape[0])  # as fit() does: each batch weighs as a share of all
    batches = list(gen_batches(bags.shape[0], lda.batch_size))
    with progress_bar(passes * len(batches), label, "batches", not verbose) as bar:
        for _ in range(passes):
            for batch in batches:
                lda.partial_fit(bags[batch])
                bar.advance()
    return lda


def diagnostics(factors: np.ndarray, bags: sparse.csr_matrix | None = None) -> dict:
    """How well factors tell artists apart.

    Parameters
    ----------
    factors : np.ndarray, shape (n_artists, n_topics)
        Each row a topic mixture.
    bags : scipy.sparse.csr_matrix, shape (n_artists, n_words), optional
        The artists' bags-of-words the factors were made of: artists whose words are the same
        have the same factors by right, which is not a collapse.

    Returns
    -------
    dict
        ``dominant_topics`` (distinct strongest topics over the artists), ``largest_topic_share``
        (the share of artists whose strongest topic is the most common one),
        ``near_identical_pairs`` (artist pairs with cosine above 0.9999), ``same_words_share``
        (the share of artists in the largest group with identical bags, 0 without ``bags``) and
        ``collapsed``: more than half the artists, of at least 4, share one dominant topic, more
        of them than share the same words.
    """
    n = len(factors)
    if n == 0:
        return {"dominant_topics": 0, "largest_topic_share": 0.0, "near_identical_pairs": 0, "same_words_share": 0.0,
                "collapsed": False}
    dominant = np.argmax(factors, axis=1)
    share = float(np.bincount(dominant).max() / n)
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
    near = sum(int((np.triu(unit[rows] @ unit.T, k=1 + rows.start) > 0.9999).sum())  # (rows, n) at a time, not n x n
               for rows in (slice(start, min(n, start + 1024)) for start in range(0, n, 1024)))
    same = _largest_identical_share(bags) if bags is not None and bags.shape[0] else 0.0
    return {"dominant_topics": int(len(np.unique(dominant))), "largest_topic_share": round(share, 3),
            "near_identical_pairs": near, "same_words_share": round(same, 3),
            "collapsed": bool(n >= 4 and share > COLLAPSE_SHARE and share > same)}


def _largest_identical_share(bags: sparse.csr_matrix) -> float:
    """The share of rows in the largest group of identical rows of ``bags``."""
    bags = sparse.csr_matrix(bags)
    bags.sort_indices()
    groups = Counter((bags.indices[a:b].tobytes(), bags.data[a:b].tobytes()) for a, b in zip(bags.indptr[:-1], bags.indptr[1:]))
    return max(groups.values()) / bags.shape[0]
