"""Similarity search speed: FAISS through agf against DuckDB's array_cosine_similarity, same run.

Two synthetic sets of 256-d vectors (clustered, like embeddings): 16,000 artists (FMA's
count) and 1,000,000 tracks. For each: index build seconds, recall@10 against an exact
search, single-query p50/p99 latency and batched queries/s through the library
(``VectorIndex.search``); for artists also through the CLI (``agf similar --batch`` in a
fresh process, and one ``agf similar NAME`` call); and the same queries answered by DuckDB
``array_cosine_similarity`` over the Parquet table (``artist_vectors`` through the store's view).

Usage: python bench/similar.py [--tracks 1000000] [--artists 16000] [--json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from agf.store import Store, fixed_vectors
from agf.store.index import build_index, normalise, save_index

DIM = 256


def synthetic(n: int, seed: int, n_queries: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors around n / 200 centres, and ``n_queries`` held-out queries from the same mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(8, n // 200), DIM)).astype(np.float32)
    total = n + n_queries
    x = normalise(centres[rng.integers(len(centres), size=total)] + 0.6 * rng.normal(size=(total, DIM)).astype(np.float32))
    return x[:n], x[n:]


def latencies(fn, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def bench_library(name: str, x: np.ndarray, queries: np.ndarray) -> dict:
    ids = np.arange(1, len(x) + 1)
    started = time.perf_counter()
    vi = build_index(x, ids, name, "artist", "bench")
    build = time.perf_counter() - started
    p50, p99 = latencies(lambda q: vi.search(q, 10), queries[:1000])
    started = time.perf_counter()
    _, found = vi.search(queries, 10)
    qps = len(queries) / (time.perf_counter() - started)
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10] + 1 if len(x) <= 200_000 else None
    if truth is None:  # exact top-10 in blocks, to bound memory
        truth = np.concatenate([np.argsort(-(queries[i : i + 256] @ x.T), axis=1)[:, :10] + 1 for i in range(0, 1000, 256)])
        found = found[:1000]
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
    print(f"{name:8s} {len(x):>8d} x {DIM}  {vi.meta['kind']:14s} build {build:7.2f} s  recall@10 {recall:.3f}  "
          f"single p50 {p50:.3f} ms p99 {p99:.3f} ms  batched {qps:,.0f} q/s", flush=True)
    return {"vi": vi, "build": build, "p50": p50}


def bench_duckdb(store: Store, table: str, column_filter: str, queries: np.ndarray, n: int) -> float:
    con = store.connect()
    sql = (f"SELECT artist_id, array_cosine_similarity(vector, ?::FLOAT[{DIM}]) AS s FROM {table} "
           f"WHERE {column_filter} ORDER BY s DESC LIMIT 10")
    p50, p99 = latencies(lambda q: con.execute(sql, [q.tolist()]).fetchall(), queries[:n])
    print(f"duckdb   array_cosine_similarity over {table}: single p50 {p50:.1f} ms p99 {p99:.1f} ms "
          f"(~{1000 / p50:,.1f} q/s)", flush=True)
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artists", type=int, default=16_000)
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "store", create=True)
        artists, queries = synthetic(args.artists, 0)
        result = bench_library("artists", artists, queries)
        figures["artists_faiss_p50_ms"] = round(result["p50"], 3)
        save_index(store, result["vi"])
        ids = pa.array(np.arange(1, args.artists + 1), pa.int64())
        with store.transaction() as tx:
            tx.append("artists", pa.table({"artist_id": ids, "source_id": [str(i) for i in range(1, args.artists + 1)],
                                           "name": [f"Artist {i}" for i in range(1, args.artists + 1)]}))
            tx.append("artist_vectors", pa.table({"artist_id": ids, "space": ["artists"] * args.artists,
                                                  "vector": fixed_vectors(artists)}))
        figures["artists_duckdb_p50_ms"] = round(bench_duckdb(store, "artist_vectors", "space = 'artists'", queries, 50), 3)
        batch = Path(tmp) / "queries.csv"
        batch.write_text("artist_id\n" + "\n".join(str(i) for i in range(1, 1001)) + "\n")
        env = {**os.environ, "AGF_STORE": str(store.root)}
        agf = [sys.executable, "-m", "agf.cli"]
        started = time.perf_counter()
        subprocess.run(agf + ["similar", "--batch", str(batch), "--space", "artists"], env=env, check=True, capture_output=True)
        cli_batch = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(agf + ["similar", "Artist 7", "--space", "artists"], env=env, check=True, capture_output=True)
        cli_single = time.perf_counter() - started
        figures.update(cli_batch_s=round(cli_batch, 2), cli_single_s=round(cli_single, 2))
        print(f"cli      agf similar --batch (1,000 artists, process start included): {cli_batch:.2f} s = "
              f"{1000 / cli_batch:,.0f} q/s; one agf similar call: {cli_single:.2f} s wall", flush=True)
        del result, artists
        tracks, queries = synthetic(args.tracks, 2)
        result = bench_library("tracks", tracks, queries)
        figures["tracks_faiss_p50_ms"] = round(result["p50"], 3)
        del result
        track_store = Store.open(Path(tmp) / "tracks", create=True)
        with track_store.transaction() as tx:
            tx.append("embeddings", pa.table({"track_id": pa.array(np.arange(1, args.tracks + 1), pa.int64()),
                                              "model_id": ["bench"] * args.tracks, "vector": fixed_vectors(tracks)}))
        del tracks
        con = track_store.connect()
        sql = (f"SELECT track_id, array_cosine_similarity(vector, ?::FLOAT[{DIM}]) AS s FROM embeddings "
               "ORDER BY s DESC LIMIT 10")
        p50, p99 = latencies(lambda q: con.execute(sql, [q.tolist()]).fetchall(), queries[:5])
        print(f"duckdb   array_cosine_similarity over {args.tracks:,} embeddings: single p50 {p50:.0f} ms p99 {p99:.0f} ms", flush=True)
        figures["tracks_duckdb_p50_ms"] = round(p50, 1)
    if args.json:
        print(json.dumps({"artists": args.artists, "tracks": args.tracks, **figures}))


if __name__ == "__main__":
    main()
