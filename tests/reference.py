"""The authors' Artist Group Factor pipeline (eldrin/Artist-Group-Factor), as a reference oracle.

scikit-learn's MiniBatchKMeans fitted with ``partial_fit`` over batches of tracks' raw MFCC
frames (no standardisation), each artist's bag-of-words as its frames' cluster counts divided
by its number of tracks, every artist a row, and ``LatentDirichletAllocation`` with its
defaults. Written from the authors' ``agf/process.py``; agf's factors are compared with it.
Also here: what both are fed (a store's frames) and how both are scored (soundtrack precision).
"""

import statistics
from collections import Counter

import numpy as np
from scipy import sparse
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import LatentDirichletAllocation


def reference_factors(frames: dict[int, np.ndarray], artist_of: dict[int, int], clusters: int, topics: int,
                      seed: int, batch_tracks: int = 256) -> tuple[list[int], np.ndarray]:
    """Artist ids and their factors (n_artists, topics) as the authors' code computes them.

    ``frames`` maps a track id to its points (n_frames, d): MFCC frames, or their differences.
    """
    track_ids = sorted(frames)
    kmeans = MiniBatchKMeans(clusters, random_state=seed)
    for start in range(0, len(track_ids), batch_tracks):
        kmeans.partial_fit(np.concatenate([frames[t] for t in track_ids[start:start + batch_tracks]]))
    artists = sorted(set(artist_of[t] for t in track_ids))
    rows, cols, values = [], [], []
    for row, artist in enumerate(artists):
        mine = [t for t in track_ids if artist_of[t] == artist]
        for word, count in Counter(kmeans.predict(np.concatenate([frames[t] for t in mine]))).items():
            rows.append(row)
            cols.append(word)
            values.append(count / len(mine))
    bags = sparse.coo_matrix((values, (rows, cols)), shape=(len(artists), clusters)).tocsr()
    lda = LatentDirichletAllocation(topics, random_state=seed)
    return artists, lda.fit_transform(bags)


def store_points(store, source: str) -> tuple[dict[int, np.ndarray], dict[int, int], dict[int, int]]:
    """A store's frame points for ``source`` (``mfcc`` frames, or ``dmfcc`` differences) by track,
    each track's artist, and each artist's most common album (a soundtrack, for game music)."""
    from agf.store import FrameCache

    tracks = store.query("SELECT track_id, artist_id, album_id FROM tracks").to_pylist()
    album_of = {a: statistics.mode(t["album_id"] for t in tracks if t["artist_id"] == a)
                for a in {t["artist_id"] for t in tracks}}
    cache = FrameCache(store.root, "mfcc")
    frames = {t["track_id"]: np.asarray(cache.read(t["track_id"]), np.float32) for t in tracks}
    if source == "dmfcc":
        frames = {t: np.diff(m, axis=0) for t, m in frames.items()}
    return frames, {t["track_id"]: t["artist_id"] for t in tracks}, album_of


def soundtrack_precision(artists: list[int], factors: np.ndarray, album_of: dict[int, int], k: int = 3) -> float:
    """Mean share of each artist's ``k`` nearest artists (cosine of factors) from its own album."""
    unit = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    return float(np.mean([np.mean([album_of[artists[j]] == album_of[a] for j in np.argsort(-cosine[i])[:k]])
                          for i, a in enumerate(artists)]))
