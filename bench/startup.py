"""Start-up: a cold `agf similar` and `agf sql` in fresh processes, against Python's own start.

A store is made with `agf demo --quick` (about a minute; or pass one with --store, with its
indexes built), then each command runs ``--runs`` times in a fresh interpreter, timed from
the outside; the baseline is ``python -c pass`` timed the same way, in the same run. The goal
(issue 20): a search answers in under 0.5 s beyond Python's own start.

Usage: python bench/startup.py [--store DIR] [--runs 7] [--json]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGF = [sys.executable, "-m", "agf.cli"]


def timed(command: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="A store with indexes (default: a fresh `agf demo --quick`).")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "store"
            subprocess.run([*AGF, "demo", "--quick", "--quiet", "--store", str(store), "--corpus", str(Path(tmp) / "corpus")],
                           check=True, capture_output=True)
        name = json.loads(subprocess.run([*AGF, "sql", "select name from artists order by artist_id limit 1", "--json",
                                          "--store", str(store)], check=True, capture_output=True, text=True).stdout)[0]["name"]
        figures = {
            "python_start_s": timed([sys.executable, "-c", "pass"], args.runs),
            "similar_s": timed([*AGF, "similar", name, "-k", "5", "--quiet", "--store", str(store)], args.runs),
            "sql_s": timed([*AGF, "sql", "select count(*) from tracks", "--store", str(store)], args.runs),
        }
    medians = {k: round(statistics.median(v), 3) for k, v in figures.items()}
    for key, values in figures.items():
        print(f"{key:16s} median {medians[key]:.3f} s  (min {min(values):.3f}, max {max(values):.3f}, {len(values)} runs)")
    beyond = medians["similar_s"] - medians["python_start_s"]
    print(f"a cold agf similar takes {beyond:.2f} s beyond Python's own start (goal: under 0.5 s)")
    if args.json:
        print(json.dumps({**medians, "similar_beyond_python_s": round(beyond, 3), "runs": args.runs}))


if __name__ == "__main__":
    main()
