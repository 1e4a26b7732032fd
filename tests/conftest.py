"""Shared fixtures: small real corpora written once per session, and stores ingested from them."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agf.cli import app
from agf.ingest import collect, ingest
from agf.ingest.synth import write_corpus
from agf.models.factors import FactorParams, build_factors
from agf.models.train import TrainParams, train_cnn
from agf.models.serving import embed
from agf.models.transfer import TransferParams, train_transfer
from agf.store import Store

# The shared game-music clips, beside the checkout (../shared), or where AGF_GAME_MUSIC points.
GAME_MUSIC = Path(os.environ.get("AGF_GAME_MUSIC", Path(__file__).resolve().parents[2] / "shared" / "data" / "game-music"))


@pytest.fixture(scope="session")
def game_music() -> Path:
    if not (GAME_MUSIC / "manifest.csv").exists():
        pytest.skip("../shared/data/game-music is not here")
    return GAME_MUSIC


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """3 genres × 3 artists × 3 tracks of 6 s: the manifest's path."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), genres=3, artists=3, tracks=3, seconds=6.0)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, small_corpus) -> Path:
    """A store with the small corpus ingested (every feature set but essentia); read it, don't write it."""
    root = tmp_path_factory.mktemp("small") / "store"
    with Store.open(root, create=True) as store:
        candidates, tree = collect(small_corpus.parent, manifest=small_corpus)
        ingest(store, candidates, tree, features=("mfcc", "dmfcc", "fma"), workers=2, quiet=True)
    return root


@pytest.fixture(scope="session")
def game_store(tmp_path_factory, game_music) -> Path:
    """The 128 game-music clips ingested with the default feature sets; read it, don't write it."""
    root = tmp_path_factory.mktemp("game") / "store"
    result = CliRunner().invoke(
        app, ["ingest", "--manifest", str(game_music / "manifest.csv"), str(game_music), "--store", str(root), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def cli():
    """Run the agf CLI in-process: cli("sql", "select 1", "--store", dir) -> Result."""
    runner = CliRunner()

    def run(*args, env=None):
        return runner.invoke(app, [str(a) for a in args], env={**os.environ, **(env or {})})

    return run


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A store with a genre CNN, an AGF CNN and a transfer model, and the corpus they came from."""
    root = tmp_path_factory.mktemp("tag")
    manifest = write_corpus(root / "corpus", genres=3, artists=5, tracks=3, seconds=6.0, seed=2)
    with Store.open(root / "store", create=True) as store:
        candidates, _ = collect(manifest.parent, manifest=manifest)
        ingest(store, candidates, workers=2, quiet=True)
        build_factors(store, ["mfcc"], FactorParams(clusters=16, topics=4), quiet=True)
        for target in ("genre", "agf:mfcc"):
            train_cnn(store, target, TrainParams(epochs=1, crops_per_track=2), quiet=True)
        embed(store, quiet=True)
        model_id = train_transfer(store, TransferParams(epochs=20), quiet=True)["model_id"]
    return {"store": root / "store", "corpus": manifest.parent, "model_id": model_id}


@pytest.fixture(scope="session")
def searchable_trained(trained, tmp_path_factory) -> Path:
    """A folder with ``store`` (the trained store, its indexes built) and ``corpus/new-music`` (one
    file to tag); read it, don't write it (copy it first)."""
    import shutil

    from agf.app.indexing import build_indexes

    root = tmp_path_factory.mktemp("searchable")
    shutil.copytree(trained["store"], root / "store")
    with Store.open(root / "store", write=True) as store:
        build_indexes(store, quiet=True)
    (root / "corpus" / "new-music").mkdir(parents=True)
    shutil.copy(sorted(trained["corpus"].rglob("*.flac"))[0], root / "corpus" / "new-music" / "newcomer.flac")
    return root
