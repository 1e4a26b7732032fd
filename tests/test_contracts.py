"""Shared contracts, checked over every entry of agf's registries (as scikit-learn's
``parametrize_with_checks`` does): every feature extractor, every factor source and every CNN
target passes the same checks, one test per entry, so one failure does not hide the rest."""

import numpy as np
import pytest

from agf.ingest.features import FEATURE_DIMS, FRAME_EXTRACTORS, VECTOR_EXTRACTORS, Spectra
from agf.models.factors import CNN_TARGETS, SOURCES, FactorParams, TrackPoints, build_factors, current_factors
from agf.models.group_factors import ArtistGroupFactors
from agf.models.train import all_tracks, targets_for
from agf.store import Store
from agf.store.store import DEFAULT_CONFIG

SR = 22050
LOGMEL = DEFAULT_CONFIG["frames"]["logmel"]


def _clip(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """A chord with a little noise: real spectral content at every frame."""
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (220, 277, 330)) + noise).astype(np.float32)


def _available(name: str) -> None:
    if name == "essentia":
        pytest.importorskip("essentia", reason="essentia is an optional extra (AGPL)")


@pytest.mark.parametrize("name", sorted(VECTOR_EXTRACTORS))
def test_a_feature_set_gives_one_finite_vector_of_its_size_and_leaves_its_input_alone(name):
    _available(name)
    y = _clip()
    before = y.copy()
    vector = VECTOR_EXTRACTORS[name](Spectra(y, SR), LOGMEL)
    again = VECTOR_EXTRACTORS[name](Spectra(y.copy(), SR), LOGMEL)
    assert vector.ndim == 1 and np.isfinite(vector).all()
    if name in FEATURE_DIMS:
        assert vector.shape == (FEATURE_DIMS[name],)
    np.testing.assert_array_equal(vector, again)  # a function of the samples alone
    np.testing.assert_array_equal(y, before)


@pytest.mark.parametrize("kind", sorted(FRAME_EXTRACTORS))
def test_a_frame_kind_gives_one_row_per_hop_and_its_bins(kind):
    params = DEFAULT_CONFIG["frames"][kind]
    y = _clip(seconds=3.0)
    frames = FRAME_EXTRACTORS[kind](Spectra(y, SR), **params)
    bins = params.get("n_mfcc", params["n_mels"])
    assert frames.shape == (1 + len(y) // params["hop_length"], bins)
    assert np.isfinite(frames).all()
    longer = FRAME_EXTRACTORS[kind](Spectra(_clip(seconds=6.0), SR), **params)
    assert len(longer) > len(frames)


@pytest.fixture(scope="module")
def factored(small_store, tmp_path_factory):
    """The small store with small factors of every source it supports (essentia aside)."""
    import shutil

    root = tmp_path_factory.mktemp("contracts") / "store"
    shutil.copytree(small_store, root)
    with Store.open(root, write=True) as store:
        build_factors(store, [s for s in SOURCES if s != "essentia"], FactorParams(clusters=8, topics=3), quiet=True)
    return root


@pytest.mark.parametrize("source", SOURCES)
def test_a_factor_source_gives_every_artist_a_topic_mixture_reproducibly(factored, source):
    _available(source)
    with Store.open(factored) as store:
        ids, factors = current_factors(store, source)
        artists = store.count("artists")
        tracks = store.query("SELECT track_id, artist_id, genres, tags FROM tracks ORDER BY track_id").to_pylist()
        points = TrackPoints.usable(store, source, tracks)
        refit = FactorParams(clusters=8, topics=3).estimator(source).fit(points, points.artists)
    assert len(ids) == artists and factors.shape == (artists, 3)
    np.testing.assert_allclose(factors.sum(axis=1), 1, atol=1e-4)
    assert (factors >= 0).all()
    np.testing.assert_allclose(refit.factors_, factors, atol=1e-5)  # the same seed, the same factors


@pytest.mark.parametrize("source", SOURCES)
def test_a_source_s_estimator_projects_its_own_artists_where_it_placed_them(factored, source):
    _available(source)
    with Store.open(factored) as store:
        tracks = store.query("SELECT track_id, artist_id, genres, tags FROM tracks ORDER BY track_id").to_pylist()
        points = TrackPoints.usable(store, source, tracks)
    estimator = FactorParams(clusters=8, topics=3).estimator(source).fit(points, points.artists)
    artist_ids, factors = estimator.transform(points, points.artists)
    np.testing.assert_array_equal(artist_ids, estimator.artist_ids_)
    np.testing.assert_allclose(factors, estimator.factors_, atol=1e-6)


def test_the_estimator_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="3 tracks of points but 2 artists"):
        ArtistGroupFactors().fit([np.zeros((4, 2))] * 3, [1, 2])


@pytest.mark.parametrize("target", CNN_TARGETS)
def test_a_cnn_target_gives_each_labelled_track_a_distribution_over_its_classes(factored, target):
    _available(target.removeprefix("agf:"))
    with Store.open(factored) as store:
        tracks = all_tracks(store)
        labelled, y, classes = targets_for(store, target, tracks)
    assert len(labelled) == len(tracks) and y.shape == (len(tracks), len(classes))
    np.testing.assert_allclose(y.sum(axis=1), 1, atol=1e-4)
    assert (y >= 0).all() and y.dtype == np.float32
