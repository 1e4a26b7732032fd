"""End-to-end tagging speed: decode + features + every CNN + the transfer MLP, per track.

Models are trained briefly on a small demo corpus (their quality is beside the point here;
their shapes are the defaults: a genre CNN and one CNN per default AGF source, 256-d each,
and the transfer MLP over their concatenation). Then the game-music clips (real 30 s MP3s)
are tagged into copies of that store:

- ``batched``: ``agf tag``'s path: chunks of files ingested by every core, each CNN run over
  all the chunk's patches in large batches, one commit per chunk, at the default precision
  (the fastest of float32, bfloat16 and 8-bit integers as timed on this machine, a less exact
  one only when 5 % faster);
- ``batched fp32``: the same with ``--precision fp32``;
- ``one at a time``: the same work file by file (one worker, one forward per file's patches,
  two commits per file, float32), the straightforward loop.

Prints tracks/s, the CPU time per track (this process and its ingest workers: steadier than
tracks/s on a shared machine), the share of time per stage and peak memory; on a GPU the same
again there.
The feature code is warmed up first and its one-off cost printed apart: a fresh process pays
~2 s of lazy imports once, which a long run amortises (``agf tag`` pays it on its first chunk).

With ``--memory``, instead: peak memory of tagging 128 and then 1,024 distinct synthetic 10-s
files (chunks of 128), each in a fresh process: it should not grow with the number of files.

Usage: python bench/tag.py [--files 128] [--baseline-files 32] [--memory] [--json]
"""

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from agf.ingest import collect, ingest
from agf.ingest.metadata import read_files
from agf.ingest.pipeline import ExtractConfig, warm_up
from agf.ingest.synth import write_corpus
from agf.models.factors import FactorParams, build_factors, default_sources
from agf.app.tag import STAGES, Tagger
from agf.models.train import TrainParams, train_cnn
from agf.models.serving import embed
from agf.models.transfer import TransferParams, train_transfer
from agf.store import Store
from agf.store.store import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[1]
# the clips tagged: the game-music clips, or AGF_TAG_FOLDER's MP3s (bench/gpu.sh gives 1,000)
GAME_MUSIC = Path(os.environ.get("AGF_TAG_FOLDER") or ROOT.parent / "shared" / "data" / "game-music")


def trained_store(root: Path) -> Path:
    manifest = write_corpus(root / "corpus", genres=4, artists=4, tracks=3, seconds=8.0)
    with Store.open(root / "store", create=True) as store:
        candidates, tree = collect(manifest.parent, manifest=manifest)
        ingest(store, candidates, tree, quiet=True)
        factors = build_factors(store, default_sources(store), FactorParams(clusters=32, topics=8), quiet=True)
        for target in ["genre"] + [f"agf:{f['source']}" for f in factors]:
            train_cnn(store, target, TrainParams(epochs=1, crops_per_track=2), quiet=True)
        embed(store, quiet=True)
        train_transfer(store, TransferParams(epochs=10), quiet=True)
    return root / "store"


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the ingest workers), s."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def workers_reaped(timeout_s: float = 30.0) -> None:
    """Wait until the ingest workers have exited and been reaped, so that ``RUSAGE_CHILDREN``
    counts them: the pool shuts down without waiting for them (an unreaped worker's CPU time
    went uncounted in one run of 512 files: 88 ms a track instead of 105)."""
    deadline = time.monotonic() + timeout_s
    while multiprocessing.active_children() and time.monotonic() < deadline:  # reaps those that ended
        time.sleep(0.01)


def run(store_dir: Path, files: list[Path], chunk_size: int, workers: int, device: str, precision: str) -> dict:
    candidates = read_files(files)
    with Store.open(store_dir, write=True) as store:
        tagger = Tagger(store, device=device, precision=precision)
        started, cpu = time.perf_counter(), cpu_seconds()
        done, errors = 0, []
        for row in tagger.tag(candidates, chunk_size=chunk_size, workers=workers, quiet=True):  # streamed, as the CLI does
            done, errors = done + 1, errors + ([row["error"]] if row["error"] else [])
        seconds = time.perf_counter() - started
    workers_reaped()
    cpu = cpu_seconds() - cpu
    assert not errors, errors
    return {"files": done, "tracks_per_s": done / seconds, "seconds": seconds, "cnns": len(tagger.cnns),
            "cpu_ms_per_track": 1000 * cpu / done, "precision": tagger.precision,
            "shares": {s: tagger.seconds[s] / seconds for s in STAGES}}


def peak_mb() -> float:
    """Peak resident memory of this process or of its largest child (the ingest workers), MB."""
    return max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


def memory(tmp: Path, trained: Path, sizes=(128, 1024), chunk_size: int = 128) -> None:
    """Tag the first ``size`` of 1,024 distinct synthetic clips in a fresh process per size."""
    manifest = write_corpus(tmp / "many", genres=8, artists=16, tracks=8, seconds=10.0, seed=7)
    files = sorted(manifest.parent.rglob("*.flac"))
    for size in sizes:
        listing = tmp / f"files-{size}.txt"
        listing.write_text("\n".join(map(str, files[:size])))
        copy = tmp / f"memory-{size}"
        shutil.copytree(trained, copy)
        out = subprocess.run([sys.executable, __file__, "--measure", str(copy), str(listing), str(chunk_size)],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out.splitlines()[-1])
        print(f"memory: {result['files']:5d} files in chunks of {chunk_size}: peak {result['peak_mb']:.0f} MB, "
              f"{result['tracks_per_s']:.1f} tracks/s", flush=True)


def measure(store_dir: str, listing: str, chunk_size: str) -> None:
    files = [Path(line) for line in Path(listing).read_text().splitlines()]
    result = run(Path(store_dir), files, int(chunk_size), 0, "cpu", "auto")
    print(json.dumps({"files": result["files"], "tracks_per_s": result["tracks_per_s"], "peak_mb": peak_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=128)
    parser.add_argument("--baseline-files", type=int, default=32)
    parser.add_argument("--memory", action="store_true", help="Peak memory over 128 vs 1,024 files instead.")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # the child process of --memory
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    if args.measure:
        return measure(*args.measure)
    files = sorted(GAME_MUSIC.rglob("*.mp3"))[: args.files]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        warm_up(ExtractConfig.of(DEFAULT_CONFIG))
        print(f"feature code warm-up, once per process: {time.perf_counter() - started:.1f} s", flush=True)
        trained = trained_store(Path(tmp))
        if args.memory:
            return memory(Path(tmp), trained)
        plans = [("batched", files, 256, 0, "auto"), ("batched fp32", files, 256, 0, "fp32"),
                 ("one at a time", files[: args.baseline_files], 1, 1, "fp32")]
        figures = {}
        for device in devices:
            for label, chosen, chunk, workers, precision in plans:
                copy = Path(tmp) / f"{device}-{label.replace(' ', '-')}"
                shutil.copytree(trained, copy)
                result = run(copy, chosen, chunk, workers or None, device, precision)
                shares = ", ".join(f"{s} {100 * v:.0f}%" for s, v in result["shares"].items())
                print(f"{device:4s} {label:14s}: {result['tracks_per_s']:6.2f} tracks/s over {len(chosen)} clips, "
                      f"{result['cpu_ms_per_track']:.0f} ms of CPU a track ({result['cnns']} CNNs, "
                      f"{result['precision']}; {shares})", flush=True)
                figures[f"{device} {label}"] = result
    print(f"peak memory: {peak_mb():.0f} MB")
    if len(devices) == 1:
        print("no CUDA device: GPU figures not measured")
    if args.json:
        default = figures["cpu batched"]
        print(json.dumps({"tracks_per_s": round(default["tracks_per_s"], 2), "precision": default["precision"],
                          "cpu_ms_per_track": round(default["cpu_ms_per_track"], 1),
                          "tracks_per_s_fp32": round(figures["cpu batched fp32"]["tracks_per_s"], 2),
                          "baseline_one_at_a_time_tracks_per_s": round(figures["cpu one at a time"]["tracks_per_s"], 2),
                          "cuda_tracks_per_s": round(figures["cuda batched"]["tracks_per_s"], 2) if "cuda batched" in figures else None,
                          "files": len(files), "peak_mb": round(peak_mb())}))


if __name__ == "__main__":
    main()
