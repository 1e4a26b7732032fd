"""Soak: the reliability tests' loops, for longer, with figures.

For ``--minutes``: a writer (``agf ingest`` of a small demo corpus, one part per two files) is
SIGKILLed at random moments and restarted until it completes, then starts over on a new store;
meanwhile a reader thread queries the store without pause and checks that each answer is one
commit's (tracks = feature rows, no track without its artist); between kills, random and damaged
files are fed to ingest. Prints kills survived, queries answered, inputs tried and rows lost
(tracks a completed ingest should hold but does not), which must be 0, as must inconsistencies.

Usage: python bench/soak.py [--minutes 10] [--json]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from agf.errors import AgfError
from agf.ingest import collect, ingest
from agf.ingest.synth import write_corpus
from agf.store import Store

AGF = [sys.executable, "-m", "agf.cli"]
CONSISTENT = ("SELECT (SELECT count(*) FROM tracks) AS tracks, (SELECT count(*) FROM features_mfcc) AS mfcc, "
              "(SELECT count(*) FROM tracks WHERE artist_id NOT IN (SELECT artist_id FROM artists)) AS orphans")


class Reader(threading.Thread):
    """Queries whichever store is current, counting answers and inconsistent ones."""

    def __init__(self):
        super().__init__(daemon=True)
        self.root: Path | None = None
        self.answered = self.inconsistent = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            root = self.root
            if root is None or not (root / "store.json").exists():
                time.sleep(0.01)
                continue
            try:
                row = Store.open(root).sql(CONSISTENT).to_pylist()[0]
            except AgfError:
                continue  # a store being created has no tables yet
            self.answered += 1
            self.inconsistent += row["tracks"] != row["mfcc"] or row["orphans"] != 0


def fuzz_once(rng: np.random.Generator, good: bytes, folder: Path) -> bool:
    """Ingest one random or damaged file; True when it became a track or an error row."""
    data = rng.bytes(int(rng.integers(0, 4096))) if rng.random() < 0.5 else good[: int(rng.integers(0, len(good)))]
    path = folder / f"fuzz{rng.choice(['.mp3', '.flac', '.wav', '.ogg'])}"
    path.write_bytes(data)
    with Store.open(folder / "store", create=True) as store:
        summary = ingest(store, collect(folder)[0], features=("mfcc",), workers=1, quiet=True, force=True)
    return summary.ingested + summary.failed == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    kills = runs = inputs = bad_inputs = rows_lost = 0
    reader = Reader()
    reader.start()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_corpus(Path(tmp) / "corpus", genres=3, artists=3, tracks=3, seconds=6.0)
        good = next(manifest.parent.glob("audio/*/*.flac")).read_bytes()
        deadline = time.time() + 60 * args.minutes
        while time.time() < deadline:
            root = Path(tmp) / f"store{runs}"
            reader.root = root
            command = [*AGF, "ingest", str(manifest.parent), "--manifest", str(manifest), "--features", "mfcc",
                       "--workers", "1", "--part-size", "2", "--store", str(root), "--quiet"]
            while True:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                try:
                    process.wait(timeout=float(rng.uniform(1, 6)))
                    break
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    kills += 1
                for _ in range(5):
                    fuzz_folder = Path(tmp) / f"fuzz{inputs}"
                    fuzz_folder.mkdir()
                    inputs += 1
                    bad_inputs += not fuzz_once(rng, good, fuzz_folder)
            rows_lost += 27 - Store.open(root).count("tracks")
            runs += 1
            print(f"{runs} ingests completed, {kills} kills survived, {reader.answered} queries answered, "
                  f"{inputs} inputs tried", flush=True)
        reader.stop.set()
        reader.join()
    print(f"kills survived: {kills}; completed runs: {runs}; queries answered: {reader.answered}; "
          f"inconsistent answers: {reader.inconsistent}; inputs tried: {inputs} (unhandled: {bad_inputs}); "
          f"rows lost: {rows_lost}")
    if args.json:
        print(json.dumps({"kills": kills, "runs": runs, "queries": reader.answered, "inconsistent": reader.inconsistent,
                          "inputs": inputs, "unhandled_inputs": bad_inputs, "rows_lost": rows_lost}))


if __name__ == "__main__":
    main()
