"""The transfer classifier: an MLP over the frozen CNNs' concatenated embeddings predicts genre."""

import copy
import io
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from agf.errors import AgfError
from agf.models.calibration import fit_temperature
from agf.models.cnn import TransferMLP
from agf.models.train import MIN_TRAINING_TRACKS, all_tracks, genre_classes
from agf.models.serving import cnn_models, embedding_matrix, pick_device, prediction_rows, transfer_probabilities
from agf.models.data import assign_splits
from agf.progress import say
from agf.store import Store
from agf.store.registry import save_model


@dataclass
class TransferParams:
    """Options of ``agf train --target transfer``: full-batch-ish Adam with early stopping."""

    models: str = "all"
    epochs: int = 300
    patience: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    #: L2 penalty; ``None``: the one of :data:`WEIGHT_DECAYS` with the lowest loss cross-validated by artist
    weight_decay: float | None = None
    split: str = "auto"
    seed: int = 0
    device: str = "auto"
    #: refit on the training and validation tracks for the epochs early stopping chose (docs/METHOD.md)
    refit: bool = True


def train_transfer(store: Store, params: TransferParams, quiet: bool = False) -> dict:
    """Fit the MLP on training tracks, stop early on validation, refit on both for that many
    epochs (``params.refit``), calibrate on out-of-fold predictions, predict the test split."""
    started = time.perf_counter()
    model_ids = cnn_models(store, params.models)
    tracks = all_tracks(store)
    splits = assign_splits(tracks, params.split, params.seed)
    classes = genre_classes(tracks)
    by_split = {s: [t for t in tracks if splits[t["track_id"]] == s] for s in ("training", "validation", "test")}
    train = [t for t in by_split["training"] if t["genre_top"]]
    val = [t for t in by_split["validation"] if t["genre_top"]] or train
    if len(train) < MIN_TRAINING_TRACKS or len({t["genre_top"] for t in train}) < 2:
        raise AgfError(f"too few labelled tracks to train transfer: {len(train)} in the training split; need "
                       f"{MIN_TRAINING_TRACKS} tracks and 2 genres")
    device = pick_device(params.device)
    say(f"training transfer on {device} over {len(model_ids)} CNN embeddings: {len(train)} training tracks", quiet)
    # every labelled track outside the test split, training tracks first; read once
    pool = train if val is train else train + val
    raw = embedding_matrix(store, model_ids, [t["track_id"] for t in pool])
    mean, std = raw[: len(train)].mean(axis=0), np.maximum(raw[: len(train)].std(axis=0), 1e-6)
    x_pool = torch.from_numpy((raw - mean) / std).to(device)
    y_pool = torch.tensor([classes.index(t["genre_top"]) for t in pool], device=device)
    artists = [t["artist_id"] for t in pool]
    x_train, y_train = x_pool[: len(train)], y_pool[: len(train)]
    xv, yv = (x_train, y_train) if val is train else (x_pool[len(train):], y_pool[len(train):])
    if params.weight_decay is None:
        params, losses = _chosen_weight_decay(x_pool, y_pool, artists, len(classes), params, device)
        say("transfer weight decay, chosen by artist-fold cross-validation: " + ", ".join(
            f"{wd:g} (loss {loss:.3f})" for wd, loss in losses.items()) + f" -> {params.weight_decay:g}", quiet)
    model, best, epochs, best_epoch = _fit_mlp(x_train, y_train, len(classes), params, params.epochs, device, (xv, yv))
    refit = params.refit and val is not train
    if refit:  # the validation tracks' embeddings are the CNNs' view of artists they never trained on, as the test's are
        model, *_ = _fit_mlp(x_pool, y_pool, len(classes), params, max(1, best_epoch), device)
    temperature = _cross_validated_temperature(x_pool, y_pool, artists, len(classes), params, best_epoch, device)
    buffer = io.BytesIO()
    config = {"models": model_ids, "classes": classes, "hidden": model.hidden, "temperature": temperature}
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": config,
                "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}, buffer)
    metrics = {"val_loss": round(best, 4), "epochs": epochs, "best_epoch": best_epoch,
               "fitted_on": "training and validation tracks" if refit else "training tracks",
               "train_tracks": len(train), "val_tracks": len(val),
               "temperature": round(temperature, 4), "weight_decay": params.weight_decay,
               "temperature_fitted_on": f"out-of-fold predictions, {CALIBRATION_FOLDS} folds by artist",
               "seconds": round(time.perf_counter() - started, 2)}
    model_id = save_model(store, "transfer", "genre", buffer.getvalue(), {**asdict(params), **config}, metrics, "model.pt")
    test_ids = [t["track_id"] for t in by_split["test"]]
    if test_ids:
        probabilities = transfer_probabilities(store, model_id, test_ids)[1]
        rows = prediction_rows(test_ids, model_id, classes, probabilities)
        with store.transaction(params={"model_id": model_id, "split": "test"}) as tx:
            tx.delete_where("predictions", "model_id = ?", [model_id])  # a deterministic rerun: the same model
            tx.append("predictions", pa.Table.from_pylist(rows))
    return {"model_id": model_id, "target": "transfer", "inputs": len(model_ids), "epochs": epochs, "val_loss": metrics["val_loss"],
            "train_tracks": len(train), "test_predicted": len(test_ids), "seconds": metrics["seconds"]}


def _fit_mlp(x: torch.Tensor, y: torch.Tensor, n_classes: int, params: TransferParams, epochs: int,
             device: torch.device, validation: tuple | None = None):
    """An MLP trained on ``x`` (n, d) → ``y`` (n,) for at most ``epochs``; with ``validation``
    (x, y) it stops early and keeps its best epoch. Returns (model, best validation loss, epochs
    run, best epoch)."""
    torch.manual_seed(params.seed)
    model = TransferMLP(x.shape[1], n_classes).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    best, best_state, best_epoch, stale, run = float("inf"), None, epochs, 0, 0
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(params.batch_size):
            loss = torch.nn.functional.cross_entropy(model(x[batch.to(device)]), y[batch.to(device)])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        run = epoch + 1
        if validation is None:
            continue
        model.eval()
        with torch.no_grad():
            val_loss = torch.nn.functional.cross_entropy(model(validation[0]), validation[1]).item()
        if val_loss < best - 1e-5:
            best, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), run, 0
        elif (stale := stale + 1) >= params.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), best, run, best_epoch


CALIBRATION_FOLDS = 4
#: The L2 penalties the transfer MLP chooses from (docs/METHOD.md: the authors give none).
WEIGHT_DECAYS = (1e-5, 1e-3, 1e-2, 3e-2, 1e-1)


def _held_out_folds(artists: list[int], seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Each fold's mask of held-out tracks (n_tracks,): ``CALIBRATION_FOLDS`` folds of whole artists."""
    order = sorted(set(artists))
    np.random.default_rng(seed).shuffle(order)
    fold_of = {a: i % CALIBRATION_FOLDS for i, a in enumerate(order)}
    folds = np.array([fold_of[a] for a in artists])
    for k in range(min(CALIBRATION_FOLDS, len(order))):
        yield torch.from_numpy(folds == k).to(device)


def _chosen_weight_decay(x: torch.Tensor, y: torch.Tensor, artists: list[int], n_classes: int, params: TransferParams,
                         device: torch.device) -> tuple[TransferParams, dict[float, float]]:
    """``params`` with the weight decay of :data:`WEIGHT_DECAYS` whose MLPs, each trained on three
    folds of artists and stopped early on the fourth, reach the lowest mean loss on artists they
    never trained on; and that loss for each."""
    losses = {}
    for weight_decay in WEIGHT_DECAYS:
        trial = replace(params, weight_decay=weight_decay)
        held_out = [_fit_mlp(x[~held], y[~held], n_classes, trial, params.epochs, device, (x[held], y[held]))[1]
                    for held in _held_out_folds(artists, params.seed, device)]
        losses[weight_decay] = float(np.mean(held_out))
    return replace(params, weight_decay=min(losses, key=losses.get)), losses


@torch.no_grad()
def _predict(model, x: torch.Tensor) -> np.ndarray:
    return torch.softmax(model(x), dim=1).cpu().numpy()


def _cross_validated_temperature(x: torch.Tensor, y: torch.Tensor, artists: list[int], n_classes: int,
                                 params: TransferParams, epochs: int, device: torch.device) -> float:
    """The temperature fitted on out-of-fold predictions: ``CALIBRATION_FOLDS`` MLPs, each trained
    as the final one was (for its best number of epochs) on the other folds' artists, predict
    the artists they never saw. The validation split alone, which early stopping already chose
    the epoch on, makes the MLP look surer of unseen artists than it is (docs/METHOD.md)."""
    out_of_fold = np.zeros((len(artists), n_classes), np.float32)
    for held in _held_out_folds(artists, params.seed, device):
        fold_model, *_ = _fit_mlp(x[~held], y[~held], n_classes, params, max(1, epochs), device)
        out_of_fold[held.cpu().numpy()] = _predict(fold_model, x[held])
    return fit_temperature(out_of_fold, y.cpu().numpy())


