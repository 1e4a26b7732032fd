"""Where the parallel stages run: this machine (``local``) or a Ray cluster (``ray``).

With ``ray``, the file list becomes a Ray Dataset whose decoding and features run as CPU tasks
across the cluster, and CNN embedding runs in a pool of actors that each load the model once
(one GPU per actor when the cluster has GPUs). Results stream back to the driver, which writes
them into the store exactly as the local engine does — same parts, same atomic commits — so the
store reads the same whichever engine wrote it. Every node must reach the store's path (a
shared file system) to read frames and models.
"""

import os
import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


# -- ingest: decoding and features as Ray Data tasks ---------------------------------------------


def _extract_rows(batch: dict, config, check_known: bool, known_ref) -> dict:
    """Ray Data task: decode and featurise a batch of files (results pickled, as shapes vary)."""
    from agf.ingest import pipeline

    if not pipeline._KNOWN_SHA and known_ref is not None:
        import ray
        from threadpoolctl import threadpool_limits

        pipeline._KNOWN_SHA = ray.get(known_ref)
        threadpool_limits(1)  # one BLAS thread per task: the cluster's CPUs are the parallelism
    results = [pickle.dumps(pipeline._work(int(i), str(p), config, check_known))
               for i, p in zip(batch["index"], batch["path"])]
    return {"result": np.array(results, dtype=object)}


def ray_ingest_results(engine: Engine, paths: list[str], config, check_known: bool, known: frozenset) -> Iterator[tuple]:
    """The local pool's worker results, computed by Ray tasks, in completion order (so a driver
    commits as results stream in; track ids then follow that order, not the files')."""
    ray = connect(engine)
    known_ref = ray.put(known)
    dataset = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    # small batches: results reach the driver, and are committed, a few files at a time
    dataset = dataset.map_batches(_extract_rows, batch_size=4, fn_kwargs={
        "config": config, "check_known": check_known, "known_ref": known_ref}, num_cpus=1)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for result in batch["result"]:
            yield pickle.loads(result)


# -- embedding: an actor pool holding the model -------------------------------------------------


class _Embedder:
    """Ray actor: loads one CNN from the store once, then embeds batches of track ids."""

    def __init__(self, root: str, model_id: str, device: str, precision: str):
        from agf.models.train import load_cnn, pick_device
        from agf.store import Store

        self.device, self.precision = pick_device(device), precision
        self.model, self.spectra, _ = load_cnn(Store.open(Path(root)), model_id, self.device)

    def __call__(self, batch: dict) -> dict:
        from agf.models.train import clip_outputs

        ids = [int(t) for t in batch["track_id"]]
        vectors, _ = clip_outputs(self.model, self.spectra, ids, self.device, precision=self.precision)
        return {"track_id": np.asarray(ids, np.int64), "vector": vectors}


def ray_embeddings(engine: Engine, root: Path, model_id: str, track_ids: list[int], device: str = "auto",
                   precision: str = "auto", batch_size: int = 64) -> Iterator[tuple[list[int], np.ndarray]]:
    """Clip embeddings of ``track_ids`` by ``model_id``, from an actor pool: (ids, (n, 256)) chunks."""
    ray = connect(engine)
    gpus = ray.cluster_resources().get("GPU", 0)
    actors = max(1, int(gpus) if gpus else int(ray.cluster_resources().get("CPU", 1)) // 2)
    dataset = ray.data.from_items([{"track_id": t} for t in track_ids])
    dataset = dataset.map_batches(_Embedder, fn_constructor_args=(str(root), model_id, device, precision), batch_size=batch_size,
                                  concurrency=actors, num_gpus=1 if gpus else 0, batch_format="numpy")
    for batch in dataset.iter_batches(batch_size=2048, batch_format="numpy"):
        yield batch["track_id"].tolist(), np.asarray(batch["vector"], np.float32)
