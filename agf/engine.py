"""Where parallel work runs: this machine's worker processes (``local``) or a Ray cluster (``ray``).

Two shapes of work, whatever the stage: :func:`map_tasks` maps a function over items (ingest
decodes and featurises files this way), and :func:`ray_actor_map` streams batches through a
pool of actors that each load their state once (CNN embedding on a cluster, one GPU per actor
when it has GPUs). The stage passes its function and state; the engine knows nothing of
audio, models or the store. Results stream back to the caller, which writes them into the
store the same way whichever engine computed them. On Ray, every node must reach the store's
path (a shared file system) to read frames and models.
"""

import functools
import os
import pickle
import signal
import socket
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from agf.errors import AgfError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """``name``: 'local' or 'ray'; ``address``: the Ray cluster's (default ``RAY_ADDRESS``, else a
    local cluster started for this process)."""

    name: str = "local"
    address: str | None = None

    def __post_init__(self):
        if self.name not in ENGINES:
            raise AgfError(f"unknown engine {self.name!r}; choose local or ray")

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


LOCAL = Engine()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS tells it (a container or
    ``taskset`` may allow fewer than the machine has), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.cache  # once per process
def keep_freed_memory() -> None:
    """Have this process's allocator keep the memory it frees for its next allocations instead of
    handing it back to the system, from now on.

    Array work allocates and frees the same large buffers over and over (a clip's samples and
    spectra, a batch's activations). glibc's malloc maps every block of 128 KB or more afresh
    and unmaps it when freed, so each use faults its pages in again: measured here, a quarter
    to a third of the CPU time of the CNNs' forward passes and an eighth of a file's features
    went to those faults. With blocks of up to 32 MiB served from the heap and the heap's free
    top not trimmed, the process stays at its peak size instead. glibc only; elsewhere, nothing
    changes.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its own allocator's policy stands
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def connect(engine: Engine):
    """The ``ray`` module, connected to the engine's cluster."""
    try:
        import ray
    except ImportError:
        raise AgfError("--engine ray needs Ray: pip install 'agf[ray]'") from None
    if not ray.is_initialized():
        address = engine.address or os.environ.get("RAY_ADDRESS")
        _check_reachable(address)
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AgfError(f"cannot reach the Ray cluster at {address}: {' '.join(str(exc).split())[:300]}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # agf draws its own progress, on stderr
    context.print_on_execution_start = False
    return ray


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on a cluster address nothing answers at (``ray.init`` would retry for minutes)."""
    if not address or address == "auto" or address.startswith("local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise AgfError(f"cannot reach the Ray cluster at {address}: {getattr(exc, 'strerror', None) or exc}") from None


# -- the two shapes of parallel work --------------------------------------------------------------

_SHARED: dict = {}  # in a worker process: the values every task of a map shares, received once
_SHARED_BY: list = [None]  # on Ray, which map's (its object refs) _SHARED holds: a worker serves several
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def map_tasks(engine: Engine, fn, items: list, *, shared: dict | None = None, workers: int | None = None,
              setup=None, batch_size: int = 4) -> Iterator:
    """``fn(item, **shared)`` for every item, in worker processes: results as they are handed back.

    Locally, a pool of ``workers`` processes (default: every core) that die with this one;
    results come back in the items' order, with at most four tasks per worker in flight. On
    Ray, tasks of ``batch_size`` items, one CPU each; results in completion order. Either way
    each worker receives ``shared`` once (not once per task), runs ``setup()`` once, and uses
    one BLAS thread: the workers are the parallelism. ``fn`` and ``setup`` must be module-level
    functions; one worker is a process too, so what a task does to its process (a crash, a
    time limit, output on file descriptor 2) stays out of this one.
    """
    if engine.is_ray:
        yield from _ray_map(engine, fn, items, shared or {}, setup, batch_size)
        return
    yield from _local_map(fn, items, shared or {}, workers or usable_cores(), setup)


def _local_map(fn, items: list, shared: dict, workers: int, setup) -> Iterator:
    if not items:
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_enter_local_worker, initargs=(shared, os.getpid(), setup))
    try:
        pending: deque = deque()
        todo = iter(items)
        while True:
            for item in todo:
                pending.append(pool.submit(_call, fn, item))
                if len(pending) >= 4 * workers:
                    break
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _enter_local_worker(shared: dict, parent: int, setup) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C; workers stop when it shuts the pool
    _enter_worker(shared, setup)


def _enter_worker(shared: dict, setup) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    keep_freed_memory()
    _SHARED.update(shared)
    if setup is not None:
        setup()


def _call(fn, item):
    return fn(item, **_SHARED)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker process when ``parent`` dies (Linux), so that a killed
    run leaves no worker running on as an orphan."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _apply(batch: dict, fn, shared_refs: dict, setup) -> dict:
    """Ray Data task: ``fn(item, **shared)`` on each item of a batch (results pickled, as their shapes vary)."""
    import ray

    key = tuple(sorted((name, ref.hex()) for name, ref in shared_refs.items()))
    if _SHARED_BY[0] != key:  # the first task of this map in this worker process
        _SHARED.clear()
        _enter_worker({name: ray.get(ref) for name, ref in shared_refs.items()}, setup)
        _SHARED_BY[0] = key
    results = [pickle.dumps(fn(pickle.loads(item), **_SHARED)) for item in batch["item"]]
    return {"result": np.array(results, dtype=object)}


def _ray_map(engine: Engine, fn, items: list, shared: dict, setup, batch_size: int) -> Iterator:
    ray = connect(engine)
    refs = {name: ray.put(value) for name, value in shared.items()}
    dataset = ray.data.from_items([{"item": pickle.dumps(item)} for item in items])
    dataset = dataset.map_batches(_apply, batch_size=batch_size, num_cpus=1,
                                  fn_kwargs={"fn": fn, "shared_refs": refs, "setup": setup})
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for result in batch["result"]:
            yield pickle.loads(result)


def ray_actor_map(engine: Engine, actor: type, args: tuple, items: list, *, batch_size: int = 64,
                  result_batch: int = 2048) -> Iterator[dict]:
    """Batches of ``items`` through a pool of ``actor(*args)`` instances, each built once.

    An actor is called with ``{"item": array of items}`` and returns a dict of equal-length
    arrays; those come back in batches of ``result_batch`` rows. The pool has one actor per
    GPU when the cluster has GPUs, else one per two CPUs.
    """
    ray = connect(engine)
    gpus = ray.cluster_resources().get("GPU", 0)
    actors = max(1, int(gpus) if gpus else int(ray.cluster_resources().get("CPU", 1)) // 2)
    dataset = ray.data.from_items([{"item": item} for item in items])
    dataset = dataset.map_batches(actor, fn_constructor_args=args, batch_size=batch_size, concurrency=actors,
                                  num_gpus=1 if gpus else 0, batch_format="numpy")
    yield from dataset.iter_batches(batch_size=result_batch, batch_format="numpy")
