"""Training the CNNs (genre, and one per AGF source), checkpoints, and track embeddings.

Choices the authors leave open (docs/METHOD.md), as defaults (all options): batch 32; an epoch draws 8 random
patches per training track; at most 20 epochs, early stopping after 3 epochs without a lower
validation loss (the best weights are kept); the learning rate halves when validation loss
stalls for an epoch. Validation loss is the clip-level loss of the mean patch probabilities.
"""

import copy
import io
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from agf.engine import LOCAL, Engine, ray_embeddings
from agf.errors import AgfError
from agf.models.calibration import fit_temperature
from agf.models.cnn import EMBEDDING_DIM, GenreCNN, inference_copy, soft_cross_entropy
from agf.models.data import Spectrograms, assign_splits
from agf.models.factors import CNN_TARGETS
from agf.models.factors import SOURCES as AGF_SOURCES
from agf.models.factors import current_factors
from agf.progress import progress_bar, say
from agf.store import Store, fixed_vectors, now_utc
from agf.store.models import latest_model, load_checkpoint, load_weights, save_model

MIN_TRAINING_TRACKS = 10


@dataclass
class TrainParams:
    """Options of ``agf train``."""

    epochs: int = 20
    batch_size: int = 32
    crops_per_track: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 3
    split: str = "auto"
    seed: int = 0
    device: str = "auto"


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise AgfError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(requested)


PRECISIONS = ("auto", "fp32", "bf16")


def pick_precision(device: torch.device, requested: str = "auto") -> str:
    """The arithmetic of CNN inference on ``device``: 'fp32' or 'bf16' (see :func:`inference_copy`).

    'auto' is 'bf16' where the device computes bfloat16 natively (a CUDA GPU that supports it;
    a CPU with AVX512-BF16 or AMX), else 'fp32', where bfloat16 would be emulated and slower.
    """
    if requested not in PRECISIONS:
        raise AgfError(f"unknown precision {requested!r}; choose {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:  # private torch helpers: absent from some builds, so absent means no
        native = any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bf16" if native else "fp32"


def run_precision(device: str, precision: str, engine: Engine = LOCAL) -> str:
    """The precision a run records: resolved for this machine's device, or, on Ray, as asked
    (each actor resolves 'auto' for its own device)."""
    return precision if engine.is_ray else pick_precision(pick_device(device), precision)


def all_tracks(store: Store) -> list[dict]:
    # tracks FMA lists without their audio here (no sha256) have nothing for a network to hear
    return store.query("SELECT track_id, artist_id, genre_top, split FROM tracks WHERE audio_sha256 IS NOT NULL "
                       "ORDER BY track_id").to_pylist()


def genre_classes(tracks: list[dict]) -> list[str]:
    return sorted({t["genre_top"] for t in tracks if t["genre_top"]})


def targets_for(store: Store, target: str, tracks: list[dict]) -> tuple[list[dict], np.ndarray, list[str]]:
    """The tracks that have ``target`` and their target distributions (n, classes)."""
    if target == "genre":
        classes = genre_classes(tracks)
        labelled = [t for t in tracks if t["genre_top"]]
        y = np.zeros((len(labelled), len(classes)), np.float32)
        y[np.arange(len(labelled)), [classes.index(t["genre_top"]) for t in labelled]] = 1
        return labelled, y, classes
    source = target.removeprefix("agf:")
    if not target.startswith("agf:") or source not in AGF_SOURCES:
        raise AgfError(f"unknown target {target!r}; choose from {', '.join(CNN_TARGETS)}, all, transfer")
    artist_ids, factors = current_factors(store, source)
    if not artist_ids:
        raise AgfError(f"no {source} factors: run `agf factors build --source {source}` first")
    row_of = {a: i for i, a in enumerate(artist_ids)}
    labelled = [t for t in tracks if t["artist_id"] in row_of]
    y = factors[[row_of[t["artist_id"]] for t in labelled]] if labelled else np.zeros((0, factors.shape[1]), np.float32)
    return labelled, y.astype(np.float32), [f"factor {i}" for i in range(factors.shape[1])]


def _split_indices(tracks: list[dict], labelled: list[dict], params: TrainParams) -> dict[str, list[int]]:
    splits = assign_splits(tracks, params.split, params.seed)
    out = {"training": [], "validation": [], "test": []}
    for i, t in enumerate(labelled):
        out[splits[t["track_id"]]].append(i)
    return out


def train_cnn(store: Store, target: str, params: TrainParams, quiet: bool = False) -> dict:
    """Train the CNN on ``target`` and store its checkpoint as a model; returns its summary."""
    model, spectra, config, metrics = fit_cnn(store, target, params, quiet)
    model_id = save_cnn(store, model, spectra, config, metrics)
    return {"model_id": model_id, "target": target, "device": metrics["device"], "epochs": metrics["epochs"],
            "val_loss": metrics["val_loss"], "train_tracks": metrics["train_tracks"], "seconds": metrics["seconds"]}


def fit_cnn(store: Store, target: str, params: TrainParams, quiet: bool = False) -> tuple[GenreCNN, Spectrograms, dict, dict]:
    """Train the CNN on ``target``: (model with the best validation weights, its reader, config, metrics)."""
    started = time.perf_counter()
    tracks = all_tracks(store)
    labelled, y, classes = targets_for(store, target, tracks)
    parts = _split_indices(tracks, labelled, params)
    train, val = parts["training"], parts["validation"]
    n_classes_seen = len({int(np.argmax(y[i])) for i in train}) if target == "genre" else len(classes)
    if len(train) < MIN_TRAINING_TRACKS or n_classes_seen < 2:
        raise AgfError(
            f"too few labelled tracks to train {target}: {len(train)} in the training split"
            f" covering {n_classes_seen} class(es); need {MIN_TRAINING_TRACKS} tracks and 2 classes")
    if not val:
        val = train
        say("no validation tracks: early stopping watches the training tracks", quiet)
    device = pick_device(params.device)
    say(f"training {target} on {device} ({'mixed precision' if device.type == 'cuda' else 'float32'}): "
        f"{len(train)} training / {len(val)} validation tracks, {len(classes)} outputs", quiet)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    spectra = Spectrograms(store)
    spectra.fit_standardisation([labelled[i]["track_id"] for i in train], seed=params.seed)
    model = GenreCNN(len(classes), spectra.n_mels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=1)
    best, best_state, stale, history, samples = float("inf"), None, 0, [], 0
    train_seconds = 0.0
    steps = -(-len(train) * params.crops_per_track // params.batch_size)  # batches per epoch
    # counted in batches, so the bar moves, and its ETA means something, within the first epoch
    with progress_bar(params.epochs * steps, f"train {target}", "batches", quiet) as bar:
        for epoch in range(params.epochs):
            epoch_started = time.perf_counter()
            loss = _epoch(model, optimiser, spectra, labelled, y, train, params, rng, device, bar)
            train_seconds += time.perf_counter() - epoch_started
            samples += len(train) * params.crops_per_track
            val_loss = _validation_loss(model, spectra, labelled, y, val, device)
            schedule.step(val_loss)
            history.append({"epoch": epoch + 1, "loss": round(loss, 4), "val_loss": round(val_loss, 4)})
            bar.advance(0, info=f"epoch {epoch + 1}: loss {loss:.3f} val {val_loss:.3f}")
            if val_loss < best - 1e-4:
                best, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= params.patience:
                    break
    model.load_state_dict(best_state)
    metrics = {"val_loss": round(best, 4), "epochs": len(history), "history": history, "device": str(device),
               "train_tracks": len(train), "val_tracks": len(val), "seconds": round(time.perf_counter() - started, 2),
               "train_samples_per_s": round(samples / max(train_seconds, 1e-9), 1)}
    config = {"target": target, "classes": classes, "n_mels": spectra.n_mels, "params": asdict(params)}
    if target == "genre":  # a probability over genres is read as one: calibrate it on the validation split
        _, probabilities = clip_outputs(model, spectra, [labelled[i]["track_id"] for i in val], device)
        config["temperature"] = fit_temperature(probabilities, np.argmax(y[val], axis=1))
        metrics["temperature"] = round(config["temperature"], 4)
    return model, spectra, config, metrics


def _epoch(model, optimiser, spectra, labelled, y, train, params, rng, device, bar) -> float:
    model.train()
    order = rng.permutation(np.repeat(np.asarray(train), params.crops_per_track))
    losses = []
    for start in range(0, len(order), params.batch_size):
        batch = order[start : start + params.batch_size]
        bar.advance()
        if len(batch) < 2:  # batch norm needs two samples
            continue
        x = torch.from_numpy(np.stack([spectra.crop(labelled[i]["track_id"], rng) for i in batch])[:, None]).to(device)
        target = torch.from_numpy(y[batch]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = soft_cross_entropy(model(x).float(), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _validation_loss(model, spectra, labelled, y, val, device) -> float:
    _, probabilities = clip_outputs(model, spectra, [labelled[i]["track_id"] for i in val], device)
    return float(-(y[val] * np.log(np.clip(probabilities, 1e-7, 1))).sum(axis=1).mean())


@torch.no_grad()
def clip_outputs(model: GenreCNN, spectra: Spectrograms, track_ids: list[int], device: torch.device,
                 batch_patches: int | None = None, precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Clip-level embeddings (n, 256) and probabilities (n, classes): means over every patch.

    Patches of consecutive tracks share forward passes of ``batch_patches`` (default 512 on a
    GPU; 64 on a CPU, where a batch whose activations fit in cache runs about 1.7x faster).
    ``precision`` is chosen by :func:`pick_precision`.
    """
    model = inference_copy(model, pick_precision(device, precision))
    batch_patches = batch_patches or (512 if device.type == "cuda" else 64)
    embeddings = np.zeros((len(track_ids), EMBEDDING_DIM), np.float32)
    probabilities = np.zeros((len(track_ids), model.n_outputs), np.float32)
    pending, owners = [], []

    def flush():
        if not pending:
            return
        x = torch.from_numpy(np.concatenate(pending)[:, None]).to(device).contiguous(memory_format=torch.channels_last)
        emb = model.embed(x)
        prob = torch.softmax(model.head(emb), dim=1)
        emb, prob = emb.cpu().numpy(), prob.cpu().numpy()
        owner = np.concatenate(owners)
        for row in np.unique(owner):
            mask = owner == row
            embeddings[row] += emb[mask].sum(axis=0)
            probabilities[row] += prob[mask].sum(axis=0)
        pending.clear()
        owners.clear()

    counts = np.zeros(len(track_ids))
    for row, track_id in enumerate(track_ids):
        patches = spectra.patches(track_id)
        pending.append(patches)
        owners.append(np.full(len(patches), row))
        counts[row] = len(patches)
        if sum(len(p) for p in pending) >= batch_patches:
            flush()
    flush()
    return embeddings / counts[:, None], probabilities / counts[:, None]


def save_cnn(store: Store, model: GenreCNN, spectra: Spectrograms, config: dict, metrics: dict) -> str:
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": config,
                "mean": torch.from_numpy(spectra.mean), "std": torch.from_numpy(spectra.std)}, buffer)
    params = {**config["params"], "target": config["target"], "classes": config["classes"]}
    return save_model(store, "cnn", config["target"], buffer.getvalue(), params, metrics, "model.pt")


def load_cnn(store: Store, model_id: str, device: torch.device | None = None) -> tuple[GenreCNN, Spectrograms, dict]:
    """A stored CNN (hash verified, ``weights_only`` load), its spectrogram reader, and config."""
    checkpoint = load_checkpoint(store, model_id)
    config = checkpoint["config"]
    model = load_weights(GenreCNN(len(config["classes"]), config["n_mels"]), checkpoint, model_id)
    spectra = Spectrograms(store, checkpoint["mean"].numpy(), checkpoint["std"].numpy())
    return model.to(device or pick_device()), spectra, config


def cnn_models(store: Store, spec: str = "all") -> list[str]:
    """Model ids named by ``spec``: 'all' is the newest CNN of every target; else comma-separated ids."""
    if spec != "all":
        return [s.strip() for s in spec.split(",") if s.strip()]
    ids = [row["model_id"] for t in CNN_TARGETS if (row := latest_model(store, "cnn", t))]
    if not ids:
        raise AgfError("no trained CNN in the store: run `agf train --target all` first")
    return ids


def embed(store: Store, spec: str = "all", device: str = "auto", engine: Engine = LOCAL, quiet: bool = False,
          precision: str = "auto") -> list[dict]:
    """Write the clip embeddings of every track not yet embedded by each chosen CNN.

    A part is committed per chunk of 2,048 tracks: an interruption keeps what is done.
    """
    results = []
    where = "a Ray cluster" if engine.is_ray else pick_device(device)
    arithmetic = run_precision(device, precision, engine)
    for model_id in cnn_models(store, spec):
        started = time.perf_counter()
        todo = unembedded(store, model_id)
        for ids, vectors in embedding_chunks(store, model_id, todo, device, engine, precision=precision):
            store.write(append={"embeddings": embedding_rows(model_id, ids, vectors)},
                        params={"model_id": model_id, "precision": arithmetic})
        seconds = time.perf_counter() - started
        say(f"embedded {len(todo)} tracks with {model_id} on {where} ({arithmetic}) in {seconds:.1f} s", quiet)
        results.append({"model_id": model_id, "embedded": len(todo), "precision": arithmetic, "seconds": round(seconds, 2),
                        "tracks_per_s": round(len(todo) / seconds, 1) if todo else None})
    return results


def unembedded(store: Store, model_id: str, track_ids: list[int] | None = None) -> list[int]:
    """The stored tracks (all, or those of ``track_ids``) that ``model_id`` has not embedded yet."""
    among = "" if track_ids is None else "AND track_id IN (SELECT unnest(?::BIGINT[]))"
    return store.query(f"SELECT track_id FROM tracks WHERE audio_sha256 IS NOT NULL AND track_id NOT IN "
                       f"(SELECT track_id FROM embeddings WHERE model_id = ?) {among} ORDER BY 1",
                       [model_id] + ([track_ids] if track_ids is not None else []))["track_id"].to_pylist()


def embedding_chunks(store: Store, model_id: str, track_ids: list[int], device: str = "auto", engine: Engine = LOCAL,
                     loaded: tuple | None = None, chunk: int = 2048, precision: str = "auto",
                     ) -> Iterator[tuple[list[int], np.ndarray]]:
    """Clip embeddings of ``track_ids`` by ``model_id``: (track ids, (n, 256) float32) chunks.

    Locally with ``loaded`` (model, spectrogram reader) or the model loaded here; with a Ray
    engine, by an actor pool on the cluster. ``precision`` as in :func:`pick_precision`.
    """
    if not track_ids:
        return  # nothing to embed: no model to load, no cluster work to start
    if engine.is_ray:
        yield from ray_embeddings(engine, store.root, model_id, track_ids, device, precision)
        return
    chosen = pick_device(device)
    model, spectra = loaded or load_cnn(store, model_id, chosen)[:2]
    for start in range(0, len(track_ids), chunk):
        ids = track_ids[start : start + chunk]
        yield ids, clip_outputs(model, spectra, ids, chosen, precision=precision)[0]


def embedding_rows(model_id: str, track_ids: list[int], vectors: np.ndarray):
    """Rows of the embeddings table."""
    import pyarrow as pa

    return pa.table({"track_id": pa.array(track_ids, pa.int64()), "model_id": [model_id] * len(track_ids),
                     "vector": fixed_vectors(vectors)})


def prediction_rows(track_ids: list[int], model_id: str, classes: list[str], probabilities: np.ndarray) -> list[dict]:
    """Rows of the predictions table: every genre of every track, ranked by probability."""
    at = now_utc()
    rows = []
    for track_id, p in zip(track_ids, probabilities):
        for rank, c in enumerate(np.argsort(-p), start=1):
            rows.append({"track_id": track_id, "model_id": model_id, "genre": classes[c], "probability": float(p[c]),
                         "rank": rank, "predicted_at": at})
    return rows
