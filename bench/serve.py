"""`agf serve` speed on a store of 16,000 artists: artist pages and /api/similar, against DuckDB's own search.

A store of FMA's artist count is written (16,000 artists, 6 tracks each, genre words drawn
from a few per artist), its tags factors built (40 topics) and their artist index, then served
by a real uvicorn server in this process's thread and asked over HTTP (httpx, one connection,
warm): the artist page of random artists, and ``/api/similar?artist_id=...&k=10``. The
baseline answers the same neighbour queries with DuckDB's own ``array_cosine_similarity``
over ``artist_vectors`` (through the store's sandboxed views), in the same run.

Usage: python bench/serve.py [--artists 16000] [--queries 300] [--json]
"""

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

TRACKS_PER_ARTIST = 6


def write_store(root: Path, n_artists: int, rng: np.random.Generator):
    from agf.app.indexing import build_indexes
    from agf.models.factors import FactorParams, build_factors
    from agf.store import SCHEMAS, Store

    store = Store.open(root, create=True)
    styles = rng.integers(1, 164, size=(n_artists, 3))  # FMA has 163 genres: three per artist's style
    rows = []
    for a in range(n_artists):
        for t in range(TRACKS_PER_ARTIST):
            track_id = a * TRACKS_PER_ARTIST + t + 1
            genres = sorted({int(g) for g in rng.choice(styles[a], size=2)})
            rows.append({"track_id": track_id, "source_id": str(track_id), "path": f"/music/{track_id}.mp3",
                         "audio_sha256": str(track_id), "title": f"Piece {t + 1}", "artist_id": a + 1, "album_id": None,
                         "duration_s": 30.0, "sample_rate": 44100, "genre_top": f"Genre {styles[a][0] % 16}",
                         "genres": genres, "genres_all": genres, "tags": [], "split": None, "subset": None,
                         "ingested_at": None})
    with store.transaction() as tx:
        tx.append("tracks", pa.Table.from_pylist(rows, schema=SCHEMAS["tracks"]))
        tx.append("artists", pa.Table.from_pylist([{"artist_id": a + 1, "source_id": str(a + 1), "name": f"Artist {a + 1}"}
                                                   for a in range(n_artists)]))
        tx.append("genres", pa.Table.from_pylist([{"genre_id": g, "title": f"Genre {g}", "parent_id": None, "top_level": g}
                                                  for g in range(1, 164)], schema=SCHEMAS["genres"]))
    build_factors(store, ["tags"], FactorParams(topics=40), quiet=True)
    build_indexes(store, quiet=True)
    store.close()


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def timed(fn, items) -> list[float]:
    times = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artists", type=int, default=16_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    import httpx
    import uvicorn

    from agf.app.web import create_app
    from agf.store import Store

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_store(Path(tmp) / "store", args.artists, rng)
        print(f"store of {args.artists:,} artists with tags factors and their index: {time.perf_counter() - started:.0f} s",
              flush=True)
        started = time.perf_counter()
        app = create_app(Path(tmp) / "store")
        start_s = time.perf_counter() - started
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        serving = threading.Thread(target=server.run, daemon=True)
        serving.start()
        while not server.started:
            time.sleep(0.05)
        asked = rng.integers(1, args.artists + 1, size=args.queries).tolist()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for a in asked[:10]:  # warm: the first request of each kind pays one-off costs
                client.get(f"/artists/{a}").raise_for_status()
                client.get("/api/similar", params={"artist_id": a, "k": 10}).raise_for_status()
            page = percentiles(timed(lambda a: client.get(f"/artists/{a}").raise_for_status(), asked[: args.queries // 3]))
            api = percentiles(timed(lambda a: client.get("/api/similar", params={"artist_id": a, "k": 10, "space": "agf:tags"})
                                    .raise_for_status(), asked))
        server.should_exit = True
        # joined, not left to die at exit: a thread cut off inside the app's native code aborts the process
        serving.join(30)
        store = Store.open(Path(tmp) / "store")
        con = store.connect()
        sql = ("WITH q AS (SELECT vector FROM artist_vectors WHERE space = 'agf:tags' AND artist_id = ?) "
               "SELECT a.artist_id, array_cosine_similarity(a.vector::FLOAT[40], q.vector::FLOAT[40]) AS s "
               "FROM artist_vectors a, q WHERE a.space = 'agf:tags' AND a.artist_id <> ? ORDER BY s DESC LIMIT 10")
        duckdb = percentiles(timed(lambda a: con.execute(sql, [a, a]).fetchall(), asked))
        con.close()
    print(f"app start (reads the catalog once): {start_s:.2f} s")
    print(f"artist page over HTTP:        p50 {page[0]:7.2f} ms  p99 {page[1]:7.2f} ms  (goal: under 200 ms)")
    print(f"/api/similar k=10 over HTTP:  p50 {api[0]:7.2f} ms  p99 {api[1]:7.2f} ms  (goal: under 5 ms p50)")
    print(f"baseline, DuckDB array_cosine_similarity, in process: p50 {duckdb[0]:7.2f} ms  p99 {duckdb[1]:7.2f} ms")
    if args.json:
        print(json.dumps({"artists": args.artists, "app_start_s": round(start_s, 2), "artist_page_p50_ms": round(page[0], 2),
                          "artist_page_p99_ms": round(page[1], 2), "similar_api_p50_ms": round(api[0], 3),
                          "similar_api_p99_ms": round(api[1], 3), "duckdb_similar_p50_ms": round(duckdb[0], 3),
                          "duckdb_similar_p99_ms": round(duckdb[1], 3)}))


if __name__ == "__main__":
    main()
