"""FAISS indexes over normalised vectors, with ids mapped to artist_id/track_id, saved with a sidecar.

Exact search (a flat inner-product index: cosine similarity on normalised vectors) up to
``EXACT_LIMIT`` vectors; above it an IVF index whose ``nprobe`` is raised at build time until
recall@10 against the exact search reaches ``target_recall``. The GPU is used when this faiss
build has one (``StandardGpuResources`` and a visible device); indexes are always saved from
the CPU, so a saved index is the same file on every machine.
"""

import hashlib
import os
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from agf.errors import AgfError
from agf.store.parts import commit_lock
from agf.store.paths import inside, read_store_file
from agf.store.store import Store, now_utc

EXACT_LIMIT = 100_000


def gpu_available() -> bool:
    """Whether this faiss build has GPU support and sees a GPU (faiss-cpu never does), unless
    ``AGF_FAISS_CPU=1`` asks for the CPU (to measure both on one machine)."""
    if os.environ.get("AGF_FAISS_CPU") == "1":
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1)


@dataclass
class VectorIndex:
    """A loaded index and its sidecar (space, level, metric, dim, count, kind, recall, source version)."""

    index: faiss.Index
    meta: dict
    _gpu: object = field(default=None, repr=False)

    @property
    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map)

    def vector(self, item_id: int) -> np.ndarray:
        return self.index.reconstruct(int(item_id))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids), each (n_queries, k); ``allowed`` restricts the ids.

        With a filter the search itself skips other ids, so k results come back when k exist;
        missing results have id -1.
        """
        queries = normalise(np.atleast_2d(queries))
        k = max(1, min(k, self.index.ntotal))
        if allowed is None:
            searcher = self._gpu or self.index
            return searcher.search(queries, k)
        selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        return self.index.search(queries, k, params=params)


def _exact(d: int) -> faiss.Index:
    return faiss.IndexFlatIP(d)


def build_index(vectors: np.ndarray, ids: np.ndarray, space: str, level: str, source_version: str,
                target_recall: float = 0.95, exact_limit: int = EXACT_LIMIT, seed: int = 0) -> VectorIndex:
    """Build the index of ``vectors`` (n, d) with ``ids`` (n,) int64."""
    started = time.perf_counter()
    x = normalise(vectors)
    n, d = x.shape
    ids = np.asarray(ids, dtype=np.int64)
    device = "gpu" if gpu_available() else "cpu"
    meta = {"space": space, "level": level, "metric": "inner_product (cosine on normalised vectors)", "dim": d,
            "count": n, "source_version": source_version, "device": device}
    if n <= exact_limit:
        inner = _exact(d)
        meta.update(kind="flat (exact)", recall_at_10=1.0)
    else:
        nlist = max(16, int(np.sqrt(n)))
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = x[rng.choice(n, min(n, 64 * nlist), replace=False)]
        if device == "gpu":  # train the coarse quantizer on the GPU, keep the index on the CPU
            clustering = faiss.Clustering(d, nlist)
            clustering.seed = seed
            gpu_quantizer = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(d))
            clustering.train(train, gpu_quantizer)
            inner.quantizer.add(faiss.vector_to_array(clustering.centroids).reshape(nlist, d))
            inner.is_trained = True
        else:
            inner.cp.seed = seed
            inner.train(train)
        meta.update(kind=f"ivf{nlist}")
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(x, ids)
    if isinstance(inner, faiss.IndexIVF):
        inner.make_direct_map()
        meta.update(_tune_nprobe(index, inner, x, target_recall, seed))
    meta.update(build_seconds=round(time.perf_counter() - started, 3), built_at=now_utc().isoformat())
    return VectorIndex(index, meta)


def _tune_nprobe(index, inner, x: np.ndarray, target: float, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    queries = x[rng.choice(len(x), min(200, len(x)), replace=False)]
    exact = _exact(x.shape[1])
    exact.add(x)
    _, truth = exact.search(queries, 10)
    truth = faiss.vector_to_array(index.id_map)[truth]
    recall, nprobe = 0.0, 1
    while nprobe <= inner.nlist:
        inner.nprobe = nprobe
        _, found = index.search(queries, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
        if recall >= target:
            break
        nprobe *= 2
    return {"nprobe": inner.nprobe, "recall_at_10": round(recall, 4)}


_NAME = re.compile(r"[a-z]+-[A-Za-z0-9_]+")


def index_path(store: Store, space: str, level: str) -> Path:
    """``indexes/<level>-<space>.faiss``; a name that could leave the folder is refused."""
    name = f"{level}-{space.replace(':', '_')}"
    if not _NAME.fullmatch(name):
        raise AgfError(f"{space!r} is not a space name (agf:<source>, emb:<target> or combined)")
    return inside(store.root, f"indexes/{name}.faiss", f"the {level} index of {space}")


def save_index(store: Store, vi: VectorIndex) -> Path:
    """Write the index and its JSON sidecar (temporary names, then renamed)."""
    path = index_path(store, vi.meta["space"], vi.meta["level"])
    path.parent.mkdir(exist_ok=True)
    inside(store.root, "indexes", "the index folder")
    tmp = path.with_suffix(".faiss.tmp")
    faiss.write_index(vi.index, str(tmp))
    data = tmp.read_bytes()
    meta = {**vi.meta, "sha256": hashlib.sha256(data).hexdigest()}
    sidecar = path.with_suffix(".json")
    sidecar.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=2))
    with commit_lock(store.root, exclusive=True, wait=store.wait):  # a reader sees the old pair or the new pair
        tmp.replace(path)
        sidecar.with_suffix(".json.tmp").replace(sidecar)
    vi.meta = meta
    return path


_LOADED: dict[tuple[str, float], VectorIndex] = {}


def load_index(store: Store, space: str, level: str) -> VectorIndex:
    """The saved index of ``space`` (cached per process while the file is unchanged)."""
    path = index_path(store, space, level)
    if not path.exists():
        raise AgfError(f"no {level} index for space {space!r}: run `agf index build`")
    with store.snapshot():  # the index file and its sidecar as one commit left them
        key = (str(path), path.stat().st_mtime_ns)
        if key in _LOADED:
            return _LOADED[key]
        meta = read_sidecar(store, path.with_suffix(".json"))
        data = read_store_file(store.root, path.relative_to(store.root), f"the {level} index of {space}")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise AgfError(f"index file {path} does not match the sha256 in its sidecar; it was changed or "
                       f"damaged: run `agf index build`")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise AgfError(f"index file {path} cannot be read by faiss ({str(exc).splitlines()[0]}): run `agf index build`") from None
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = meta.get("nprobe", inner.nprobe)
    gpu = None
    if gpu_available() and meta["kind"].startswith("flat"):
        gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    _LOADED[key] = VectorIndex(index, meta, gpu)
    return _LOADED[key]


_SIDECAR = {"space": str, "level": str, "kind": str, "sha256": str, "source_version": str, "built_at": str,
            "count": int, "dim": int, "recall_at_10": (int, float)}


def read_sidecar(store: Store, path: Path) -> dict:
    """An index's JSON sidecar, read as a regular file inside the store."""
    try:
        meta = json.loads(read_store_file(store.root, path.relative_to(store.root), "an index sidecar"))
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), kind) for k, kind in _SIDECAR.items()):
        raise AgfError(f"index sidecar {path} is damaged: run `agf index build`")
    return meta


def list_indexes(store: Store) -> list[dict]:
    folder = inside(store.root, "indexes", "the index folder")
    return [read_sidecar(store, p) for p in sorted(folder.glob("*.json"))]
