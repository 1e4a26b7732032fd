"""Ingest throughput on the game-music clips: clips/s and peak memory, against FMA's features.py.

Runs each configuration in a fresh process (so peak memory is its own) over the same files:

- ``default``: ``agf ingest`` with the default feature sets and frame matrices, all workers;
- ``default-1w``: the same with one worker (workers' scaling is default / default-1w);
- ``fma``: ``agf ingest --features fma``, all workers; ``fma-1w`` the same on one worker;
- ``features.py``: FMA's own feature extraction (mdeff/fma ``features.py``: one CQT and one STFT
  per clip, every feature derived from them) in one process over the same decoded clips: the
  real peer of ``fma-1w``, core for core;
- ``fma-vector``: agf's computation of the same 518 features alone, the same loop over the same
  decoded clips as ``features.py`` (no hashing, no frame matrices, no store): like for like;
- with ``--engine ray``: ``default`` next to ``default-ray``, the same ingest with decoding and
  features as Ray Data tasks on a local Ray cluster of every core.

Usage: python bench/ingest.py [--data ../shared/data/game-music] [--limit N] [--engine ray] [--json]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "game-music"


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run_one(config: str, data: Path, limit: int) -> dict:
    from agf.engine import Engine, connect
    from agf.ingest import collect, ingest
    from agf.ingest.audio import load_clip
    from agf.ingest.features import Spectra, fma_features_reference, fma_vector
    from agf.store import Store

    candidates, _ = collect(data, manifest=data / "manifest.csv")
    candidates = candidates[:limit]
    # Warm librosa's numba caches outside the timed region.
    y, _, _ = load_clip(candidates[0].path, 22050, 5.0)
    fma_features_reference(y, 22050)
    started = time.perf_counter()
    if config in ("features.py", "fma-vector"):
        features_of = fma_features_reference if config == "features.py" else lambda y, sr: fma_vector(Spectra(y, sr))
        for c in candidates:
            y, _, _ = load_clip(c.path, 22050, 30.0)
            features_of(y, 22050)
    else:
        features = ("fma",) if config.startswith("fma") else ("mfcc", "dmfcc")
        workers = 1 if config.endswith("-1w") else None
        engine = Engine("ray" if config.endswith("-ray") else "local")
        if engine.is_ray:  # the cluster's start and its workers' imports are timed apart
            connect(engine)
            with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "s", create=True) as store:
                ingest(store, candidates[:8], features=features, engine=engine, quiet=True)
            startup, started = time.perf_counter() - started, time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "s", create=True) as store:
            summary = ingest(store, candidates, features=features, workers=workers, engine=engine, quiet=True)
            assert summary.ingested == len(candidates), summary
    seconds = time.perf_counter() - started
    return {"config": config, "clips": len(candidates), "seconds": round(seconds, 2),
            "clips_per_s": round(len(candidates) / seconds, 2), "peak_mb": round(_peak_mb()),
            "note": f"(Ray's local cluster started and warmed on 8 clips in {startup:.1f} s, not counted)" if config.endswith("-ray") else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: the default features on a local Ray cluster of every core, next to the local engine")
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.limit)))
        return
    results = {}
    configs = ("default", "default-ray") if args.engine == "ray" else ("default", "default-1w", "fma", "fma-1w",
                                                                         "features.py", "fma-vector")
    for config in configs:
        out = subprocess.run([sys.executable, __file__, "--one", config, "--data", str(args.data), "--limit", str(args.limit)],
                             check=True, capture_output=True, text=True)
        results[config] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[config]
        print(f"{config:12s} {r['clips']:4d} clips  {r['seconds']:7.2f} s  {r['clips_per_s']:6.2f} clips/s  "
              f"peak {r['peak_mb']:5d} MB {r['note']}", flush=True)
    if args.engine == "ray":
        print(f"ray vs local engine: {results['default-ray']['clips_per_s'] / results['default']['clips_per_s']:.2f}x")
        return
    print(f"workers scaling (default vs one worker): {results['default']['clips_per_s'] / results['default-1w']['clips_per_s']:.2f}x")
    figures = {"fma_1w_vs_features_py": results["fma-1w"]["clips_per_s"] / results["features.py"]["clips_per_s"],
               "fma_vector_vs_features_py": results["fma-vector"]["clips_per_s"] / results["features.py"]["clips_per_s"],
               "workers_scaling": results["default"]["clips_per_s"] / results["default-1w"]["clips_per_s"]}
    print(f"fma through agf on one worker vs FMA's features.py in one process: {figures['fma_1w_vs_features_py']:.2f}x "
          f"(the same clips and 518 outputs; agf also hashes the file and computes and stores its frame matrices)")
    print(f"the 518 features alone, decoding included on both sides: {figures['fma_vector_vs_features_py']:.2f}x")
    if args.json:
        print(json.dumps({"clips_per_s": {c: r["clips_per_s"] for c, r in results.items()},
                          "peak_mb": {c: r["peak_mb"] for c, r in results.items()},
                          **{k: round(v, 3) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
