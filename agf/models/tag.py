"""``agf tag``: batch genre tagging of new music with the stored CNNs and transfer classifier.

Files stream through in chunks: each chunk is ingested (stored audio is not recomputed),
embedded by every CNN the transfer model reads, classified, and committed before the next one
starts, so memory stays bounded by the chunk and an interruption keeps every finished chunk.
"""

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from agf.errors import AgfError
from agf.ingest import Candidate, ingest
from agf.engine import LOCAL, Engine
from agf.models.train import (embedding_chunks, embedding_rows, load_cnn, pick_device, prediction_rows,
                              run_precision, unembedded)
from agf.models.transfer import load_transfer, transfer_probabilities
from agf.progress import progress_bar
from agf.store import Store
from agf.store.models import latest_model
from agf.store.paths import path_text

STAGES = ("ingest", "embed", "classify", "write")


class Tagger:
    """A transfer model and its CNNs, loaded once, tagging chunks of files.

    ``seconds`` accumulates the time spent per stage (:data:`STAGES`).
    """

    def __init__(self, store: Store, model_id: str | None = None, device: str = "auto", engine: Engine = LOCAL,
                 precision: str = "auto"):
        self.store = store
        self.model_id = model_id or _latest_transfer(store)
        try:
            self.transfer = load_transfer(store, self.model_id)
        except AgfError as exc:
            raise AgfError(f"cannot load transfer model {self.model_id}: {exc}") from None
        self.classes = self.transfer[1]["classes"]
        self.device, self.engine = device, engine
        self.precision = run_precision(device, precision, engine)
        # Locally the CNNs are loaded once here; on Ray, each actor loads its own.
        self.cnns = {m: None if engine.is_ray else load_cnn(store, m, pick_device(device))[:2]
                     for m in self.transfer[1]["models"]}
        self.seconds: dict[str, float] = defaultdict(float)

    def tag(self, candidates: Iterable[Candidate], top: int = 3, workers: int | None = None, chunk_size: int = 256,
            total: int | None = None, quiet: bool = False) -> Iterator[dict]:
        """Tag ``candidates``; yields one row per file: its top genres, or why it has none."""
        with progress_bar(total, "tag", "files", quiet) as bar:
            chunk: list[Candidate] = []
            for candidate in candidates:
                chunk.append(candidate)
                if len(chunk) == chunk_size:
                    yield from self._chunk(chunk, top, workers)
                    bar.advance(len(chunk))
                    chunk = []
            if chunk:
                yield from self._chunk(chunk, top, workers)
                bar.advance(len(chunk))

    def _chunk(self, chunk: list[Candidate], top: int, workers: int | None) -> list[dict]:
        started = time.perf_counter()
        summary = ingest(self.store, chunk, workers=workers, engine=self.engine, quiet=True)
        self._lap("ingest", started)
        ids = list(dict.fromkeys(summary.track_ids.values()))
        probabilities = dict(zip(ids, self._predict(ids))) if ids else {}
        rows = []
        for index, c in enumerate(chunk):
            track_id = summary.track_ids.get(index)
            if track_id is None:
                rows.append({"path": path_text(c.path), "track_id": None, "genre": None, "probability": None, "top": None,
                             "error": summary.errors.get(index, "not ingested")})
                continue
            p = probabilities[track_id]
            order = p.argsort()[::-1][:top]
            rows.append({"path": path_text(c.path), "track_id": track_id, "genre": self.classes[order[0]],
                         "probability": round(float(p[order[0]]), 4),
                         "top": ", ".join(f"{self.classes[i]} {p[i]:.2f}" for i in order), "error": None})
        return rows

    def _predict(self, ids: list[int]) -> np.ndarray:
        """Embed ``ids`` where a CNN has not yet, classify them, store both: (n, genres) probabilities."""
        started = time.perf_counter()
        tables = [embedding_rows(model_id, chunk_ids, vectors) for model_id, loaded in self.cnns.items()
                  for chunk_ids, vectors in embedding_chunks(self.store, model_id, unembedded(self.store, model_id, ids),
                                                             self.device, self.engine, loaded, precision=self.precision)]
        self._lap("embed", started)
        if tables:
            started = time.perf_counter()
            self.store.write(append={"embeddings": pa.concat_tables(tables)}, params={"models": list(self.cnns), "precision": self.precision})
            self._lap("write", started)
        started = time.perf_counter()
        _, probabilities = transfer_probabilities(self.store, self.model_id, ids, self.transfer)
        self._lap("classify", started)
        started = time.perf_counter()
        rows = pa.Table.from_pylist(prediction_rows(ids, self.model_id, self.classes, probabilities))
        self.store.write(append={"predictions": rows}, keep_where=self._retagged(ids),
                         params={"model_id": self.model_id, "tagged": len(ids)})
        self._lap("write", started)
        return probabilities

    def _retagged(self, ids: list[int]) -> dict[str, str]:
        """Tagging again with the same model replaces that model's rows for those tracks."""
        condition = f"model_id = '{self.model_id}' AND track_id IN ({', '.join(map(str, ids))})"
        if not self.store.query(f"SELECT count(*) AS n FROM predictions WHERE {condition}")["n"][0].as_py():
            return {}  # nothing to replace: a plain append, not a rewrite of the table
        return {"predictions": f"NOT ({condition})"}

    def _lap(self, stage: str, started: float) -> None:
        self.seconds[stage] += time.perf_counter() - started


def _latest_transfer(store: Store) -> str:
    row = latest_model(store, "transfer", "genre")
    if row is None:
        raise AgfError("no genre classifier in the store: run `agf train --target all`, `agf embed`, "
                       "`agf train --target transfer` first")
    return row["model_id"]
