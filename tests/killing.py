"""Running agf in a subprocess and killing it at random moments: the helpers of the trust tests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agf.store import SCHEMAS, Store

AGF = [sys.executable, "-m", "agf.cli"]
KILLS = 3


def agf(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([*AGF, *map(str, args)], capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def every_table_reads(root: Path) -> dict[str, int]:
    """Open the store as a reader and count every table through SQL and through the part footers."""
    with Store.open(root) as store:
        counts = {name: store.sql(f"SELECT count(*) AS n FROM {name}")["n"][0].as_py() for name in SCHEMAS}
        assert counts == {name: store.count(name) for name in SCHEMAS}
    return counts


def kill_at_random_points(args: list, root: Path, seconds: float, seed: int) -> list[dict[str, int]]:
    """Start ``agf *args`` KILLS times, SIGKILL it after a random fraction of ``seconds``; the
    table counts after each kill."""
    rng = np.random.default_rng(seed)
    after = []
    for delay in sorted(rng.uniform(0.3, 1.0, KILLS) * seconds):
        process = _start(args)
        time.sleep(delay)
        _kill(process)
        after.append(every_table_reads(root))
    return after


def kill_after_each_new_commit(args: list, root: Path, table: str = "tracks", timeout: float = 120) -> list[dict[str, int]]:
    """Start ``agf *args`` KILLS times and SIGKILL it as soon as ``table`` has grown (so every kill
    lands mid-run, however slow the machine); the table counts after each kill."""
    after = []
    for _ in range(KILLS):
        before = every_table_reads(root)[table] if (root / "store.json").exists() else 0
        process = _start(args)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if (root / "store.json").exists() and _count(root, table) > before:
                break
            time.sleep(0.05)
        _kill(process)
        after.append(every_table_reads(root))
    return after


def _start(args: list) -> subprocess.Popen:
    """``agf *args`` in a process group of its own, so that a kill takes its workers too."""
    return subprocess.Popen([*AGF, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the agf process alone, as ``kill -9 PID`` does, and check that none of its worker
    processes outlives it; then clear its process group whatever happened."""
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it finished first
    process.wait()
    try:
        deadline = time.monotonic() + 10
        while survivors(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not survivors(process.pid), f"processes outlived the killed agf: {survivors(process.pid)}"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def survivors(group: int) -> list[int]:
    """Live (not zombie) processes of process group ``group``, from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _count(root: Path, table: str) -> int:
    with Store.open(root) as store:  # a reader beside the running writer
        return store.count(table)


def timed(args: list) -> float:
    started = time.perf_counter()
    agf(*args)
    return time.perf_counter() - started
