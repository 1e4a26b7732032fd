"""Fidelity: agf's factors are the authors' factors, checked against their pipeline on real clips.

The reference (``tests/reference.py``) is the authors' scikit-learn pipeline; both run over the
same seeds on the game-music clips with the authors' K = 2048 and 40 topics, and agf's mean must
differ from the reference's by no more than the seeds' own variation allows (two standard errors
of the difference): in how many distinct dominant topics the 19 artists spread over, and in how
often an artist's 3 nearest artists come from its own soundtrack. ``bench/fidelity.py`` prints the same comparison, and the departures' effects.
"""

import shutil

import numpy as np
import pytest

from agf.models.factors import FactorParams, build_factors, current_factors, diagnostics
from agf.store import Store
from reference import reference_factors, soundtrack_precision, store_points

SEEDS = range(12)


@pytest.fixture(scope="module")
def factored(game_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity") / "store"
    shutil.copytree(game_store, root)
    return root


@pytest.mark.parametrize("source", ["mfcc", "dmfcc"])
def test_agf_factors_fall_within_the_authors_pipelines_seed_spread(factored, source):
    with Store.open(factored, write=True) as store:
        frames, artist_of, album_of = store_points(store, source)
        reference, ours = [], []
        for seed in SEEDS:
            artists, factors = reference_factors(frames, artist_of, 2048, 40, seed)
            reference.append({**diagnostics(factors), "p3": soundtrack_precision(artists, factors, album_of)})
            build_factors(store, [source], FactorParams(seed=seed), quiet=True)
            artists, factors = current_factors(store, source)
            ours.append({**diagnostics(factors), "p3": soundtrack_precision(artists, factors, album_of)})
    for metric in ("dominant_topics", "p3"):
        theirs, mine = np.array([r[metric] for r in reference]), np.array([o[metric] for o in ours])
        # two standard errors of the difference of the means: what the seeds' own variation allows
        allowed = 2 * np.sqrt(theirs.var(ddof=1) / len(theirs) + mine.var(ddof=1) / len(mine))
        print(f"{source} {metric}: agf {mine.mean():.3f} [{mine.min():.3f}, {mine.max():.3f}], reference "
              f"{theirs.mean():.3f} [{theirs.min():.3f}, {theirs.max():.3f}], allowed difference {allowed:.3f}")
        assert abs(mine.mean() - theirs.mean()) <= max(allowed, 1e-9), metric
    # no more artists merged into one than the reference's worst seed merges, give or take one pair
    assert np.mean([o["near_identical_pairs"] for o in ours]) <= max(r["near_identical_pairs"] for r in reference) + 1
