"""``agf tag``: batch genre tagging of new music with the stored CNNs and transfer classifier."""

import pyarrow as pa

from agf.errors import AgfError
from agf.ingest import Candidate, ingest
from agf.ingest.pipeline import sha256_file
from agf.models.train import embed, prediction_rows
from agf.models.transfer import load_transfer, transfer_probabilities
from agf.store import Store
from agf.store.models import latest_model


def tag(store: Store, candidates: list[Candidate], top: int = 3, workers: int | None = None, quiet: bool = False) -> list[dict]:
    """Ingest ``candidates`` (skipping stored audio), embed them, predict their genres.

    Every genre's probability is written to ``predictions``; returns one row per file with its
    ``top`` genres. Files that fail to ingest are reported with their error.
    """
    row = latest_model(store, "transfer", "genre")
    if row is None:
        raise AgfError("no genre classifier in the store: run `agf train --target all`, `agf embed`, "
                       "`agf train --target transfer` first")
    _, config, _, _ = load_transfer(store, row["model_id"])
    ingest(store, candidates, workers=workers, quiet=quiet)
    by_sha = {r["audio_sha256"]: r["track_id"] for r in store.query("SELECT audio_sha256, track_id FROM tracks").to_pylist()}
    errors = {r["path"]: r["error"] for r in store.query("SELECT path, error FROM ingest_errors").to_pylist()}
    found: dict[int, Candidate] = {}
    results = []
    for c in candidates:
        try:
            track_id = by_sha.get(sha256_file(c.path))
        except OSError as exc:
            track_id, errors[str(c.path)] = None, f"cannot read file: {exc.strerror}"
        if track_id is None:
            results.append({"path": str(c.path), "track_id": None, "genre": None, "probability": None,
                            "top": None, "error": errors.get(str(c.path), "not ingested")})
        else:
            found[track_id] = c
    if found:
        embed(store, ",".join(config["models"]), quiet=True)
        classes, probabilities = transfer_probabilities(store, row["model_id"], list(found))
        store.write(append={"predictions": pa.Table.from_pylist(prediction_rows(list(found), row["model_id"], classes, probabilities))},
                    params={"model_id": row["model_id"], "tagged": len(found)})
        for (track_id, c), p in zip(found.items(), probabilities):
            order = p.argsort()[::-1][:top]
            results.append({"path": str(c.path), "track_id": track_id, "genre": classes[order[0]],
                            "probability": round(float(p[order[0]]), 4),
                            "top": ", ".join(f"{classes[i]} {p[i]:.2f}" for i in order), "error": None})
    return results
