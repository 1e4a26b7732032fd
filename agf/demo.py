"""``agf demo``: the whole pipeline on the generated demo corpus, ending with a report."""

from pathlib import Path

from agf.ingest import collect, ingest
from agf.ingest.synth import write_corpus
from agf.progress import say
from agf.store import Store

FULL = {"genres": 8, "artists": 8, "tracks": 5, "seconds": 30.0}
QUICK = {"genres": 8, "artists": 4, "tracks": 4, "seconds": 10.0}


def run_demo(corpus: Path, store_dir: Path, quick: bool = False, workers: int | None = None, quiet: bool = False) -> dict:
    """Write the corpus, run every stage into ``store_dir``, and return the report."""
    shape = QUICK if quick else FULL
    say(f"demo corpus: {shape['genres']} genres × {shape['artists']} artists × {shape['tracks']} tracks "
        f"of {shape['seconds']:.0f} s in {corpus}", quiet)
    manifest = write_corpus(corpus, **shape)
    report: dict = {}
    with Store.open(store_dir, create=True, write=True) as store:
        candidates, tree = collect(Path(corpus), manifest=manifest)
        summary = ingest(store, candidates, tree, features=("mfcc", "dmfcc", "fma"), workers=workers, quiet=quiet)
        report["ingest"] = summary.as_dict()
        report["tracks_by_genre"] = store.query(
            "SELECT genre_top AS genre, count(*) AS tracks, count(DISTINCT artist_id) AS artists "
            "FROM tracks GROUP BY 1 ORDER BY 1"
        ).to_pylist()
    return report
