"""Fidelity of the factors: agf's against the authors' scikit-learn pipeline on real clips.

On a store of real music (by default the game-music clips, ingested into a temporary store),
for each frame source (mfcc, dmfcc) and several seeds, factors are built by

- ``reference``: the authors' pipeline (``tests/reference.py``: MiniBatchKMeans over raw frames,
  artist bags divided by track counts, scikit-learn's LDA), and
- each agf configuration: the defaults, and each departure the method document discusses
  (standardised frames, ``--min-tracks 2``),

and scored by what an artist's factors are for: how many distinct dominant topics the artists
spread over, how many artist pairs have near-identical factors (cosine above 0.9999), and the
same-soundtrack precision of each artist's 3 nearest artists (albums stand for soundtracks).

Usage: python bench/fidelity.py [--store DIR] [--seeds 5] [--clusters 2048] [--topics 40] [--json]
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import reference_factors, soundtrack_precision, store_points  # noqa: E402

CONFIGS = {
    "agf defaults": {},
    "agf, standardised frames": {"standardise": True},
    "agf, --min-tracks 2": {"min_tracks": 2},
}


METRICS = ("dominant_topics", "near_identical_pairs", "soundtrack_precision_at_3")


def spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 3), "min": round(float(min(values)), 3),
            "max": round(float(max(values)), 3)}


def score(artists: list[int], factors: np.ndarray, album_of: dict[int, int]) -> dict:
    from agf.models.factors import diagnostics

    return {**diagnostics(factors), "soundtrack_precision_at_3": soundtrack_precision(artists, factors, album_of)}


def _ingested(store_dir: Path | None, tmp: Path) -> Path:
    if store_dir:
        return store_dir
    from agf.cli import app
    from typer.testing import CliRunner

    music = Path(__file__).resolve().parents[2] / "shared" / "data" / "game-music"
    result = CliRunner().invoke(app, ["ingest", "--manifest", str(music / "manifest.csv"), str(music), "--store",
                                      str(tmp / "ingested"), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp / "ingested"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="A store of real music (default: the game-music clips)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=2048)
    parser.add_argument("--topics", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures")
    args = parser.parse_args()

    from agf.models.factors import FactorParams, build_factors, current_factors
    from agf.store import Store

    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        source_store = _ingested(args.store, Path(tmp))
        work = Path(tmp) / "work"
        shutil.copytree(source_store, work)
        with Store.open(work, write=True) as store:
            for source in ("mfcc", "dmfcc"):
                points, artist_of, album_of = store_points(store, source)
                runs: dict[str, list[dict]] = {"reference (authors' scikit-learn)": []}
                for seed in range(args.seeds):
                    artists, factors = reference_factors(points, artist_of, args.clusters, args.topics, seed)
                    runs["reference (authors' scikit-learn)"].append(score(artists, factors, album_of))
                    for name, options in CONFIGS.items():
                        params = FactorParams(clusters=args.clusters, topics=args.topics, seed=seed, **options)
                        build_factors(store, [source], params, quiet=True)
                        artists, factors = current_factors(store, source)
                        runs.setdefault(name, []).append(score(artists, factors, album_of))
                figures[source] = {name: {key: spread([r[key] for r in rows]) for key in METRICS}
                                   for name, rows in runs.items()}
    for source, rows in figures.items():
        print(f"\n{source} (K={args.clusters}, {args.topics} topics; mean [min, max] over {args.seeds} seeds)")
        print(f"{'pipeline':36} " + " ".join(f"{m.replace('_', ' '):>26}" for m in METRICS))
        for name, row in rows.items():
            print(f"{name:36} " + " ".join(f"{row[m]['mean']:>9.3f} [{row[m]['min']:.3f}, {row[m]['max']:.3f}]"
                                            .rjust(26) for m in METRICS))
    if args.json:
        print(json.dumps({"clusters": args.clusters, "topics": args.topics, "seeds": args.seeds, "figures": figures}))


if __name__ == "__main__":
    main()
