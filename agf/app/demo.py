"""``agf demo``: the whole pipeline on the generated demo corpus, ending with a report.

Stages: write the corpus -> ingest (with FMA's features) -> Artist Group Factors -> a CNN per
target -> embeddings -> transfer MLP -> evaluation on an artist-disjoint split -> similarity
indexes -> neighbours of two artists -> genre tags for held-out tracks and for a track of an artist never seen.
The factor dictionary and topics are sized for the corpus (the authors' K=2048 / 40 topics
are meant for FMA's 16,000 artists); training is shortened for the time budget.
"""

import os
from pathlib import Path

import soundfile as sf

from agf.ingest import collect, ingest
from agf.ingest.metadata import read_files
from agf.ingest.synth import GENRES, SR, ArtistVoice, render_track, write_corpus
from agf.models.data import assign_splits
from agf.app.evaluate import evaluate, summary_rows
from agf.models.factors import FactorParams, build_factors, default_sources
from agf.app.indexing import build_indexes
from agf.app.similar import Similar
from agf.app.tag import Tagger
from agf.models.train import TrainParams, all_tracks, train_cnn, trainable_targets
from agf.models.serving import embed
from agf.models.transfer import TransferParams, train_transfer
from agf.progress import say
from agf.store import Store
from agf.store.artists import resolve_artist

FULL = {"corpus": {"genres": 8, "artists": 8, "tracks": 5, "seconds": 30.0},
        "factors": FactorParams(clusters=256, topics=16), "train": TrainParams(epochs=6, crops_per_track=4)}
QUICK = {"corpus": {"genres": 8, "artists": 4, "tracks": 4, "seconds": 10.0},
         "factors": FactorParams(clusters=64, topics=8), "train": TrainParams(epochs=2, crops_per_track=4)}


def _unseen_track(folder: Path) -> Path:
    """A Jazz track by an artist who is not in the corpus, for ``agf tag``."""
    voice = ArtistVoice("Newcomer", 57, "dorian", 0.5, 0.2, 0.01, 1.0, 0.02, ("Swing",))
    path = folder / "new-music" / "newcomer.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        sf.write(path, render_track(GENRES[4], voice, [99], seconds=20.0), SR, subtype="PCM_16")
    return path


def _held_out_paths(store: Store) -> list[str]:
    """The first test-split track of each of three genres: audio the models never trained on."""
    splits = assign_splits(all_tracks(store), "auto", seed=0)
    rows = store.query("SELECT track_id, path, genre_top FROM tracks ORDER BY track_id").to_pylist()
    first: dict[str, str] = {}
    for r in rows:
        if splits[r["track_id"]] == "test":
            first.setdefault(r["genre_top"], r["path"])
    return list(first.values())[:3]


def demo_home() -> Path:
    """Where the demo lives by default: ``$XDG_DATA_HOME/agf/demo`` (``~/.local/share/agf/demo``),
    so that a demo leaves the folder it runs in as it was and two demos never collide there."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "agf" / "demo"


def run_demo(corpus: Path | None = None, store_dir: Path | None = None, quick: bool = False, workers: int | None = None,
             quiet: bool = False) -> dict:
    """Write the corpus, run every stage into ``store_dir``, and return the report.

    ``corpus`` and ``store_dir`` default to ``corpus/`` and ``store/`` under :func:`demo_home`;
    the evaluation report goes to the store's ``reports/evaluate/``.
    """
    corpus = Path(corpus or demo_home() / "corpus")
    store_dir = Path(store_dir or demo_home() / "store")
    plan = QUICK if quick else FULL
    shape = plan["corpus"]
    say(f"demo corpus: {shape['genres']} genres × {shape['artists']} artists × {shape['tracks']} tracks "
        f"of {shape['seconds']:.0f} s in {corpus}", quiet)
    manifest = write_corpus(corpus, **shape)
    report: dict = {}
    with Store.open(store_dir, create=True, write=True) as store:
        candidates, tree = collect(Path(corpus), manifest=manifest)
        summary = ingest(store, candidates, tree, features=("mfcc", "dmfcc", "fma"), workers=workers, quiet=quiet)
        report["ingest"] = [summary.as_dict()]  # a one-row table, like every other part of the report
        factors = build_factors(store, default_sources(store), plan["factors"], quiet=quiet)
        report["factors"] = [{k: f[k] for k in ("source", "words", "topics", "artists", "perplexity", "seconds")} for f in factors]
        report["training"] = [train_cnn(store, t, plan["train"], quiet=quiet) for t in trainable_targets(store)]
        embed(store, "all", quiet=quiet)
        report["training"].append(train_transfer(store, TransferParams(), quiet=quiet))
        evaluation = evaluate(store, out_dir=store.report_dir("evaluate"))
        report["genre_report"] = summary_rows(evaluation)
        say(f"evaluation: {evaluation['test_tracks']} test tracks of {evaluation['test_artists']} artists never seen "
            f"in training; report and confusion matrices in {store.report_dir('evaluate')}", quiet)
        files = [Path(p) for p in _held_out_paths(store)] + [_unseen_track(Path(corpus))]
        tagged = Tagger(store).tag(read_files(files), workers=workers, quiet=True)
        report["tagged (held-out tracks, then a Jazz track by a new artist)"] = [
            {"file": "/".join(Path(t["path"]).parts[-2:]), **{k: t[k] for k in ("genre", "probability", "top")}} for t in tagged]
        build_indexes(store, quiet=True)  # last: the indexes (and the directory a search reads) include what was tagged
        service = Similar(store)
        for name in ("Rock Artist 1", "Classical Artist 2"):
            neighbours = service.artists(resolve_artist(store, name), k=3, space="combined")
            report[f"similar to {name}"] = [{k: n[k] for k in ("rank", "artist", "similarity", "top_genre")} for n in neighbours]
    say(f"next: export AGF_STORE={store.root}, then try agf similar \"Jazz Artist 1\" or agf sql \"select * from "
        f"predictions limit 5\"", quiet)
    return report
