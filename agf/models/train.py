"""Training the CNNs (genre, and one per AGF source) and storing their checkpoints.

Choices the authors leave open (docs/METHOD.md), as defaults (all options): batch 32; an epoch draws 8 random
patches per training track; at most 20 epochs, early stopping after 3 epochs without a lower
validation loss (the best weights are kept); the learning rate halves when validation loss
stalls for an epoch. Validation loss is the clip-level loss of the mean patch probabilities.
"""

import copy
import io
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from agf.engine import keep_freed_memory
from agf.errors import AgfError
from agf.models.calibration import calibrate, fit_temperature
from agf.models.cnn import ClipCNN, measure_ranges, soft_cross_entropy
from agf.models.data import PatchReader, assign_splits
from agf.models.factors import CNN_TARGETS
from agf.models.factors import SOURCES as AGF_SOURCES
from agf.models.factors import current_factors
from agf.progress import progress_bar, say
from agf.models.serving import clip_outputs, pick_device
from agf.store import Store
from agf.store.registry import latest_model, save_model

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


def trainable_targets(store: Store) -> list[str]:
    """What ``--target all`` trains: the genre, and each source that has factors."""
    return ["genre"] + [f"agf:{s}" for s in AGF_SOURCES if latest_model(store, "factors", s)]


def train_cnn(store: Store, target: str, params: TrainParams, quiet: bool = False) -> dict:
    """Train the CNN on ``target`` and store its checkpoint as a model; returns its summary."""
    model, spectra, config, metrics = fit_cnn(store, target, params, quiet)
    model_id = save_cnn(store, model, spectra, config, metrics)
    return {"model_id": model_id, "target": target, "device": metrics["device"], "epochs": metrics["epochs"],
            "val_loss": metrics["val_loss"], "train_tracks": metrics["train_tracks"], "seconds": metrics["seconds"]}


def fit_cnn(store: Store, target: str, params: TrainParams, quiet: bool = False) -> tuple[ClipCNN, PatchReader, dict, dict]:
    """Train the CNN on ``target`` from the store: (model with the best validation weights, its
    reader, config, metrics). The store adapter of :class:`ClipCNNTrainer`."""
    started = time.perf_counter()
    tracks = all_tracks(store)
    labelled, y, classes = targets_for(store, target, tracks)
    parts = _split_indices(tracks, labelled, params)
    train, val = parts["training"], parts["validation"]
    n_classes_seen = len({int(np.argmax(y[i])) for i in train}) if target == "genre" else len(classes)
    if not labelled and target == "genre":
        raise AgfError("no track has a genre to learn from: genres come from a manifest's genre column, FMA's "
                       "tracks.csv or the files' own genre tags")
    if len(train) < MIN_TRAINING_TRACKS or n_classes_seen < 2:
        raise AgfError(
            f"too few labelled tracks to train {target}: {len(train)} in the training split"
            f" covering {n_classes_seen} class(es); need {MIN_TRAINING_TRACKS} tracks and 2 classes")
    if not val:
        val = train
        say("no validation tracks: early stopping watches the training tracks", quiet)
    reader = PatchReader.of_store(store)
    ids = [t["track_id"] for t in labelled]
    # a probability over genres is read as one: the genre CNN is calibrated on the validation split
    trainer = ClipCNNTrainer(params, name=target, calibrate=target == "genre", verbose=not quiet)
    trainer.fit(reader, [ids[i] for i in train], y[train], [ids[i] for i in val], y[val])
    metrics = {**trainer.metrics_, "seconds": round(time.perf_counter() - started, 2)}
    config = {"target": target, "classes": classes, "n_mels": reader.n_mels, "params": asdict(params)}
    if trainer.temperature_ is not None:
        config["temperature"] = trainer.temperature_
    return trainer.model_, reader, config, metrics


class ClipCNNTrainer:
    """Trains a :class:`ClipCNN` on clips' log-mel patches, with scikit-learn's shape.

    ``fit(clips, train_ids, y_train, val_ids, y_val)`` standardises each mel band over the
    training clips, trains on random patches with early stopping on the validation clips'
    loss (their mean patch probabilities), and keeps the best weights; ``predict_proba`` and
    ``transform`` give clip-level probabilities and 256-d embeddings.

    Parameters
    ----------
    params : TrainParams
        Epochs, batch size, patches per clip and epoch, learning rate, L2, patience, seed, device.
    calibrate : bool
        Fit a temperature on the validation clips (``temperature_``).
    name : str
        What is trained, for progress.

    Attributes
    ----------
    model_ : ClipCNN
    temperature_ : float or None
    metrics_ : dict
        ``val_loss``, ``epochs``, ``history``, ``device``, ``train_tracks``, ``val_tracks``,
        ``train_samples_per_s`` (and ``temperature``).
    """

    def __init__(self, params: TrainParams, *, calibrate: bool = False, name: str = "cnn", verbose: bool = False):
        self.params, self.calibrate, self.name, self.verbose = params, calibrate, name, verbose

    def fit(self, clips: PatchReader, train_ids: list[int], y_train: np.ndarray, val_ids: list[int] | None = None,
            y_val: np.ndarray | None = None) -> "ClipCNNTrainer":
        """Train on ``train_ids`` (their targets ``y_train``, (n, classes) distributions), stopping
        early on ``val_ids`` (default: the training clips)."""
        params, quiet = self.params, not self.verbose
        if val_ids is None:
            val_ids, y_val = train_ids, y_train
        device = pick_device(params.device)
        keep_freed_memory()  # each batch's activations and gradients reuse the last one's pages
        say(f"training {self.name} on {device} ({'mixed precision' if device.type == 'cuda' else 'float32'}): "
            f"{len(train_ids)} training / {len(val_ids)} validation tracks, {y_train.shape[1]} outputs", quiet)
        torch.manual_seed(params.seed)
        rng = np.random.default_rng(params.seed)
        clips.fit_standardisation(list(train_ids), seed=params.seed)
        sample = self._range_patches(clips, train_ids, device)
        model = ClipCNN(y_train.shape[1], clips.n_mels).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=1)
        best, best_state, best_ranges, stale, history, samples, train_seconds = float("inf"), None, None, 0, [], 0, 0.0
        steps = -(-len(train_ids) * params.crops_per_track // params.batch_size)  # batches per epoch
        # counted in batches, so the bar moves, and its ETA means something, within the first epoch
        with progress_bar(params.epochs * steps, f"train {self.name}", "batches", quiet) as bar:
            for epoch in range(params.epochs):
                epoch_started = time.perf_counter()
                loss = _epoch(model, optimiser, clips, train_ids, y_train, params, rng, device, bar)
                train_seconds += time.perf_counter() - epoch_started
                samples += len(train_ids) * params.crops_per_track
                # validated as it will be served: 8-bit inference codes over ranges measured now
                model.activation_ranges = measure_ranges(model.eval(), sample)
                val_loss = _clip_loss(model, clips, val_ids, y_val, device)
                schedule.step(val_loss)
                history.append({"epoch": epoch + 1, "loss": round(loss, 4), "val_loss": round(val_loss, 4)})
                bar.advance(0, info=f"epoch {epoch + 1}: loss {loss:.3f} val {val_loss:.3f}")
                if val_loss < best - 1e-4:
                    best, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
                    best_ranges = model.activation_ranges
                else:
                    stale += 1
                    if stale >= params.patience:
                        break
        model.load_state_dict(best_state)
        model.activation_ranges = best_ranges
        self.model_, self.temperature_ = model.eval(), None
        self.metrics_ = {"val_loss": round(best, 4), "epochs": len(history), "history": history, "device": str(device),
                         "train_tracks": len(train_ids), "val_tracks": len(val_ids),
                         "train_samples_per_s": round(samples / max(train_seconds, 1e-9), 1)}
        if self.calibrate:
            self.temperature_ = fit_temperature(self.predict_proba(clips, val_ids, calibrated=False), np.argmax(y_val, axis=1))
            self.metrics_["temperature"] = round(self.temperature_, 4)
        return self

    def _range_patches(self, clips: PatchReader, train_ids: list[int], device: torch.device,
                       patches: int = 128) -> torch.Tensor:
        """The patches each epoch's activation ranges are measured on (:func:`measure_ranges`):
        ``patches`` random patches, (patches, 1, n_mels, 43), of the training clips in turn (each
        once before any twice), drawn apart from training's own random numbers."""
        rng = np.random.default_rng([self.params.seed, 1])
        chosen = np.resize(rng.permutation(len(train_ids)), patches)
        return torch.from_numpy(np.stack([clips.crop(train_ids[i], rng) for i in chosen])[:, None]).to(device)

    def predict_proba(self, clips: PatchReader, ids: list[int], calibrated: bool = True) -> np.ndarray:
        """Clip-level probabilities (n, classes): the mean over every patch (temperature applied)."""
        probabilities = clip_outputs(self.model_, clips, list(ids), pick_device(self.params.device))[1]
        return calibrate(probabilities, self.temperature_) if calibrated and self.temperature_ else probabilities

    def transform(self, clips: PatchReader, ids: list[int]) -> np.ndarray:
        """Clip embeddings (n, 256): the mean over every patch."""
        return clip_outputs(self.model_, clips, list(ids), pick_device(self.params.device))[0]


def _epoch(model, optimiser, clips, train_ids, y, params, rng, device, bar) -> float:
    model.train()
    order = rng.permutation(np.repeat(np.arange(len(train_ids)), params.crops_per_track))
    losses = []
    for start in range(0, len(order), params.batch_size):
        batch = order[start : start + params.batch_size]
        bar.advance()
        if len(batch) < 2:  # batch norm needs two samples
            continue
        x = torch.from_numpy(np.stack([clips.crop(train_ids[i], rng) for i in batch])[:, None]).to(device)
        target = torch.from_numpy(y[batch]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = soft_cross_entropy(model(x).float(), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _clip_loss(model, clips, ids, y, device) -> float:
    _, probabilities = clip_outputs(model, clips, list(ids), device)
    return float(-(y * np.log(np.clip(probabilities, 1e-7, 1))).sum(axis=1).mean())


def save_cnn(store: Store, model: ClipCNN, spectra: PatchReader, config: dict, metrics: dict) -> str:
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": config,
                "mean": torch.from_numpy(spectra.mean), "std": torch.from_numpy(spectra.std),
                "activation_ranges": model.activation_ranges}, buffer)
    params = {**config["params"], "target": config["target"], "classes": config["classes"]}
    return save_model(store, "cnn", config["target"], buffer.getvalue(), params, metrics, "model.pt")


