"""Similar artists: indexes over every space, exact answers, filters, batches, reloads, staleness."""

import json
import shutil

import faiss
import numpy as np
import pyarrow as pa
import pytest

from agf.errors import AgfError
from agf.models.factors import FactorParams, build_factors
from agf.app.indexing import build_indexes, index_status
from agf.app.similar import Similar
from agf.models.train import TrainParams, train_cnn
from agf.models.serving import embed
from agf.store import Store
from agf.store.artists import resolve_artist
from agf.store.index import build_index, load_index, save_index

WESNOTH = "The Battle for Wesnoth OST"


@pytest.fixture(scope="module")
def searchable(game_store, tmp_path_factory):
    """game-music with mfcc/dmfcc/tags factors, one CNN's embeddings, and every index built."""
    root = tmp_path_factory.mktemp("similar") / "store"
    shutil.copytree(game_store, root)
    with Store.open(root, write=True) as store:
        build_factors(store, ["mfcc", "dmfcc", "tags"], FactorParams(clusters=64, topics=8), quiet=True)
        train_cnn(store, "agf:mfcc", TrainParams(epochs=1, crops_per_track=2), quiet=True)
        embed(store, "all", quiet=True)
        build_indexes(store, quiet=True)
    return root


def _soundtrack(store: Store) -> dict[int, str]:
    return {r["artist_id"]: r["album"] for r in store.query(
        "SELECT t.artist_id, mode(al.title) AS album FROM tracks t LEFT JOIN albums al USING (album_id) GROUP BY 1").to_pylist()}


def test_every_artist_gets_answers_in_every_space(searchable):
    store = Store.open(searchable)
    spaces = sorted(s["space"] for s in index_status(store) if s["level"] == "artist")
    assert spaces == ["agf:dmfcc", "agf:mfcc", "agf:tags", "combined", "emb:agf:mfcc"]
    service = Similar(store)
    artists = store.query("SELECT artist_id, name FROM artists").to_pylist()
    has_tags = set(store.query("SELECT DISTINCT artist_id FROM agf WHERE source = 'tags'")["artist_id"].to_pylist())
    for space in spaces:
        for a in artists:
            if space == "agf:tags" and a["artist_id"] not in has_tags:
                with pytest.raises(AgfError, match="has no vector in space"):
                    service.artists(resolve_artist(store, artist_id=a["artist_id"]), k=5, space=space)
                continue
            found = service.artists(resolve_artist(store, artist_id=a["artist_id"]), k=5, space=space)
            expected = 5 if space != "agf:tags" else min(5, len(has_tags) - 1)
            assert len(found) == expected and a["artist_id"] not in [f["artist_id"] for f in found]
            assert [f["rank"] for f in found] == list(range(1, expected + 1))
            assert all(x["similarity"] >= y["similarity"] for x, y in zip(found, found[1:]))


def test_composers_of_one_soundtrack_find_each_other(searchable):
    store = Store.open(searchable)
    album = _soundtrack(store)
    service = Similar(store)
    wesnoth = [a for a, t in album.items() if t == WESNOTH]
    chance = (len(wesnoth) - 1) / (len(album) - 1)
    for space in ("agf:mfcc", "agf:dmfcc", "emb:agf:mfcc", "combined"):
        hits = [album[n["artist_id"]] == WESNOTH for a in wesnoth
                for n in service.artists(resolve_artist(store, artist_id=a), k=3, space=space)]
        precision = float(np.mean(hits))
        print(f"{space}: precision@3 of Wesnoth composers {precision:.2f} (chance {chance:.2f})")
        if space in ("agf:dmfcc", "combined"):
            assert precision > chance, space


def test_the_index_matches_an_exact_search_and_reloads_bit_for_bit(searchable, tmp_path):
    store = Store.open(searchable)
    vi = load_index(store, "combined", "artist")
    table = store.query("SELECT artist_id, vector FROM artist_vectors WHERE space = 'combined' ORDER BY artist_id")
    ids = np.asarray(table["artist_id"].to_pylist())
    x = np.asarray(table["vector"].to_pylist(), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims, found = vi.search(x, 5)
    exact = x @ x.T
    for row, (s, f) in enumerate(zip(sims, found)):
        order = np.argsort(-exact[row], kind="stable")[:5]
        np.testing.assert_allclose(s, exact[row][order], atol=1e-5)
        assert set(f[:4]) <= set(ids[np.argsort(-exact[row])[:5]])
    saved = (searchable / "indexes" / "artist-combined.faiss").read_bytes()
    faiss.write_index(faiss.read_index(str(searchable / "indexes" / "artist-combined.faiss")), str(tmp_path / "again.faiss"))
    assert (tmp_path / "again.faiss").read_bytes() == saved


def test_an_approximate_index_reports_its_recall_and_filters_keep_k_results(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 32)).astype(np.float32)
    ids = np.arange(100, 6100)
    vi = build_index(x, ids, "synthetic", "artist", "v1", exact_limit=1000)
    assert vi.meta["kind"].startswith("ivf") and vi.meta["recall_at_10"] >= 0.95
    allowed = ids[ids % 7 == 0]
    sims, found = vi.search(x[:3], 10, allowed=allowed)
    assert (found >= 0).all() and set(found.ravel()) <= set(allowed)
    store = Store.open(tmp_path / "s", create=True)
    save_index(store, vi)
    reloaded = load_index(store, "synthetic", "artist")
    assert reloaded.meta["nprobe"] == vi.meta["nprobe"]
    np.testing.assert_array_equal(reloaded.search(x[:5], 10)[1], vi.search(x[:5], 10)[1])


def test_filters_names_and_batches_from_the_cli(searchable, cli, tmp_path):
    out = cli("similar", "doug KAUFMAN", "-k", "3", "--space", "combined", "--store", searchable, "--json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3] and set(rows[0]) == {"rank", "artist_id", "artist", "similarity", "top_genre", "tracks"}
    classical = json.loads(cli("similar", "Doug Kaufman", "-k", "20", "--genre", "classical", "--min-tracks", "3",
                               "--store", searchable, "--json").stdout)
    store = Store.open(searchable)
    # any artist with a Classical track counts, whatever its most frequent genre
    eligible = store.query("SELECT artist_id FROM tracks GROUP BY 1 HAVING bool_or(list_contains(genres_all, "
                           "(SELECT genre_id FROM genres WHERE title = 'Classical'))) AND count(*) >= 3 "
                           "AND artist_id <> (SELECT artist_id FROM artists WHERE name = 'Doug Kaufman')").num_rows
    assert len(classical) == eligible and all(r["tracks"] >= 3 for r in classical)
    assert {r["top_genre"] for r in classical} == {"Classical", "Rock"}  # K-Pone: mostly Rock, some Classical
    unknown = cli("similar", "Doug Kaufmn", "--store", searchable)
    assert unknown.exit_code == 1 and unknown.output.strip() == "Error: no artist named 'Doug Kaufmn'; did you mean 'Doug Kaufman'?"
    queries = tmp_path / "q.csv"
    queries.write_text("artist,artist_id\nSectoid,\n,1\nNobody Known,\n")
    lines = [json.loads(line) for line in cli("similar", "--batch", queries, "-k", "2", "--store", searchable).stdout.splitlines()]
    assert [len(line.get("neighbours", [])) for line in lines] == [2, 2, 0]
    assert lines[0]["artist"] == "Sectoid" and lines[1]["artist_id"] == 1 and "no artist named" in lines[2]["error"]
    out = cli("similar", "--track", "1", "-k", "4", "--store", searchable, "--json")
    tracks = json.loads(out.stdout)
    assert len(tracks) == 4 and 1 not in [t["track_id"] for t in tracks]
    store = Store.open(searchable)
    asked = store.query("SELECT t.title, t.album_id, a.name FROM tracks t JOIN artists a USING (artist_id) "
                        "WHERE track_id = 1").to_pylist()[0]
    assert f"tracks like {asked['title']!r} by {asked['name']} (track 1)" in out.stderr  # the query, echoed
    assert asked["name"] not in [t["artist"] for t in tracks]  # other artists' tracks by default
    mine = json.loads(cli("similar", "--track", "1", "-k", "40", "--include-same-artist", "--store", searchable,
                          "--json").stdout)
    assert asked["name"] in [t["artist"] for t in mine]
    others = json.loads(cli("similar", "--track", "1", "-k", "40", "--include-same-artist", "--exclude-album",
                            "--store", searchable, "--json").stdout)
    albums = {r["track_id"]: r["album_id"] for r in store.query("SELECT track_id, album_id FROM tracks").to_pylist()}
    assert others and all(albums[t["track_id"]] != asked["album_id"] for t in others)


def test_the_map_says_what_each_visual_channel_means(searchable):
    import matplotlib.colors

    from agf.app.maps import PALETTE, map_figure

    fig, named, artists = map_figure(Store.open(searchable), "agf:mfcc")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("principal component 1") and ax.get_ylabel().startswith("principal component 2")
    legends = [a for a in ax.get_children() if isinstance(a, matplotlib.legend.Legend)]
    assert sorted(legend.get_title().get_text() for legend in legends) == ["size", "top genre"]
    genres = next(legend for legend in legends if legend.get_title().get_text() == "top genre")
    colours = [matplotlib.colors.to_hex(h.get_facecolor()[0]) for h in genres.legend_handles]
    assert colours == [c.lower() for c in PALETTE[: len(colours)]]  # Okabe-Ito, in order
    assert 0 < len(named) <= 15 and artists == 19


def store_largest_of_each_genre(store: Store) -> list[str]:
    """Each top genre's artist with the most tracks (first by id on a tie), genres in name order."""
    rows = store.query("SELECT a.name, coalesce(mode(t.genre_top), 'unknown') AS genre, count(*) AS n, a.artist_id "
                       "FROM artists a JOIN tracks t USING (artist_id) GROUP BY a.artist_id, a.name").to_pylist()
    best = {}
    for r in sorted(rows, key=lambda r: (-r["n"], r["artist_id"])):
        best.setdefault(r["genre"], r)
    return [r["name"] for r in sorted(best.values(), key=lambda r: (-r["n"], r["artist_id"]))]


def test_an_ambiguous_name_lists_the_candidates(tmp_path):
    import pyarrow as pa

    store = Store.open(tmp_path / "s", create=True)
    with store.transaction() as tx:
        tx.append("artists", pa.table({"artist_id": pa.array([1, 2], pa.int64()), "source_id": ["x", "y"],
                                       "name": ["Nirvana", "nirvána"]}))
    with pytest.raises(AgfError, match=r"2 artists are named 'NIRVANA': Nirvana \(--id 1\), nirvána \(--id 2\)"):
        resolve_artist(store, "NIRVANA")


def test_an_index_older_than_its_data_is_stale_until_rebuilt(searchable, tmp_path, cli):
    root = tmp_path / "s"
    shutil.copytree(searchable, root)
    with Store.open(root, write=True) as store:
        build_factors(store, ["tags"], FactorParams(clusters=64, topics=6), quiet=True)
        assert all(s["stale"] for s in index_status(store))
    assert cli("index", "build", "--store", root, "--quiet").exit_code == 0
    assert not any(s["stale"] for s in index_status(Store.open(root)))
    drawn = cli("map", tmp_path / "map.png", "--space", "agf:mfcc", "--store", root, "--json")
    assert drawn.exit_code == 0 and (tmp_path / "map.png").stat().st_size > 10_000
    named = json.loads(drawn.stdout)["named"]  # names are placed only where they cover no other name
    largest = store_largest_of_each_genre(Store.open(root))
    assert 0 < len(named) <= 15 and named[: len(largest)] == largest


def _loaded_by_a_search(root) -> list[str]:
    import subprocess
    import sys

    probe = ("import sys\nfrom agf.cli import main\nsys.argv = ['agf', 'similar', '--id', '1', '--quiet', '--store', "
             f"{str(root)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "print([m for m in ('torch', 'librosa', 'matplotlib', 'sklearn', 'duckdb', 'pandas') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "rank" in result.stdout, result.stdout + result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_a_search_loads_no_torch_librosa_or_matplotlib_nor_a_query_engine(searchable):
    assert _loaded_by_a_search(searchable) == []


def test_a_search_reads_the_tables_again_once_they_changed_since_the_index_build(searchable, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(searchable, root)
    with Store.open(root, write=True) as store, store.transaction() as tx:
        tx.append("artists", pa.table({"artist_id": pa.array([10_001], pa.int64()), "source_id": ["new"], "name": ["New"]}))
    assert "duckdb" in _loaded_by_a_search(root)  # the kept directory is stale: the tables answer
