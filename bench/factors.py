"""Factor extraction at FMA's shape: seconds per stage and peak memory, against plain scikit-learn.

A synthetic corpus with FMA full's proportions (646 MFCC frames of 13 coefficients per 30 s
track, 6.5 tracks per artist) is written to a real frame cache at three sizes; each size runs
in a fresh process twice:

- ``agf``: the library's stages: FAISS K-Means fitted on a bounded sample, batched FAISS
  assignment of every frame, sparse artist bag-of-words, LDA (batch, or online above 4096 artists,
  its E-step on every core);
- ``sklearn``: the straightforward pipeline the authors' code runs: MiniBatchKMeans.partial_fit
  over batches of 256 tracks, predict per artist, the same LDA on one core.

Seconds are then extrapolated linearly in frames (and artists for LDA) to FMA full: 106,574
tracks, 68.8 million frames, 16,341 artists; the fit of ``agf`` is bounded by its sample size,
so it is carried over as measured at the largest size.

With ``--full``, instead: one end-to-end ``build_factors`` of all four sources (mfcc, dmfcc,
fma, tags) on a real store of FMA full's size, measured, not extrapolated: 106,574 tracks of
646 MFCC frames, 518-d ``fma`` vectors and genre/tag words, by 16,341 artists (writing that
store takes a few minutes and 1.8 GB of disk first).

Usage: python bench/factors.py [--sizes 500,1000,2000] [--clusters 2048] [--topics 40] [--full] [--json]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES_PER_TRACK = 646
TRACKS_PER_ARTIST = 6.5
FMA_TRACKS, FMA_ARTISTS = 106_574, 16_341


def _corpus(root: Path, n_tracks: int, rng: np.random.Generator) -> list[dict]:
    from agf.store import FrameCache

    cache = FrameCache(root, "mfcc")
    n_artists = max(2, int(n_tracks / TRACKS_PER_ARTIST))
    centres = rng.normal(0, 3, size=(n_artists, 13))
    tracks = []
    for track_id in range(1, n_tracks + 1):
        artist = int(rng.integers(n_artists))
        cache.write(track_id, centres[artist] + rng.normal(0, 1, size=(FRAMES_PER_TRACK, 13)))
        tracks.append({"track_id": track_id, "artist_id": artist, "genres": [], "tags": []})
    return tracks


class _Frames:
    """The frames of each track, read from the frame cache when indexed (as the store's reader does)."""

    def __init__(self, root: Path, tracks: list[dict]):
        from agf.store import FrameCache

        self.cache, self.ids = FrameCache(root, "mfcc"), [t["track_id"] for t in tracks]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.cache.read(self.ids[i]), np.float32)


def run_one(method: str, n_tracks: int, clusters: int, topics: int) -> dict:
    from agf.models.group_factors import ArtistGroupFactors, artist_bags

    rng = np.random.default_rng(0)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        tracks = _corpus(Path(tmp), n_tracks, rng)
        points, artist_of = _Frames(Path(tmp), tracks), np.array([t["artist_id"] for t in tracks])
        started = time.perf_counter()
        if method == "agf":  # the estimator's own stages, timed one by one
            estimator = ArtistGroupFactors(n_clusters=clusters, n_topics=topics).fit_dictionary(points)
            times["fit"] = time.perf_counter() - started
            started = time.perf_counter()
            words = estimator.count_words(points)
        else:
            from sklearn.cluster import MiniBatchKMeans

            kmeans = MiniBatchKMeans(clusters, random_state=0, n_init=1)
            for i in range(0, len(tracks), 256):
                kmeans.partial_fit(np.concatenate([points[j] for j in range(i, min(i + 256, len(tracks)))]))
            times["fit"] = time.perf_counter() - started
            started = time.perf_counter()
            words = [tuple(a.astype(np.int32) for a in np.unique(kmeans.predict(points[i]), return_counts=True))
                     for i in range(len(points))]
        times["assign"] = time.perf_counter() - started
        started = time.perf_counter()
        artist_ids, bags, _ = artist_bags(artist_of, words, clusters)
        times["bow"] = time.perf_counter() - started
        started = time.perf_counter()
        _lda(method, topics, len(artist_ids)).fit(bags)
        times["lda"] = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "tracks": n_tracks, "frames": n_tracks * FRAMES_PER_TRACK, "artists": len(artist_ids),
            **{k: round(v, 3) for k, v in times.items()}, "peak_mb": round(peak)}


def _lda(method: str, topics: int, n_artists: int):
    """The library's LDA (every core) for ``agf``; the same model on one core for ``sklearn``."""
    from sklearn.decomposition import LatentDirichletAllocation

    from agf.models.group_factors import make_lda

    if method == "agf":
        return make_lda(topics, n_artists, passes=10, seed=0)
    return LatentDirichletAllocation(topics, learning_method="batch" if n_artists <= 4096 else "online",
                                     max_iter=10, batch_size=512, random_state=0)


def lda_at_fma_shape(clusters: int, topics: int) -> dict[str, float]:
    """Seconds of LDA (online, 10 passes) on a 16,341 x K artist bag-of-words, per method."""
    from scipy import sparse

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(FMA_ARTISTS):  # each artist: 6.5 tracks x 646 frames over a few dozen topics' clusters
        words = rng.choice(clusters, size=int(TRACKS_PER_ARTIST * FRAMES_PER_TRACK), p=None)
        ids, counts = np.unique(words % (clusters // 8) + 8 * rng.integers(8), return_counts=True)
        rows.append(sparse.csr_matrix((counts / TRACKS_PER_ARTIST, (np.zeros_like(ids), ids)), shape=(1, clusters)))
    bags = sparse.vstack(rows).tocsr()
    seconds = {}
    for method in ("agf", "sklearn"):
        started = time.perf_counter()
        _lda(method, topics, FMA_ARTISTS).fit(bags)
        seconds[method] = time.perf_counter() - started
    return seconds


def full_store(root: Path, rng: np.random.Generator):
    """A real store of FMA full's size: frames, fma vectors, genres and tags per artist style.

    Frames are an artist's centre, a track's offset and per-frame noise, all of unit spread:
    with K=2048 an artist's frames then fall in 200 to 1,000 clusters (median ~500), as the
    game-music clips' do (100 to 1,250), so the LDA sees bags as dense as real music gives.
    """
    import pyarrow as pa

    from agf.store import SCHEMAS, FrameCache, Store, fixed_vectors

    store = Store.open(root, create=True)
    cache = FrameCache(store.root, "mfcc")
    artist_of = rng.integers(FMA_ARTISTS, size=FMA_TRACKS)
    centres, styles = rng.normal(0, 1, size=(FMA_ARTISTS, 13)), rng.normal(0, 1, size=(FMA_ARTISTS, 518))
    genre_of = rng.integers(1, 164, size=FMA_ARTISTS)  # FMA has 163 genres
    rows = []
    for i, artist in enumerate(artist_of):
        cache.write(i + 1, centres[artist] + rng.normal(0, 1, size=13) + rng.normal(0, 1, size=(FRAMES_PER_TRACK, 13)))
        rows.append({"track_id": i + 1, "source_id": str(i + 1), "path": f"{i + 1}.mp3", "audio_sha256": str(i + 1),
                     "title": None, "artist_id": int(artist) + 1, "album_id": None, "duration_s": 30.0,
                     "sample_rate": 44100, "genre_top": None, "genres": [int(genre_of[artist])],
                     "genres_all": [int(genre_of[artist])], "tags": [f"tag{genre_of[artist] % 40}"], "split": None,
                     "subset": None, "ingested_at": None})
    vectors = styles[artist_of] + rng.normal(0, 1, size=(FMA_TRACKS, 518))
    with store.transaction() as tx:
        tx.append("tracks", pa.Table.from_pylist(rows, schema=SCHEMAS["tracks"]))
        tx.append("artists", pa.Table.from_pylist([{"artist_id": a + 1, "source_id": str(a + 1), "name": f"artist {a + 1}"}
                                                   for a in range(FMA_ARTISTS)]))
        tx.append("features_fma", pa.table({"track_id": pa.array(range(1, FMA_TRACKS + 1), pa.int64()),
                                            "vector": fixed_vectors(vectors.astype(np.float32))}))
    return store


def run_full(clusters: int, topics: int, as_json: bool = False) -> None:
    from agf.models.factors import FactorParams, build_factors

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store = full_store(Path(tmp) / "store", np.random.default_rng(0))
        print(f"store of FMA full's size written in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        built = build_factors(store, ["mfcc", "dmfcc", "fma", "tags"], FactorParams(clusters=clusters, topics=topics))
        seconds = time.perf_counter() - started
        density = {r["source"]: r["words"] for r in store.query(
            "SELECT source, median(len(word_ids)) AS words FROM artist_bow GROUP BY 1").to_pylist()}
    for b in built:
        print(f"  {b['source']:6s} {b['words']:5d} words, {b['artists_fit']:6d} artists fit: {b['seconds']:7.1f} s "
              f"(median {density[b['source']]:.0f} distinct words per artist)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"all four sources at FMA full: {seconds / 60:.1f} min end to end (commits included); peak {peak:.0f} MB")
    small = {m: _one_in_a_fresh_process(m, 2000, clusters, topics) for m in ("agf", "sklearn")}
    stages = ("fit", "assign", "bow", "lda")
    agf_s, sklearn_s = (sum(small[m][k] for k in stages) for m in ("agf", "sklearn"))
    print(f"the same stages on 2,000 tracks (one frame source): agf {agf_s:.1f} s, the authors' scikit-learn pipeline "
          f"{sklearn_s:.1f} s ({sklearn_s / agf_s:.1f}x)")
    if as_json:
        print(json.dumps({"total_s": round(seconds, 1), "sources_s": {b["source"]: b["seconds"] for b in built},
                          "peak_mb": round(peak), "small_shape": {"tracks": 2000, "agf_s": round(agf_s, 2),
                                                                  "sklearn_s": round(sklearn_s, 2),
                                                                  "speedup": round(sklearn_s / agf_s, 2)}}))


def _one_in_a_fresh_process(method: str, n: int, clusters: int, topics: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", f"{method}:{n}", "--clusters", str(clusters),
                          "--topics", str(topics)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--clusters", type=int, default=2048)
    parser.add_argument("--topics", type=int, default=40)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help="Build all four sources on a store of FMA full's size.")
    parser.add_argument("--skip-full-lda", action="store_true", help="Do not time LDA at FMA's full shape (about 2 minutes).")
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    if args.full:
        return run_full(args.clusters, args.topics, args.json)
    if args.one:
        method, n = args.one.split(":")
        print(json.dumps(run_one(method, int(n), args.clusters, args.topics)))
        return
    results = []
    print(f"{'method':8s} {'tracks':>7s} {'frames':>9s} {'artists':>7s} {'fit s':>7s} {'assign s':>8s} {'bow s':>6s} {'lda s':>6s} {'peak MB':>7s}")
    for n in [int(s) for s in args.sizes.split(",")]:
        for method in ("agf", "sklearn"):
            r = _one_in_a_fresh_process(method, n, args.clusters, args.topics)
            results.append(r)
            print(f"{r['method']:8s} {r['tracks']:7d} {r['frames']:9d} {r['artists']:7d} {r['fit']:7.2f} {r['assign']:8.2f} "
                  f"{r['bow']:6.2f} {r['lda']:6.2f} {r['peak_mb']:7d}", flush=True)
    lda_full = None if args.skip_full_lda else lda_at_fma_shape(args.clusters, args.topics)
    if lda_full is not None:
        print(f"\nLDA measured at FMA's shape ({FMA_ARTISTS} artists x {args.clusters} words, online, 10 passes): "
              f"agf {lda_full['agf']:.1f} s (every core), sklearn {lda_full['sklearn']:.1f} s (one core)")
    print("\nextrapolated to FMA full (106,574 tracks, 68.8 M frames, 16,341 artists):")
    extrapolated = {}
    for method in ("agf", "sklearn"):
        mine = [r for r in results if r["method"] == method]
        frames = np.array([r["frames"] for r in mine], float)
        artists = np.array([r["artists"] for r in mine], float)
        scale_f, scale_a = FMA_TRACKS * FRAMES_PER_TRACK, FMA_ARTISTS

        def fit_line(x, y, target):
            slope, intercept = np.polyfit(x, y, 1)
            return max(slope * target + intercept, y[-1])

        fit = mine[-1]["fit"] if method == "agf" else fit_line(frames, np.array([r["fit"] for r in mine]), scale_f)
        assign = fit_line(frames, np.array([r["assign"] for r in mine]), scale_f)
        bow = fit_line(frames, np.array([r["bow"] for r in mine]), scale_f)
        lda = lda_full[method] if lda_full is not None else fit_line(artists, np.array([r["lda"] for r in mine]), scale_a)
        per_source = fit + assign + bow + lda
        print(f"  {method:8s} per frame source: fit {fit:7.1f} s  assign {assign:7.1f} s  bow {bow:6.1f} s  lda {lda:6.1f} s"
              f"  = {per_source / 60:5.1f} min; mfcc + dmfcc ≈ {2 * per_source / 60:5.1f} min")
        extrapolated[method] = round(per_source, 1)
    if args.json:
        print(json.dumps({"measured": results, "per_frame_source_at_fma_full_s": extrapolated,
                          "speedup": round(extrapolated["sklearn"] / extrapolated["agf"], 2)}))


if __name__ == "__main__":
    main()
