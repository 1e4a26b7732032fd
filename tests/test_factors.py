"""Artist Group Factors on real audio: build, the soundtrack figure, update, show, determinism."""

import json
import re
import shutil

import numpy as np
import pytest

from agf.ingest import collect, ingest
from agf.models.factors import FactorParams, build_factors, current_factors, update_factors
from agf.store import Store


def _soundtrack_similarity(store: Store, source: str) -> tuple[float, float]:
    """Mean cosine similarity of AGFs between artists of the same soundtrack, and of different ones."""
    album = {r["artist_id"]: r["album"] for r in store.query(
        "SELECT artist_id, mode(album_id) AS album FROM tracks GROUP BY 1").to_pylist()}
    ids, matrix = current_factors(store, source)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    cosine = unit @ unit.T
    same, different = [], []
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            (same if album[ids[i]] == album[ids[j]] else different).append(cosine[i, j])
    return float(np.mean(same)), float(np.mean(different))


@pytest.fixture(scope="module")
def game_factors(game_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("factors") / "store"
    shutil.copytree(game_store, root)
    return root


def test_game_music_factors_group_artists_of_one_soundtrack(game_factors, cli):
    # 19 artists: the authors' K=2048 / 40 topics are sized for FMA's 16k, so use a small dictionary.
    out = cli("factors", "build", "--clusters", "64", "--topics", "8", "--store", game_factors, "--json", "--quiet")
    assert out.exit_code == 0, out.output
    summary = {s["source"]: s for s in json.loads(out.stdout)}
    assert set(summary) == {"mfcc", "dmfcc", "tags"}
    assert summary["mfcc"]["artists"] == 19 and summary["tags"]["artists"] == 16  # 3 artists have no genre
    store = Store.open(game_factors)
    for source in ("mfcc", "dmfcc", "tags"):
        same, different = _soundtrack_similarity(store, source)
        print(f"{source}: same soundtrack {same:.3f}, different soundtracks {different:.3f}")
        assert same > different, source
    sums = store.query("SELECT source, min(list_sum(factors)) AS lo, max(list_sum(factors)) AS hi FROM agf GROUP BY 1").to_pylist()
    assert all(abs(r["lo"] - 1) < 1e-4 and abs(r["hi"] - 1) < 1e-4 for r in sums)
    assert store.query("SELECT count(*) AS n FROM clusters WHERE source = 'mfcc'")["n"][0].as_py() == 128
    frames = store.query("SELECT sum(list_sum(counts)) AS n FROM clusters WHERE source = 'mfcc'")["n"][0].as_py()
    assert frames == 128 * (1 + 30 * 22050 // 1024)  # every frame of every track has its cluster


def test_factors_show_describes_each_strong_factor_by_its_typical_artists_and_words(game_factors, cli):
    if not Store.open(game_factors).count("agf"):
        cli("factors", "build", "--clusters", "64", "--topics", "8", "--store", game_factors, "--quiet")
    out = cli("factors", "show", "DOUG KAUFMAN", "--store", game_factors, "--json")
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["artist"] == "Doug Kaufman" and shown["tracks"] == 6
    assert list(dict.fromkeys(r["source"] for r in shown["factors"])) == ["mfcc", "dmfcc", "tags"]
    for row in shown["factors"]:  # each factor in words: its typical artists, and for tags the genres it stands for
        assert 0 < row["weight"] <= 1 and len(row["typical_artists"].split(", ")) == 3
        assert "Doug Kaufman" not in row["typical_artists"]
        assert bool(row["top_words"]) == (row["source"] == "tags")
    genres = {g["title"] for g in Store.open(game_factors).query("SELECT title FROM genres").to_pylist()}
    assert all(w in genres for r in shown["factors"] if r["source"] == "tags" for w in r["top_words"].split(", "))
    unknown = cli("factors", "show", "Doug Kaufmann", "--store", game_factors)
    assert unknown.exit_code == 1 and "did you mean 'Doug Kaufman'" in unknown.output


def test_building_is_deterministic_and_a_refit_keeps_the_old_version(small_store, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(small_store, root)
    params = FactorParams(clusters=16, topics=4, seed=3)
    with Store.open(root, write=True) as store:
        first = build_factors(store, ["mfcc", "tags"], params, quiet=True)
        again = build_factors(store, ["mfcc", "tags"], params, quiet=True)
        assert [s["model_id"] for s in first] == [s["model_id"] for s in again]
        assert store.count("agf") == 2 * 9  # same model: rows replaced, not duplicated
        refit = build_factors(store, ["mfcc"], FactorParams(clusters=16, topics=4, seed=4), quiet=True)
        assert refit[0]["model_id"] != first[0]["model_id"]
        versions = store.query("SELECT model_id, count(*) AS n FROM agf WHERE source = 'mfcc' GROUP BY 1").to_pylist()
        assert sorted(r["n"] for r in versions) == [9, 9]


def test_update_projects_new_artists_without_changing_existing_rows(small_corpus, tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(small_corpus.parent, manifest=small_corpus)
    # each genre's third artist comes later (candidates run genre, artist, track)
    later = [c for i, c in enumerate(candidates) if (i // 3) % 3 == 2]
    first = [c for c in candidates if c not in later]
    ingest(store, first, features=("mfcc",), workers=1, quiet=True)
    build_factors(store, ["mfcc", "dmfcc", "tags"], FactorParams(clusters=16, topics=4), quiet=True)
    before = store.query("SELECT * FROM agf ORDER BY source, artist_id").to_pylist()
    ingest(store, later, features=("mfcc",), workers=1, quiet=True)
    updated = update_factors(store, quiet=True)
    assert [(u["source"], u["new_tracks"], u["new_artists"]) for u in updated] == [
        ("mfcc", 9, 3), ("dmfcc", 9, 3), ("tags", 9, 3)]
    after = store.query("SELECT * FROM agf ORDER BY source, artist_id").to_pylist()
    assert [r for r in after if r["artist_id"] <= 6] == before  # the first ingest's 6 artists
    assert store.query("SELECT count(DISTINCT artist_id) AS n FROM agf")["n"][0].as_py() == 9
    assert update_factors(store, quiet=True)[0]["new_artists"] == 0


def test_too_few_artists_is_a_clear_error(small_store, tmp_path, cli):
    root = tmp_path / "s"
    shutil.copytree(small_store, root)
    out = cli("factors", "build", "--min-tracks", "10", "--source", "mfcc", "--store", root)
    assert out.exit_code == 1
    assert out.output.strip() == "Error: mfcc: fewer than 2 artists have 10+ tracks; lower --min-tracks"


def test_online_lda_driven_batch_by_batch_fits_what_sklearn_fit_does():
    from scipy import sparse

    from agf.models.group_factors import fit_lda, make_lda

    rng = np.random.default_rng(0)
    bags = sparse.random(4200, 60, density=0.2, format="csr", random_state=1, dtype=np.float32) * 5
    ours = fit_lda(bags, 6, 2, seed=3)
    reference = make_lda(6, 4200, 2, 3).fit(bags)
    assert ours.learning_method == "online" and ours.n_batch_iter_ == reference.n_batch_iter_
    np.testing.assert_allclose(ours.components_, reference.components_, rtol=1e-6)
    probe = bags[rng.choice(4200, 50, replace=False)]
    np.testing.assert_allclose(ours.transform(probe), reference.transform(probe), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("artists, method", [(300, "batch"), (4300, "online")])
def test_the_vectorised_lda_fits_what_scikit_learn_fits(artists, method):
    from scipy import sparse
    from sklearn.decomposition import LatentDirichletAllocation

    from agf.models.group_factors import make_lda

    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(256, 0.05), size=10)  # bags drawn from 10 topics over 256 words
    mixtures = rng.dirichlet(np.full(10, 0.3), size=artists)
    bags = sparse.csr_matrix(np.vstack([rng.multinomial(600, m @ topics) for m in mixtures]).astype(np.float32) / 6)
    ours = make_lda(12, artists, 4, seed=0).fit(bags)
    reference = LatentDirichletAllocation(**{k: v for k, v in ours.get_params().items()}).fit(bags)
    assert ours.learning_method == method
    np.testing.assert_allclose(ours.components_, reference.components_, rtol=1e-4, atol=1e-4 * reference.components_.max())
    np.testing.assert_allclose(ours.transform(bags[:100]), reference.transform(bags[:100]), atol=1e-3)
    # the perplexity too, with the same fitted topics: scikit-learn's float32 rounding apart
    reference.components_, reference.exp_dirichlet_component_ = ours.components_, ours.exp_dirichlet_component_
    assert ours.perplexity(bags) == pytest.approx(reference.perplexity(bags), rel=1e-5)
    _, perplexity = ours.factors_and_perplexity(bags, slice(0, artists // 2))
    assert perplexity == pytest.approx(reference.perplexity(bags[: artists // 2]), rel=1e-5)


def test_a_shared_dominant_topic_is_a_collapse_only_where_the_artists_words_differ():
    from scipy import sparse

    from agf.models.group_factors import diagnostics

    rng = np.random.default_rng(0)
    one_topic = np.tile([0.9, 0.05, 0.05], (8, 1)) + rng.uniform(0, 0.01, (8, 3))
    different_words = sparse.csr_matrix(rng.poisson(3, (8, 20)).astype(np.float32))
    same_words = sparse.csr_matrix(np.tile(different_words[:1].toarray(), (8, 1)))
    assert diagnostics(one_topic, different_words)["collapsed"]
    assert diagnostics(one_topic)["collapsed"]  # nothing known of the words: the topics alone decide
    checks = diagnostics(one_topic, same_words)
    assert not checks["collapsed"] and checks["same_words_share"] == 1.0 and checks["largest_topic_share"] == 1.0


def test_game_music_artists_sharing_one_genre_share_their_tags_factors_without_a_warning(game_store, tmp_path, cli):
    root = tmp_path / "s"
    shutil.copytree(game_store, root)
    out = cli("factors", "build", "--source", "tags", "--json", "--store", root)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)[0]
    assert summary["same_words_share"] == 0.625  # 10 of the 16 artists with a genre have only genre 1
    assert not summary["collapsed"] and "warning" not in out.stderr
    assert re.search(r"note: \d+% of artists share one dominant tags topic, as 62% have the very same words", out.stderr)


class _CountedReads(list):
    """Tracks' points that count how often each track is read, as the store's frame reader would be."""

    def __init__(self, tracks):
        super().__init__(tracks)
        self.reads = np.zeros(len(tracks), int)

    def __getitem__(self, i):
        self.reads[i] += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("n_tracks, points_per_track, tracks_sampled", [(8, 40, 8), (64, 40, 64), (200, 40, 64), (200, 1, 200)])
def test_the_kmeans_sample_reads_every_track_of_a_small_corpus_and_of_a_large_one_what_fills_it(
        n_tracks, points_per_track, tracks_sampled):
    from agf.models.group_factors import MIN_SAMPLED_POINTS, ArtistGroupFactors

    rng = np.random.default_rng(0)
    tracks = _CountedReads([rng.normal(size=(points_per_track, 3)).astype(np.float32) for _ in range(n_tracks)])
    estimator = ArtistGroupFactors(n_clusters=8, max_fit_points=64 * MIN_SAMPLED_POINTS, random_state=0)
    dictionary = estimator.fit_dictionary(tracks).dictionary_
    # the first track is read once more, to see whether the source has points or words
    assert int((tracks.reads[1:] > 0).sum()) + int(tracks.reads[0] > 1) == tracks_sampled
    # raw points (the authors' way) reach FAISS as they are; standardised ones are scaled
    points = tracks[0]
    assert dictionary.scaled(points) is points
    standardised = ArtistGroupFactors(n_clusters=8, standardise=True, random_state=0).fit_dictionary(tracks).dictionary_
    np.testing.assert_allclose(standardised.scaled(points), (points - standardised.mean) / standardised.scale)
